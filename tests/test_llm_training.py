"""The shared QLoRA training loop on a tiny random Llama (no download)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from test_llm_prompting import catalog  # noqa: E402

from benchmarks.perf.tiny_llama import tiny_llama, tiny_tokenizer  # noqa: E402
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


# ------------------------------------------------------------------ optimizer, schedule, warm-up, clipping


@pytest.mark.parametrize("schedule, reference", [("linear", "get_linear_schedule_with_warmup"),
                                                 ("cosine", "get_cosine_schedule_with_warmup")])
def test_decay_after_warm_up_is_hugging_faces(schedule, reference):
    """With start and floor at 0, the decay part is transformers' own schedule (an independent
    implementation); the warm-up is ours: (s + 1) / W, so the first step does not run at rate 0."""
    import transformers

    total, warm = 40, 6
    settings = TrainSettings(schedule=schedule, warmup_steps=warm)
    param = torch.nn.Parameter(torch.zeros(1))
    hf = getattr(transformers, reference)(torch.optim.SGD([param], lr=1.0), warm, total)
    expected = [hf.lr_lambdas[0](s) for s in range(total)]
    got = [settings.lr_factor(s, total) for s in range(total)]
    np.testing.assert_allclose(got[warm:], expected[warm:], atol=1e-12)
    np.testing.assert_allclose(got[:warm], np.arange(1, warm + 1) / warm)


def test_warm_up_from_a_start_factor_and_decay_to_a_floor():
    """LLaRA / iLoRA: 5% warm-up from lr/100, cosine down to lr/100."""
    total = 200
    settings = TrainSettings(schedule="cosine", warmup_ratio=0.05, warmup_start=0.01, final_lr_ratio=0.01)
    factors = np.array([settings.lr_factor(s, total) for s in range(total)])
    assert settings.warmup(total) == 10
    assert factors[0] == pytest.approx(0.01 + 0.99 / 10) and factors[9] == pytest.approx(1.0)
    assert np.all(np.diff(factors[:10]) > 0) and np.all(np.diff(factors[10:]) < 0)
    assert factors[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 189 / 190)))
    assert factors.min() > 0.01 - 1e-12
    constant = TrainSettings(warmup_steps=3)
    assert [constant.lr_factor(s, 10) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


@pytest.mark.parametrize("bad, message", [
    ({"schedule": "step"}, "schedule must be one of"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"warmup_steps": 2, "warmup_ratio": 0.1}, "not both"),
    ({"batch_size": 6, "micro_batch_size": 4}, "multiple of micro_batch_size"),
    ({"param_groups": {"router": {"lr": 1.0}}}, "param_groups.router"),
])
def test_settings_refuse_what_would_silently_train_otherwise(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**bad)


def test_param_groups_set_rate_and_decay_by_parameter_name():
    from methods.training import build_optimizer

    model = torch.nn.ModuleDict({"projector": torch.nn.Linear(2, 2), "router": torch.nn.Linear(2, 2),
                                 "lora": torch.nn.Linear(2, 2)})
    settings = TrainSettings(learning_rate=1e-3, optimizer="adam", weight_decay=0.0,
                             param_groups={"projector": {"weight_decay": 1e-5},
                                           "router": {"weight_decay": 1e-5, "lr_scale": 0.3}})
    optimizer = build_optimizer(model, settings)
    assert type(optimizer) is torch.optim.Adam
    by_param = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, (lr, decay) in {"projector": (1e-3, 1e-5), "router": (3e-4, 1e-5), "lora": (1e-3, 0.0)}.items():
        for param in model[name].parameters():
            assert by_param[id(param)]["lr"] == pytest.approx(lr) and by_param[id(param)]["weight_decay"] == decay
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 6
    assert type(build_optimizer(model, TrainSettings())) is torch.optim.AdamW
    with pytest.raises(ValueError, match=r"\['projecter'\] match no trainable parameter"):
        build_optimizer(model, TrainSettings(param_groups={"projecter": {"weight_decay": 1e-5}}))


def test_the_loop_follows_the_schedule_and_clips_only_when_asked(tok, monkeypatch):
    """The rate each optimizer step used is the schedule's; ``max_grad_norm: 0`` never clips."""
    import methods.training

    _, prompts = build(tok, n=16)
    seen = {"lr": [], "clipped": 0}
    real_build, real_clip = methods.training.build_optimizer, torch.nn.utils.clip_grad_norm_

    def recording_build(model, settings, *planned):
        optimizer = real_build(model, settings, *planned)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen["lr"].append(opt.param_groups[0]["lr"]))
        return optimizer

    def counting_clip(*args, **kwargs):
        seen["clipped"] += 1
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(methods.training, "build_optimizer", recording_build)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    settings = TrainSettings(learning_rate=1e-2, epochs=2, batch_size=4, micro_batch_size=2, schedule="linear",
                             warmup_steps=2, final_lr_ratio=0.1, max_grad_norm=0.0)
    result = train(lora_model(tok), prompts, settings, seed=0, pad_id=tok.pad_token_id, progress=False)
    assert result.steps == 8 and len(seen["lr"]) == 8
    np.testing.assert_allclose(seen["lr"], [1e-2 * settings.lr_factor(s, 8) for s in range(8)])
    assert seen["clipped"] == 0
    train(lora_model(tok), prompts, TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, micro_batch_size=2),
          seed=0, pad_id=tok.pad_token_id, progress=False)
    assert seen["clipped"] == 4
