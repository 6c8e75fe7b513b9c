"""The prefix cache computes what a full pass computes (float32, tiny random Llama, no download)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks.perf.tiny_llama import tiny_llama  # noqa: E402
from methods.prefix_cache import encode_prefix, positions_from_mask, run_continuations  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=97, seed=3)


def right_pad(seqs):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


def full_logits(model, tokens):
    with torch.no_grad():
        return model(tokens[None]).logits[0]


def test_shared_prefix_matches_full_pass_at_every_real_position(model):
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 97, (11,), generator=gen)
    suffixes = [torch.randint(0, 97, (n,), generator=gen) for n in (4, 9, 1, 6)]
    ids, mask = right_pad(suffixes)
    with torch.no_grad():
        cached = encode_prefix(model, prefix[None])
        logits = run_continuations(model, cached, ids, mask)
    for row, suffix in enumerate(suffixes):
        expected = full_logits(model, torch.cat([prefix, suffix]))[len(prefix):]
        torch.testing.assert_close(logits[row, : len(suffix)], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.last_logits[0], full_logits(model, prefix)[-1], atol=1e-4, rtol=0)


def test_per_sample_prefixes_with_many_continuations_each(model):
    """iLoRA's shape: left-padded prompts of different lengths, C candidates continue each one."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=gen) for n in (5, 12, 8)]
    width = max(len(p) for p in prompts)
    pids = torch.zeros(len(prompts), width, dtype=torch.long)
    pmask = torch.zeros_like(pids)
    for i, p in enumerate(prompts):
        pids[i, width - len(p):], pmask[i, width - len(p):] = p, 1
    candidates = [torch.randint(0, 97, (n,), generator=gen) for n in (3, 2, 4, 1, 3, 2)]
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    ids, mask = right_pad(candidates)
    with torch.no_grad():
        cached = encode_prefix(model, pids, pmask)
        logits = run_continuations(model, cached, ids, mask, rows)
    for b, cand in enumerate(candidates):
        prompt = prompts[int(rows[b])]
        expected = full_logits(model, torch.cat([prompt, cand]))[len(prompt):]
        torch.testing.assert_close(logits[b, : len(cand)], expected, atol=1e-4, rtol=0)


def test_continuations_leave_the_prefix_untouched(model):
    prefix = torch.arange(7)[None]
    ids, mask = right_pad([torch.tensor([5, 6, 7])])
    with torch.no_grad():
        cached = encode_prefix(model, prefix)
        length_before = cached.layers[0][0].shape[-2]
        first = run_continuations(model, cached, ids, mask)
        second = run_continuations(model, cached, ids, mask)
    assert cached.layers[0][0].shape[-2] == length_before
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_positions_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask)[0, 2:].tolist() == [0, 1, 2]
    assert positions_from_mask(mask, start=torch.tensor([3, 0]))[0, 2:].tolist() == [3, 4, 5]
