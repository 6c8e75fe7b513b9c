"""ctr scoring of prompt sets: P(yes) in one forward pass, and the authors' generate-based reference.

One pass (what the methods use): P(yes) = softmax([z_yes, z_no])[0], where z are the logits of the
first tokens of the two answers at the answer position (the last prompt token). TALLRec's own metric
normalizes over the whole vocabulary first and then over the two probabilities, which can rank
samples differently (docs/methods/tallrec.md). No generation, no label slicing. Only the answer position's logits
are computed (``logits_to_keep``), the shared instruction's keys/values are computed once
(:mod:`methods.prefix_cache`) and samples are batched within length buckets (sorted by length, so
each batch pads only to its own longest prompt).

Reference (only for ``benchmarks/perf/llm_scoring.py``): TALLRec's ``evaluate.py`` scores one
prompt at a time with ``model.generate`` (greedy, ``max_new_tokens=128``, stopping at end of
sequence, ``output_scores=True``), takes the softmax over the vocabulary of the FIRST step's scores,
picks the Yes and No probabilities and applies a second softmax to those two probabilities.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.execution import padding
from methods.prefix_cache import ModelCall, Prefix, call_model, encode_prefix, run_continuations
from methods.prompting import AnswerTokens, PromptSet

if TYPE_CHECKING:
    import torch


def length_buckets(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Row indices in batches of ``batch_size`` after a stable sort by length (pad within buckets)."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


def right_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape ``[B, max_len]``, real tokens first, pads after (counted for the
    record's padding waste, :mod:`benchmarks.execution.padding`)."""
    import torch

    width = max(len(s) for s in sequences)
    padding.count(sum(len(s) for s in sequences), width * len(sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def answer_logits(logits_at: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """P(yes) from logits ``[..., vocab]``: softmax over the (yes, no) pair, in float32."""
    pair = logits_at[..., [answers.yes, answers.no]].float()
    return pair.softmax(-1)[..., 0]


def _positions(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct answer positions of a batch (``logits_to_keep``) and each row's index into them."""
    import torch

    keep, where = torch.unique(lengths - 1, return_inverse=True)
    return keep, where


def _model_device(model):
    return next(model.parameters()).device


def yes_probability(model, prompts: PromptSet, answers: AnswerTokens, *, batch_size: int = 32,
                    reuse_prefix: bool = True, pad_id: int = 0, forward: ModelCall = call_model,
                    prefix: Prefix | None = None,
                    extra_inputs: Callable[[np.ndarray], Mapping[str, Any]] | None = None) -> np.ndarray:
    """P(yes) for every row of ``prompts``, in row order (shape ``[n]``, float64).

    Args:
        reuse_prefix: compute the shared prefix once (``prefix`` when given, else encoded here) and
            run only the per-sample parts; False runs every full prompt.
        forward: the model call, for methods that wrap it (see :mod:`methods.prefix_cache`).
        extra_inputs: ``extra_inputs(rows)`` -> per-sample keyword inputs for ``forward`` for the
            rows of one batch (as in :func:`methods.training.train`), e.g. RecLoRA's gate condition.
    """
    import torch

    device = _model_device(model)
    suffixes = prompts.table["suffix_ids"]
    out = np.empty(len(suffixes), dtype=np.float64)
    with torch.inference_mode():
        if reuse_prefix and prefix is None:
            prefix = encode_prefix(model, torch.tensor([prompts.prefix_ids], device=device), forward=forward)
        for rows in length_buckets(prompts.suffix_lengths(), batch_size):
            parts = [suffixes[r] if reuse_prefix else prompts.prefix_ids + suffixes[r] for r in rows]
            ids, mask = right_padded(parts, pad_id, device)
            keep, where = _positions(mask.sum(-1))
            extra = extra_inputs(rows) if extra_inputs is not None else {}
            if reuse_prefix:
                logits = run_continuations(model, prefix, ids, mask, forward=forward, logits_to_keep=keep, **extra)
            else:
                logits = forward(model, input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
            at_answer = logits[torch.arange(len(rows), device=device), where]
            out[rows] = answer_logits(at_answer, answers).cpu().numpy()
    return out


@dataclass(frozen=True)
class ReferenceResult:
    """What TALLRec's evaluation produces per prompt: its score and the generated tokens."""

    scores: np.ndarray           # [n] softmax over (P(yes), P(no)) of the first step
    new_tokens: np.ndarray       # [n] tokens generated before stopping
    texts: list[str]             # the decoded responses


def generate_reference(model, tokenizer, prompts: PromptSet, answers: AnswerTokens,
                       max_new_tokens: int = 128) -> ReferenceResult:
    """TALLRec's generate-based scoring, one prompt at a time (see the module docstring)."""
    import torch
    from transformers import GenerationConfig

    device = _model_device(model)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              return_dict_in_generate=True, output_scores=True)
    scores, lengths, texts = [], [], []
    with torch.inference_mode():
        for row in range(len(prompts)):
            ids = torch.tensor([prompts.full_ids(row)], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            first = out.scores[0].softmax(-1)[0]
            pair = torch.tensor([first[answers.yes], first[answers.no]], dtype=torch.float32).softmax(-1)
            scores.append(float(pair[0]))
            generated = out.sequences[0, ids.shape[1]:]
            lengths.append(len(generated))
            texts.append(tokenizer.decode(generated, skip_special_tokens=True).strip())
    return ReferenceResult(np.asarray(scores), np.asarray(lengths), texts)


class CtrScorer:
    """A backbone, a prompt template and a dataset bound together: samples in, P(yes) out.

    Keeps the shared prefix's keys/values between calls (the harness scores in many small batches);
    call :meth:`invalidate` after the weights change.
    """

    def __init__(self, backbone, template: str, catalog, protocol, forward: ModelCall = call_model):
        from benchmarks.data.cards import load_card
        from methods.prompting import CtrPrompts, PromptTemplate

        card = load_card(catalog.name)
        self.backbone = backbone
        self.forward = forward
        self.builder = CtrPrompts(PromptTemplate.load(template), backbone.tokenizer, catalog,
                                  protocol.params["history_len"], card.label_threshold)
        self._prefix: Prefix | None = None

    @property
    def answers(self) -> AnswerTokens:
        return self.builder.answers

    @property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def prompts(self, samples, cache_dir=None) -> PromptSet:
        return self.builder.build(samples, cache_dir)

    def invalidate(self) -> None:
        """Forget the cached prefix (the weights changed)."""
        self._prefix = None

    def score(self, samples, batch_size: int, cache_dir=None) -> np.ndarray:
        """P(yes) per sample row, reusing the shared prefix across calls."""
        import torch

        prompts = self.prompts(samples, cache_dir)
        model = self.backbone.model
        if self._prefix is None:
            with torch.inference_mode():
                ids = torch.tensor([prompts.prefix_ids], device=_model_device(model))
                self._prefix = encode_prefix(model, ids, forward=self.forward)
        return yes_probability(model, prompts, self.answers, batch_size=batch_size, pad_id=self.pad_id,
                               forward=self.forward, prefix=self._prefix)
