"""The "Protocol audit" section of a run's report, from the audits its records carry: every leakage
check of every protocol with its count (:mod:`benchmarks.data.audit`), the cells' few-shot checks, the
answer-in-prompt checks of each LLM method's prompts (:mod:`benchmarks.audits.prompts`), where the
target sits among the candidates (chi-square against uniform), each LLM next_item method's order
sensitivity (:mod:`benchmarks.audits.order_probe`) and each backbone's memorization of each dataset
(:mod:`benchmarks.audits.memorization`)."""
from __future__ import annotations

from benchmarks.data.audit import MAX_LISTS_CHECKED
from benchmarks.reporting.tables import heading, note, render

NOTE = ("Leakage checks run when a protocol is built (stored with it) and, for the few-shot subsets and the "
        "prompts an LLM method renders, in every cell; a non-zero count stops the cell. Count: offending samples "
        f"(or prompts) of those checked; checks that look up listed items read a seeded subset past "
        f"{MAX_LISTS_CHECKED:,} samples per split. Target position: the target's index among the candidates, "
        "chi-square against uniform. Order sensitivity: a frozen test subset re-scored with the candidates "
        "reversed and reshuffled (share of changed answers; ΔHR@1 with a 95% paired t interval). Memorization: "
        "the bare backbone completes the raw file's line of held-out item ids (Wilson 95% intervals). The last "
        "three are informational.")
#: the errors that mean an audit stopped the cell
AUDIT_ERRORS = ("ProtocolAuditError", "PromptLeakError")


def _audits(recs: list[dict]) -> list[dict]:
    return [r for r in recs if isinstance(r.get("audit"), dict)]


def _protocols(recs: list[dict]) -> dict[tuple, dict]:
    """(dataset, task, protocol hash) -> the protocol's audit, one per protocol of the run."""
    out: dict[tuple, dict] = {}
    for r in _audits(recs):
        if r["audit"].get("protocol"):
            out.setdefault((r["dataset"], r["task"], r["protocol_hash"]), r["audit"]["protocol"])
    return dict(sorted(out.items()))


def _example(example: dict | None) -> str:
    if not example:
        return ""
    return (f"{example['split']} " if example.get("split") else "") + f"sample_id {example['sample_id']}"


def failed_line(recs: list[dict]) -> str:
    """One line naming every failed audit of the run, or "" when all passed."""
    failed = [f"{r['cell']}: {r['error']['message'].splitlines()[0]}" for r in recs
              if (r.get("error") or {}).get("type") in AUDIT_ERRORS]
    failed += [f"{dataset}/{task}: {name} ({check['count']})" for (dataset, task, _), report in _protocols(recs).items()
               for name, check in report["checks"].items() if check["count"]]
    if not failed:
        return ""
    return f"PROTOCOL AUDIT FAILED ({len(failed)}): " + "; ".join(dict.fromkeys(failed))


def _summed(recs: list[dict], scope: str, by_method: bool) -> list[tuple[tuple, list]]:
    """A per-cell audit scope ("few_shot", "prompts") summed over cells per (dataset, task, method or
    "", check): [cells, count, checked, first example]."""
    totals: dict[tuple, list] = {}
    for r in _audits(recs):
        for name, check in ((r["audit"].get(scope) or {}).get("checks") or {}).items():
            entry = totals.setdefault((r["dataset"], r["task"], r["method"] if by_method else "", name), [0, 0, 0, ""])
            entry[0] += 1
            entry[1] += check["count"]
            entry[2] += check["checked"]
            if check["example"] and not entry[3]:
                entry[3] = f"{r['cell']}: {_example(check['example'])}"
    return sorted(totals.items())


