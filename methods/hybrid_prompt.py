"""Hybrid prompts (LLaRA): item positions whose input embedding is projector(conventional item vector).

LLaRA (Liao et al., "LLaRA: Large Language-Recommendation Assistant", SIGIR 2024, Sec. 3.2; code
ljy0ustc/LLaRA ``model/mlp_projector.py``, reused by AkaliKong/iLoRA) places a token after each
history and candidate title whose embedding is the SASRec item embedding mapped into the LLM's
space by a trainable two-layer MLP::

    e(item) = W2 GELU(W1 v_item + b1) + b2,      W1: [d_llm, d_rec],  W2: [d_llm, d_llm]

:class:`HybridEmbedding` is the LLM's input embedding extended to such positions: a token id
``>= base`` (``base`` = rows of the token embedding table) stands for item ``id - base`` (see
:mod:`methods.next_item_prompts`). Item vectors are a frozen copy; only the projector trains.
"""
from __future__ import annotations

import torch
from torch import nn


class ItemProjector(nn.Module):
    """LLaRA's projector: ``Linear(d_rec, d_llm) -> GELU -> Linear(d_llm, d_llm)`` (PyTorch's default init)."""

    def __init__(self, rec_dim: int, llm_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(rec_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[..., d_rec]`` -> ``[..., d_llm]``."""
        return self.mlp(vectors)


class HybridEmbedding(nn.Module):
    """Token embeddings, except that ids ``>= base`` are items embedded as ``projector(item_vectors[id - base])``.

    Args:
        token_embedding: the backbone's input embedding (frozen; read, never changed).
        item_vectors: ``[n_items, d_rec]``, row = dense item code (e.g. SASRec's item embeddings).
        projector: maps ``d_rec`` to the embedding width.
    """

    def __init__(self, token_embedding: nn.Embedding, item_vectors: torch.Tensor, projector: nn.Module):
        super().__init__()
        self.token_embedding = token_embedding
        self.base = token_embedding.num_embeddings
        self.projector = projector
        self.register_buffer("item_vectors", item_vectors.detach().float().clone(), persistent=False)

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, d_llm]`` embeddings.

        Raises:
            IndexError: an item id beyond the item table.
        """
        is_item = input_ids >= self.base
        embeds = self.token_embedding(input_ids.masked_fill(is_item, 0))
        if not bool(is_item.any()):
            return embeds
        items = input_ids[is_item] - self.base
        if int(items.max()) >= self.n_items:
            raise IndexError(f"item position {int(items.max())} beyond the {self.n_items} item vectors")
        projected = self.projector(self.item_vectors[items]).to(embeds.dtype)
        return embeds.masked_scatter(is_item[..., None], projected)
