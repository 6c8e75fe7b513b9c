"""End-to-end behaviour of the harness on the ci suite (one shared run), the CLI, and the suite schema."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings

import pytest
import yaml

from benchmarks import reference
from benchmarks import suite as suite_schema
from tests.conftest import ROOT, only_run_dir, read_records, run_suite


def test_every_ci_cell_finished(ci_records):
    failed = {r["cell"]: r["error"] for r in ci_records if r["status"] != "ok"}
    assert not failed
    keys = [r["cell"] for r in ci_records]
    assert len(keys) == len(set(keys))


def test_ci_run_matches_the_regression_reference(ci_run):
    pinned = json.loads(reference.REFERENCE.read_text())
    problems = reference.check(ci_run[0], pinned)
    assert not problems, "\n".join(problems)
    # the reference covers every cell the suite runs, so a new method cannot slip in unpinned
    assert set(pinned["cells"]) == {r["cell"] for r in read_records(ci_run[0])}


def test_methods_on_one_protocol_see_the_same_samples(ci_records):
    by_task: dict[str, set] = {}
    for r in ci_records:
        by_task.setdefault(r["task"], set()).add((r["protocol_hash"], r["n_eval"]))
    assert all(len(v) == 1 for v in by_task.values()), by_task


def test_records_carry_what_reproduces_them(ci_records):
    for r in ci_records:
        assert len(r["protocol_hash"]) == 64 and len(r["method_config_hash"]) == 64
        assert r["dataset_sha256"] and all(len(v) == 64 for v in r["dataset_sha256"].values())
        t = r["timing"]
        assert t["train_seconds"] >= 0 and t["latency_p50_ms"] > 0 and t["peak_memory_mb"] > 0
        assert t["latency_p95_ms"] >= t["latency_p50_ms"]
        assert 0 < t["fit_peak_memory_mb"] <= t["score_peak_memory_mb"] <= t["peak_memory_mb"]  # CPU: cumulative
        assert r["isolation"]["mechanism"] == "landlock" and r["batch_check"]["samples"] >= 1
        assert r["provenance"]["kind"] == "in-tree" and len(r["provenance"]["sha256"]) == 64
        assert r["data_quality"]["lines_read"] > 0
        assert r["host"]["cpu_affinity"] >= 1 and r["host"]["load_1m"] >= 0
        if r["family"] != "reference":  # these load torch: its threads and kernels are on record
            assert r["host"]["torch_threads"] >= 1 and r["host"]["cpu_capability"]
        if r["parameters"] is not None:
            assert len(r["parameters"]["sha256"]) == 64
        if r["family"] == "llm":  # padded batches: counted per phase, tokens within the slots computed
            for phase in ("fit", "score") if r["n_train"] else ("score",):
                pad = r["padding"][phase]
                assert 0 < pad["tokens"] <= pad["slots"] and pad["waste"] == round(1 - pad["tokens"] / pad["slots"], 4)
        else:
            assert r["padding"] is None, "nothing is padded outside the LLM methods"


def test_records_say_which_encoder_a_cell_trained_and_which_it_loaded(ci_records, ci_run):
    cells = {r["method"]: r for r in ci_records if r["task"] == "next_item"}
    (stored,) = cells["sasrec"]["encoders"]  # a conventional cell always trains, and stores what an encoder can reuse
    assert stored["model"] == "SASRec" and stored["origin"] == "trained" and stored["entry"].startswith("SASRec-")
    for method in ("ilora", "lora-seq"):  # their frozen SASRec is that cell's model: loaded, not trained again
        assert cells[method]["encoders"] == [{**stored, "origin": "loaded"}], method
    assert cells["pop"]["encoders"] is None and cells["itemknn"]["encoders"] is None
    rows = {line.split("|")[3].strip(): line.split("|")[5].strip()  # method -> train s
            for line in (ci_run[0] / "latency.md").read_text().splitlines() if "| next_item |" in line}
    assert rows["ilora"].endswith("*") and not rows["sasrec"].endswith("*")


def test_padding_phase_counts_only_what_was_added_between_two_readings():
    from benchmarks.execution import padding

    start = padding.totals()
    assert padding.phase(start, padding.totals()) is None
    padding.count(6, 8)
    padding.count(3, 4)
    assert padding.phase(start, padding.totals()) == {"tokens": 9, "slots": 12, "waste": 0.25}


def test_parameter_digest_sees_one_ulp_and_counts_what_trained():
    """The weights digest behind ``parameters.sha256``: equal for equal weights, different after a
    one-ulp change anywhere; ``trainable`` defaults to the parameters with ``requires_grad``."""
    import torch

    from benchmarks.contract import count_parameters

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    copy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    copy.load_state_dict(model.state_dict())
    counts = count_parameters(model.parameters())
    assert (counts.trainable, counts.total) == (3 * 2 + 2, 4 * 3 + 3 + 3 * 2 + 2)
    assert count_parameters(copy.parameters()).sha256 == counts.sha256
    with torch.no_grad():
        copy[0].bias[1] = torch.nextafter(copy[0].bias[1], torch.tensor(float("inf")))
    assert count_parameters(copy.parameters()).sha256 != counts.sha256
    assert count_parameters(model.parameters(), digest=False).sha256 is None
    assert count_parameters(model.parameters(), trainable=[]).trainable == 0


def test_run_folder_has_tables_and_prints_them(ci_run):
    run_dir, proc = ci_run
    for name in ("records.jsonl", "accuracy.md", "latency.md", "summary.csv", "env.json", "suite.json"):
        assert (run_dir / name).exists(), name
    assert "## Accuracy" in proc.stdout and "## Latency" in proc.stdout
    assert "eval_cap=" in (run_dir / "accuracy.md").read_text()  # caps are stated above the tables
    rows = list(csv.DictReader(open(run_dir / "summary.csv")))
    methods = {r["method"] for r in read_records(run_dir)}
    assert {r["method"] for r in rows} == methods
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["numpy"] and env["python"]


def test_every_record_carries_a_passed_audit_and_the_report_shows_it(ci_records, ci_run):
    run_dir, proc = ci_run
    for r in ci_records:
        assert r["audit"]["passed"] is True and r["audit"]["protocol"]["version"] >= 1
        checks = r["audit"]["protocol"]["checks"]
        assert checks and all(c["count"] == 0 and c["checked"] > 0 for c in checks.values())
        assert ("candidate_position" in r["audit"]["protocol"]) == (r["task"] == "next_item")
        assert (r["audit"]["few_shot"] is not None) == (r["shots"] != "full")
    text = (run_dir / "accuracy.md").read_text()
    audit_part = text[text.index("## Protocol audit"):]
    for name in {n for r in ci_records for n in r["audit"]["protocol"]["checks"]} | {"few_shot_nested"}:
        assert f"| {name} " in audit_part, name
    assert "target position among the candidates" in audit_part and "AUDIT FAILED" not in proc.stdout
    assert "<h2>Protocol audit</h2>" in (run_dir / "report.html").read_text()


def test_llm_records_carry_the_prompt_order_and_memorization_audits(ci_records, ci_run):
    run_dir, _ = ci_run
    llm = [r for r in ci_records if r["family"] == "llm"]
    assert {r["task"] for r in llm} == {"ctr", "next_item"}
    for r in ci_records:
        prompts = r["audit"].get("prompts")
        if r["family"] != "llm":
            assert prompts is None and r["order_probe"] is None
            continue
        # every training prompt and every scored prompt was checked (validation renders more)
        assert prompts["passed"] and prompts["prompts"] >= r["n_train"] + r["n_eval"]
        assert all(c["count"] == 0 for c in prompts["checks"].values()) and "answer_changes_prompt" in prompts["checks"]
        assert ("candidate_list_not_once" in prompts["checks"]) == (r["task"] == "next_item")
        memorization = r["backbone"]["memorization"]
        assert memorization["dataset"] == r["dataset"] and memorization["backbone"] == r["backbone"]["id"]
        assert 0.0 <= memorization["exact"]["rate"] <= memorization["normalized"]["rate"] <= 1.0
        assert memorization["n_items"] >= 500 and r["timing"]["memorization_seconds"] is not None
        probe = r["order_probe"]
        if r["task"] == "ctr":
            assert probe is None
            continue
        assert probe["samples"] == min(r["budget"]["order_probe_samples"], r["n_eval"])
        assert r["timing"]["order_probe_seconds"] > 0
        for ordering in ("reversed", "shuffled"):
            low, high = probe[ordering]["delta_interval"]
            assert 0.0 <= probe[ordering]["top1_changed"] <= 1.0 and low <= probe[ordering]["delta_hr@1"] <= high
    accuracy = (run_dir / "accuracy.md").read_text()
    assert "backbone memorized" in accuracy.split("## Protocol audit")[0]
    audit_part = accuracy.split("## Protocol audit")[1]
    for title in ("order sensitivity of LLM next_item methods", "backbone memorization of the dataset",
                  "prompts of ilora", "prompts of tallrec"):
        assert title in audit_part, title


def test_a_failed_audit_is_the_first_line_of_the_report(ci_run, tmp_path):
    import shutil

    from benchmarks import records
    from benchmarks.reporting.report import write_reports

    run_dir = tmp_path / "run"
    shutil.copytree(ci_run[0], run_dir)
    leaked = json.loads((run_dir / "records.jsonl").read_text().splitlines()[0])
    check = next(iter(leaked["audit"]["protocol"]["checks"]))
    leaked["audit"]["protocol"]["checks"][check].update(count=3, example={"split": "test", "sample_id": 7})
    leaked["audit"]["protocol"]["passed"] = leaked["audit"]["passed"] = False
    leaked.update(status="failed", metrics={}, error={"type": "ProtocolAuditError", "traceback": "",
                                                      "message": f"protocol audit failed: {check}: 3 of 9 samples"})
    records.append(run_dir / "records.jsonl", leaked)
    text = write_reports(run_dir)
    assert text.splitlines()[0].startswith(f"**PROTOCOL AUDIT FAILED (2): {leaked['cell']}: protocol audit failed: ")
    assert (run_dir / "accuracy.md").read_text().splitlines()[0] == text.splitlines()[0]
    assert f"| {check} " in text and "| 3 / " in text and "test sample_id 7" in text
    assert "PROTOCOL AUDIT FAILED" in (run_dir / "report.html").read_text()
    prompted = next(json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()
                    if json.loads(line)["family"] == "llm")
    prompted.update(status="failed", metrics={}, error={"type": "PromptLeakError", "traceback": "", "message":
                                                        "answer in prompt: answer_changes_prompt: 16 of 16 prompts"})
    records.append(run_dir / "records.jsonl", prompted)
    first = write_reports(run_dir).splitlines()[0]
    assert first.startswith("**PROTOCOL AUDIT FAILED (3): ") and "answer in prompt: answer_changes_prompt" in first


#: Metrics of trained models may move in the last float32 bits between reruns on CPU: reclora's ci
#: LogLoss once moved by 1.1e-7 and DeepFM's by 2.9e-8 (cause not pinned down: README, "Determinism").
#: The issue's bound for LLM methods, applied to every trained model. Every other field, and every metric
#: of the reference methods (exact arithmetic), must be equal.
RERUN_TOLERANCE = 1e-6


def test_rerun_gives_identical_records(ci_run, tmp_path):
    """Determinism: the same suite and seeds give the same records (everything but timing): metrics
    within ``RERUN_TOLERANCE`` for trained models, everything else equal."""
    run_suite("--suite", "ci", out=tmp_path)
    # encoders: the rerun loads the frozen DIN the first run stored (origin "loaded" instead of "trained")
    volatile = {"timing", "host", "started_at", "finished_at", "run_id", "encoders"}
    first = {r["cell"]: {k: v for k, v in r.items() if k not in volatile} for r in read_records(ci_run[0])}
    second = {r["cell"]: {k: v for k, v in r.items() if k not in volatile}
              for r in read_records(only_run_dir(tmp_path))}
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key], second[key]
        if a["family"] != "reference":
            assert a["metrics"].keys() == b["metrics"].keys(), key
            for name, value in a["metrics"].items():
                assert abs(value - b["metrics"][name]) <= RERUN_TOLERANCE, (key, name, value, b["metrics"][name])
            weights = [(r["parameters"] or {}).pop("sha256", None) for r in (a, b)]
            # the batch check's largest one-by-one vs batched difference is a measurement of the same
            # numerics as the metrics: when they drift it moves too (a frozen encoder trained by another
            # cell of the run carries a drift into the cell that loads it); it must stay within tolerance
            checks = [dict(r["batch_check"] or {}) for r in (a, b)]
            diffs = [check.pop("max_abs_diff", None) for check in checks]
            assert checks[0] == checks[1], key
            assert all(d is None or d <= check.get("tolerance", 0) for d, check in zip(diffs, checks)), (key, diffs)
            if a["metrics"] != b["metrics"] or weights[0] != weights[1] or diffs[0] != diffs[1]:  # leave a trace
                warnings.warn(f"{key}: a rerun drifted: metrics {a['metrics']} against {b['metrics']}, batch check "
                              f"{diffs[0]} against {diffs[1]}; trained weights "
                              f"{'identical' if weights[0] == weights[1] else 'differ'}", stacklevel=1)
            a, b = ({k: v for k, v in r.items() if k not in ("metrics", "batch_check")} for r in (a, b))
        assert a == b, key


# ----------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args, fragment", [
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--methods", "popp"], "Did you mean pop"),
    (["--datasets", "movielens-10k"], "unknown dataset"),
    (["--seeds", "a,b"], "--seeds"),
    (["--shots", "16,0"], "--shots"),
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_mistakes_exit_2_with_one_line(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started


def test_shots_flag_replaces_the_sizes_of_methods_that_train():
    dry = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods",
                          "tallrec,deepfm,zeroshot-llm", "--shots", "8,full", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    cells = {line.split()[0] for line in dry.splitlines() if line.startswith("movielens-100k/")}
    assert cells == {f"movielens-100k/ctr/{m}/seed=1/shots={s}" for m in ("tallrec", "deepfm") for s in (8, "full")} | {
        "movielens-100k/ctr/zeroshot-llm/seed=1/shots=full", "movielens-100k/next_item/zeroshot-llm/seed=1/shots=full"}


def test_list_and_dry_run():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--list"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "movielens-100k" in out and "pop" in out and "quick" in out
    dry = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "movielens-100k/next_item/pop/seed=1/shots=full" in dry


def _ci_raw() -> dict:
    return yaml.safe_load((suite_schema.SUITES_DIR / "ci.yaml").read_text())


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.update(epochs=3), "unknown key(s) ['epochs']"),
    (lambda r: r["budget"].update(eval_cap="lots"), "budget.eval_cap"),
    (lambda r: r["budget"].update(batchsize=3), "budget: unknown key(s) ['batchsize']"),
    (lambda r: r.update(seeds=[1, "two"]), "seeds[1]"),
    (lambda r: r["methods"].update(pop={"shots": [0]}), "methods.pop.shots"),
    (lambda r: r["methods"].update(pop={"confg": {}}), "methods.pop: unknown key(s) ['confg']"),
    (lambda r: r["datasets"][0].update(protocols=["ctr", "clicks"]), "unknown protocol 'clicks'"),
    (lambda r: r.update(family_defaults={"llms": {"shots": [8]}}), "family_defaults: unknown family 'llms'"),
    (lambda r: r.update(family_defaults={"llm": {"shot": [8]}}), "family_defaults.llm: unknown key(s) ['shot']"),
])
def test_bad_suite_files_fail_naming_the_key(mutate, fragment):
    raw = _ci_raw()
    mutate(raw)
    with pytest.raises(suite_schema.SuiteError) as err:
        suite_schema.parse(raw, "ci.yaml")
    assert fragment in str(err.value)


def test_family_defaults_fill_what_a_method_entry_leaves_out():
    raw = _ci_raw()
    raw["family_defaults"] = {"llm": {"shots": [8, 32]}}
    raw["methods"] = {"pop": {}, "lora-seq": {}, "tallrec": {"shots": [16]}, "reclora": {"config": {"meta_loras": 2}},
                      "zeroshot-llm": {}}
    suite = suite_schema.parse(raw, "ci.yaml")
    assert suite.methods["pop"].shots == ("full",)              # another family: untouched
    assert suite.methods["lora-seq"].shots == (8, 32)           # not set: the family's
    assert suite.methods["tallrec"].shots == (16,)              # set: its own wins
    assert suite.methods["reclora"].shots == (8, 32) and suite.methods["reclora"].config == {"meta_loras": 2}
    assert suite.methods["zeroshot-llm"].shots == ("full",)     # trains nothing: shots do not apply


def test_every_shipped_suite_is_valid_and_expands():
    """Every suite file loads and gives each method it lists at least one cell (a method listed on a
    protocol it has no task for would silently run nothing)."""
    for name in suite_schema.known_suites():
        suite = suite_schema.load_suite(name)
        assert suite.name == name
        assert {c.method for c in suite_schema.cells(suite)} == set(suite.methods), name


def test_methods_that_learn_nothing_run_one_seed_the_others_every_seed():
    suite = suite_schema.parse({"name": "s", "version": 1, "description": "", "datasets": ["movielens-100k"],
                                "methods": ["pop", "random", "zeroshot-llm"], "seeds": [4, 5, 6]}, "test")
    seeds: dict[tuple, list[int]] = {}
    for cell in suite_schema.cells(suite):
        seeds.setdefault((cell.task, cell.method), []).append(cell.seed)
    assert seeds[("ctr", "pop")] == [4, 5, 6] and seeds[("next_item", "pop")] == [4, 5, 6]
    assert seeds[("ctr", "random")] == [4] and seeds[("next_item", "zeroshot-llm")] == [4]


def test_progress_reports_are_throttled_within_a_phase_and_read_back_as_text(tmp_path, monkeypatch):
    from benchmarks.execution import progress

    path = tmp_path / "cell.progress"
    assert progress.read(path) == ""
    progress.write_to(path)
    try:
        progress.report("fit: step", 1, 8)
        progress.report("fit: step", 2, 8)  # within MIN_INTERVAL_S of the last write: not written
        assert progress.read(path) == "fit: step 1/8"
        progress.report("fit: step", 8, 8)  # the last step is always written
        assert progress.read(path) == "fit: step 8/8"
        progress.report("scoring: batch", 0, 3)  # a new phase is always written
        assert progress.read(path) == "scoring: batch 0/3"
    finally:
        progress.write_to(None)


def test_the_runs_eta_is_the_estimate_of_the_cells_left_scaled_by_the_finished_cells():
    from benchmarks.execution.progress import EstimatedEta

    eta = EstimatedEta({"a": 100.0, "b": 1000.0, "c": None, "d": 10.0})  # c counts as the median, 100
    assert eta.remaining_s() == pytest.approx(1210.0)
    eta.finished("a", 50.0)  # twice as fast as estimated
    assert eta.factor == pytest.approx(0.5)
    assert eta.remaining_s() == pytest.approx(0.5 * 1110.0)
    assert eta.remaining_s(running_for=100.0) == pytest.approx(0.5 * 1110.0 - 100.0)
    eta.finished("b", 1450.0)  # sums, so the long cell weighs most: 1500 / 1100
    assert eta.factor == pytest.approx(1500.0 / 1100.0)
    assert eta.text().startswith("about 2 min left")  # 110 x 1.364 = 150 s
    eta.finished("c", None)  # no wall time: left out of the factor
    assert eta.factor == pytest.approx(1500.0 / 1100.0)
    eta.finished("d", 10.0)
    assert eta.remaining_s() == 0.0


def test_the_console_shows_the_running_cells_phase(ci_run):
    console = ci_run[1].stderr
    assert "/tallrec/seed=1/shots=16: fit" in console and "/tallrec/seed=1/shots=16: scoring: batch" in console
    assert "left (estimate x " in console
