"""Cost before running: the GPU FLOP and byte model (benchmarks/execution/gpu_cost.py) and the
estimates --dry-run prints."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmarks.execution import gpu_cost
from benchmarks.registry import ROOT


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-7b"])
def test_linear_parameter_count_is_the_real_models(name):
    """N against a Llama of that shape built on the meta device (no memory), counted by transformers."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = gpu_cost.model()["backbones"][name]
    config = LlamaConfig(hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                         num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                         num_key_value_heads=spec["kv_heads"], vocab_size=spec["vocab"], tie_word_embeddings=False)
    with torch.device("meta"):
        llama = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in llama.modules() if isinstance(m, torch.nn.Linear))
    assert gpu_cost.Shape(**spec).linear_parameters == linear
    if name == "llama-7b":
        assert 6.4e9 < linear < 6.8e9


def _budget(**changes):
    values = dict(eval_cap=None, max_epochs=None, latency_samples=10, warmup=2, batch_size=32, order_probe_samples=0)
    return SimpleNamespace(**{**values, **changes})


_GPU = gpu_cost.Device("h100", 800.0, 3000.0, 80.0, 0.5, False)
_ARGS = dict(method="tallrec", task="ctr", dataset="d", shots=1000, llm="meta-llama/Llama-2-7b-hf", quant="none",
             config={"epochs": 2, "micro_batch_size": 4}, budget=_budget())


def _cell(monkeypatch, **changes):
    monkeypatch.setattr(gpu_cost, "_tokens", lambda method, task: (200.0, 300.0))
    monkeypatch.setattr(gpu_cost, "split_sizes", lambda dataset, task: {"train": 10_000, "test": 1_000})
    return gpu_cost.llm_cell(**{**_ARGS, "gpu": _GPU, **changes})


def test_training_time_follows_samples_epochs_and_the_flop_count(monkeypatch):
    base = _cell(monkeypatch)
    shape = gpu_cost.shape_of("meta-llama/Llama-2-7b-hf")
    tokens = 1000 * 2 * 200 * shape.token_ratio
    expected = tokens * (4 * shape.linear_parameters + 12 * shape.layers * 200 * shape.token_ratio * shape.hidden)
    assert base.parts["train"] == pytest.approx(expected / (800e12 * 0.5))
    assert _cell(monkeypatch, shots=2000).parts["train"] == pytest.approx(2 * base.parts["train"])
    assert _cell(monkeypatch, shots="full").parts["n_train"] == 10_000
    assert _cell(monkeypatch, budget=_budget(max_epochs=1)).parts["train"] == pytest.approx(base.parts["train"] / 2)
    assert _cell(monkeypatch, budget=_budget(eval_cap=100)).parts["n_eval"] == 100
    assert base.parts["decode"] == 0
    generate = _cell(monkeypatch, config={"epochs": 2, "scorer": "generate", "max_new_tokens": 64})
    reads = shape.weight_bytes("none") / 3000e9
    assert generate.parts["decode"] == pytest.approx(32 * 64 * reads)  # ceil(1000 / 32) batches x 64 tokens
    assert _cell(monkeypatch, quant="nf4").peak_gib < base.peak_gib / 2  # 4-bit weights
    assert _cell(monkeypatch, llm="someone/unknown-13b") is None


def test_token_counts_and_split_sizes_come_from_committed_records(tmp_path, monkeypatch):
    record = {"status": "ok", "method": "tallrec", "task": "ctr", "family": "llm", "dataset": "movielens-100k",
              "tiny": False, "shots": 64, "n_train": 64, "n_eval": 200, "method_config": {"epochs": 2},
              "budget": {"max_epochs": 1, "latency_samples": 8, "warmup": 2, "eval_cap": 200},
              "padding": {"fit": {"tokens": 6400}, "score": {"tokens": 42000}}}
    full = {**record, "method": "deepfm", "family": "conventional", "shots": "full", "n_train": 75_599,
            "n_eval": 9450, "budget": {}, "padding": None}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text("\n".join(json.dumps(r) for r in (record, full)) + "\n")
    local = tmp_path / "runs" / "quick-20261206-000000"  # a run folder of this machine: not committed, not read
    local.mkdir(parents=True)
    (local / "records.jsonl").write_text(json.dumps({**full, "n_train": 10**9, "n_eval": 10**9}) + "\n")
    monkeypatch.setattr(gpu_cost, "RESULTS", tmp_path)
    for cached in (gpu_cost.token_counts, gpu_cost.recorded_sizes):
        cached.cache_clear()
    try:
        assert gpu_cost.token_counts()[("tallrec", "ctr")] == (100.0, 200.0)  # 6400 / (64 x 1); 42000 / 210
        assert gpu_cost._tokens("reclora-shared", "ctr") == (100.0, 200.0)  # tallrec's: the only ctr count
        assert gpu_cost._tokens("lora-seq", "next_item") is None  # nothing counted on next_item
        assert gpu_cost.split_sizes("movielens-100k", "ctr") == {"train": 75_599, "test": 9450}
        scaled = gpu_cost.split_sizes("movielens-1m", "ctr")  # from cost_model.yaml's size
        assert scaled == {"train": int(0.8 * (1_000_209 - 5 * 6040)), "test": int(0.1 * (1_000_209 - 5 * 6040))}
        assert gpu_cost.split_sizes("no-such-card", "ctr") is None
    finally:
        for cached in (gpu_cost.token_counts, gpu_cost.recorded_sizes):
            cached.cache_clear()


