"""Compute a prompt prefix's keys and values once, then run many continuations on top of them.

Two uses, one mechanism:

* one shared instruction, many sample suffixes (ctr): every TALLRec prompt starts with the same
  instruction (about 45% of its tokens); :func:`encode_prefix` runs it once (batch of 1) and
  :func:`run_continuations` runs each batch of sample suffixes against copies of its cache;
* one prompt, many continuations (next_item): a batch of per-sample prompts is encoded once and each
  of C candidate titles continues its own prompt (``rows`` maps continuation -> prefix row).

Layout. Prefixes may differ in length: they are LEFT-padded (``attention_mask`` 0 on the pads) and
their position ids count real tokens only, so a padded prefix computes what it would alone.
Continuations are RIGHT-padded; their positions continue from their prefix's real length, and
causal attention keeps the trailing pads from touching real tokens. The logit that predicts the
token after continuation ``b``'s last real token is ``logits[b, length_b - 1]``.

The prefix cache depends on the weights (LoRA on ``q_proj``/``v_proj`` changes every key and
value): encode again after any update. Equivalence to a full pass is tested in float32 to 1e-4
(``tests/test_llm_prefix_cache.py``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: ``forward(model, **inputs) -> output with .logits and .past_key_values``; a method can wrap the
#: model call (per-sample gates, extra input embeddings) without this module knowing.
ModelCall = Callable[..., Any]


def call_model(model, **inputs):
    """The plain model call: ``model(**inputs)``."""
    return model(**inputs)


@dataclass
class Prefix:
    """Keys and values of ``P`` prefixes, kept read-only (continuations get copies).

    Attributes:
        layers: per decoder layer, ``(keys, values)`` of shape ``[P, kv_heads, Lp, head_dim]``.
        attention_mask: ``[P, Lp]`` long, 0 on left padding.
        lengths: ``[P]`` long, number of real tokens of each prefix.
        last_logits: ``[P, vocab]``, the logits after each prefix's last token.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    last_logits: torch.Tensor

    @property
    def size(self) -> int:
        return self.attention_mask.shape[0]

    def cache_for(self, rows: torch.Tensor, config) -> Any:
        """A fresh ``DynamicCache`` holding prefix row ``rows[b]`` at batch position ``b``."""
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.index_select(0, rows), values.index_select(0, rows), index)
        return cache


def positions_from_mask(attention_mask: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids that count real tokens only: ``start + cumsum(mask) - 1`` (pads get 0 or start)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp(min=0)
    if start is not None:
        positions = positions + start[:, None]
    return positions


def encode_prefix(model, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                  *, inputs_embeds: torch.Tensor | None = None, forward: ModelCall = call_model,
                  **extra: Any) -> Prefix:
    """Run the prefix tokens (``[P, Lp]``, left-padded) once and keep their keys and values.

    ``inputs_embeds`` replaces ``input_ids`` (hybrid prompts); ``extra`` goes to ``forward``.
    """
    source = input_ids if input_ids is not None else inputs_embeds
    if attention_mask is None:
        attention_mask = torch.ones(source.shape[:2], dtype=torch.long, device=source.device)
    from transformers import DynamicCache

    out = forward(model, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                  position_ids=positions_from_mask(attention_mask), past_key_values=DynamicCache(config=model.config),
                  use_cache=True, **{"logits_to_keep": 1, **extra})
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    return Prefix(layers, attention_mask.long(), attention_mask.long().sum(-1), out.logits[:, -1])


def run_continuations(model, prefix: Prefix, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                      rows: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
                      forward: ModelCall = call_model, **extra: Any) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` of right-padded continuations ``[B, T]`` on top of prefix rows ``rows``.

    Args:
        rows: ``[B]`` index of each continuation's prefix; default: all 0 when the prefix holds one
            row, else ``arange(B)``.
    """
    batch = attention_mask.shape[0]
    device = attention_mask.device
    if rows is None:
        rows = torch.zeros(batch, dtype=torch.long, device=device) if prefix.size == 1 else \
            torch.arange(batch, device=device)
    mask = torch.cat([prefix.attention_mask.index_select(0, rows), attention_mask.long()], dim=1)
    positions = positions_from_mask(attention_mask, start=prefix.lengths.index_select(0, rows))
    out = forward(model, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask,
                  position_ids=positions, past_key_values=prefix.cache_for(rows, model.config),
                  use_cache=True, **extra)
    return out.logits
