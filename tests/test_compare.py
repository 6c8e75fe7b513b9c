"""``python -m benchmarks.compare``: matching, tolerances, refusals and exit status, on hand-made run folders
and on the session's real ``ci`` run with a planted change."""
import copy
import json
import shutil

from benchmarks import compare, metrics, records

CTR_CELL = "movielens-100k/ctr/pop/seed=1/shots=full"
NEXT_CELL = "movielens-100k/next_item/pop/seed=1/shots=full"


def _record(cell: str, metrics: dict, **overrides) -> dict:
    dataset, task, method, seed, shots = cell.split("/")
    record = {
        "cell": cell, "dataset": dataset, "task": task, "method": method, "seed": int(seed.split("=")[1]),
        "shots": shots.split("=")[1], "status": "ok", "family": "reference", "tiny": True,
        "protocol_hash": f"hash-{task}", "protocol_params": {"history_len": 10},
        "dataset_sha256": {"ml-100k.inter": "aaa"}, "method_config": {"shrinkage": 10.0},
        "method_config_hash": f"config-{method}", "metrics": metrics,
        "timing": {"latency_p50_ms": 1.0, "throughput_samples_per_s": 100.0, "train_seconds": 2.0,
                   "peak_memory_mb": 200.0},
    }
    record.update(overrides)
    return record


def _base() -> list[dict]:
    return [_record(CTR_CELL, {"auc": 0.70, "logloss": 0.60, "accuracy": 0.65}),
            _record(NEXT_CELL, {"hr@1": 0.20, "valid_ratio": 1.0})]


def _write(folder, recs):
    folder.mkdir()
    for record in recs:
        records.append(folder / "records.jsonl", record)
    return folder


def _run(tmp_path, a, b, *args):
    code = compare.main([str(_write(tmp_path / "a", a)), str(_write(tmp_path / "b", b)), *args])
    return code


def test_identical_runs_pass(tmp_path, capsys):
    assert _run(tmp_path, _base(), _base()) == 0
    out = capsys.readouterr().out
    assert "2 cells compared" in out and "OK: no accuracy regression" in out and "REGRESSION" not in out


def test_a_worse_metric_beyond_tolerance_fails_naming_the_cell(tmp_path, capsys):
    b = _base()
    b[0]["metrics"]["auc"] = 0.65
    assert _run(tmp_path, _base(), b) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("REGRESSION")]
    assert lines == [f"REGRESSION {CTR_CELL}: auc 0.7 -> 0.65 (tolerance 1e-09)"]


def test_direction_follows_the_metric(tmp_path, capsys):
    b = _base()
    b[0]["metrics"]["logloss"] = 0.50      # lower loss: an improvement
    b[0]["metrics"]["accuracy"] = 0.70     # higher accuracy: an improvement
    assert _run(tmp_path, _base(), b) == 0
    assert capsys.readouterr().out.count("improved") == 2
    b2 = _base()
    b2[0]["metrics"]["logloss"] = 0.70
    assert compare.compare_runs(tmp_path / "a", _write(tmp_path / "b2", b2)).regressions == [
        f"{CTR_CELL}: logloss 0.6 -> 0.7 (tolerance 1e-09)"]


def test_tolerance_is_per_family_or_given(tmp_path):
    b = _base()
    b[1]["metrics"]["hr@1"] = 0.19
    assert _run(tmp_path, _base(), b, "--metric-tol", "0.02") == 0
    conventional_a, conventional_b = _base(), copy.deepcopy(b)
    for record in conventional_a + conventional_b:
        record["family"] = "conventional"          # its tolerance in benchmarks.reference is 0.03
    out = compare.compare_runs(_write(tmp_path / "ca", conventional_a), _write(tmp_path / "cb", conventional_b))
    assert out.regressions == [] and out.compared == 2


def test_metric_change_flags_nan_and_lost_metrics():
    assert compare.metric_change("auc", 0.7, float("nan"), 0.01)[1] == "REGRESSION"
    assert compare.metric_change("auc", 0.7, None, 0.01)[1] == "REGRESSION"
    assert compare.metric_change("auc", None, 0.7, 0.01)[1] == "new in B"
    assert compare.metric_change("auc", float("nan"), float("nan"), 0.01)[1] == ""