def test_a_committed_gpu_check_replaces_the_stated_ceilings(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_cost, "RESULTS", tmp_path)
    assert not gpu_cost.device("h100").measured
    folder = tmp_path / "gpu" / "nvidia-h100-80gb-hbm3"
    folder.mkdir(parents=True)
    (folder / "gpu_check.json").write_text(json.dumps({"ceilings": {"bf16_tflops": 650.0, "copy_gbps": 5000.0},
                                                       "efficiency": {"train": {"mfu": 0.41}}}))
    measured = gpu_cost.device("h100")
    assert (measured.bf16_tflops, measured.memory_gbps, measured.mfu, measured.measured) == (650.0, 2500.0, 0.41, True)
    assert "measured by gpu_check" in gpu_cost.describe_device(measured)


def test_dry_runs_print_gpu_hours_per_cell_and_in_total():
    paper = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "paper", "--dry-run"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    first = paper.splitlines()[0]
    assert "GPU-hours for the LLM cells on one H100" in first and "MFU 35%" in first
    assert "at most" in first and "for the others (their CPU records scaled" in first
    line = next(x for x in paper.splitlines() if x.startswith("movielens-1m/ctr/reclora/seed=1/shots=70000"))
    assert " h, peak " in line and "GiB" in line
    quick = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "quick", "--dry-run"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert "estimated CPU wall time" in quick.splitlines()[0]
    assert any(x.startswith("movielens-100k/ctr/tallrec/seed=1/shots=64    ~") and x.endswith(" s")
               for x in quick.splitlines())


def test_a_finished_cells_time_is_read_from_its_stamps():
    from benchmarks.run import _took

    assert _took({"started_at": "2026-12-06T10:00:00+00:00", "finished_at": "2026-12-06T10:02:05+00:00"}) == 125
    assert _took({"started_at": "", "finished_at": "2026-12-06T10:02:05+00:00"}) is None


def test_cpu_records_scale_to_a_larger_splits_size(monkeypatch):
    """A record on MovieLens-100K's whole train split, estimated on a split ten times as large."""
    from benchmarks.execution import estimate

    points = {("sasrec", "next_item", "full", False): [(100.0, 10.0, 1000, 5000, "some CPU")]}
    monkeypatch.setattr(estimate, "_calibration", lambda: points)
    same = estimate.cell_seconds("sasrec", "conventional", "next_item", "full", False, None)
    larger = estimate.cell_seconds("sasrec", "conventional", "next_item", "full", False, None,
                                   sizes={"train": 50_000, "test": 10_000})
    capped = estimate.cell_seconds("sasrec", "conventional", "next_item", "full", False, 2000,
                                   sizes={"train": 50_000, "test": 10_000})
    assert same == pytest.approx(estimate.PROCESS_S + 100 + 10)
    assert larger == pytest.approx(estimate.PROCESS_S + 1000 + 100)
    assert capped == pytest.approx(estimate.PROCESS_S + 1000 + 20)


def test_peak_memory_is_the_device_plans(monkeypatch):
    """One memory model: the plan's weights and activations, checkpointed for peft LoRA (tallrec) on a
    7B backbone, not for the gated mixtures (ilora), whose gate state lives in the forward."""
    from methods import device_plan

    shape = gpu_cost.shape_of("meta-llama/Llama-2-7b-hf")
    plan = device_plan.plan("cuda", "nf4", shape.parameters, 80.0)
    tokens = round(200 * shape.token_ratio)
    for method, checkpointing in (("tallrec", True), ("ilora", False)):
        cost = _cell(monkeypatch, method=method, quant="nf4", gpu=gpu_cost.Device("h100", 800.0, 3000.0, 80.0, 0.5,
                                                                                 False))
        expected = plan.weights_gib + 4 * plan.activation_bytes(tokens, shape.layers, shape.hidden,
                                                                checkpointing) / 2**30
        assert cost.peak_gib == pytest.approx(expected), method
    assert plan.gradient_checkpointing and plan.weights_gib < 5


