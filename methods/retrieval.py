"""RecLoRA's long-short modality retriever: which K history items the LLM prompt shows.

The conventional model reads a long history (ID modality, up to the protocol's ``max_history``);
the prompt gets a short one (text modality, K = the protocol's ``history_len``). Following ReLLa's
semantic user behaviour retrieval (Lin et al., WWW 2024, Sec. 3.2; LaVieEnRose365/ReLLa
``topK_relevant_*.py`` with the "sequential" prompt), the K items kept are those most similar to
the target item by cosine similarity of item vectors, listed in their original (chronological)
order. ``recent`` keeps the last K instead (the ablation, and TALLRec's choice).

Item vectors are rows of an ``[n_items, d]`` array indexed by dense item code: the CRM's item
embeddings, or the backbone's mean-pooled hidden states of each item's text
(:func:`title_embeddings`, ReLLa's ``get_semantic_embed.py`` with average pooling).

Only the sample's own history is read (the stored window ``history``, or the uncapped
``full_history`` a method gets with ``history_pool: full``): it holds the user's interactions strictly
before the target's second (see :mod:`benchmarks.contract`), so no later item can be chosen. An earlier interaction
with the target item itself (re-consumption datasets) is never chosen: with cosine 1 it would
always rank first. Ties in similarity go to the more recent item.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

STRATEGIES = ("relevant", "recent")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), float64, so a dot product is a cosine."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def relevant_positions(history: np.ndarray, target: int, unit_vectors: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the ``k`` items of ``history`` most similar to ``target``.

    Args:
        history: dense item codes, oldest first.
        unit_vectors: ``[n_items, d]`` rows of length 1 (see :func:`unit_rows`).

    Returns:
        At most ``k`` positions into ``history``, in chronological order; entries equal to ``target``
        are never returned.
    """
    history = np.asarray(history, dtype=np.int64)
    allowed = np.flatnonzero(history != target)
    if len(allowed) <= k:
        return allowed
    similarity = unit_vectors[history[allowed]] @ unit_vectors[target]
    best = np.lexsort((-allowed, -similarity))[:k]  # by similarity, then the more recent first
    return np.sort(allowed[best])


def recent_positions(history: np.ndarray, target: int, k: int) -> np.ndarray:
    """Positions of the last ``k`` items of ``history`` (entries equal to ``target`` skipped)."""
    allowed = np.flatnonzero(np.asarray(history, dtype=np.int64) != target)
    return allowed[len(allowed) - min(k, len(allowed)):]


def select_history(samples: pd.DataFrame, k: int, strategy: str, item_vectors: np.ndarray | None = None,
                   pool: str = "history") -> pd.DataFrame:
    """A copy of ``samples`` whose ``history`` / ``history_ratings`` hold only the K chosen items.

    Args:
        strategy: "relevant" (needs ``item_vectors`` ``[n_items, d]``) or "recent".
        pool: the column the K items are chosen from (with ``<pool>_ratings``): "history", the stored
            window, or "full_history", the user's whole history before the target (ReLLa's pool; see
            :func:`benchmarks.data.protocols.with_full_histories`). The pool columns are not kept.

    Raises:
        ValueError: an unknown strategy, or "relevant" without item vectors.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"retrieval strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "relevant" and item_vectors is None:
        raise ValueError("retrieval 'relevant' needs item vectors (the CRM's or the backbone's)")
    unit = unit_rows(item_vectors) if strategy == "relevant" else None
    histories, ratings = [], []
    for history, rating, target in zip(samples[pool], samples[f"{pool}_ratings"], samples["item"]):
        history = np.asarray(history, dtype=np.int64)
        keep = relevant_positions(history, int(target), unit, k) if unit is not None else \
            recent_positions(history, int(target), k)
        histories.append(history[keep])
        ratings.append(np.asarray(rating)[keep])
    chosen = samples.assign(history=histories, history_ratings=ratings)
    return chosen.drop(columns=[c for c in ("full_history", "full_history_ratings") if c in chosen.columns])


def title_embeddings(backbone, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """``[len(texts), hidden]``: the backbone's last hidden state averaged over each text's tokens.

    Runs the bare backbone (no chat template, no adapters expected), in length-sorted batches.
    """
    import torch

    from methods.scoring import length_buckets, right_padded

    tokenizer, model = backbone.tokenizer, backbone.model
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for rows in length_buckets(np.array([len(i) for i in ids]), batch_size):
            tokens, mask = right_padded([ids[r] for r in rows], tokenizer.pad_token_id, device)
            hidden = model(input_ids=tokens, attention_mask=mask, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * weights).sum(1) / weights.sum(1)).float().cpu().numpy()
    return out
