"""The shared QLoRA training loop on a tiny random Llama (no download)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from llm_tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from test_llm_prompting import catalog  # noqa: E402

from methods.prompting import CtrPrompts, PromptTemplate  # noqa: E402
from methods.scoring import yes_probability  # noqa: E402
from methods.training import LoraSettings, TrainSettings, add_lora, answer_loss, micro_batches, train  # noqa: E402


def labeled_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Label = whether the target is one of the first three items: learnable from the target title."""
    items = np.random.default_rng(seed).integers(0, 6, n)
    return pd.DataFrame({
        "sample_id": np.arange(n), "user": np.zeros(n, int), "item": items,
        "history": [np.zeros(0, int)] * n, "history_ratings": [np.zeros(0, np.float32)] * n,
        "label": (items < 3).astype(int)})


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def build(tok, n=12, seed=0):
    builder = CtrPrompts(PromptTemplate.load("tallrec"), tok, catalog(), history_len=10, liked_above=3)
    return builder, builder.build(labeled_frame(n, seed))


def lora_model(tok, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=dropout))


def lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_loss_covers_the_answer_tokens_only(tok):
    builder, prompts = build(tok, n=3)
    model = lora_model(tok)
    rows = np.array([0, 1, 2])
    loss, n_tokens = answer_loss(model, prompts, rows, tok.pad_token_id, lambda m, **kw: m(**kw), {})
    expected, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            prompt = prompts.full_ids(int(r))
            answer = prompts.table[int(r)]["answer_ids"]
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            for k, target in enumerate(answer):
                expected -= float(torch.log_softmax(logits[len(prompt) - 1 + k], -1)[target])
                count += 1
    assert n_tokens == count == 3 * len(builder.answers.positive)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_only_adapters_train_and_the_loss_goes_down(tok):
    builder, prompts = build(tok, n=16)
    model = lora_model(tok)
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    before = lora_state(model)

    def mean_loss():
        with torch.no_grad():
            loss, n = answer_loss(model, prompts, np.arange(16), tok.pad_token_id, lambda m, **kw: m(**kw), {})
        return float(loss) / n

    start = mean_loss()
    train(model, prompts, TrainSettings(learning_rate=3e-2, epochs=4, batch_size=8, micro_batch_size=4),
          seed=0, pad_id=tok.pad_token_id, progress=False)
    assert mean_loss() < start - 0.1
    after = dict(model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_seeded_runs_repeat_and_seeds_differ(tok):
    _, prompts = build(tok, n=8)
    settings = TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, micro_batch_size=2)
    states = []
    for seed in (3, 3, 4):
        model = lora_model(tok, seed=0, dropout=0.1)
        train(model, prompts, settings, seed=seed, pad_id=tok.pad_token_id, progress=False)
        states.append(lora_state(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_step_trace_logs_each_step_only_when_asked(tok, monkeypatch, capsys):
    """``LLMREC_BENCH_TRACE_STEPS``: one stderr line per optimizer step (0 = before training) with the
    micro-batch losses and the weights' digest, equal between two runs of one seed; silent when unset."""
    from benchmarks.execution.step_trace import ENV_VAR

    _, prompts = build(tok, n=8)
    settings = TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, micro_batch_size=2)
    logs = []
    for traced in (True, True, False):
        if traced:
            monkeypatch.setenv(ENV_VAR, "1")
        else:
            monkeypatch.delenv(ENV_VAR)
        train(lora_model(tok, seed=0), prompts, settings, seed=3, pad_id=tok.pad_token_id, progress=False)
        logs.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("[step-trace]")])
    assert logs[0] == logs[1] and logs[2] == []
    assert [line.split()[3] for line in logs[0]] == ["0", "1", "2"]  # 8 samples, 4 per step
    assert logs[0][0].split("losses [")[1].startswith("]")  # step 0: before training, no loss yet
    assert len(logs[0][1].split("losses [")[1].split("]")[0].split()) == 2  # two micro-batches per step
    digests = [line.split()[-1] for line in logs[0]]
    assert len(set(digests)) == 3  # every step moved the adapter


def test_gradient_accumulation_equals_one_big_batch(tok):
    _, prompts = build(tok, n=4)
    results = []
    for micro in (4, 2, 1):
        model = lora_model(tok, seed=0)
        train(model, prompts, TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, micro_batch_size=micro),
              seed=0, pad_id=tok.pad_token_id, progress=False)
        results.append(lora_state(model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], atol=1e-5, rtol=1e-4)


def test_early_stopping_keeps_the_best_validated_adapter(tok):
    builder, prompts = build(tok, n=8)
    model = lora_model(tok)
    metrics = iter([0.6, 0.9, 0.7, 0.5, 0.4, 0.3])
    snapshots = []

    def evaluate():
        snapshots.append(lora_state(model))
        return next(metrics)

    result = train(model, prompts, TrainSettings(learning_rate=1e-2, epochs=6, batch_size=4, micro_batch_size=4,
                                                 eval_every=1, patience=2),
                   seed=0, pad_id=tok.pad_token_id, evaluate=evaluate, progress=False)
    assert [h["valid"] for h in result.history] == [0.6, 0.9, 0.7, 0.5]  # stopped after 2 worse ones
    assert result.best_step == 2 and result.best_metric == 0.9 and result.steps == 4
    final = lora_state(model)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)


def test_trained_adapter_changes_scores_and_scoring_sees_it(tok):
    builder, prompts = build(tok, n=16)
    model = lora_model(tok)
    before = yes_probability(model, prompts, builder.answers, pad_id=tok.pad_token_id)
    train(model, prompts, TrainSettings(learning_rate=3e-2, epochs=4, batch_size=8, micro_batch_size=8),
          seed=0, pad_id=tok.pad_token_id, progress=False)
    after = yes_probability(model, prompts, builder.answers, pad_id=tok.pad_token_id)
    labels = np.asarray(prompts.table["label"])
    assert not np.allclose(before, after)
    assert after[labels == 1].mean() > after[labels == 0].mean()


def test_micro_batches_cover_each_sample_once_per_epoch():
    lengths = np.arange(23) % 7
    batches = micro_batches(lengths, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(23))
    assert [len(b) for b in sorted(batches, key=len, reverse=True)] == [4, 4, 4, 4, 4, 3]  # windows 16 + 7
