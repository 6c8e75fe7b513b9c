"""Run one cell: data -> frozen protocol -> method.fit / method.score (timed) -> metrics -> record.

This is the only place where a method meets data, so it is the only place that times, seeds and
removes labels before scoring. It runs in two halves:

* :func:`run_method`, in the cell's own process: the harness reads the protocol, keeps the test
  samples without their labels, drops everything else that holds answers, confines the process so
  that no label file can be opened (:mod:`benchmarks.execution.sandbox`), and only then builds the method,
  fits it and scores the test samples;
* :func:`benchmarks.execution.evaluation.finish`, in the executor's process after the cell's has ended: the
  labels meet the scores there (contract, batch invariance, metrics).

A failure anywhere becomes a ``failed`` record with the error's type, message and traceback tail,
and the peak memory so far. :func:`run_cell` runs both halves in the calling process, unconfined
(conformance tests and tools that need a method's record in-process).
"""
from __future__ import annotations

import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import records, registry
from benchmarks.audits import order_probe
from benchmarks.audits import prompts as prompt_audit
from benchmarks.contract import CellContext, FitData, wants_full_history, without_labels
from benchmarks.data import audit, canonical, protocols, sources
from benchmarks.data.cache import ENV_VAR, cache_root, method_cache
from benchmarks.data.cards import known_cards, load_card
from benchmarks.execution import encoder_log, env, evaluation, full_ranking, padding, progress, sandbox
from benchmarks.execution.timing import (
    Timing,
    record_memory,
    release_freed_memory,
    reset_peak_memory,
    timed_fit,
    timed_score,
)
from benchmarks.suite import Cell, Suite, config_dict, config_hash
from methods.device_plan import determinism


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def apply_device_env(device: str) -> None:
    """Set the environment the device plan asks for (:func:`methods.device_plan.determinism`: on CUDA
    ``CUBLAS_WORKSPACE_CONFIG``), keeping a value already set. It must come before CUDA initializes,
    which reads it: :func:`run_method` calls it first, before torch is imported in a cell's process."""
    for name, value in determinism(device)[1]:
        os.environ.setdefault(name, value)


def seed_everything(seed: int, family: str, device: str = "cpu") -> None:
    """Seed Python, NumPy and (for methods with parameters) torch, CPU and CUDA.

    Also torch's deterministic algorithms where the device plan says so
    (:func:`methods.device_plan.determinism`). On CPU: otherwise ``index_put_(accumulate=True)``, the
    backward of indexing a tensor with repeated indices, adds from several threads with atomics once
    it has 32,768 elements, so a rerun's weights differ in the last bits whenever two threads hit one
    element in another order (README, "Determinism"). On CUDA with ``CUBLAS_WORKSPACE_CONFIG``
    (:func:`apply_device_env`), without which a deterministic cuBLAS call raises; an op that has no
    deterministic CUDA kernel raises too, naming itself. Uninitialized memory is left as it is (the
    mode would fill it with NaN, which only costs time).
    """
    random.seed(seed)
    np.random.seed(seed)
    if family != "reference":
        import torch

        torch.manual_seed(seed)
        if determinism(device)[0]:
            apply_device_env(device)
            torch.use_deterministic_algorithms(True)
            torch.utils.deterministic.fill_uninitialized_memory = False


def _source_folders() -> list[Path]:
    """Where every dataset card's raw files lie (a method reads none of them)."""
    return [sources.source_folder(source.location) for name in known_cards() for source in load_card(name).sources]


