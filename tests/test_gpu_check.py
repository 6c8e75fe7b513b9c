"""The GPU check: its FLOP and byte counting on the tiny shape, and the whole device script on CPU."""
import json

import pytest

from benchmarks.perf import gpu_check


def test_tiny_nf4_model_counts():
    pytest.importorskip("bitsandbytes")
    from benchmarks.execution import gpu_cost

    shape = gpu_check.llama_config("tiny")
    model = gpu_check.build_nf4_model("tiny", "cpu")
    d, m, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    per_layer = 4 * d * d + 3 * d * m  # q, k, v, o (no GQA in this shape) + gate, up, down
    # every matmul a token goes through, the output head included; the cost model counts the same
    assert gpu_check.linear_parameters(model) == layers * per_layer + d * shape["vocab_size"]
    cost_shape = gpu_cost.Shape(**gpu_cost.model()["backbones"][gpu_check.SHAPES["tiny"]])
    assert cost_shape.linear_parameters == gpu_check.linear_parameters(model)
    packed = gpu_check.weight_bytes(model)
    embeddings = 2 * shape["vocab_size"] * d * 2  # input + output embeddings stay bf16
    # NF4 stores half a byte per weight plus block statistics: far below bf16's two bytes
    assert packed - embeddings < layers * per_layer * 0.6


def test_qlora_flops_scale_with_tokens_and_parameters():
    base = gpu_check.qlora_step_flops(1_000_000, 100, layers=2, seq=10, width=8)
    assert gpu_check.qlora_step_flops(1_000_000, 200, layers=2, seq=10, width=8) == pytest.approx(2 * base)
    no_attention = gpu_check.qlora_step_flops(1_000_000, 100, layers=0, seq=10, width=8)
    assert no_attention == 4 * 1_000_000 * 100  # forward 2N + activation-gradient backward 2N


def test_tiny_run_end_to_end_on_cpu(tmp_path, capsys):
    """The whole device script on CPU: every step recorded with a status and its time, the keys the GPU
    cost model reads, the suites run on the stand-in tiny Llama, and the ci cells checked against the
    reference (pop's cells are exact arithmetic)."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gpu"
    status = gpu_check.main(["--shape", "tiny", "--device", "cpu", "--out", str(out), "--batch", "2",
                             "--seq", "32", "--prompt-tokens", "16", "--steps", "2",
                             "--suite-methods", "pop,tallrec", "--time-budget", "3600"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert status == 0, report["steps"]
    assert sorted(report["steps"]) == sorted(gpu_check.STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "ok" and step["seconds"] >= 0, name
    # what benchmarks/execution/gpu_cost.py reads from a committed gpu_check.json
    assert report["ceilings"]["bf16_tflops"] > 0 and report["ceilings"]["copy_gbps"] > 0
    assert 0 < report["efficiency"]["train"]["mfu"]
    assert set(report["efficiency"]["goals_met"]) == {"mfu", "score_vs_floor"}
    assert report["installed"] == [] and report["backbone"]["stand_in"]
    ci = report["ci"]
    assert ci["exit_status"] == 0 and ci["cells"] and all(c["status"] == "ok" for c in ci["cells"].values())
    assert {key.split("/")[2] for key in ci["cells"]} == {"pop", "tallrec"}
    check = ci["reference_check"]
    assert check["within_tolerance"] and check["compared_cells"] == 2  # pop on ctr and next_item
    assert all(reason == "llm cell on the stand-in backbone" for key, reason in check["left_out"].items()
               if key.split("/")[2] == "tallrec")
    smoke = report["gpu_smoke"]
    assert smoke["exit_status"] == 0 and list(smoke["cells"]) == ["movielens-100k/ctr/tallrec/seed=1/shots=16"]
    for folder in ("ci", "gpu-smoke"):
        table = (out / folder / "accuracy.md").read_text()
        assert table.startswith("> backbone: random-weight tiny Llama") and (out / folder / "latency.md").exists()
    assert "random-weight tiny Llama" in capsys.readouterr().out
    assert not list(out.glob("*/records.jsonl"))  # run folders stay under runs/, out of results/gpu/<kind>/


def test_missing_wheel_is_one_line_and_skips_what_needs_it(tmp_path, capsys, monkeypatch):
    real = gpu_check.importable
    monkeypatch.setattr(gpu_check, "importable", lambda name: name != "bitsandbytes" and real(name))
    out = tmp_path / "gpu"
    status = gpu_check.main(["--shape", "tiny", "--device", "cpu", "--out", str(out),
                             "--wheels", str(tmp_path / "no-such-folder")])
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[wheels]")]
    assert said == [f"[wheels] bitsandbytes is not installed and there is no wheel folder "
                    f"({tmp_path / 'no-such-folder'} does not exist); the steps that need it are skipped"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert status == 1 and report["wheels"]["missing"] == ["bitsandbytes"] and report["installed"] == []
    steps = report["steps"]
    assert [steps[name]["status"] for name in gpu_check.STEPS] == ["ok", "ok", "ok", "skipped", "skipped", "skipped"]
    assert "needs bitsandbytes" in steps["efficiency"]["reason"]
    assert "ceilings" in report and "efficiency" not in report


def test_a_folder_without_the_wheel_is_one_line(tmp_path, capsys):
    result = gpu_check.install_wheels(tmp_path, names=("llmrec-bench-no-such-package",))
    (line,) = capsys.readouterr().out.splitlines()
    assert result["missing"] == ["llmrec-bench-no-such-package"] and result["installed"] == []
    assert line.startswith(f"[wheels] llmrec-bench-no-such-package is not installed and {tmp_path} has no wheel")
    assert "No matching distribution" in line and line.endswith("the steps that need it are skipped")


def test_time_budget_skips_steps_whose_estimate_does_not_fit(tmp_path):
    out = tmp_path / "gpu"
    status = gpu_check.main(["--shape", "tiny", "--device", "cpu", "--out", str(out), "--time-budget", "20"])
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert status == 1
    assert steps["ceilings"]["status"] == "ok"  # its 15 s estimate fits 20 s
    for name in ("efficiency", "ci", "gpu-smoke"):
        assert steps[name]["status"] == "skipped" and "does not fit" in steps[name]["reason"], name
