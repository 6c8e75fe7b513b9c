"""``reclora`` and its variants on the tiny ML-100K ctr split with a tiny local 4-bit backbone.

The CRM is a stand-in (``FakeCRM``: trainable embeddings, so a gradient leaking into it would show)
except in the slow test, which trains the real DIN on the full tiny train split.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("peft")
import torch  # noqa: E402

from benchmarks import metrics, registry
from benchmarks.contract import CellContext, FitData, count_parameters, without_labels  # noqa: E402
from benchmarks.data import canonical, protocols  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_backbone_dir  # noqa: E402

SHOTS = 8


class FakeCRM:
    """A frozen-encoder stand-in: ``item_embeddings`` and ``sequence_representation`` (mean of the history's
    embeddings plus the target's), computed WITH gradient so that only the method can detach it."""

    def __init__(self, n_items: int, dim: int = 6, seed: int = 0, shift: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.net = SimpleNamespace(model=torch.nn.Embedding(n_items, dim))
        with torch.no_grad():
            self.net.model.weight.copy_(torch.randn(n_items, dim, generator=generator))
        self.dim, self.shift, self.calls = dim, shift, []

    def item_embeddings(self):
        return self.net.model.weight.detach()

    def sequence_representation(self, histories, targets):
        table = self.net.model.weight
        rows = [table[torch.tensor(np.asarray(h, dtype=np.int64))].mean(0) + table[int(t)]
                for h, t in zip(histories, targets)]
        return torch.roll(torch.stack(rows), self.shift, dims=0)


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, "ctr")
    # history_pool: full, as the harness hands it (benchmarks/execution/cell.py)
    train, valid, test = (protocols.with_full_histories(data.interactions, frame)
                          for frame in (proto.few_shot(SHOTS, 1), proto.valid.iloc[:8], proto.test.iloc[:12]))
    fit = FitData("ctr", train, proto.train, without_labels(valid),
                  lambda s: metrics.compute("ctr", valid["label"].to_numpy(), s), data.catalog, proto.info)
    llm = tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))
    ctx = CellContext(seed=1, batch_size=4, max_epochs=1, llm=str(llm), quant="nf4",
                      cache_dir=tmp_path_factory.mktemp("cache"), workdir=tmp_path_factory.mktemp("work"))
    return fit, without_labels(test), ctx


def build(name, ctx, **overrides):
    entry = registry.get_entry(name)
    return entry.load_class()(registry.resolve_config(entry, overrides), ctx)


