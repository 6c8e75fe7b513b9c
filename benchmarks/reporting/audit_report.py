"""The "Protocol audit" section of a run's report, from the audits its records carry
(:mod:`benchmarks.data.audit`): every leakage check of every protocol with its count, the cells'
few-shot checks, and where the target sits among the candidates (chi-square against uniform)."""
from __future__ import annotations

from benchmarks.data.audit import MAX_LISTS_CHECKED
from benchmarks.reporting.tables import heading, note, render

NOTE = ("Leakage checks run when a protocol is built (stored with it) and, for the few-shot subsets, in every "
        "cell; a non-zero count stops the cell. Count: offending samples of those checked; checks that look "
        f"up listed items read a seeded subset past {MAX_LISTS_CHECKED:,} samples per split. Target position: "
        "the target's index among the candidates, chi-square against uniform (informational).")


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
    return "" if not example else f"{example['split']} sample_id {example['sample_id']}"


def failed_line(recs: list[dict]) -> str:
    """One line naming every failed audit of the run, or "" when all passed."""
    failed = [f"{r['cell']}: {r['error']['message'].splitlines()[0]}" for r in recs
              if (r.get("error") or {}).get("type") == "ProtocolAuditError"]
    failed += [f"{dataset}/{task}: {name} ({check['count']})" for (dataset, task, _), report in _protocols(recs).items()
               for name, check in report["checks"].items() if check["count"]]
    if not failed:
        return ""
    return f"PROTOCOL AUDIT FAILED ({len(failed)}): " + "; ".join(dict.fromkeys(failed))


def _check_rows(recs: list[dict]) -> list[list]:
    rows = [[dataset, task, digest[:12], name, f"{check['count']} / {check['checked']}", _example(check["example"])]
            for (dataset, task, digest), report in _protocols(recs).items() for name, check in report["checks"].items()]
    few: dict[tuple, list] = {}
    for r in _audits(recs):
        for name, check in ((r["audit"].get("few_shot") or {}).get("checks") or {}).items():
            entry = few.setdefault((r["dataset"], r["task"], name), [0, 0, 0, ""])
            entry[0] += 1
            entry[1] += check["count"]
            entry[2] += check["checked"]
            entry[3] = entry[3] or (f"{r['cell']}: {_example(check['example'])}" if check["example"] else "")
    rows += [[dataset, task, f"{cells} cells", name, f"{count} / {checked}", example]
             for (dataset, task, name), (cells, count, checked, example) in sorted(few.items())]
    return rows


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
    return text
