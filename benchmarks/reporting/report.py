"""Everything a run folder shows a person, rendered from ``records.jsonl`` alone (so a report can be
rebuilt for any run folder: ``python -m benchmarks.reporting.report RUN_DIR``)."""
from __future__ import annotations

import json
import sys
from html import escape as html_escape
from pathlib import Path

from benchmarks import records
from benchmarks.reporting import audit_report, health, html_report, plots, published, stats, tables, verdict

CI_NOTE = (f"Values: mean ± std over seeds; in brackets the 95% bootstrap interval over test samples and seeds "
           f"({stats.N_RESAMPLES} resamples, seed {stats.SEED}: each resample draws the test samples, shared by "
           "the seeds, and the seeds with replacement, their deviations scaled by √(S/(S−1)); AUC is recomputed "
           "over each resample's pairs).")
PAIRED_NOTE = ("Paired bootstrap on the same test samples and resamples, seeds drawn independently per method: the "
               f"best method of each setting by its primary metric "
               f"({', '.join(f'{t}: {m}' for t, m in stats.PRIMARY_METRIC.items())}) against every other; "
               "P(A better) counts ties as one half; p (Holm): the two-sided bootstrap p-value of Δ = 0, "
               "Holm-Bonferroni-adjusted over every row of its table.")
VERDICT_NOTE = ("Per dataset and task, the best LLM cell against the best conventional cell, each by the task's "
                "primary metric (any shots), on the same test samples: Δ = LLM − conventional with its 95% interval "
                "over test samples and seeds, the two-sided p-value Holm-adjusted over this table's rows, and the "
                "cost ratios LLM / conventional of the seed medians (an LLM's training time includes the frozen "
                "encoder it loaded when this run trained it). 'better' needs an adjusted p-value of at most "
                f"{verdict.ALPHA}.")
FLAGS_NOTE = ("⚑ beside a primary metric: below chance, interval includes chance (AUC 0.5, HR@1 one over the "
              "candidates), or one-sided scores (every ctr score of a seed on one side of 0.5).")
#: below these, a run's differences inside the intervals are not findings (sample_size_line)
SMALL_N, FEW_SEEDS = 1000, 3
PUBLISHED_NOTE = ("Published numbers (results/paper/*.yaml) beside the measured group with the same dataset, task, "
                  "method and shots. Δ is shown only where the run meets the paper's setting (comparable); "
                  "otherwise the measured value is in parentheses and the unmet conditions are listed.")


def sample_size_line(recs: list[dict]) -> str:
    """A warning sentence (with a trailing space) when the run scored few test samples or few seeds per
    cell, "" otherwise."""
    ok = [r for r in recs if r.get("status") == "ok"]
    if not ok:
        return ""
    n = min(r.get("n_eval") or 0 for r in ok)
    groups = tables.group_records(ok)
    trained = [len(rs) for rs in groups.values() if any(r.get("n_train") for r in rs)]
    seeds = min(trained or [len(rs) for rs in groups.values()])
    if n >= SMALL_N and seeds >= FEW_SEEDS:
        return ""
    return (f"Sample size: as few as {n} test samples and {seeds} seed(s) per cell; differences inside the "
            "intervals are not findings at this sample size. ")


def _not_in_run(comparisons: list[published.Comparison]) -> str:
    """One line per paper and (dataset, task) that the run did not measure, with the reason."""
    seen = sorted({(c.published.paper["id"], c.published.dataset, c.published.task, c.reasons[0]) for c in comparisons})
    return "\n".join(f"- {paper}: {dataset}/{task}: {reason}" for paper, dataset, task, reason in seen)


