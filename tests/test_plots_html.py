"""Reports a person reads: the Pareto front, the plot, table formats, published numbers, the paper suite
and the self-contained report.html of a real ``ci`` run. None of these needs chromium."""
import shutil
import struct

import numpy as np
import pytest
import yaml

from benchmarks.reporting import published, report, tables
from benchmarks.reporting.plots import Point, accuracy_cost_figure, pareto_front
from benchmarks.run import main as run_main


def _brute_force_front(costs, values):
    """Points for which no other point is at most as costly and at least as good, one strictly."""
    front = []
    for i, (ci, vi) in enumerate(zip(costs, values)):
        if not any((cj <= ci and vj >= vi) and (cj < ci or vj > vi) for cj, vj in zip(costs, values)):
            front.append(i)
    return sorted(front, key=lambda i: costs[i])


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs = np.round(rng.random(12) * 10, 0)          # ties in cost
    values = np.round(rng.random(12), 1)              # ties in accuracy
    assert pareto_front(costs, values).tolist() == _brute_force_front(costs.tolist(), values.tolist())
    # lower-is-better metrics: the front of -values
    assert pareto_front(costs, values, higher_is_better=False).tolist() == _brute_force_front(
        costs.tolist(), (-values).tolist())


def test_pareto_front_by_hand_and_with_missing_costs():
    costs = [1.0, 2.0, 3.0, np.nan, 0.5]
    values = [0.6, 0.5, 0.9, 0.99, 0.1]
    assert pareto_front(costs, values).tolist() == [4, 0, 2]   # 1 is beaten by the cheaper 0; 3 has no cost


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_figure_has_one_row_per_dataset_task(tmp_path):
    def point(label, value, latency):
        return Point(label, "reference", value, value - 0.05, value + 0.05,
                     {"latency_p50_ms": (latency, None), "train_seconds": (0.0, None)})  # zero cost: unplaceable
    panels = {("d", "ctr"): [point("a", 0.6, 1.0), point("b", 0.7, 10.0)],
              ("d", "next_item"): [point("a", 0.2, np.nan)],
              ("e", "ctr"): [point("a", 0.6, 2.0)]}
    sizes = [_png_size(accuracy_cost_figure(dict(list(panels.items())[:k]), tmp_path / f"{k}.png")) for k in (1, 2, 3)]
    (w1, h1), (w2, h2), (w3, h3) = sizes
    assert w1 == w2 == w3 and h2 - h1 == h3 - h2 > 0.6 * h1   # one more row of panels per (dataset, task)
    assert accuracy_cost_figure({}, tmp_path / "none.png") is None


def test_latex_and_html_cells_are_escaped_and_bold_marked():
    rows = [[tables.Bold("0.5 ± 0.1"), "next_item 50% & <b>"]]
    latex = tables.render(rows, ["auc ↑", "x_y"], "latex")
    assert r"\textbf{0.5 $\pm$ 0.1}" in latex and r"next\_item 50\% \& <b>" in latex
    assert r"auc $\uparrow$" in latex and r"x\_y" in latex
    page = tables.render(rows, ["h"], "html")
    assert "<b>0.5 ± 0.1</b>" in page and "&lt;b&gt;" in page and "<b>" not in page.replace("<b>0.5", "")
    assert "**0.5 ± 0.1**" in tables.render(rows, ["a", "b"])


def _rec(method, task, metrics, shots="full", seed=1):
    return {"dataset": "d", "task": task, "method": method, "shots": shots, "seed": seed, "status": "ok",
            "metrics": metrics, "cell": f"d/{task}/{method}/seed={seed}/shots={shots}"}


def test_paper_style_table_bolds_the_best_in_each_metric_direction():
    recs = [_rec("a", "ctr", {"auc": 0.7, "logloss": 0.7}), _rec("b", "ctr", {"auc": 0.6, "logloss": 0.5}),
            _rec("b", "ctr", {"auc": 0.8, "logloss": 0.6}, shots=16)]
    lines = tables.paper_style_table(recs).splitlines()
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert row["a"] == ["0.7000", "0.7000"]
    assert row["b"] == ["0.6000", "**0.5000**"]                     # lowest logloss is best
    assert row["b (16 shots)"] == ["**0.8000**", "0.6000"]


