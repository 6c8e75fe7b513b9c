"""The method contract: what the harness hands a method, and what a method hands back.

A method is any class registered with :func:`benchmarks.registry.register_method` that is built as
``cls(config, ctx)`` and answers three calls:

* ``fit(data: FitData) -> None``: learn from the train view of a frozen protocol. May call
  ``data.validate(scores)`` for early stopping; the harness computes the metric, never the method.
* ``score(samples: pandas.DataFrame) -> numpy.ndarray``: scores for evaluation samples whose label
  columns the harness has removed.
    - task ``ctr``: shape ``[n]``, the probability of a positive, in [0, 1].
    - task ``next_item``: shape ``[n, C]``, one score per candidate (higher = more likely). A
      generation-based method that picks one candidate returns a one-hot row (1.0 at the choice, 0.0
      elsewhere) and a row of NaN where its answer matched no candidate (counted by ValidRatio).
* ``parameter_counts() -> ParameterCounts | None``: trainable and total parameters and a digest of
  their values (build it with :func:`count_parameters`), or None for methods without parameters.

The harness times ``fit`` and ``score``; a method never times itself.

Sample tables (pandas, one row per sample; produced by :mod:`benchmarks.data.protocols`):

=================  =========================  ===============================================
column             dtype                      meaning
=================  =========================  ===============================================
``sample_id``      int64                      position of the sample in its split
``user``           int64                      dense user code (see ``Catalog.users``)
``item``           int64                      the target item (dense item code); in next_item
                                              the answer, removed for scoring
``timestamp``      int64                      unix seconds of the target interaction
``history``        list<int64>                the user's earlier items, oldest first, at most
                                              ``protocol.params["max_history"]`` of them
``history_ratings`` list<float32>             the ratings of ``history`` (same length)
``label``          int64                      ctr: 1 if rating > threshold else 0;
                                              next_item: index of the target in ``candidates``
``rating``         float32                    ctr only: the target's rating (removed for scoring)
``candidates``     list<int64>                next_item only: C frozen candidates incl. the target
=================  =========================  ===============================================

Prompts use the last ``protocol.params["history_len"]`` items of ``history`` (K = 10 by default);
models that read longer sequences (RecBole, RecLoRA's CRM) may use all of it.

A ctr method whose config has ``history_pool: full`` (a retriever that chooses among ALL of a user's
earlier items, as ReLLa and RecLoRA do) also gets ``full_history`` / ``full_history_ratings``: the same
items as ``history`` without the ``max_history`` cap, in ``FitData.train``, ``FitData.valid`` and the
samples ``score`` receives (not in ``train_full``, which can be a whole 20M-sample split). The harness
looks them up before the method is built (:func:`benchmarks.data.protocols.with_full_histories`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

TASKS = ("ctr", "next_item")

#: Columns that carry the answer, per task; the harness drops them before ``score`` sees the samples
#: (and from ``FitData.valid``). In next_item the target item itself is the answer: the method sees
#: the user, the history and the candidates.
ANSWER_COLUMNS = {"ctr": ("label", "rating"), "next_item": ("label", "item")}


@dataclass(frozen=True)
class Catalog:
    """Side tables of a dataset, shared by every cell on it.

    Attributes:
        items: DataFrame with columns ``item`` (int64 dense code, 0..n_items-1), ``raw_id`` (str),
            ``title`` (clean text for prompts), ``year`` (Int64, may be NA), ``genres`` (str, "|"-joined)
            and any card-declared text fields.
        users: DataFrame with ``user`` (int64 dense code) and ``raw_id``, plus side features.
        domain: words for prompts, e.g. ``{"item": "movie", "items": "movies", "verb": "watched"}``.
    """

    name: str
    items: pd.DataFrame
    users: pd.DataFrame
    domain: Mapping[str, str]

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def titles(self, items: np.ndarray | list[int]) -> list[str]:
        """Titles of the given item codes, in order."""
        return self.items["title"].to_numpy()[np.asarray(items, dtype=np.int64)].tolist()


@dataclass(frozen=True)
class ProtocolInfo:
    """Name, parameters, content hash and leakage audit of the frozen protocol a cell runs on."""

    name: str  # "ctr" | "next_item"
    params: Mapping[str, Any]
    hash: str
    audit: Mapping[str, Any] | None = None  # benchmarks.data.audit.audit_protocol: checks, counts, passed


@dataclass(frozen=True)
class FitData:
    """What ``Method.fit`` receives.

    Attributes:
        train: the training samples with labels (a frozen few-shot subset when the cell has ``shots``).
        train_full: the whole train split with labels (for conventional models that see all of it,
            e.g. RecLoRA's CRM under Few2Many).
        valid: validation samples WITHOUT label columns.
        validate: ``validate(scores) -> {metric: value}`` computed by the harness on ``valid``;
            for early stopping. ``scores`` has the shape ``score`` would return for ``valid``.
        catalog: items, users and domain words.
        protocol: protocol name, parameters and hash.
    """

    task: str
    train: pd.DataFrame
    train_full: pd.DataFrame
    valid: pd.DataFrame
    validate: Callable[[np.ndarray], dict[str, float]]
    catalog: Catalog
    protocol: ProtocolInfo


@dataclass(frozen=True)
class CellContext:
    """Everything about the cell a method may need besides data.

    Attributes:
        seed: the cell's seed; a method seeds every generator it uses from it.
        device: "cpu" or "cuda[:i]".
        batch_size: the suite's batch size for training and scoring.
        max_epochs: the suite's epoch cap (methods take min(own setting, cap)).
        workdir: a scratch folder private to the cell (deleted after it unless kept).
        cache_dir: the method part of the benchmark's cache (converted backbones, tokenized prompts,
            trained encoders); None keeps nothing on disk (backbones then go to the default cache).
        llm: backbone id or local path for LLM methods ("" = the offline default).
        quant: "nf4" (default) or "none".
        dataset: dataset card name, for cache keys.
        extras: free-form suite values a family of methods understands (documented where read).
    """

    seed: int
    device: str = "cpu"
    batch_size: int = 32
    max_epochs: int | None = None
    workdir: Path = Path(".")
    cache_dir: Path | None = None
    llm: str = ""
    quant: str = "nf4"
    dataset: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParameterCounts:
    """What a fitted model holds.

    Attributes:
        trainable: parameters ``fit`` updated.
        total: every parameter, a bitsandbytes 4-bit weight at its unpacked size.
        sha256: digest of every parameter's bytes, in order, after ``fit``. Two runs with equal
            digests trained to the same bits, so a score difference between them arose at scoring
            time; different digests place it in training (see README, "Determinism").
    """

    trainable: int
    total: int
    sha256: str | None = None


def count_parameters(parameters: Iterable, trainable: Iterable | None = None, *,
                     digest: bool = True) -> ParameterCounts:
    """Counts (and the digest) of ``parameters``, torch tensors listed once each.

    Args:
        parameters: everything the fitted model holds (backbone, adapters, frozen encoders).
        trainable: the part ``fit`` updated; default: those with ``requires_grad``.
        digest: hash the values (skip it where only the size is wanted).
    """
    params = list(parameters)
    updated = [p for p in params if p.requires_grad] if trainable is None else list(trainable)
    total = 0
    for param in params:
        state = getattr(param, "quant_state", None)  # 4-bit weights pack two values per byte
        total += int(state.shape.numel()) if state is not None else param.numel()
    return ParameterCounts(trainable=sum(p.numel() for p in updated), total=total,
                           sha256=weights_digest(params) if digest else None)


def weights_digest(tensors: Iterable) -> str:
    """sha256 over the raw bytes of each tensor, in order (dtype and values, not shapes)."""
    import hashlib

    import torch

    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


@runtime_checkable
class Method(Protocol):
    """The three calls every registered method answers (see the module docstring)."""

    def fit(self, data: FitData) -> None: ...

    def score(self, samples: pd.DataFrame) -> np.ndarray: ...

    def parameter_counts(self) -> ParameterCounts | None: ...


HISTORY_POOLS = ("stored", "full")


def wants_full_history(config: Any, task: str) -> bool:
    """Whether a method with ``config`` asks for the uncapped history columns (its ``history_pool``
    field, "stored" when it has none; see the module docstring).

    Raises:
        ValueError: an unknown pool, or "full" on a next_item protocol (whose histories are cut by
            position, not by the target's second: a pool there is not defined).
    """
    pool = getattr(config, "history_pool", "stored")
    if pool not in HISTORY_POOLS:
        raise ValueError(f"history_pool must be one of {HISTORY_POOLS}, got {pool!r}")
    if pool == "full" and task != "ctr":
        raise ValueError(f"history_pool: full is defined for ctr protocols only, not {task}")
    return pool == "full"


def without_labels(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples as a method may see them at scoring time: without :data:`ANSWER_COLUMNS` of their task
    (next_item samples are the ones with ``candidates``)."""
    answers = ANSWER_COLUMNS["next_item" if "candidates" in samples.columns else "ctr"]
    return samples.drop(columns=[c for c in answers if c in samples.columns])