def write_reports(run_dir: Path) -> str:
    """Write into ``run_dir``: accuracy, latency and paper-style tables as markdown (``.md``) and LaTeX
    (``.tex``), ``summary.csv`` and ``latency.csv``, the plot ``accuracy_vs_cost.png`` and the
    self-contained ``report.html``. Return the text to print (accuracy and latency)."""
    recs = list(records.latest_by_cell(records.read(run_dir / "records.jsonl")).values())
    saved = json.loads((run_dir / "suite.json").read_text())
    suite = saved["suite"]
    tiny = any(d.get("tiny") for d in suite["datasets"])
    header = f"Suite `{suite['name']}` v{suite['version']}. {tables.caps_line(suite['budget'], tiny)}."
    groups = tables.group_records(recs)
    run_stats = stats.run_statistics(run_dir, groups)
    intervals = run_stats.intervals
    comparisons = published.compare(published.load_all(), groups)
    measured_settings = {(key[0], key[1]) for key in groups}
    shown = [c for c in comparisons if (c.published.dataset, c.published.task) in measured_settings]
    elsewhere = [c for c in comparisons if (c.published.dataset, c.published.task) not in measured_settings]

    headline = verdict.verdicts(run_stats.llm_vs_conventional, groups, intervals)

    def verdict_text(fmt: str) -> str:
        return f"{tables.verdict_table(headline, fmt)}\n\n"

    notes = health.footnotes(run_stats.health, groups)

    def accuracy_text(fmt: str) -> str:
        text = (f"{tables.accuracy_table(recs, fmt, intervals, run_stats.health)}\n\n"
                + "".join(f"{tables.note(line, fmt)}\n" for line in notes)
                + f"{tables.heading('paired comparisons', fmt)}{tables.paired_table(run_stats.paired, fmt)}\n")
        full = tables.full_ranking_table(recs, fmt)
        text += f"\n{full}\n" if full else ""
        failed = tables.failures(recs, fmt)
        return text + (f"\n{failed}\n" if failed else "")

    def paper_text(fmt: str) -> str:
        return (f"{tables.paper_style_table(recs, fmt)}\n\n{tables.heading('published vs measured', fmt)}"
                f"{tables.published_table(shown, fmt, intervals)}\n")

    latency_note = ("Latency: batch size 1 after warm-up; samples/s at the suite batch size; peak memory per "
                    f"cell process. A train s marked {tables.LOADED_ENCODER_MARK} leaves out the frozen encoder the "
                    "cell loaded instead of training (the conventional cell of the same seed trained it: add its "
                    "train s for the whole pipeline).")
    small = sample_size_line(recs)
    audit_failed = audit_report.failed_line(recs)
    accuracy = ((f"**{audit_failed}**\n\n" if audit_failed else "")
                + f"## Verdict\n\n{header} {small}{VERDICT_NOTE}\n\n{verdict_text('github')}"
                f"## Accuracy\n\n{small}{CI_NOTE} {FLAGS_NOTE} {PAIRED_NOTE}\n\n{accuracy_text('github')}"
                f"\n## Protocol audit\n\n{audit_report.NOTE}\n\n{audit_report.audit_section(recs)}")
    latency = f"## Latency and cost\n\n{header} {latency_note}\n\n{tables.latency_table(recs)}\n"
    paper = (f"## Paper-style table\n\n{header} Seed means (± std); the best of each column in bold. "
             f"{PUBLISHED_NOTE}\n\n{paper_text('github')}"
             + (f"\nPublished numbers not measured in this run:\n\n{_not_in_run(elsewhere)}\n" if elsewhere else ""))
    (run_dir / "accuracy.md").write_text(accuracy)
    (run_dir / "latency.md").write_text(latency)
    (run_dir / "paper_table.md").write_text(paper)
    (run_dir / "accuracy.tex").write_text(verdict_text("latex") + accuracy_text("latex")
                                          + audit_report.audit_section(recs, "latex"))
    (run_dir / "latency.tex").write_text(tables.latency_table(recs, "latex") + "\n")
    (run_dir / "paper_table.tex").write_text(paper_text("latex"))
    tables.write_summary_csv(recs, run_dir / "summary.csv", intervals)
    tables.write_latency_csv(recs, run_dir / "latency.csv")
    figure = plots.accuracy_cost_figure(plots.points(groups, intervals), run_dir / "accuracy_vs_cost.png",
                                        title=f"{saved.get('run_id', run_dir.name)}: accuracy against cost")
    plain_header = header.replace("`", "")
    html_report.write_html(run_dir, f"llmrec-bench run {saved.get('run_id', run_dir.name)}",
                           f"{audit_failed}. {plain_header}" if audit_failed else plain_header, [
        ("Verdict", f'<p class="note">{html_escape(small + VERDICT_NOTE)}</p>\n{verdict_text("html")}'),
        ("Accuracy", f'<p class="note">{html_escape(f"{small}{CI_NOTE} {FLAGS_NOTE} {PAIRED_NOTE}")}</p>\n'
                     f'{accuracy_text("html")}'),
        ("Paper-style table and published numbers",
         f'<p class="note">{html_escape(PUBLISHED_NOTE)}</p>\n{paper_text("html")}'
         + (f'<p class="note">Published numbers not measured in this run:</p>\n'
            f"<pre>{html_escape(_not_in_run(elsewhere))}</pre>" if elsewhere else "")),
        ("Latency and cost", f'<p class="note">{html_escape(latency_note)}</p>\n{tables.latency_table(recs, "html")}'),
        ("Protocol audit", f'<p class="note">{html_escape(audit_report.NOTE)}</p>\n'
                           f'{audit_report.audit_section(recs, "html")}'),
    ], figure)
    return f"{accuracy}\n{latency}"


if __name__ == "__main__":
    print(write_reports(Path(sys.argv[1])))