def _check_rows(recs: list[dict]) -> list[list]:
    rows = [[dataset, task, digest[:12], name, f"{check['count']} / {check['checked']}", _example(check["example"])]
            for (dataset, task, digest), report in _protocols(recs).items() for name, check in report["checks"].items()]
    rows += [[dataset, task, f"{cells} cells", name, f"{count} / {checked}", example]
             for (dataset, task, _, name), (cells, count, checked, example) in _summed(recs, "few_shot", False)]
    # answer-in-prompt counts: one row per (dataset, task, method, check)
    rows += [[dataset, task, f"prompts of {method} ({cells} cell{'s' * (cells != 1)})", name, f"{count} / {checked}",
              example]
             for (dataset, task, method, name), (cells, count, checked, example) in _summed(recs, "prompts", True)]
    return rows


def _interval(low: float, high: float) -> str:
    return f"[{low:+.3f}, {high:+.3f}]"


def _order_rows(recs: list[dict]) -> list[list]:
    rows = []
    for r in sorted((r for r in recs if r.get("order_probe")), key=lambda r: r["cell"]):
        probe = r["order_probe"]
        row = [r["dataset"], r["method"], r["shots"], r["seed"], probe["samples"], f"{probe['hr@1']:.3f}"]
        for name in ("reversed", "shuffled"):
            order = probe[name]
            row += [f"{order['top1_changed']:.1%}", f"{order['delta_hr@1']:+.3f} {_interval(*order['delta_interval'])}"]
        rows.append(row + [f"{(r.get('timing') or {}).get('order_probe_seconds') or 0:.1f}"])
    return rows


def _memorization_rows(recs: list[dict]) -> list[list]:
    """One row per (backbone, dataset): the probe's rates (the same cached result in every cell)."""
    found: dict[tuple, dict] = {}
    for r in recs:
        probe = (r.get("backbone") or {}).get("memorization")
        if probe:
            found.setdefault((r["backbone"]["id"], r["dataset"]), probe)
    rows = []
    for (backbone, dataset), probe in sorted(found.items()):
        if "error" in probe:
            rows.append([backbone, dataset, "", "", f"probe failed: {probe['error']}", "", ""])
            continue
        rows.append([backbone, dataset, probe["format"], probe["n_items"], _rate(probe["exact"]),
                     _rate(probe["normalized"]), probe["copied"]])
    return rows


def _rate(score: dict) -> str:
    low, high = score["ci95"]
    return f"{score['rate']:.1%} [{low:.1%}, {high:.1%}] ({score['count']})"


def _position_rows(recs: list[dict]) -> list[list]:
    rows = []
    for (dataset, _, digest), report in _protocols(recs).items():
        for split, test in (report.get("candidate_position") or {}).items():
            if test["chi2"] is None:
                continue
            counts = test["counts"]
            rows.append([dataset, digest[:12], split, test["n"], len(counts), f"{min(counts)}-{max(counts)}",
                         f"{test['chi2']:.1f}", f"{test['p_value']:.3g}"])
    return rows


def audit_section(recs: list[dict], tablefmt: str = "github") -> str:
    """The section's tables (no heading of its own); a sentence when no record carries an audit."""
    checks = _check_rows(recs)
    if not checks:
        return note("No record of this run carries an audit (written before audits existed).", tablefmt)
    text = render(checks, ["dataset", "task", "protocol / scope", "check", "count", "example"], tablefmt) + "\n"
    positions = _position_rows(recs)
    if positions:
        text += "\n" + heading("target position among the candidates", tablefmt) + render(
            positions, ["dataset", "protocol", "split", "samples", "candidates", "per position", "chi²", "p"],
            tablefmt) + "\n"
    orders = _order_rows(recs)
    if orders:
        text += "\n" + heading("order sensitivity of LLM next_item methods", tablefmt) + render(
            orders, ["dataset", "method", "shots", "seed", "samples", "HR@1", "reversed: changed", "ΔHR@1 [95%]",
                     "shuffled: changed", "ΔHR@1 [95%]", "probe s"], tablefmt) + "\n"
    memorized = _memorization_rows(recs)
    if memorized:
        text += "\n" + heading("backbone memorization of the dataset", tablefmt) + render(
            memorized, ["backbone", "dataset", "line format", "items", "exact [95%]", "normalized [95%]",
                        "copied from the prompt"], tablefmt) + "\n"
    return text
