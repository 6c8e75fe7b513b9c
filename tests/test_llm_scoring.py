"""One-pass P(yes) scoring and the generate-based reference, against independent computations."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_llm_prompting import catalog  # noqa: E402

from benchmarks.perf.tiny_llama import tiny_llama, tiny_tokenizer  # noqa: E402
from methods.prompting import AnswerTokens, CtrPrompts, PromptTemplate  # noqa: E402
from methods.scoring import generate_reference, length_buckets, yes_probability  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=5)
    builder = CtrPrompts(PromptTemplate.load("tallrec"), tok, catalog(), history_len=10, liked_above=3)
    rng = np.random.default_rng(0)
    import pandas as pd

    lengths = [1, 6, 3, 0, 5, 2, 4]
    frame = pd.DataFrame({
        "sample_id": np.arange(len(lengths)), "user": np.zeros(len(lengths), int),
        "item": rng.integers(0, 6, len(lengths)),
        "history": [rng.integers(0, 6, n) for n in lengths],
        "history_ratings": [rng.integers(1, 6, n).astype(np.float32) for n in lengths]})
    return tok, model, builder, builder.build(frame)


def independent_p_yes(model, ids: list[int], answers: AnswerTokens) -> float:
    with torch.no_grad():
        last = model(torch.tensor([ids])).logits[0, -1].double()
    return float(torch.softmax(last[[answers.yes, answers.no]], 0)[0])


@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_p_yes_matches_a_full_pass_per_prompt(setup, reuse_prefix, batch_size):
    tok, model, builder, prompts = setup
    got = yes_probability(model, prompts, builder.answers, batch_size=batch_size, reuse_prefix=reuse_prefix,
                          pad_id=tok.pad_token_id)
    expected = [independent_p_yes(model, prompts.full_ids(r), builder.answers) for r in range(len(prompts))]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(set(np.round(got, 6))) > 1, "different prompts should score differently"


def test_buckets_cover_every_row_once_and_pad_less_than_arrival_order():
    lengths = np.array([9, 1, 8, 2, 7, 3, 6, 4])
    buckets = list(length_buckets(lengths, 2))
    assert sorted(np.concatenate(buckets).tolist()) == list(range(8))
    padded = sum(len(b) * lengths[b].max() for b in buckets)
    naive = sum(2 * lengths[i: i + 2].max() for i in range(0, 8, 2))
    assert padded < naive


def test_generate_reference_reads_the_first_step_like_tallrec(setup):
    tok, model, builder, prompts = setup
    ref = generate_reference(model, tok, prompts, builder.answers, max_new_tokens=4)
    for row in range(len(prompts)):
        with torch.no_grad():
            probs = model(torch.tensor([prompts.full_ids(row)])).logits[0, -1].softmax(-1)
        pair = torch.tensor([probs[builder.answers.yes], probs[builder.answers.no]]).softmax(-1)
        assert ref.scores[row] == pytest.approx(float(pair[0]), abs=1e-5)
    assert ((ref.new_tokens >= 1) & (ref.new_tokens <= 4)).all()
    # softmax over two probabilities stays near 0.5: not the same number as the one-pass P(yes)
    assert np.all(np.abs(ref.scores - 0.5) <= 0.5 * np.tanh(0.5) + 1e-6)