def test_shipped_paper_files_load_and_follow_the_schema():
    entries = published.load_all()
    papers = {p.paper["id"] for p in entries}
    assert {"tallrec", "llara", "ilora", "reclora"} <= papers
    tallrec = {(p.dataset, p.shots): p.value for p in entries if p.paper["id"] == "tallrec"}
    assert tallrec[("movielens-100k", "256")] == pytest.approx(0.7198)
    for p in entries:
        assert (p.value is None) == (p.status == "unverified")
        assert p.value is None or 0 <= p.value <= 1
        assert p.source


def _paper_file(tmp_path, **changes):
    raw = {"paper": {"id": "x", "title": "X", "url": "https://example.org"},
           "comparable_when": {"tiny": False, "backbone.quant": {"one_of": ["int8", "none"]}},
           "results": [{"dataset": "d", "task": "ctr", "method": "m", "shots": 16, "metric": "auc",
                        "value": 0.7, "status": "verified", "source": "Table 1"}]}
    raw.update(changes)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_paper_file_errors_name_the_file_and_entry(tmp_path):
    bad_metric = [{"dataset": "d", "task": "ctr", "method": "m", "shots": 16, "metric": "hr@1", "value": 0.7,
                   "status": "verified", "source": "s"}]
    with pytest.raises(ValueError, match=r"x.yaml: results\[0\]: task must be"):
        published.load_file(_paper_file(tmp_path, results=bad_metric))
    with pytest.raises(ValueError, match=r"x.yaml: unknown key\(s\) \['extra'\]"):
        published.load_file(_paper_file(tmp_path, extra=1))
    unverified_with_value = [{**bad_metric[0], "metric": "auc", "status": "unverified"}]
    with pytest.raises(ValueError, match="null exactly when"):
        published.load_file(_paper_file(tmp_path, results=unverified_with_value))


def test_comparability_states_every_unmet_condition(tmp_path):
    (entry,) = published.load_file(_paper_file(tmp_path))
    ok = {"tiny": False, "backbone": {"quant": "none"}, "metrics": {"auc": 0.75}}
    bad = {"tiny": True, "backbone": None, "metrics": {"auc": 0.75}}
    (good,) = published.compare([entry], {("d", "ctr", "m", "16"): [ok]})
    assert good.comparable and good.reasons == ()
    (mixed,) = published.compare([entry], {("d", "ctr", "m", "16"): [ok, bad]})
    assert not mixed.comparable
    assert mixed.reasons == ("backbone.quant: measured null, paper int8 or none", "tiny: measured True, paper False")
    (missing,) = published.compare([entry], {})
    assert missing.reasons == ("no dataset card 'd' in datasets/",)
    table = tables.published_table([good, mixed])
    assert "+0.0500" in table and "| comparable" in table and "(0.7500 ± 0.0000)" in table


