"""``ilora`` / ``lora-seq`` models (issue F4): plain LoRA with one expert, instance-wise gates, hybrid
item positions, training on a 4-bit base, and ``zeroshot-llm`` on next_item (tiny random Llama, no download).

The mixture layer itself is tested in ``test_lora_mixture.py``; here the method's model is: the
router, the hybrid embedding and the mixture wired as ``methods/ilora.py`` wires them.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from test_ilora_scoring import TITLES, builder, catalog, independent_log_likelihood, samples  # noqa: E402

from benchmarks import registry  # noqa: E402
from benchmarks.contract import CellContext, FitData, ProtocolInfo, without_labels  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_backbone_dir, tiny_llama, tiny_tokenizer  # noqa: E402
from methods.candidate_scoring import candidate_log_likelihoods  # noqa: E402
from methods.ilora import ALL_PROJECTIONS  # noqa: E402
from methods.training import TrainSettings, answer_loss, train  # noqa: E402

REC_DIM = 6


def method(name: str, **overrides):
    entry = registry.get_entry(name)
    return entry.load_class()(registry.resolve_config(entry, overrides), CellContext(seed=1))


def item_vectors(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(TITLES), REC_DIM, generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed: int = 1) -> None:
    """Non-zero B (LoRA starts at B = 0, i.e. at the base model) so that adapters change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.mixture.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_variants_differ_from_ilora_only_in_their_switches():
    base = dataclasses.asdict(registry.resolve_config(registry.get_entry("ilora")))
    switches = {"lora-seq": {"experts": 1}, "ilora-generate": {"scorer": "generate"},
                "lora-seq-generate": {"experts": 1, "scorer": "generate"}}
    for name, switch in switches.items():
        variant = dataclasses.asdict(registry.resolve_config(registry.get_entry(name)))
        assert {k: v for k, v in variant.items() if base[k] != v} == switch, name
    assert (base["experts"], base["lora_r"], base["lora_alpha"], base["lora_dropout"]) == (4, 8, 32, 0.1)
    assert base["lora_target_modules"] == ALL_PROJECTIONS and base["hybrid"] is True
    for bad, message in (({"experts": 3}, "must split evenly"), ({"scorer": "beam"}, "scorer must be one of"),
                         ({"valid_metric": "auc"}, "not a next_item metric")):
        with pytest.raises(ValueError, match=message):
            registry.resolve_config(registry.get_entry("ilora"), bad)


