"""The harness's side of a cell once its method is done: the test labels meet the scores here, in a
process the method never ran in (the executor's), so no method can read them (``CONTRIBUTING.md``,
"What a method can read").

In order: the scores' contract (:func:`benchmarks.metrics.check_scores`, the one rule conformance
applies too), batch invariance (the one-by-one latency calls must have returned what the batched call
returned for the same samples, within the family's tolerance), the metrics, and the per-sample
scores saved for intervals and paired tests.
"""
from __future__ import annotations

import hashlib
import traceback
from functools import lru_cache

import numpy as np
import pandas as pd

from benchmarks import metrics, records
from benchmarks.audits import order_probe
from benchmarks.data import canonical, protocols
from benchmarks.data.cards import load_card
from benchmarks.execution import full_ranking

#: |one-by-one - batched| <= tol * (1 + |batched|) per score. Reference and conventional models are
#: exact up to float32 reduction order; 4-bit LLM paths on CPU dequantize NF4 through bf16, and a
#: batch pads prompts to one length, which moves their logits. Largest differences seen in the ci
#: suite on CPU: 6e-8 (DeepFM), 1.2e-7 (SASRec), 8.3e-5 (iLoRA). An LLM whose matmuls compute in bf16
#: (its record's ``backbone.compute_dtype``) rounds differently per batch shape: iLoRA's candidate
#: log-likelihoods (|score| ~ 25) moved by up to 0.26 between batch compositions (1e-2 x (1 + |score|)).
BATCH_TOLERANCE = {"reference": 1e-6, "conventional": 1e-4, "llm": 5e-3, "llm-bfloat16": 3e-2}


class BatchInvarianceError(ValueError):
    """The timed one-by-one calls returned other scores than the batched call."""


def frozen_subset(frame: pd.DataFrame, cap: int | None, key: str) -> pd.DataFrame:
    """At most ``cap`` rows, the same for every method and seed (keyed by the protocol hash)."""
    if cap is None or len(frame) <= cap:
        return frame
    order = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)).permutation(len(frame))
    return frame.iloc[np.sort(order[:cap])].reset_index(drop=True)


def evaluation_split(protocol: protocols.FrozenProtocol, split: str, cap: int | None) -> pd.DataFrame:
    """The frozen evaluation subset of ``split`` ("valid" or "test"), labels included."""
    return frozen_subset(protocol.split(split), cap, f"{protocol.info.hash}/{split}")


@lru_cache(maxsize=4)
def _test_split(dataset: str, tiny: bool, task: str, cap: int | None) -> pd.DataFrame:
    protocol = protocols.load(canonical.load(dataset, tiny=tiny), task)
    return evaluation_split(protocol, "test", cap)


def error_info(err: BaseException) -> dict:
    return {"type": type(err).__name__, "message": str(err)[:2000],
            "traceback": "".join(traceback.format_exception(err))[-4000:]}


def check_batch_invariance(scores: np.ndarray, probes: np.ndarray, sample_ids: np.ndarray, family: str,
                           compute_dtype: str = "") -> dict:
    """Compare the one-by-one outputs ``probes`` (rows 0..k-1) with the batched ``scores``, within
    the tolerance of ``family`` (of ``family-compute_dtype`` where one is set, as for bf16 LLMs)."""
    family = f"{family}-{compute_dtype}" if f"{family}-{compute_dtype}" in BATCH_TOLERANCE else family
    tolerance = BATCH_TOLERANCE[family]
    batched = scores[: len(probes)]
    if probes.shape != batched.shape:
        raise BatchInvarianceError(f"score() of one sample returned shape {probes.shape[1:]} per sample, the "
                                   f"batched call {batched.shape[1:]}")
    both_nan = np.isnan(probes) & np.isnan(batched)
    diff = np.where(both_nan, 0.0, np.nan_to_num(np.abs(probes - batched), nan=np.inf))
    bound = tolerance * (1 + np.nan_to_num(np.abs(batched)))
    bad = (diff > bound).reshape(len(probes), -1).any(axis=1)
    worst = float(diff.max()) if diff.size else 0.0
    if bad.any():
        raise BatchInvarianceError(f"the timed one-by-one calls returned other scores than the batched call for "
                                   f"sample_id {sample_ids[: len(probes)][bad].tolist()}: max |difference| "
                                   f"{worst:.3g} > {tolerance:g} x (1 + |score|) ({family} tolerance)")
    return {"samples": int(len(probes)), "max_abs_diff": worst, "tolerance": tolerance}


def _full_ranking_metrics(record: dict, test: pd.DataFrame, full: np.ndarray) -> dict[str, float]:
    """HR@10, NDCG@10, MRR over the whole catalogue (:mod:`benchmarks.execution.full_ranking`)."""
    n_items = record["full_ranking"]["n_items"]
    if full.shape != (len(test), n_items):
        raise ValueError(f"full-ranking scores must have shape ({len(test)}, {n_items}), got {full.shape}")
    if np.isinf(full).any():
        raise ValueError("full-ranking scores must be finite (NaN marks an invalid answer)")
    seen = full_ranking.seen_items(record["dataset"], record["tiny"])
    ranks = full_ranking.target_ranks(full, test["user"].to_numpy(), test["item"].to_numpy(), seen)
    return full_ranking.metrics_from_ranks(ranks)


def finish(record: dict, bundle: dict, run_dir) -> dict:
    """``record`` (from the method's process) completed with metrics, or failed with the reason.

    ``bundle`` holds what the method's process scored: ``sample_id``, ``score`` (batched),
    ``probe`` (the one-by-one outputs, stacked), for full ranking ``full_score``, and for the order probe
    ``order_sample_id`` with the scores of each ordering (``order_reversed``, ``order_shuffled``). The test split
    is the record's own (its dataset, tiny flag, task and evaluation cap).
    """
    if record.get("status") != "ok":
        return record
    try:
        test = _test_split(record["dataset"], record["tiny"], record["task"], record["budget"]["eval_cap"])
        if not np.array_equal(bundle["sample_id"], test["sample_id"].to_numpy()):
            raise ValueError("the scored samples are not the frozen test samples (sample_id differ)")
        n_candidates = load_card(record["dataset"]).protocols[record["task"]].get("n_candidates")
        scores = metrics.check_scores(record["task"], bundle["score"], len(test), n_candidates)
        probes = bundle["probe"]
        if len(probes):  # a suite may time no sample one by one (warmup and latency_samples 0)
            probes = metrics.check_scores(record["task"], probes, len(probes), n_candidates)
            record["batch_check"] = check_batch_invariance(scores, probes, bundle["sample_id"], record["family"],
                                                           (record.get("backbone") or {}).get("compute_dtype", ""))
        labels = test["label"].to_numpy()
        record["metrics"] = metrics.compute(record["task"], labels, scores)
        if "full_score" in bundle:
            record["full_ranking"]["metrics"] = _full_ranking_metrics(record, test, bundle["full_score"])
        if "order_sample_id" in bundle:
            rows = pd.Index(bundle["sample_id"]).get_indexer(bundle["order_sample_id"])
            probed = {name: bundle[f"order_{name}"] for name in order_probe.ORDERINGS}
            record["order_probe"] = order_probe.summarize(scores[rows], probed, labels[rows])
        records.save_scores(run_dir, record["cell"], bundle["sample_id"], labels, scores)
    except Exception as err:  # noqa: BLE001 - a failed check is the cell's failure, the suite goes on
        record.update(status="failed", metrics={}, error=error_info(err))
    return record