def run_method(suite: Suite, cell: Cell, run_dir: Path, run_id: str, confine: bool) -> tuple[records.CellRecord, dict]:
    """The method's half of ``cell``: (its record without metrics, the scores to evaluate).

    With ``confine``, the process can no longer read label files afterwards (for good).
    """
    entry = registry.get_entry(cell.method)
    card = load_card(cell.dataset)
    dataset_entry = next(d for d in suite.datasets if d.name == cell.dataset)
    spec = suite.methods[cell.method]
    budget = suite.budget_for(cell.dataset)
    record = records.CellRecord(
        schema=records.SCHEMA_VERSION, run_id=run_id, suite=suite.name, suite_version=suite.version,
        cell=cell.key, dataset=cell.dataset, tiny=dataset_entry.tiny, task=cell.task, protocol_hash="",
        protocol_params={}, dataset_sha256={}, method=cell.method, family=entry.family, method_config={},
        method_config_hash="", seed=cell.seed, shots=cell.shots, status="failed",
        budget=asdict(budget), device=suite.device, started_at=now(), provenance=registry.provenance(entry))
    timing = Timing()
    bundle: dict = {}
    apply_device_env(suite.device)  # before anything initializes CUDA
    reset_peak_memory(suite.device)
    prompt_audit.reset()
    workdir = Path(tempfile.mkdtemp(prefix="cell-", dir=run_dir / "work"))
    try:
        data = canonical.load(cell.dataset, tiny=dataset_entry.tiny)
        protocol = protocols.load(data, cell.task)
        record.protocol_hash = protocol.info.hash
        record.protocol_params = dict(protocol.info.params)
        record.dataset_sha256 = data.source_sha256
        record.data_quality = dict(data.data_quality)
        catalog, info = data.catalog, protocol.info
        record.audit = _audit(protocol, cell, spec.shots)
        audit.require_passed(record.audit)

        config = registry.resolve_config(entry, spec.config_for(cell.dataset))
        record.method_config = config_dict(config)
        record.method_config_hash = config_hash(cell.method, record.method_config)

        train = protocol.few_shot(cell.shots, cell.seed)
        train_full = protocol.train
        valid = evaluation.evaluation_split(protocol, "valid", budget.valid_cap)
        test = without_labels(evaluation.evaluation_split(protocol, "test", budget.eval_cap)).copy()
        if wants_full_history(config, cell.task):
            train, valid, test = (protocols.with_full_histories(data.interactions, frame)
                                  for frame in (train, valid, test))
        del data, protocol  # the interactions and the test labels: nothing in this process holds them now
        gc.collect()
        release_freed_memory()
        n_candidates = card.protocols[cell.task].get("n_candidates")

        def validate(scores: np.ndarray) -> dict[str, float]:
            from benchmarks import metrics

            checked = metrics.check_scores(cell.task, scores, len(valid), n_candidates)
            return metrics.compute(cell.task, valid["label"].to_numpy(), checked)

        fit_data = FitData(task=cell.task, train=train, train_full=train_full, valid=without_labels(valid),
                           validate=validate, catalog=catalog, protocol=info)
        ctx = CellContext(seed=cell.seed, device=suite.device, batch_size=budget.batch_size,
                          max_epochs=budget.max_epochs, workdir=workdir, cache_dir=method_cache(),
                          llm=spec.llm or suite.llm, quant=suite.quant, dataset=cell.dataset)
        if confine:
            record.isolation = _confine(run_dir, workdir)
        seed_everything(cell.seed, entry.family, suite.device)
        method = entry.load_class()(config, ctx)
        record.n_train, record.n_eval = (len(train) if entry.trains else 0), len(test)

        before_fit = padding.totals()
        progress.report("fit")
        timed_fit(method, fit_data, suite.device, timing, trains=entry.trains)
        after_fit = padding.totals()
        scores, probes = timed_score(method, test, suite.device, budget.batch_size,
                                     budget.warmup, budget.latency_samples, timing)
        full_scores = None
        if full_ranking.applies(cell.task, entry.family):
            progress.report("full ranking")
            if len(test) * catalog.n_items <= full_ranking.MAX_SCORES:
                full_scores, timing.full_ranking_seconds = full_ranking.score_catalogue(method, test, catalog.n_items,
                                                                                        budget.batch_size)
                record.full_ranking = {"n_items": catalog.n_items}
            else:
                record.full_ranking = {"n_items": catalog.n_items, "skipped": f"{len(test)} samples x "
                                       f"{catalog.n_items} items is over {full_ranking.MAX_SCORES:,} scores"}
        probed = None
        if order_probe.applies(cell.task, entry.family):
            progress.report("order probe")
            subset = evaluation.frozen_subset(test, budget.order_probe_samples, f"{info.hash}/order-probe")
            timing.order_probe_seconds, probed = order_probe.rescore(method.score, subset, info.hash)
        record.padding = {name: value for name, value in (("fit", padding.phase(before_fit, after_fit)),
                                                          ("score", padding.phase(after_fit, padding.totals())))
                          if value is not None} or None
        record.encoders = encoder_log.events() or None
        bundle = {"sample_id": test["sample_id"].to_numpy(), "score": np.asarray(scores, dtype=np.float64),
                  "probe": np.concatenate(probes).astype(np.float64) if probes else np.zeros((0,))}
        if full_scores is not None:
            bundle["full_score"] = full_scores
        if probed is not None:
            bundle.update({f"order_{name}": values for name, values in probed.items()})
        counts = method.parameter_counts()
        record.parameters = asdict(counts) if counts is not None else None
        describe = getattr(method, "backbone_info", None)
        record.backbone = describe() if callable(describe) else None
        if record.backbone is not None:
            record_memory(suite.device, timing)  # the method's peak, before the probe may load a backbone
            del method
            gc.collect()
            progress.report("memorization probe")
            started = time.perf_counter()
            record.backbone["memorization"] = _memorization(record.backbone, catalog, record, ctx)
            timing.memorization_seconds = time.perf_counter() - started
        record.status = "ok"
    except Exception as err:  # noqa: BLE001 - every failure becomes a record; the suite goes on
        record.error = evaluation.error_info(err)
    finally:
        if record.audit is not None:
            record.audit = _with_prompt_audit(record.audit)
        if timing.peak_memory_mb is None:
            record_memory(suite.device, timing)
        record.timing = timing.as_dict()
        record.host = env.process_facts()
        record.finished_at = now()
        shutil.rmtree(workdir, ignore_errors=True)
    return record, bundle