def test_one_expert_without_gate_is_plain_lora(tok):
    """lora-seq's model equals peft's LoRA (r=8, alpha=32) with the same weights."""
    import peft

    base = tiny_llama(len(tok), seed=1)
    model = method("lora-seq", hybrid=False).build_model(copy.deepcopy(base), item_vectors())
    assert model.router is None and model.embedding is None
    reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.1, target_modules=ALL_PROJECTIONS)).eval()
    randomize_adapters(model)
    with torch.no_grad():
        for name, layer in model.mixture.layers.items():
            lora = reference.base_model.model.get_submodule(name)
            lora.lora_A["default"].weight.copy_(layer.lora_A)
            lora.lora_B["default"].weight.copy_(layer.lora_B)
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected, plain = model(input_ids=ids).logits, reference(input_ids=ids).logits, base(ids).logits
    assert (expected - plain).abs().max() > 1e-2, "the adapters should change the output"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gate_weights_differ_across_samples_and_change_each_sample_alone(tok):
    model = method("ilora", hybrid=False).build_model(tiny_llama(len(tok), seed=2), item_vectors())
    randomize_adapters(model)
    u = torch.randn(3, REC_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        weights = model.router(u)
        ids = torch.randint(0, len(tok), (1, 7), generator=torch.Generator().manual_seed(1)).repeat(3, 1)
        out = model(input_ids=ids, gate_input=u).logits
        moved = u.clone()
        moved[0] = -u[0]
        out_moved = model(input_ids=ids, gate_input=moved).logits
    assert weights.shape == (3, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert (weights[0] - weights[1]).abs().max() > 1e-3 and (weights[1] - weights[2]).abs().max() > 1e-3
    assert (out[0] - out[1]).abs().max() > 1e-3, "one prompt, two users: two outputs"
    assert (out_moved[0] - out[0]).abs().max() > 1e-3
    torch.testing.assert_close(out_moved[1:], out[1:], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs gate_input"):
        model(input_ids=ids)


def test_hybrid_embedding_projects_item_positions_and_trains_the_projector_only(tok):
    model = method("ilora").build_model(tiny_llama(len(tok), seed=3), item_vectors())
    embedding = model.embedding
    base = embedding.base
    assert base == len(tok)
    ids = torch.tensor([[5, base + 3, 7, base + 0], [base + 7, 2, 2, 9]])
    out = embedding(ids)
    tokens = model.llm.get_input_embeddings().weight
    torch.testing.assert_close(out[0, 0], tokens[5])
    torch.testing.assert_close(out[1, 3], tokens[9])
    for (b, p), item in {(0, 1): 3, (0, 3): 0, (1, 0): 7}.items():
        torch.testing.assert_close(out[b, p], embedding.projector(item_vectors()[item]))
    out.sum().backward()
    assert all(p.grad is not None for p in embedding.projector.parameters())
    assert tokens.grad is None and not tokens.requires_grad
    with pytest.raises(IndexError, match="beyond the 8 item vectors"):
        embedding(torch.tensor([[base + len(TITLES)]]))


def test_shared_prefix_likelihood_gives_continuations_their_own_prompts_gate(tok):
    """Through iLoRA's model (hybrid + per-sample gate), each candidate continues its own prompt's cache
    with its own gate weights: equal to a full pass per candidate."""
    model = method("ilora").build_model(tiny_llama(len(tok), seed=6), item_vectors())
    randomize_adapters(model, seed=2)
    b = builder(model.embedding.base, tokenizer=tok)
    prompts = b.build(samples(labeled=False))
    answers = b.answers(range(len(TITLES)))
    gate = torch.randn(len(prompts), REC_DIM, generator=torch.Generator().manual_seed(9))
    extra = lambda rows: {"gate_input": gate[rows]}  # noqa: E731
    got = candidate_log_likelihoods(model, prompts, answers, batch_size=2, pad_id=tok.pad_token_id,
                                    extra_inputs=extra, max_answer_tokens=30)
    expected = [[independent_log_likelihood(model, prompts.full_ids(row), answers[item], gate_input=gate[[row]])
                 for item in prompts.table[row]["candidates"]] for row in range(len(prompts))]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    swapped = candidate_log_likelihoods(model, prompts, answers, batch_size=2, pad_id=tok.pad_token_id,
                                        extra_inputs=lambda rows: {"gate_input": gate.flip(0)[rows]})
    assert np.abs(swapped - got).max() > 1e-3, "the gate input matters"


def test_ilora_trains_adapters_projector_and_router_on_a_4bit_backbone(tok, tmp_path_factory):
    bnb = pytest.importorskip("bitsandbytes")
    from methods.backbone import load_backbone

    backbone = load_backbone(str(tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))), "nf4", "cpu")
    model = method("ilora").build_model(backbone.model, item_vectors())
    assert isinstance(model.llm.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    learned = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(".projector." in n for n in learned) and any(n.startswith("router.") for n in learned)
    assert all("lora_" in n for n in learned if not n.startswith(("router.", "embedding.projector.")))
    prompts = builder(model.embedding.base, tokenizer=tok).build(samples())
    gate = torch.randn(len(prompts), REC_DIM, generator=torch.Generator().manual_seed(0))
    rows = np.arange(len(prompts))

    def loss() -> float:
        with torch.no_grad():
            total, count = answer_loss(model, prompts, rows, tok.pad_token_id, lambda m, **kw: m(**kw),
                                       {"gate_input": gate})
        return total.item() / count

    before = loss()
    train(model, prompts, TrainSettings(learning_rate=1e-2, epochs=10, batch_size=3, micro_batch_size=3),
          seed=0, pad_id=tok.pad_token_id, extra_inputs=lambda r: {"gate_input": gate[r]}, progress=False)
    assert loss() < 0.9 * before
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n].detach(), v) for n, v in frozen.items()), "the backbone must stay frozen"
    assert all(not torch.equal(named[n].detach(), v) for n, v in learned.items()), "every trainable part learns"


def test_zeroshot_llm_scores_next_item_candidates(tok, tmp_path_factory):
    llm = tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))
    ctx = CellContext(seed=1, batch_size=2, llm=str(llm), quant="none")
    entry = registry.get_entry("zeroshot-llm")
    assert "next_item" in entry.tasks
    zero = entry.load_class()(registry.resolve_config(entry), ctx)
    frame = samples()
    protocol = ProtocolInfo("next_item", {"history_len": 3, "n_candidates": 4}, "0" * 64)
    zero.fit(FitData("next_item", frame, frame, without_labels(frame), lambda s: {}, catalog(), protocol))
    scores = zero.score(without_labels(frame))
    assert scores.shape == (3, 4) and np.isfinite(scores).all() and (scores < 0).all()
    np.testing.assert_allclose(zero.score(without_labels(frame).iloc[1:2]), scores[1:2], atol=1e-5)
    assert zero.parameter_counts().trainable == 0