def test_different_protocol_hashes_are_refused_with_the_reason(tmp_path, capsys):
    b = _base()
    b[0].update(protocol_hash="hash-other", protocol_params={"history_len": 12})
    assert _run(tmp_path, _base(), b) == 2
    out = capsys.readouterr().out
    refused = [line for line in out.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1 and CTR_CELL in refused[0]
    assert "protocol hash differs" in refused[0] and "history_len: 10 -> 12" in refused[0]
    assert "1 cells compared" in out


def test_refusal_names_changed_source_files_or_a_changed_split(tmp_path):
    files, split = _base(), _base()
    files[0].update(protocol_hash="h2", dataset_sha256={"ml-100k.inter": "bbb"})
    split[0].update(protocol_hash="h3")
    a = _write(tmp_path / "a", _base())
    (by_files,) = compare.compare_runs(a, _write(tmp_path / "files", files)).refused
    (by_split,) = compare.compare_runs(a, _write(tmp_path / "split", split)).refused
    assert "source file ml-100k.inter: aaa -> bbb" in by_files
    assert "split's content changed" in by_split


def test_changed_method_config_is_not_compared(tmp_path):
    b = _base()
    b[0].update(method_config_hash="config-new", method_config={"shrinkage": 5.0})
    b[0]["metrics"]["auc"] = 0.1
    out = compare.compare_runs(_write(tmp_path / "a", _base()), _write(tmp_path / "b", b))
    assert out.regressions == [] and out.compared == 1
    assert any("method config changed (shrinkage: 10.0 -> 5.0)" in note for note in out.notes)


def test_a_cell_failing_in_b_is_a_regression(tmp_path):
    b = _base()
    b[1].update(status="failed", error={"type": "RuntimeError", "message": "boom"})
    out = compare.compare_runs(_write(tmp_path / "a", _base()), _write(tmp_path / "b", b))
    assert out.regressions == [f"{NEXT_CELL}: finished in A, failed in B (RuntimeError)"]


def test_latency_is_flagged_but_never_fails(tmp_path, capsys):
    b = _base()
    b[0]["timing"]["latency_p50_ms"] = 3.0
    assert _run(tmp_path, _base(), b) == 0
    assert "beyond tolerance: latency_p50_ms" in capsys.readouterr().out


def test_not_a_run_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert compare.main([str(tmp_path), str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a run folder (no records.jsonl)"


def test_real_ci_run_against_itself_and_with_a_planted_change(ci_run, tmp_path, capsys):
    run_dir, _ = ci_run
    same = tmp_path / "same"
    shutil.copytree(run_dir, same)
    assert compare.main([str(run_dir), str(same)]) == 0
    # plant a change in one method's output: pop's ctr scores become the opposite of every label
    planted = tmp_path / "planted"
    shutil.copytree(run_dir, planted)
    recs = records.read(planted / "records.jsonl")
    target = next(r for r in recs if r["task"] == "ctr" and r["method"] == "pop" and r["status"] == "ok")
    scores = records.load_scores(planted, target["cell"])
    wrong = 1.0 - scores["label"].astype(float)
    records.save_scores(planted, target["cell"], scores["sample_id"], scores["label"], wrong)
    target["metrics"] = metrics.compute("ctr", scores["label"], wrong)
    (planted / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    capsys.readouterr()
    assert compare.main([str(run_dir), str(planted)]) == 1
    out = capsys.readouterr().out
    regressions = [line for line in out.splitlines() if line.startswith("REGRESSION")]
    assert {line.split(": ")[1].split()[0] for line in regressions} == {"auc", "logloss", "accuracy"}
    assert all(line.startswith(f"REGRESSION {target['cell']}: ") for line in regressions)
    auc_row = next(line for line in out.splitlines() if line.startswith(f"| {target['cell']}") and "| auc" in line)
    assert float(auc_row.split("|")[7]) == 0.0   # paired bootstrap on the saved scores: B never better


def test_another_machine_and_a_significant_move_within_tolerance_are_warned_about(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 2000)
    before = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.3, 2000), 0, 1)
    after = np.clip(before + 0.04 * labels, 0, 1)  # every positive a little higher: a small, consistent gain
    cell = "movielens-100k/ctr/tallrec/seed=1/shots=16"
    folders = []
    for name, scores, cpu in (("a", before, "One CPU"), ("b", after, "Another CPU")):
        folder = _write(tmp_path / name, [_record(cell, metrics.compute("ctr", labels, scores), family="llm")])
        records.save_scores(folder, cell, np.arange(2000), labels, scores)
        (folder / "env.json").write_text(json.dumps({"cpu": cpu, "packages": {"torch": cpu}}))
        folders.append(str(folder))
    delta = metrics.compute("ctr", labels, after)["auc"] - metrics.compute("ctr", labels, before)["auc"]
    assert 0 < delta < 0.06  # within the LLM tolerance
    assert compare.main(folders) == 0  # warnings do not fail the check
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert any("CPU model: One CPU -> Another CPU" in w and "library torch:" in w for w in warnings), warnings
    assert any(w.startswith(f"WARNING {cell}: auc moved") and "significant" in w for w in warnings), warnings
