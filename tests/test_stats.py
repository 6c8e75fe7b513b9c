"""Statistics against independent computations: expanded resamples scored by scikit-learn, the normal
approximation of a proportion's interval, and independent (unpaired) resampling."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from benchmarks import records
from benchmarks.reporting import stats


def test_mean_std_matches_numpy_and_hides_single_seed_std():
    values = [0.61, 0.64, 0.70]
    mean, std = stats.mean_std(values + [None])
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert stats.mean_std([0.5]) == (0.5, None)


def test_resample_counts_are_deterministic_bootstrap_draws():
    counts = stats.resample_counts(50, 200, 3)
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all() and (counts >= 0).all()
    assert np.array_equal(counts, stats.resample_counts(50, 200, 3))
    assert not np.array_equal(counts, stats.resample_counts(50, 200, 4))
    # each sample is drawn n times with probability 1/n per draw: mean count 1, variance (n-1)/n
    assert counts.mean() == pytest.approx(1.0)
    assert counts.var() == pytest.approx(49 / 50, rel=0.1)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_auc_equals_auc_of_the_expanded_resample(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120)
    scores = np.round(rng.random(120), 1)  # many ties
    counts = stats.resample_counts(120, 8, seed).astype(int)
    got = stats.weighted_auc(labels, scores, counts)
    for b in range(8):
        expected = roc_auc_score(np.repeat(labels, counts[b]), np.repeat(scores, counts[b]))
        assert got[b] == pytest.approx(expected, abs=1e-12)


def test_weighted_mean_metric_equals_metric_of_the_expanded_resample():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 90)
    scores = rng.random(90)
    counts = stats.resample_counts(90, 5, 1).astype(int)
    got = stats.weighted_metric("logloss", labels, scores, counts)
    for b in range(5):
        expected = log_loss(np.repeat(labels, counts[b]), np.repeat(scores, counts[b]), labels=[0, 1])
        assert got[b] == pytest.approx(expected, rel=1e-9)


def test_single_class_resamples_are_skipped_for_auc():
    labels = np.array([1, 0, 0, 0, 0])
    interval = stats.bootstrap_interval("auc", labels, [np.array([0.9, 0.1, 0.2, 0.3, 0.4])])
    # P(the positive is never drawn in 5 draws) = (4/5)^5 ~ 0.33, and the all-positive case is rarer
    assert 550 < interval.resamples < 750
    assert interval.estimate == 1.0 and interval.low == interval.high == 1.0


def test_proportion_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(11)
    n = 2000
    labels = rng.integers(0, 2, n)
    scores = np.where(rng.random(n) < 0.7, labels, 1 - labels).astype(float)  # ~70% correct
    interval = stats.bootstrap_interval("accuracy", labels, [scores])
    p = interval.estimate
    half_width = 1.959964 * np.sqrt(p * (1 - p) / n)
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.12)
    assert interval.low < p < interval.high


def test_interval_width_shrinks_with_n():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 1600):
        labels = rng.integers(0, 2, n)
        scores = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
        interval = stats.bootstrap_interval("auc", labels, [scores])
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2.5   # 1/sqrt(16) = 1/4 in theory


def test_interval_of_several_seeds_is_around_their_mean():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 20, 300)
    runs = [rng.random((300, 20)) for _ in range(3)]
    for row, target in enumerate(labels):
        runs[0][row, target] += 0.5   # seed 1 is good, the others random
    interval = stats.bootstrap_interval("hr@1", labels, runs)
    single = [np.mean(np.argmax(r, axis=1) == labels) for r in runs]
    assert interval.estimate == pytest.approx(np.mean(single))
    assert interval.low < np.mean(single) < interval.high


def test_paired_bootstrap_of_identical_inputs_shows_no_difference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    scores = rng.random(100)
    result = stats.paired_bootstrap("auc", labels, [scores], [scores.copy()])
    assert result.delta == 0 and result.low == 0 and result.high == 0
    assert result.p_a_better == 0.5


@pytest.mark.parametrize("metric", ["auc", "logloss"])
def test_paired_bootstrap_finds_a_clearly_better_method_in_the_metric_direction(metric):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    good = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.15, 200), 0.01, 0.99)
    noise = rng.random(200)
    better = stats.paired_bootstrap(metric, labels, [good], [noise])
    worse = stats.paired_bootstrap(metric, labels, [noise], [good])
    assert better.p_a_better > 0.99 and worse.p_a_better < 0.01
    if metric == "auc":
        assert better.low > 0
    else:  # lower is better: A's loss is smaller, so A - B is negative
        assert better.high < 0


def test_pairing_narrows_the_interval_of_a_difference_between_correlated_methods():
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.integers(0, 2, n)
    a = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, n), 0, 1)
    b = np.clip(a + rng.normal(0, 0.02, n), 0, 1)       # B is A plus a little noise
    paired = stats.paired_bootstrap("auc", labels, [a], [b])
    # unpaired: A and B resampled independently (different seeds), computed here from the counts
    ca, cb = stats.resample_counts(n, 1000, 1), stats.resample_counts(n, 1000, 2)
    unpaired = stats.weighted_auc(labels, a, ca) - stats.weighted_auc(labels, b, cb)
    unpaired_width = np.subtract(*np.percentile(unpaired, [97.5, 2.5]))
    assert paired.high - paired.low < unpaired_width / 5


def _save(run_dir, cell, ids, labels, scores):
    records.save_scores(run_dir, cell, np.asarray(ids), np.asarray(labels), np.asarray(scores))


def test_load_group_aligns_seeds_on_sample_id(tmp_path):
    _save(tmp_path, "d/ctr/m/seed=1/shots=full", [3, 1, 2, 0], [1, 0, 1, 0], [0.3, 0.1, 0.2, 0.0])
    _save(tmp_path, "d/ctr/m/seed=2/shots=full", [0, 1, 2, 3, 9], [0, 0, 1, 1, 1], [1.0, 1.1, 1.2, 1.3, 1.9])
    group = stats.load_group(tmp_path, [{"cell": "d/ctr/m/seed=1/shots=full"}, {"cell": "d/ctr/m/seed=2/shots=full"}])
    assert group.sample_id.tolist() == [0, 1, 2, 3]              # the samples both seeds scored
    assert group.labels.tolist() == [0, 0, 1, 1]
    assert group.runs[0].tolist() == [0.0, 0.1, 0.2, 0.3]
    assert group.runs[1].tolist() == [1.0, 1.1, 1.2, 1.3]
    assert stats.load_group(tmp_path, [{"cell": "d/ctr/m/seed=3/shots=full"}]) is None


def test_align_refuses_groups_whose_labels_disagree(tmp_path):
    _save(tmp_path, "a", [0, 1, 2], [0, 1, 1], [0.1, 0.2, 0.3])
    _save(tmp_path, "b", [2, 1], [1, 1], [0.5, 0.6])
    _save(tmp_path, "c", [1, 2], [0, 1], [0.5, 0.6])
    a, b, c = (stats.load_group(tmp_path, [{"cell": k}]) for k in "abc")
    labels, runs_a, runs_b = stats.align(a, b)
    assert labels.tolist() == [1, 1] and runs_a[0].tolist() == [0.2, 0.3] and runs_b[0].tolist() == [0.6, 0.5]
    with pytest.raises(ValueError, match="different protocols"):
        stats.align(a, c)


def test_a_few_shot_curve_is_grouped_in_numeric_order_full_last():
    from benchmarks.reporting.tables import group_records

    made = [{"status": "ok", "dataset": "d", "task": "ctr", "method": "m", "shots": s} for s in ("full", 256, 16, 64)]
    assert [key[3] for key in group_records(made)] == ["16", "64", "256", "full"]


def _seeds_with_accuracies(accuracies: list[float], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """All-positive labels and one run per seed whose accuracy is exactly the given value."""
    labels = np.ones(n, dtype=int)
    return labels, [np.where(np.arange(n) < round(a * n), 0.9, 0.1) for a in accuracies]


def test_the_interval_covers_the_seeds_and_corrects_their_small_sample_variance():
    labels, runs = _seeds_with_accuracies([0.6, 0.7, 0.8], 20000)  # test-sample noise ~0.003, seeds 0.1 apart
    interval = stats.bootstrap_interval("accuracy", labels, runs)
    samples_only = stats.bootstrap_interval("accuracy", labels, [np.mean(runs, axis=0) >= 0.5])
    assert interval.estimate == pytest.approx(0.7)
    assert (samples_only.high - samples_only.low) / 2 < 0.01  # what ignoring the seeds would show
    # three seeds drawn with replacement reach the all-worst and all-best draws (1/27 each > 2.5%):
    # the interval's ends are the extreme seeds' deviations, 0.1, scaled by sqrt(3 / 2)
    half = np.sqrt(1.5) * 0.1
    assert interval.low == pytest.approx(0.7 - half, abs=0.01) and interval.high == pytest.approx(0.7 + half, abs=0.01)


def test_resampled_seed_mean_has_the_unbiased_variance_of_a_seed_mean():
    per_seed = np.repeat(np.array([[0.2], [0.5], [0.6], [0.9]]), 20000, axis=1)  # 4 seeds, no sample noise
    draws = stats.seed_draws(4, 20000, 3)
    means = stats.resampled_seed_mean(per_seed, draws)
    assert means.var() == pytest.approx(per_seed[:, 0].var(ddof=1) / 4, rel=0.05)
    assert np.allclose(stats.resampled_seed_mean(per_seed[:1], draws[:, :1]), 0.2)  # one seed: itself


def test_paired_seeds_remove_what_the_two_runs_share():
    labels, runs_a = _seeds_with_accuracies([0.6, 0.7, 0.8], 4000)
    _, runs_b = _seeds_with_accuracies([0.62, 0.72, 0.82], 4000)  # each seed 0.02 better: a shared seed effect
    paired = stats.paired_bootstrap("accuracy", labels, runs_b, runs_a, paired_seeds=True)
    independent = stats.paired_bootstrap("accuracy", labels, runs_b, runs_a)
    assert paired.delta == pytest.approx(0.02) and independent.delta == pytest.approx(0.02)
    assert paired.low > 0 and paired.p_value < 0.01  # the shift is seen through the seed spread
    assert independent.low < 0 < independent.high and independent.p_value > 0.2
    with pytest.raises(ValueError, match="as many runs"):
        stats.paired_bootstrap("accuracy", labels, runs_b[:2], runs_a, paired_seeds=True)


def test_p_value_is_two_sided_and_never_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    good = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.15, 400), 0.01, 0.99)
    noise = rng.random(400)
    forward = stats.paired_bootstrap("auc", labels, [good], [noise])
    backward = stats.paired_bootstrap("auc", labels, [noise], [good])
    assert forward.p_value == backward.p_value == pytest.approx(2 / 1001)
    same = stats.paired_bootstrap("auc", labels, [good], [good.copy()])
    assert same.p_value == 1.0


def test_holm_adjustment_of_a_worked_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = stats.holm([0.02, float("nan"), 0.01])  # NaN stays NaN and is not counted in m
    assert np.isnan(got[1]) and got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.02)


def test_run_tables_carry_holm_adjusted_p_values(ci_run):
    from benchmarks.reporting import report
    text = (ci_run[0] / "accuracy.md").read_text()
    assert "p (Holm)" in text and "Holm-Bonferroni" in report.PAIRED_NOTE
    assert "and seeds" in report.CI_NOTE