@pytest.mark.parametrize("suite, stated", [("paper", 48), ("full", 200)])
def test_the_gpu_suites_llm_cells_fit_their_stated_budget_at_7b(suite, stated):
    """#22's targets: `paper` within 48 and `full` within 200 GPU-hours on one H100 at a 7B backbone,
    every LLM cell estimated. A suite edit that adds cells past the budget fails here."""
    from benchmarks import suite as suites
    from benchmarks.execution import estimate
    from benchmarks.run import apply_overrides, build_parser

    raw = suites.read_suite_file(suites.SUITES_DIR / f"{suite}.yaml")
    parsed = suites.parse(apply_overrides(raw, build_parser().parse_args(["--llm", "meta-llama/Llama-2-7b-hf"])),
                          suite)
    assert parsed.budget.gpu_hours == stated
    cells = suites.cells(parsed)
    seconds, unknown = estimate.total_seconds(cells, parsed, suites.resolve_configs(parsed), family="llm")
    assert unknown == 0
    assert 0.25 * stated < seconds / 3600 <= stated
    line = estimate.describe(cells, parsed, suites.resolve_configs(parsed))
    assert f"is within the suite's stated budget of {stated}" in line


def test_the_budget_check_says_over_when_the_estimate_passes_it():
    from benchmarks.execution import estimate

    stated = SimpleNamespace(budget=SimpleNamespace(gpu_hours=10.0))
    assert "is OVER the suite's stated budget of 10" in estimate.budget_check(11 * 3600, 0, stated)
    assert "is within" in estimate.budget_check(9 * 3600, 0, stated)
    assert "incomplete: 2 cells" in estimate.budget_check(9 * 3600, 2, stated)
    assert estimate.budget_check(9 * 3600, 0, SimpleNamespace(budget=SimpleNamespace(gpu_hours=None))) == ""


def _timed_record(cpu: str, train_s: float) -> dict:
    return {"status": "ok", "device": "cpu", "method": "sasrec", "task": "next_item", "family": "conventional",
            "shots": "full", "tiny": False, "n_train": 1000, "n_eval": 100, "host": {"cpu": cpu},
            "timing": {"train_seconds": train_s, "score_seconds": 0.0}}


@pytest.fixture()
def two_machines(tmp_path, monkeypatch):
    """Committed results with one run folder per CPU model, each one sasrec record."""
    from benchmarks.execution import estimate

    for folder, cpu, train_s in (("amd", "AMD EPYC", 100.0), ("intel", "Intel Xeon", 40.0)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "records.jsonl").write_text(json.dumps(_timed_record(cpu, train_s)) + "\n")
    monkeypatch.setattr(estimate, "RESULTS", tmp_path)
    estimate._calibration.cache_clear()
    yield tmp_path
    estimate._calibration.cache_clear()


def _train_estimate() -> float:
    from benchmarks.execution import estimate

    return estimate.cell_seconds("sasrec", "conventional", "next_item", "full", False, None) - estimate.PROCESS_S


def test_estimates_prefer_records_of_this_machines_cpu_model(two_machines, monkeypatch):
    from benchmarks.execution import estimate

    monkeypatch.setattr(estimate, "_this_cpu", lambda: "Intel Xeon")
    assert _train_estimate() == pytest.approx(40.0)
    monkeypatch.setattr(estimate, "_this_cpu", lambda: "AMD EPYC")
    assert _train_estimate() == pytest.approx(100.0)
    monkeypatch.setattr(estimate, "_this_cpu", lambda: "a third CPU")  # no record of its own: every record
    assert _train_estimate() == pytest.approx(70.0)


def test_a_run_is_checked_against_the_estimate_made_without_its_own_records(two_machines, monkeypatch):
    from benchmarks.execution import estimate

    monkeypatch.setattr(estimate, "_this_cpu", lambda: "Intel Xeon")
    with estimate.calibrated_without(two_machines / "intel"):
        assert _train_estimate() == pytest.approx(100.0)  # the other machine's record is all that is left
    assert _train_estimate() == pytest.approx(40.0)


def test_a_method_that_does_not_train_costs_its_loading_and_scoring_only(monkeypatch):
    trained = _cell(monkeypatch)
    zero_shot = _cell(monkeypatch, trains=False)
    assert zero_shot.parts["train"] == 0 and zero_shot.parts["n_train"] == 0
    assert zero_shot.seconds == pytest.approx(trained.seconds - trained.parts["train"])
    assert zero_shot.peak_gib < trained.peak_gib
    monkeypatch.setattr(gpu_cost, "_tokens", lambda method, task: (0.0, 300.0))  # its records count no training
    assert gpu_cost.llm_cell(**{**_ARGS, "gpu": _GPU, "trains": False}).parts["train"] == 0
