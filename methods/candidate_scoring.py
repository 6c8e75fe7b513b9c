"""next_item scoring of prompt sets: candidate-title likelihood on one shared prompt pass, and greedy
generation matched to candidate titles (the LLaRA / iLoRA protocol).

Likelihood (this project's default). The score of candidate c is the log-probability that the model
answers exactly its title::

    score(c) = log P(a_c | prompt) = sum_t log p(a_c,t | prompt, a_c,<t),   a_c = title tokens + EOS

(the end-of-sequence term keeps a title from winning because it is the beginning of a longer one).
Each batch of prompts runs once, left-padded, and keeps its keys/values
(:func:`methods.prefix_cache.encode_prefix`). Then the C answers of each prompt are packed into ONE
continuation row on a copy of that prompt's keys/values: answer c's tokens sit at positions
``len(prompt) + t`` and attend to the prompt and to their own earlier tokens only (a 4-D mask), so
every answer sees what it would see alone. A prompt of ~230 tokens is computed once instead of C
times, its keys/values are copied once instead of C times, and the answers carry no padding.
``reuse_prefix=False`` runs the C full prompts instead (the reference for tests and
``benchmarks/perf/candidate_scoring.py``).

Generate (the papers' protocol, LLaRA/iLoRA ``model_interface.py``): greedy decoding from the
left-padded prompts until the first line of the answer is complete (or ``max_new_tokens``); the
decoded text is stripped and cut at its first newline, then matched to the candidate titles
(:func:`match_candidate`). The score row is one-hot at the match, or all NaN when the answer names
no candidate or several (ValidRatio counts those).

Per-sample model inputs (iLoRA's gate input) come from ``extra_inputs(rows) -> {name: tensor [P, ...]}``
for the prompt rows; an answer gets the inputs of its prompt.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made; annotations name it only
    import torch

from benchmarks.execution import padding
from methods.prefix_cache import ModelCall, Prefix, call_model, encode_prefix
from methods.prompting import PromptSet
from methods.scoring import length_buckets, right_padded

ExtraInputs = Callable[[np.ndarray], Mapping[str, "torch.Tensor"]]
SCORERS = ("likelihood", "generate")


def left_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape ``[B, max_len]``, pads first, real tokens last (padding counted as in
    :func:`methods.scoring.right_padded`)."""
    import torch

    width = max(len(s) for s in sequences)
    padding.count(sum(len(s) for s in sequences), width * len(sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _device(model):
    return next(model.parameters()).device


def _rows_of(extra: Mapping[str, torch.Tensor], rows: torch.Tensor) -> dict:
    return {name: value.index_select(0, rows.to(value.device)) for name, value in extra.items()}


@dataclass
class PackedAnswers:
    """The answers of P prompts, one row per prompt (``T`` = the longest row's total answer tokens).

    Attributes:
        ids: ``[P, T]`` answer tokens, answer after answer, right-padded.
        answer: ``[P, T]`` which answer of its row a token belongs to (-1 on padding).
        positions: ``[P, T]`` position ids: prompt length + the token's index within its answer.
        starts: ``[P, C]`` index of each answer's first token.
    """

    ids: torch.Tensor
    answer: torch.Tensor
    positions: torch.Tensor
    starts: torch.Tensor

    @classmethod
    def build(cls, answers: Sequence[Sequence[Sequence[int]]], prompt_lengths: torch.Tensor,
              pad_id: int) -> PackedAnswers:
        import torch

        device = prompt_lengths.device
        width = max(sum(len(a) for a in row) for row in answers)
        padding.count(sum(len(a) for row in answers for a in row), width * len(answers))
        ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
        owner = torch.full((len(answers), width), -1, dtype=torch.long)
        offset = torch.zeros((len(answers), width), dtype=torch.long)
        starts = torch.zeros((len(answers), len(answers[0])), dtype=torch.long)
        for p, row in enumerate(answers):
            start = 0
            for c, tokens in enumerate(row):
                span = slice(start, start + len(tokens))
                ids[p, span] = torch.as_tensor(tokens, dtype=torch.long)
                owner[p, span], offset[p, span], starts[p, c] = c, torch.arange(len(tokens)), start
                start += len(tokens)
        return cls(ids.to(device), owner.to(device), prompt_lengths[:, None] + offset.to(device), starts.to(device))

    def attention_mask(self, prompt_mask: torch.Tensor, dtype) -> torch.Tensor:
        """``[P, 1, T, Lp + T]`` additive mask: a token sees the real prompt tokens and its own answer's
        earlier tokens (and itself); padding sees the prompt only."""
        import torch

        answer, offset = self.answer, self.positions
        own = (answer[:, :, None] == answer[:, None, :]) & (offset[:, None, :] <= offset[:, :, None])
        own &= (answer >= 0)[:, :, None]
        prompt = prompt_mask.bool()[:, None, :].expand(-1, answer.shape[1], -1)
        allowed = torch.cat([prompt, own], dim=-1)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]

    def log_probs(self, first_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``[P, C]`` summed log-probabilities of every answer. ``first_logits`` ``[P, V]`` (the prompt's
        last logits) predict each answer's first token; ``logits[:, i]`` ``[P, T, V]`` predicts token
        ``i + 1`` when it is in the same answer. Computed in float32."""
        first = first_logits.float().log_softmax(-1).gather(-1, self.ids.gather(1, self.starts))
        logits = logits[:, :-1].float()
        picked = logits.gather(-1, self.ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)
        follows = (self.answer[:, 1:] == self.answer[:, :-1]) & (self.answer[:, 1:] >= 0)
        rest = first.new_zeros(first.shape).scatter_add_(1, self.answer[:, 1:].clamp(min=0),
                                                            picked * follows)
        return first + rest


def answer_log_probs(first_logits: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` summed log-probabilities of right-padded answers ``ids`` ``[B, T]`` (one answer per row).

    ``first_logits`` ``[B, V]`` predict token 0; ``logits[:, t]`` predicts token ``t + 1``
    (``[B, >= T - 1, V]``; further positions are ignored). Computed in float32.
    """
    first = first_logits.float().log_softmax(-1).gather(-1, ids[:, :1]).squeeze(-1)
    rest = logits[:, : ids.shape[1] - 1].float()
    picked = rest.gather(-1, ids[:, 1:, None]).squeeze(-1) - rest.logsumexp(-1)
    return first + (picked * mask[:, 1:]).sum(-1)


def _packed_scores(model, prefix: Prefix, answers: list[list[list[int]]], pad_id: int, forward: ModelCall,
                   extra: Mapping, max_answer_tokens: int) -> torch.Tensor:
    """``[P, C]`` log-likelihoods of every prompt's answers, packed rows on the prompts' keys/values."""
    import torch

    device = prefix.lengths.device
    dtype = prefix.layers[0][0].dtype
    scores, begin = [], 0
    while begin < prefix.size:  # as many prompts per forward as fit in max_answer_tokens
        end, tokens = begin + 1, sum(map(len, answers[begin]))
        while end < prefix.size and tokens + sum(map(len, answers[end])) <= max_answer_tokens:
            tokens += sum(map(len, answers[end]))
            end += 1
        rows = torch.arange(begin, end, device=device)
        packed = PackedAnswers.build(answers[begin:end], prefix.lengths[begin:end], pad_id)
        mask = packed.attention_mask(prefix.attention_mask[begin:end], dtype)
        logits = forward(model, input_ids=packed.ids, attention_mask=mask, position_ids=packed.positions,
                         past_key_values=prefix.cache_for(rows, model.config), use_cache=True,
                         **_rows_of(extra, rows)).logits
        scores.append(packed.log_probs(prefix.last_logits[begin:end], logits))
        begin = end
    return torch.cat(scores)


def candidate_log_likelihoods(model, prompts: PromptSet, answers: Mapping[int, Sequence[int]], *,
                              batch_size: int = 4, pad_id: int = 0, reuse_prefix: bool = True,
                              forward: ModelCall = call_model, extra_inputs: ExtraInputs | None = None,
                              max_answer_tokens: int = 2048) -> np.ndarray:
    """``[n, C]`` log P(answer | prompt) of every candidate of every row of ``prompts``, in row order.

    Args:
        answers: item -> answer token ids (title + EOS), for every item of the ``candidates`` column.
        batch_size: prompts per prompt pass (shared) or samples whose candidate prompts run together.
        reuse_prefix: one pass per prompt and its candidates packed on its keys/values; False runs
            every candidate after its own full prompt.
        max_answer_tokens: answer tokens per continuation forward (memory: logits of that many positions).
    """
    import torch

    device = _device(model)
    suffixes, candidates = prompts.table["suffix_ids"], prompts.table["candidates"]
    out = np.empty((len(suffixes), len(candidates[0]) if len(candidates) else 0), dtype=np.float64)
    with torch.inference_mode():
        for rows in length_buckets(prompts.suffix_lengths(), batch_size):
            extra = dict(extra_inputs(rows)) if extra_inputs is not None else {}
            prompt_ids = [prompts.prefix_ids + suffixes[r] for r in rows]
            row_answers = [[list(answers[c]) for c in candidates[r]] for r in rows]
            if reuse_prefix:
                ids, mask = left_padded(prompt_ids, pad_id, device)
                prefix = encode_prefix(model, ids, mask, forward=forward, **extra)
                scores = _packed_scores(model, prefix, row_answers, pad_id, forward, extra, max_answer_tokens)
            else:
                scores = torch.stack([_separate_scores(model, prompt, row, pad_id, forward, _rows_of(
                    extra, torch.tensor([p] * len(row), device=device))) for p, (prompt, row) in
                    enumerate(zip(prompt_ids, row_answers))])
            out[rows] = scores.double().cpu().numpy()
    return out


def _separate_scores(model, prompt: list[int], answers: list[list[int]], pad_id: int, forward: ModelCall,
                     extra: Mapping) -> torch.Tensor:
    """``[C]`` log-likelihoods of one prompt's answers, each after its own copy of the full prompt."""
    import torch

    device = _device(model)
    ids, mask = right_padded([prompt + a for a in answers], pad_id, device)
    width = max(len(a) for a in answers)
    keep = torch.arange(len(prompt) - 1, len(prompt) - 1 + width, device=device)
    logits = forward(model, input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
    cont, cont_mask = right_padded(answers, pad_id, device)
    return answer_log_probs(logits[:, 0], logits[:, 1:], cont, cont_mask)


# ------------------------------------------------------------------------------------------ generate


def first_line(text: str) -> str:
    """The authors' reading of an answer: stripped, up to the first newline."""
    return text.strip().split("\n")[0]


def _occurrences(text: str, name: str) -> list[tuple[int, int]]:
    spans, start = [], text.find(name)
    while start >= 0:
        spans.append((start, start + len(name)))
        start = text.find(name, start + 1)
    return spans


def match_candidate(answer: str, titles: Sequence[str]) -> int | None:
    """Index of the one candidate the answer names, or None.

    The authors' rule (LLaRA/iLoRA ``calculate_hr1``): lower-cased, a candidate is named when its
    title is contained in the answer's first line, and the answer is valid iff exactly one is. One
    refinement: an occurrence inside an occurrence of a longer named title does not count ("Heat"
    inside "Heat Wave"), so an answer that is a title containing another title names that one title
    only, where the authors' rule would call it invalid. Two candidates with the same title cannot be
    told apart: None.
    """
    line = first_line(answer).lower()
    names = [t.strip().lower() for t in titles]
    spans = {name: _occurrences(line, name) for name in set(names) if name}
    spans = {name: found for name, found in spans.items() if found}

    def covered(name: str, start: int, end: int) -> bool:
        return any(len(other) > len(name) and s <= start and end <= e
                   for other, found in spans.items() for s, e in found)

    named = [name for name, found in spans.items() if any(not covered(name, s, e) for s, e in found)]
    if len(named) != 1:
        return None
    where = [i for i, name in enumerate(names) if name == named[0]]
    return where[0] if len(where) == 1 else None


def greedy_answers(model, tokenizer, prompts: PromptSet, *, batch_size: int = 8, pad_id: int = 0,
                   max_new_tokens: int = 64, forward: ModelCall = call_model,
                   extra_inputs: ExtraInputs | None = None) -> list[str]:
    """Greedy decoding of every row of ``prompts`` (left-padded batches), in row order.

    Stops a row at end-of-sequence or once its answer has a newline after some text (the first line
    is all that is read), and the batch when every row stopped or after ``max_new_tokens``.
    """
    import torch

    device = _device(model)
    suffixes = prompts.table["suffix_ids"]
    texts = [""] * len(suffixes)
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        for rows in length_buckets(prompts.suffix_lengths(), batch_size):
            extra = dict(extra_inputs(rows)) if extra_inputs is not None else {}
            ids, mask = left_padded([prompts.prefix_ids + suffixes[r] for r in rows], pad_id, device)
            prefix = encode_prefix(model, ids, mask, forward=forward, **extra)
            cache = prefix.cache_for(torch.arange(len(rows), device=device), model.config)
            mask, positions, logits = prefix.attention_mask, prefix.lengths.clone(), prefix.last_logits
            generated: list[list[int]] = [[] for _ in rows]
            done = [False] * len(rows)
            for step in range(max_new_tokens):
                tokens = logits.argmax(-1)
                for b, token in enumerate(tokens.tolist()):
                    if done[b]:
                        continue
                    if token == eos:
                        done[b] = True
                        continue
                    generated[b].append(token)
                    done[b] = "\n" in tokenizer.decode(generated[b], skip_special_tokens=True).strip()
                if all(done) or step == max_new_tokens - 1:
                    break
                tokens = tokens.masked_fill(torch.tensor(done, device=device), pad_id)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = forward(model, input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                              past_key_values=cache, use_cache=True, **extra)
                positions = positions + 1
                logits = out.logits[:, -1]
            for b, row in enumerate(rows):
                texts[row] = tokenizer.decode(generated[b], skip_special_tokens=True)
    return texts


def one_hot_choices(answers: Sequence[str], titles: Sequence[Sequence[str]]) -> np.ndarray:
    """``[n, C]``: 1.0 at the candidate each answer names, 0.0 elsewhere; a NaN row when it names none or several."""
    width = len(titles[0]) if len(titles) else 0
    scores = np.zeros((len(answers), width), dtype=np.float64)
    for row, (answer, names) in enumerate(zip(answers, titles)):
        choice = match_candidate(answer, names)
        if choice is None:
            scores[row] = np.nan
        else:
            scores[row, choice] = 1.0
    return scores


# -------------------------------------------------------------------------------------------- scorer


class NextItemScorer:
    """A backbone (or a model built on it), a prompt template and a dataset: samples in, ``[n, C]`` scores out.

    Built as ``NextItemScorer(backbone, template, catalog, protocol)`` for the plain backbone
    (``zeroshot-llm``); a method that wraps the backbone passes its ``model`` (called like the
    backbone, reading item positions when ``item_token_base`` is set) and ``sample_inputs(samples)
    -> extra_inputs`` for per-sample inputs.

    Args:
        scorer: "likelihood" or "generate" (see the module docstring).
        max_new_tokens: generation length cap (LLaRA/iLoRA: 64).
        max_answer_tokens: answer tokens per continuation forward (likelihood).
    """

    def __init__(self, backbone, template: str, catalog, protocol, *, model=None, item_token_base: int | None = None,
                 sample_inputs: Callable[[object], ExtraInputs] | None = None, scorer: str = "likelihood",
                 max_new_tokens: int = 64, max_answer_tokens: int = 2048):
        from methods.next_item_prompts import NextItemPrompts, NextItemTemplate

        if scorer not in SCORERS:
            raise ValueError(f"next_item scorer must be one of {SCORERS}, got {scorer!r}")
        self.backbone = backbone
        self.model = model if model is not None else backbone.model
        self.builder = NextItemPrompts(NextItemTemplate.load(template), backbone.tokenizer, catalog,
                                       protocol.params["history_len"], item_token_base)
        self.n_candidates = int(protocol.params["n_candidates"])
        self.sample_inputs = sample_inputs
        self.scorer = scorer
        self.max_new_tokens = max_new_tokens
        self.max_answer_tokens = max_answer_tokens

    @cached_property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def prompts(self, samples) -> PromptSet:
        return self.builder.build(samples)

    def score(self, samples, batch_size: int, cache_dir=None) -> np.ndarray:
        """Scores of ``samples`` (``[n, C]``); ``cache_dir`` is accepted for the shared scorer signature."""
        if len(samples) == 0:
            return np.zeros((0, self.n_candidates))
        prompts = self.prompts(samples)
        extra = self.sample_inputs(samples) if self.sample_inputs is not None else None
        if self.scorer == "likelihood":
            answers = self.builder.answers([c for row in prompts.table["candidates"] for c in row])
            return candidate_log_likelihoods(self.model, prompts, answers, batch_size=batch_size, pad_id=self.pad_id,
                                             extra_inputs=extra, max_answer_tokens=self.max_answer_tokens)
        texts = greedy_answers(self.model, self.backbone.tokenizer, prompts, batch_size=batch_size, pad_id=self.pad_id,
                               max_new_tokens=self.max_new_tokens, extra_inputs=extra)
        return one_hot_choices(texts, [self.builder.answer_texts(row) for row in prompts.table["candidates"]])
