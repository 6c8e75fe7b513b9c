"""Run one cell: data -> frozen protocol -> method.fit / method.score (timed) -> metrics -> record.

This is the only place where a method meets data, so it is the only place that times, seeds,
removes labels before scoring and computes metrics. A failure anywhere becomes a ``failed`` record
with the error's type, message and traceback tail, and the peak memory so far.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import tempfile
import traceback
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import canonical, env, metrics, protocols, records, registry
from benchmarks.cache import cache_root
from benchmarks.cards import canonical_hash, load_card
from benchmarks.contract import CellContext, FitData, without_labels
from benchmarks.suite import Cell, Suite
from benchmarks.timing import Timing, record_memory, reset_peak_memory, timed_fit, timed_score


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def seed_everything(seed: int, family: str, device: str = "cpu") -> None:
    """Seed Python, NumPy and (for methods with parameters) torch, CPU and CUDA.

    On CPU, also torch's deterministic algorithms: otherwise ``index_put_(accumulate=True)``, the
    backward of indexing a tensor with repeated indices, adds from several threads with atomics once
    it has 32,768 elements, so a rerun's weights differ in the last bits whenever two threads hit one
    element in another order (README, "Determinism"). Uninitialized memory is left as it is (the mode
    would fill it with NaN, which only costs time). GPU runs keep torch's defaults.
    """
    random.seed(seed)
    np.random.seed(seed)
    if family != "reference":
        import torch

        torch.manual_seed(seed)
        if device == "cpu":
            torch.use_deterministic_algorithms(True)
            torch.utils.deterministic.fill_uninitialized_memory = False


def frozen_subset(frame: pd.DataFrame, cap: int | None, key: str) -> pd.DataFrame:
    """At most ``cap`` rows, the same for every method and seed (keyed by the protocol hash)."""
    if cap is None or len(frame) <= cap:
        return frame
    order = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)).permutation(len(frame))
    return frame.iloc[np.sort(order[:cap])].reset_index(drop=True)


def _config_dict(config) -> dict:
    if config is None:
        return {}
    return asdict(config) if is_dataclass(config) else dict(config)


def run_cell(suite: Suite, cell: Cell, run_dir: Path, run_id: str) -> records.CellRecord:
    """Run ``cell`` of ``suite`` and return its record (never raises for a method's failure)."""
    entry = registry.get_entry(cell.method)
    card = load_card(cell.dataset)
    dataset_entry = next(d for d in suite.datasets if d.name == cell.dataset)
    spec = suite.methods[cell.method]
    budget = suite.budget
    record = records.CellRecord(
        schema=records.SCHEMA_VERSION, run_id=run_id, suite=suite.name, suite_version=suite.version,
        cell=cell.key, dataset=cell.dataset, tiny=dataset_entry.tiny, task=cell.task, protocol_hash="",
        protocol_params={}, dataset_sha256={}, method=cell.method, family=entry.family, method_config={},
        method_config_hash="", seed=cell.seed, shots=cell.shots, status="failed",
        budget=asdict(budget), device=suite.device, started_at=now())
    timing = Timing()
    reset_peak_memory(suite.device)
    workdir = Path(tempfile.mkdtemp(prefix="cell-", dir=run_dir / "work"))
    try:
        data = canonical.load(cell.dataset, tiny=dataset_entry.tiny)
        protocol = protocols.load(data, cell.task)
        record.protocol_hash = protocol.info.hash
        record.protocol_params = dict(protocol.info.params)
        record.dataset_sha256 = data.source_sha256

        config = registry.resolve_config(entry, spec.config)
        record.method_config = _config_dict(config)
        record.method_config_hash = canonical_hash({"method": cell.method, "config": record.method_config})

        train = protocol.few_shot(cell.shots, cell.seed)
        valid = frozen_subset(protocol.valid, budget.valid_cap, protocol.info.hash + "/valid")
        test = frozen_subset(protocol.test, budget.eval_cap, protocol.info.hash + "/test")
        n_candidates = card.protocols[cell.task].get("n_candidates")

        def validate(scores: np.ndarray) -> dict[str, float]:
            checked = metrics.check_scores(cell.task, scores, len(valid), n_candidates)
            return metrics.compute(cell.task, valid["label"].to_numpy(), checked)

        fit_data = FitData(task=cell.task, train=train, train_full=protocol.train, valid=without_labels(valid),
                           validate=validate, catalog=data.catalog, protocol=protocol.info)
        ctx = CellContext(seed=cell.seed, device=suite.device, batch_size=budget.batch_size,
                          max_epochs=budget.max_epochs, workdir=workdir, cache_dir=cache_root(),
                          llm=suite.llm, quant=suite.quant, dataset=cell.dataset)
        seed_everything(cell.seed, entry.family, suite.device)
        method = entry.load_class()(config, ctx)
        record.n_train, record.n_eval = (len(train) if entry.trains else 0), len(test)

        timed_fit(method, fit_data, suite.device, timing, trains=entry.trains)
        raw_scores = timed_score(method, without_labels(test), suite.device, budget.batch_size,
                                 budget.warmup, budget.latency_samples, timing)
        scores = metrics.check_scores(cell.task, raw_scores, len(test), n_candidates)
        labels = test["label"].to_numpy()
        record.metrics = metrics.compute(cell.task, labels, scores)
        records.save_scores(run_dir, cell.key, test["sample_id"].to_numpy(), labels, scores)
        counts = method.parameter_counts()
        record.parameters = asdict(counts) if counts is not None else None
        describe = getattr(method, "backbone_info", None)
        record.backbone = describe() if callable(describe) else None
        record.status = "ok"
    except Exception as err:  # noqa: BLE001 - every failure becomes a record; the suite goes on
        record.error = {"type": type(err).__name__, "message": str(err)[:2000],
                        "traceback": "".join(traceback.format_exception(err))[-4000:]}
    finally:
        record_memory(suite.device, timing)
        record.timing = timing.as_dict()
        record.host = env.process_facts()
        record.finished_at = now()
        shutil.rmtree(workdir, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry point of a cell's own process: ``python -m benchmarks.cell SUITE_JSON CELL_JSON RUN_DIR OUT``."""
    import json

    from benchmarks.suite import parse

    suite_path, cell_json, run_dir, out = argv or sys.argv[1:]
    raw = json.loads(Path(suite_path).read_text())
    suite = parse(raw["suite"], raw["source"])
    cell = Cell(**json.loads(cell_json))
    record = run_cell(suite, cell, Path(run_dir), raw["run_id"])
    tmp = out + ".tmp"
    Path(tmp).write_text(json.dumps(record.as_dict(), sort_keys=True))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