@pytest.fixture(scope="module")
def trained(cell):
    """``trained(name, **overrides)``: the method fitted once with a large rate (non-zero adapters), on a
    FakeCRM; with what it handed the CRM and the training loop."""
    import baselines.recbole_encoders
    import methods.training

    fit, _, ctx = cell
    done = {}

    def get(name, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in done:
            crm, seen = FakeCRM(fit.catalog.n_items), {}
            original_train = methods.training.train

            def fake_encoder(crm_name, data, ctx_, *, full_train=False, overrides=None):
                seen.update(crm=crm_name, full_train=full_train, overrides=overrides)
                return crm

            def spy_train(model, prompts, *args, **kwargs):
                seen["llm_rows"] = len(prompts)
                return original_train(model, prompts, *args, **kwargs)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(baselines.recbole_encoders, "fit_frozen_encoder", fake_encoder)
                patch.setattr(methods.training, "train", spy_train)
                # float32 compute: these tests check the math against other paths at float32 tolerance
                method = build(name, ctx, **{"learning_rate": 5e-2, "cpu_dtype": "float32", **overrides})
                method.fit(fit)
            done[key] = SimpleNamespace(method=method, crm=crm, seen=seen)
        return done[key]

    return get


# ------------------------------------------------------------------------------------------ configs


def test_variants_differ_from_reclora_only_in_their_switch():
    base = dataclasses.asdict(registry.resolve_config(registry.get_entry("reclora")))
    for name, switch in (("reclora-no-retrieval", {"retrieval": "recent"}), ("reclora-shared", {"meta_loras": 1})):
        variant = dataclasses.asdict(registry.resolve_config(registry.get_entry(name)))
        assert {k: v for k, v in variant.items() if base[k] != v} == switch, name
    assert base["mixing"] == "factors" and base["meta_loras"] > 1 and base["retrieval"] == "relevant"


def test_a_variant_file_includes_its_base_and_a_cycle_is_refused(tmp_path):
    (tmp_path / "base.yaml").write_text("a: 1\nb: 2\n")
    (tmp_path / "variant.yaml").write_text("include: base\nb: 3\n")
    assert registry.read_config_file(tmp_path / "variant.yaml") == {"a": 1, "b": 3}
    (tmp_path / "loop.yaml").write_text("include: loop\n")
    with pytest.raises(ValueError, match="include: loop"):
        registry.read_config_file(tmp_path / "loop.yaml")


def test_a_bad_switch_fails_at_configuration_with_one_line():
    with pytest.raises(ValueError, match="retrieval must be one of"):
        registry.resolve_config(registry.get_entry("reclora"), {"retrieval": "similar"})


# ---------------------------------------------------------------------------------------- mechanism


def test_few2many_llm_trains_on_the_few_shots_while_the_crm_gets_the_full_split(cell, trained):
    fit, _, _ = cell
    run = trained("reclora")
    assert run.seen["full_train"] is True and run.seen["crm"] == "din"
    crm_settings = registry.resolve_config(registry.get_entry("din"), run.seen["overrides"])
    assert crm_settings.max_history == 60, "the CRM reads the long history"
    assert run.seen["overrides"] == {}, "the CRM is the din cell's model (same settings: one cached training)"
    assert run.seen["llm_rows"] == SHOTS < len(fit.train_full)
    assert run.method.result.steps == math.ceil(SHOTS / run.method.config.batch_size)


def test_crm_stays_frozen_and_no_gradient_reaches_it(cell, trained):
    fit, _, _ = cell
    run = trained("reclora")
    untouched = FakeCRM(fit.catalog.n_items)
    assert torch.equal(run.crm.net.model.weight, untouched.net.model.weight)
    assert run.crm.net.model.weight.grad is None
    assert run.method.result.steps >= 1


def test_one_meta_lora_equals_plain_peft_lora(cell, trained):
    from methods.backbone import load_backbone
    from methods.retrieval import select_history
    from methods.scoring import yes_probability
    from methods.training import LoraSettings, add_lora

    fit, test, ctx = cell
    run = trained("reclora-shared")
    method, cfg = run.method, run.method.config
    base = load_backbone(ctx.llm, ctx.quant, ctx.device)
    peft_model = add_lora(base.model, LoraSettings(cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_target_modules))
    with torch.no_grad():
        for name, layer in method.mixture.layers.items():
            lora = peft_model.base_model.model.get_submodule(name)
            lora.lora_A["default"].weight.copy_(layer.lora_A)
            lora.lora_B["default"].weight.copy_(layer.lora_B)
    peft_model.eval()
    shown = select_history(test, 10, "relevant", run.crm.item_embeddings().numpy(), "full_history")
    prompts = method.builder.build(shown)
    expected = yes_probability(peft_model, prompts, method.builder.answers, batch_size=5,
                               pad_id=base.tokenizer.pad_token_id)  # through the prefix cache: another path
    with peft_model.disable_adapter():
        untrained = yes_probability(peft_model, prompts, method.builder.answers, pad_id=base.tokenizer.pad_token_id)
    got = method.score(test)
    assert np.abs(expected - untrained).max() > 1e-3, "training should have moved the adapter"
    np.testing.assert_allclose(got, expected, atol=1e-5)

    config = base.model.config
    head = config.hidden_size // config.num_attention_heads
    q, v = (config.hidden_size, config.hidden_size), (config.hidden_size, config.num_key_value_heads * head)
    per_layer = cfg.lora_r * (sum(q) + sum(v))  # A [r, in] + B [out, r]; no gate with one meta-LoRA
    assert method.parameter_counts().trainable == per_layer * config.num_hidden_layers


def test_the_gate_personalizes_each_sample_on_its_own(cell, trained):
    fit, test, _ = cell
    run = trained("reclora")
    method = run.method
    scores = method.score(test)
    assert scores.shape == (len(test),) and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(method.score(test.iloc[3:5]), scores[3:5], atol=1e-6)  # no leak across a batch

    layer = next(iter(method.mixture.layers.values()))
    u = run.crm.sequence_representation(test["history"].tolist(), test["item"].to_numpy()).detach()
    with torch.no_grad():
        weights = layer.gate(u)
    assert weights.shape == (len(test), method.config.meta_loras)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(test)))
    assert (weights.max(0).values - weights.min(0).values).max() > 1e-3, "gate weights should differ by sample"

    method.crm = FakeCRM(fit.catalog.n_items, shift=1)  # same items, each sample gets its neighbour's u
    moved = method.score(test)
    method.crm = run.crm
    assert np.abs(moved - scores).max() > 1e-4, "another user vector must change the output"

    shared = trained("reclora-shared").method
    before = shared.score(test)
    shared.crm = FakeCRM(fit.catalog.n_items, shift=1)
    np.testing.assert_allclose(shared.score(test), before, atol=1e-7)  # N=1: no gate reads u
    shared.crm = trained("reclora-shared").crm


