"""The headline table: which family wins per (dataset, task), at what cost, and what it says in words."""
from __future__ import annotations

import pytest

from benchmarks.reporting import verdict
from benchmarks.reporting.stats import Paired, PairedRow


def _row(metric: str, delta: float, p_holm: float | None, n: int = 500) -> PairedRow:
    result = Paired(metric, delta, delta - 0.01, delta + 0.01, 0.5, n, p_holm or 1.0, p_holm)
    return PairedRow("d", "ctr", "best of each", "llm@64", "conv@full", result, ("d", "ctr", "llm", "64"),
                     ("d", "ctr", "conv", "full"))


def test_the_sentence_follows_the_adjusted_p_value_and_the_metric_direction():
    assert verdict.sentence(_row("auc", +0.03, 0.01)) == "LLM better"
    assert verdict.sentence(_row("auc", -0.03, 0.01)) == "conventional better"
    assert verdict.sentence(_row("logloss", +0.03, 0.01)) == "conventional better"  # a higher loss is worse
    assert verdict.sentence(_row("auc", +0.03, 0.2, n=943)) == "no detectable difference at n = 943"
    assert verdict.sentence(_row("auc", +0.03, None)) == "no detectable difference at n = 500"


def _record(seconds: float, encoders=None, family="llm", **timing) -> dict:
    return {"timing": {"train_seconds": seconds, **timing}, "encoders": encoders, "family": family}


def test_an_llm_cells_training_cost_includes_the_encoder_it_loaded():
    sasrec = _record(140.0, [{"model": "SASRec", "origin": "trained", "entry": "SASRec-abc"}], "conventional",
                     latency_p50_ms=1.0, throughput_samples_per_s=5000.0, peak_memory_mb=1600.0)
    ilora = _record(80.0, [{"model": "SASRec", "origin": "loaded", "entry": "SASRec-abc"}],
                    latency_p50_ms=800.0, throughput_samples_per_s=1.5, peak_memory_mb=2000.0)
    groups = {("d", "next_item", "ilora", "64"): [ilora], ("d", "next_item", "sasrec", "full"): [sasrec]}
    row = PairedRow("d", "next_item", "best of each", "ilora@64", "sasrec@full",
                    Paired("hr@1", -0.3, -0.4, -0.2, 0.0, 200, 0.002, 0.002),
                    ("d", "next_item", "ilora", "64"), ("d", "next_item", "sasrec", "full"))
    intervals = {key: {"hr@1": type("I", (), {"estimate": value})()}
                 for key, value in ((row.a_group, 0.05), (row.b_group, 0.35))}
    (v,) = verdict.verdicts([row], groups, intervals)
    assert v.ratios["train time"] == pytest.approx((80.0 + 140.0) / 140.0)
    assert v.ratios["p50 latency"] == pytest.approx(800.0) and v.ratios["peak memory"] == pytest.approx(1.25)
    assert v.values == (0.05, 0.35) and v.seeds == (1, 1) and v.sentence == "conventional better"
    assert verdict.pipeline_train_seconds(ilora, {}) == 80.0  # trained in another run: not known here
    # an LLM cell that trained its own encoder already counts it; another that loads it adds nothing
    own = _record(200.0, [{"model": "DIN", "origin": "trained", "entry": "DIN-x"}])
    assert verdict._trained_encoders({("d", "ctr", "reclora", "64"): [own]}) == {}


def test_the_verdict_comes_first_in_the_terminal_the_markdown_and_the_page(ci_run):
    run_dir, proc = ci_run
    for text in (proc.stdout, (run_dir / "accuracy.md").read_text()):
        assert text.index("## Verdict") < text.index("## Accuracy")
        assert "| movielens-100k | next_item |" in text.split("## Accuracy")[0]
    page = (run_dir / "report.html").read_text()
    assert page.index("Verdict") < page.index("Accuracy")