def _audit(protocol: protocols.FrozenProtocol, cell: Cell, suite_shots: tuple) -> dict:
    """The protocol's stored audit and the check of this cell's few-shot subsets (those of its seed
    at every size the suite gives the method: nested, disjoint from valid and test)."""
    sizes = sorted({int(k) for k in (*suite_shots, cell.shots) if k != "full"})
    few_shot = (audit.audit_few_shot({k: protocol.few_shot(k, cell.seed) for k in sizes}, protocol.valid, protocol.test)
                if sizes else None)
    scopes = {"protocol": protocol.info.audit, "few_shot": few_shot}
    return {**scopes, "passed": all(s is None or s["passed"] for s in scopes.values())}


def _memorization(info: dict, catalog, record: records.CellRecord, ctx: CellContext) -> dict | None:
    """The backbone's memorization of the cell's dataset (:mod:`benchmarks.audits.memorization`), cached
    per (backbone, dataset): on a miss, the bare backbone is loaded again (float32 compute on CPU, as
    every probe of it is) and probed. A probe that fails is recorded as its error; the cell stands."""
    from benchmarks.audits import memorization

    def load():
        from methods.backbone import load_backbone

        return load_backbone(ctx.llm, ctx.quant, ctx.device, cache=ctx.cache_dir, cpu_dtype="float32")

    expected = {**info, "compute_dtype": "float32"} if ctx.device == "cpu" else info
    try:
        result = memorization.probe_backbone(load, catalog, record.dataset, record.dataset_sha256, ctx.cache_dir,
                                             info=expected)
    except Exception as err:  # noqa: BLE001 - an informational probe never fails the cell
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
    if result is None:
        return None
    # "cached" says only whether this process computed it (timing.memorization_seconds says that too)
    return {k: v for k, v in result.items() if k not in ("prompt_prefix", "keyed_by", "cached")}


def _with_prompt_audit(audit_scopes: dict) -> dict:
    """The cell's audit with the answer-in-prompt counts of every prompt its method rendered
    (:mod:`benchmarks.audits.prompts`; None for methods that render none)."""
    scopes = {**{k: v for k, v in audit_scopes.items() if k != "passed"}, "prompts": prompt_audit.result()}
    return {**scopes, "passed": all(s is None or s["passed"] for s in scopes.values())}


def _library_caches() -> list[Path]:
    """The caches the method's libraries write and read back (Hugging Face, torch, matplotlib)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(os.environ.get(name) or base / default)
            for name, default in (("HF_HOME", "huggingface"), ("TORCH_HOME", "torch"), ("MPLCONFIGDIR", "matplotlib"))]


def _confine(run_dir: Path, workdir: Path) -> dict:
    """Close this process's routes to labels: the environment's cache path, temp files outside the
    workdir, and (through Landlock) every file that holds answers."""
    os.environ.pop(ENV_VAR, None)
    os.environ["TMPDIR"] = str(workdir)
    tempfile.tempdir = str(workdir)
    for folder in _library_caches():  # a folder made after confinement beside a denied one is unreadable
        folder.mkdir(parents=True, exist_ok=True)
    confined = sandbox.confine(sandbox.label_paths(cache_root(), _source_folders(), run_dir, workdir))
    return {**confined, "denied": sandbox.DENIED}


def run_cell(suite: Suite, cell: Cell, run_dir: Path, run_id: str) -> records.CellRecord:
    """Both halves of ``cell`` in this process, unconfined; returns the finished record."""
    record, bundle = run_method(suite, cell, run_dir, run_id, confine=False)
    return records.CellRecord(**evaluation.finish(record.as_dict(), bundle, run_dir))


def progress_path(out: str | Path) -> Path:
    """Where the cell process reports its phase beside its record file ``out`` (progress.py)."""
    return Path(str(out)[: -len(".json")] + ".progress")


def bundle_path(out: str | Path) -> Path:
    """Where the cell process leaves its scores beside its record file ``out``."""
    return Path(str(out)[: -len(".json")] + ".scores.npz")


def main(argv: list[str] | None = None) -> int:
    """Entry point of a cell's own process: ``python -m benchmarks.execution.cell SUITE_JSON CELL_JSON RUN_DIR OUT``
    (the method's half; the executor finishes the record)."""
    from benchmarks.suite import parse

    suite_path, cell_json, run_dir, out = argv or sys.argv[1:]
    progress.write_to(progress_path(out))
    progress.report("loading data")
    raw = json.loads(Path(suite_path).read_text())
    suite = parse(raw["suite"], raw["source"])
    cell = Cell(**json.loads(cell_json))
    record, bundle = run_method(suite, cell, Path(run_dir), raw["run_id"], confine=True)
    if bundle:
        np.savez(bundle_path(out), **bundle)
    tmp = out + ".tmp"
    Path(tmp).write_text(json.dumps(record.as_dict(), sort_keys=True))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