def test_paper_suite_passes_dry_run(capsys):
    assert run_main(["--suite", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "movielens-100k/ctr/pop/seed=1/shots=16" in out
    cells = [line for line in out.splitlines() if line.endswith(" cells")]
    assert len(cells) == 1 and "reclora: config" in out.split(f"\n{cells[0]}\n")[1], "the settings follow the count"


def test_report_of_a_real_run_is_complete_and_self_contained(ci_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(ci_run[0], run_dir)
    text = report.write_reports(run_dir)
    for name in ("accuracy.md", "accuracy.tex", "latency.md", "latency.tex", "paper_table.md", "paper_table.tex",
                 "summary.csv", "latency.csv", "accuracy_vs_cost.png", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "95% bootstrap interval" in text and "paired comparisons" in text
    page = (run_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1
    for external in ("<script", "src=\"http", "href=\"http", "<link", "@import", "url("):
        assert external not in page
    assert "git_commit" in page and "<table>" in page and "published vs measured" in page
    summary = (run_dir / "summary.csv").read_text().splitlines()
    assert summary[0].endswith("ci_low,ci_high,n_samples")
    low, high = (float(x) for x in summary[1].split(",")[-3:-1])
    mean = float(summary[1].split(",")[5])
    assert low <= mean <= high
    assert r"\begin{tabular}" in (run_dir / "accuracy.tex").read_text()


def test_llm_against_conventional_pairs_the_best_of_each_family(ci_run):
    from benchmarks import records
    from benchmarks.reporting import stats

    run_dir = ci_run[0]
    groups = tables.group_records(list(records.latest_by_cell(records.read(run_dir / "records.jsonl")).values()))
    run = stats.run_statistics(run_dir, groups)
    assert {(r.dataset, r.task) for r in run.llm_vs_conventional} == {("movielens-100k", "ctr"),
                                                                      ("movielens-100k", "next_item")}
    for row in run.llm_vs_conventional:
        metric = stats.PRIMARY_METRIC[row.task]  # auc, hr@1: higher is better
        keys = [k for k in run.intervals if k[:2] == (row.dataset, row.task)]
        value = {f"{k[2]}@{k[3]}": run.intervals[k][metric].estimate for k in keys}
        family = {f"{k[2]}@{k[3]}": groups[k][0]["family"] for k in keys}
        assert row.a == max((n for n in value if family[n] == "llm"), key=value.get)
        assert row.b == max((n for n in value if family[n] == "conventional"), key=value.get)  # pop, random excluded
        assert row.result.delta == pytest.approx(value[row.a] - value[row.b])


@pytest.mark.skipif(not any(shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no chromium on this machine (Debian: apt-get install -y chromium)")
def test_report_renders_whole_in_headless_chromium(ci_run, tmp_path):
    from benchmarks.reporting import screenshot_report

    run_dir = tmp_path / "run"
    shutil.copytree(ci_run[0], run_dir)
    png = screenshot_report.screenshot(run_dir)
    width, height = _png_size(png)
    html = (run_dir / "report.html").read_text()
    assert "<img" in html and "<table>" in html
    assert (width, height) == (screenshot_report.WIDTH, screenshot_report.page_height(html))
    assert png.stat().st_size > 100_000  # tables and a plot, not an empty or error page


def test_every_published_number_names_a_registered_method_of_its_task():
    """A published figure keyed to a method that is not registered (once `llara`) can never line up with a run."""
    from benchmarks.registry import discover
    from benchmarks.reporting.published import load_all

    methods = discover()
    wrong = [(p.paper["id"], p.method, p.task) for p in load_all()
             if p.method not in methods or p.task not in methods[p.method].tasks]
    assert not wrong, wrong
    scorers = {p.method for p in load_all() if p.paper["id"] in ("llara", "ilora")}
    assert scorers == {"lora-seq-generate", "ilora-generate"}, "generation protocols: ValidRatio can be below 1"


def test_llaras_figures_stand_beside_lora_seq_generate_in_the_paper_table():
    """results/paper/llara.yaml is keyed to the scorer that follows LLaRA's protocol (generate, then match
    a title): a run's lora-seq-generate group on a LLaRA dataset lines up with each published figure."""
    entries = [p for p in published.load_all() if p.paper["id"] == "llara"]
    assert {(p.dataset, p.metric) for p in entries} == {(d, m) for d in ("movielens-100k", "steam", "lastfm")
                                                        for m in ("hr@1", "valid_ratio")}
    assert {p.method for p in entries} == {"lora-seq-generate"}
    record = {"tiny": False, "budget": {"eval_cap": None, "max_epochs": None},
              "backbone": {"id": "meta-llama/Llama-2-7b-hf", "quant": "none"},
              "protocol_params": {"n_candidates": 20}, "metrics": {"hr@1": 0.4211, "valid_ratio": 0.9684}}
    movielens = [p for p in entries if p.dataset == "movielens-100k"]
    rows = published.compare(movielens, {movielens[0].key: [record]})
    assert all(r.measured for r in rows)
    table = tables.published_table(rows)
    hr_row = next(line for line in table.splitlines() if "0.4526" in line)
    assert "lora-seq-generate" in hr_row and "0.4211" in hr_row
    assert "0.9684" in next(line for line in table.splitlines() if "0.9789" in line)