def test_prompt_lists_the_retrieved_items_with_ratings_in_time_order_then_the_target(cell, trained):
    """The K items come from the user's whole history before the target, not only the stored window."""
    fit, _, _ = cell
    method, crm = trained("reclora").method, trained("reclora").crm
    data = canonical.load("movielens-100k", tiny=True)
    test = protocols.with_full_histories(data.interactions, without_labels(protocols.load(data, "ctr").test))
    row = int(np.argmax(test["full_history"].str.len().to_numpy()))
    sample = test.iloc[[row]]
    history, ratings, target = (sample[c].iloc[0] for c in ("full_history", "full_history_ratings", "item"))
    emb = crm.item_embeddings().numpy()
    cosine = emb[history] @ emb[target] / (np.linalg.norm(emb[history], axis=1) * np.linalg.norm(emb[target]))
    keep = np.sort(np.argsort(-cosine, kind="stable")[:10])
    assert keep[0] < len(history) - fit.protocol.params["max_history"], "an item older than the stored window"
    text = method.backbone.tokenizer.decode(method.inputs(sample)[0].full_ids(0))  # what reclora builds
    titles = fit.catalog.titles(history[keep])
    where = [text.index(f"{i}. {t} ({ratings[k]:g} stars)") for i, (t, k) in enumerate(zip(titles, keep), 1)]
    assert where == sorted(where) and len(history) > 10
    assert text.index(f"***{fit.catalog.titles([target])[0]}***") > where[-1]
    assert text.count(" stars)") == 10


def test_tallrec_layout_shows_the_retrieved_items_as_liked_and_disliked_lists(cell, trained):
    """``prompt: tallrec``: the same K retrieved items, split by the card's label threshold into TALLRec's
    preference lists (no numbered lines, no stars), and the method trains and scores with it."""
    from benchmarks.data.cards import load_card
    from methods.retrieval import select_history

    fit, test, _ = cell
    run = trained("reclora", prompt="tallrec", retrieval="recent")
    row = int(np.argmax(test["history"].str.len().to_numpy()))
    shown = select_history(test.iloc[[row]], 10, "recent", None)
    text = run.method.builder.sample_texts(shown)[0]
    threshold = load_card(fit.catalog.name).label_threshold
    titles, ratings = fit.catalog.titles(shown["history"].iloc[0]), shown["history_ratings"].iloc[0]
    preference, unpreference = text.split("User Preference: ")[1].split("\nUser Unpreference: ")
    assert len(titles) == 10 and "stars" not in text and 0 < sum(ratings > threshold) < 10
    for title, rating in zip(titles, ratings):
        assert (f'"{title}"' in preference) == (rating > threshold) != (f'"{title}"' in unpreference)
    scores = run.method.score(test)
    assert scores.shape == (len(test),) and ((scores > 0) & (scores < 1)).all()


