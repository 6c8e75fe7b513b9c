"""Published numbers (``results/paper/*.yaml``) and when a measured number may stand beside them.

One file per paper::

    paper: {id, title, authors, venue, url, code}     # the citation
    setting: {...}                 # the paper's own training setting (free-form, shown in reports)
    comparable_when: {path: value} # conditions on a measured record, dotted paths into it
                                   # (``budget.eval_cap``, ``backbone.quant``, ``protocol_params.n_candidates``);
                                   # a value ``{one_of: [...]}`` accepts any listed value
    known_differences: [text]      # protocol differences the conditions cannot see (always shown)
    results:                       # one published number each
      - {dataset, task, method, shots, metric, value, status, source, note?}

``value`` is on this benchmark's scale (AUC in [0, 1], not percent); ``status`` says how it was checked:
``verified`` (read in the paper or the authors' repository), ``secondary`` (quoted by a third party,
not checked against the paper) or ``unverified`` (``value`` is null: we could not read the number).

A measured group (dataset, task, method, shots) is *comparable* with a published number when every
``comparable_when`` condition holds for every seed's record; otherwise each failed condition is a
stated reason. Known differences are listed either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.contract import TASKS
from benchmarks.data.cards import known_cards
from benchmarks.metrics import METRICS
from benchmarks.registry import ROOT, discover

PAPER_DIR = ROOT / "results" / "paper"
STATUSES = ("verified", "secondary", "unverified")
_TOP_KEYS = {"paper", "setting", "comparable_when", "known_differences", "results"}
_RESULT_KEYS = {"dataset", "task", "method", "shots", "metric", "value", "status", "source", "note"}
_PAPER_KEYS = {"id", "title", "authors", "venue", "url", "code"}


@dataclass(frozen=True)
class Published:
    """One published number with its paper's citation and comparability rules."""

    paper: dict
    dataset: str
    task: str
    method: str
    shots: str
    metric: str
    value: float | None
    status: str
    source: str
    note: str = ""
    comparable_when: dict = field(default_factory=dict)
    known_differences: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The measured group it lines up with: (dataset, task, method, shots)."""
        return (self.dataset, self.task, self.method, self.shots)


def _check_keys(where: str, raw: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    unknown, missing = sorted(set(raw) - allowed), sorted(required - set(raw))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")


def load_file(path: Path) -> list[Published]:
    """The published numbers of one paper file.

    Raises:
        ValueError: naming the file and entry for an unknown key, task, metric or status.
    """
    raw = yaml.safe_load(path.read_text())
    _check_keys(str(path), raw, _TOP_KEYS, {"paper", "results"})
    _check_keys(f"{path}: paper", raw["paper"], _PAPER_KEYS, {"id", "title", "url"})
    out = []
    for i, entry in enumerate(raw["results"]):
        where = f"{path}: results[{i}]"
        _check_keys(where, entry, _RESULT_KEYS, _RESULT_KEYS - {"note"})
        if entry["task"] not in TASKS or METRICS.get(entry["metric"]) is None \
                or METRICS[entry["metric"]].task != entry["task"] or entry["status"] not in STATUSES:
            raise ValueError(f"{where}: task must be in {TASKS}, metric one of that task's "
                             f"{sorted(m for m in METRICS if METRICS[m].task == entry['task'])}, status in {STATUSES}")
        if (entry["value"] is None) != (entry["status"] == "unverified"):
            raise ValueError(f"{where}: value must be null exactly when status is 'unverified'")
        out.append(Published(
            paper=raw["paper"], dataset=entry["dataset"], task=entry["task"], method=entry["method"],
            shots=str(entry["shots"]), metric=entry["metric"],
            value=None if entry["value"] is None else float(entry["value"]), status=entry["status"],
            source=entry["source"], note=entry.get("note", ""),
            comparable_when=raw.get("comparable_when") or {},
            known_differences=tuple(raw.get("known_differences") or ())))
    return out


def load_all(folder: Path = PAPER_DIR) -> list[Published]:
    """Every published number in ``folder`` (sorted by file name)."""
    return [p for path in sorted(folder.glob("*.yaml")) for p in load_file(path)]


def _lookup(record: dict, path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def unmet_conditions(conditions: dict, record: dict) -> list[str]:
    """A line per condition the record does not meet: ``path: measured X, paper Y``."""
    def show(value: Any) -> str:
        return "null" if value is None else str(value)

    reasons = []
    for path, wanted in conditions.items():
        got = _lookup(record, path)
        options = wanted["one_of"] if isinstance(wanted, dict) and "one_of" in wanted else [wanted]
        if got not in options:
            reasons.append(f"{path}: measured {show(got)}, paper {' or '.join(show(o) for o in options)}")
    return reasons


@dataclass(frozen=True)
class Comparison:
    """A published number beside the measured group it lines up with (if any)."""

    published: Published
    measured: list[dict]         # the group's records (ok status), empty if not measured
    reasons: tuple[str, ...]     # why it is not comparable; empty = comparable

    @property
    def comparable(self) -> bool:
        return bool(self.measured) and not self.reasons and self.published.value is not None


def _not_measured_reason(p: Published, cards: list[str], methods: dict) -> str:
    if p.dataset not in cards:
        return f"no dataset card '{p.dataset}' in datasets/"
    if p.method not in methods:
        return f"method '{p.method}' is not registered"
    return "not in this run"


def compare(published: list[Published], groups: dict[tuple, list[dict]]) -> list[Comparison]:
    """Line up each published number with the run's group of the same (dataset, task, method, shots)."""
    cards, methods = known_cards(), discover()
    out = []
    for p in published:
        measured = groups.get(p.key, [])
        if not measured:
            out.append(Comparison(p, [], (_not_measured_reason(p, cards, methods),)))
            continue
        reasons = sorted({reason for record in measured for reason in unmet_conditions(p.comparable_when, record)})
        if p.value is None:
            reasons.insert(0, "published value not verified")
        out.append(Comparison(p, measured, tuple(reasons)))
    return out