def test_extra_inputs_reach_the_forward_with_the_rows_of_its_batch():
    """yes_probability reorders rows by length; each row's extra input must stay with its own prompt."""
    from benchmarks.perf.tiny_llama import tiny_llama, tiny_tokenizer
    from methods.prompting import PromptSet
    from methods.scoring import yes_probability

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=3)
    import datasets

    suffixes = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    prompts = PromptSet([1, 2], datasets.Dataset.from_dict({"suffix_ids": suffixes}))
    answers = SimpleNamespace(yes=20, no=21)
    bias = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def biased(model, bias, **inputs):
        out = model(**inputs)
        out.logits[..., 20] += bias[:, None]
        return out

    got = yes_probability(model, prompts, answers, batch_size=2, reuse_prefix=False, pad_id=0, forward=biased,
                          extra_inputs=lambda rows: {"bias": bias[torch.as_tensor(rows)]})
    with torch.no_grad():
        for row, suffix in enumerate(suffixes):
            last = model(torch.tensor([[1, 2, *suffix]])).logits[0, -1, [20, 21]].double()
            last[0] += bias[row]
            assert got[row] == pytest.approx(float(torch.softmax(last, 0)[0]), abs=1e-5)


def test_backbone_item_vectors_are_the_untrained_backbones_pooled_item_texts(cell, trained):
    from methods.backbone import load_backbone
    from methods.retrieval import title_embeddings

    fit, test, ctx = cell
    method = trained("reclora", item_vectors="backbone").method
    assert method.item_vectors.shape == (fit.catalog.n_items, method.backbone.model.config.hidden_size)
    rows = [0, 7, fit.catalog.n_items - 1]
    texts = [method.config.item_text.format(**{**fit.catalog.items.iloc[r].to_dict(), **fit.catalog.domain})
             for r in rows]
    assert fit.catalog.items.iloc[0]["title"] in texts[0]
    expected = title_embeddings(load_backbone(ctx.llm, ctx.quant, ctx.device), texts, batch_size=2)
    np.testing.assert_allclose(method.item_vectors[rows], expected, atol=1e-5)
    assert ((method.score(test) > 0) & (method.score(test) < 1)).all()


@pytest.mark.slow
def test_real_din_crm_trains_on_the_full_split_and_stays_frozen(cell):
    """The real RecBole DIN (one epoch on the tiny train split): unchanged by the LLM's training."""
    from baselines.recbole_encoders import fit_frozen_encoder

    fit, test, ctx = cell
    method = build("reclora", ctx, learning_rate=5e-2)
    crm = fit_frozen_encoder("din", fit, ctx, full_train=True, overrides=method.config.crm_overrides)  # memoized
    before = {k: v.clone() for k, v in crm.net.model.state_dict().items()}
    method.fit(fit)
    assert method.crm is crm
    after = crm.net.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not crm.net.model.training and not any(p.requires_grad for p in crm.net.model.parameters())
    scores = method.score(test)
    assert ((scores > 0) & (scores < 1)).all()
    llm = count_parameters(method.backbone.model.parameters())
    crm_total = sum(p.numel() for p in crm.net.model.parameters())
    counts = method.parameter_counts()
    assert (counts.trainable, counts.total) == (llm.trainable, llm.total + crm_total) and crm_total > 0
    assert counts.sha256 != llm.sha256  # the digest covers the CRM's weights too


@pytest.mark.parametrize("name, overrides, stored, fragment", [
    ("reclora", {"history_pool": "stored", "crm_overrides": {"max_history": 10}}, 10,
     "retrieval from the stored window would choose nothing"),
    ("reclora-no-retrieval", {}, 10, r"its CRM \(din\) reads 60 history items"),
    ("reclora", {"crm_overrides": {"max_history": 61}}, 60, "reads 61 history items"),
])
def test_a_protocol_with_too_short_histories_is_refused_in_one_line(cell, name, overrides, stored, fragment):
    """ML-25M's and Amazon Books' cards store 10 items (= K): a retriever limited to them chooses nothing,
    and din.yaml's CRM would read 10 of its 60."""
    import dataclasses

    fit, _, ctx = cell
    short = dataclasses.replace(fit.protocol, params={**fit.protocol.params, "max_history": stored})
    with pytest.raises(ValueError, match=fragment) as err:
        build(name, ctx, **overrides).fit(dataclasses.replace(fit, protocol=short))
    assert "\n" not in str(err.value) and "max_history" in str(err.value)
