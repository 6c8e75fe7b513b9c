"""The per-sample mixture of low-rank adapters (methods/lora_mixture.py) against independent references:
peft's LoRA (one expert), a per-sample loop over explicit matrices (several experts), a dequantized
float copy (4-bit base), and the model's own full forward (KV-cache decoding)."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.lora_mixture import MODES, GateSpec, MixtureSpec, inject_mixture

transformers = pytest.importorskip("transformers")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = 64


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    return transformers.LlamaForCausalLM(config).eval()


def one_linear(d_in: int = 16, d_out: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(proj=nn.Linear(d_in, d_out)))


def randomize(mixture, seed: int = 1) -> None:
    """Non-zero B (and fresh A) so that adapters change outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in mixture.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def softmax_rows(batch: int, experts: int, seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(batch, experts, generator=torch.Generator().manual_seed(seed)) * 2, dim=-1)


def spec(**overrides) -> MixtureSpec:
    values = dict(experts=3, expert_rank=2, alpha=8.0, targets=ALL_TARGETS)
    return MixtureSpec(**{**values, **overrides})


# --------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("mode", MODES)
def test_one_expert_equals_peft_lora(mode):
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(ALL_TARGETS)))
    model = copy.deepcopy(base)
    mixture = inject_mixture(model, spec(experts=1, expert_rank=4, mode=mode))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in mixture.layers.items():
            lora = reference.base_model.model.get_submodule(name)
            lora_a, lora_b = lora.lora_A["default"].weight, lora.lora_B["default"].weight
            lora_b.copy_(torch.randn(lora_b.shape, generator=generator) * 0.2)
            layer.lora_A.copy_(lora_a)
            layer.lora_B.copy_(lora_b)
    ids = torch.randint(0, VOCAB, (3, 9), generator=generator)
    with torch.no_grad(), mixture.gated(weights=torch.ones(3, 1)):
        expected, got, plain = reference(ids).logits, model(ids).logits, base(ids).logits
    assert (expected - plain).abs().max() > 1e-2, "the LoRA weights should change the output"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def reference_delta(x, weights, a, b, scale, mode):
    """Per-sample loop over explicit matrices a [E, r, d_in], b [E, d_out, r], in float64."""
    x, weights, a, b = (t.double() for t in (x, weights, a, b))
    rows = []
    for sample, g in zip(x, weights):
        if mode == "products":
            update = sum(g[k] * b[k] @ a[k] for k in range(len(g)))
        else:
            update = sum(g[k] * b[k] for k in range(len(g))) @ sum(g[k] * a[k] for k in range(len(g)))
        rows.append(sample @ update.T * scale)
    return torch.stack(rows)


@pytest.mark.parametrize("mode", MODES)
def test_several_experts_match_per_sample_reference(mode):
    model = one_linear()
    base = copy.deepcopy(model)
    mixture = inject_mixture(model, spec(experts=3, expert_rank=2, alpha=6.0, targets=("proj",), mode=mode))
    randomize(mixture)
    layer = mixture.layers["proj"]
    a = layer.lora_A.detach().view(3, 2, 16)  # expert k owns rows 2k..2k+1 of A ...
    b = layer.lora_B.detach().view(12, 3, 2).permute(1, 0, 2)  # ... and the same columns of B
    x = torch.randn(4, 5, 16)
    weights = softmax_rows(4, 3, seed=0)
    with torch.no_grad(), mixture.gated(weights=weights):
        delta = model(x) - base(x)
    torch.testing.assert_close(delta.double(), reference_delta(x, weights, a, b, 6.0 / 2, mode), rtol=1e-4, atol=1e-5)


def test_products_and_factors_agree_on_one_hot_weights_only():
    x = torch.randn(3, 4, 16)
    outputs = {}
    for mode in MODES:
        model = one_linear()
        mixture = inject_mixture(model, spec(targets=("proj",), mode=mode))
        randomize(mixture, seed=5)  # same parameters in both modes
        with torch.no_grad():
            with mixture.gated(weights=torch.eye(3)):
                one_hot = model(x)
            with mixture.gated(weights=softmax_rows(3, 3, seed=1)):
                mixed = model(x)
        outputs[mode] = one_hot, mixed
    torch.testing.assert_close(outputs["products"][0], outputs["factors"][0], rtol=1e-5, atol=1e-6)
    assert (outputs["products"][1] - outputs["factors"][1]).abs().max() > 1e-3, "mixed weights: cross terms differ"


@pytest.mark.parametrize("mode", MODES)
def test_gate_weights_change_each_sample_alone(mode):
    model = tiny_llama()
    mixture = inject_mixture(model, spec(mode=mode))
    randomize(mixture)
    ids = torch.randint(0, VOCAB, (1, 8)).expand(3, -1)  # three identical prompts
    weights = softmax_rows(3, 3, seed=2)
    changed = weights.clone()
    changed[1] = torch.tensor([0.0, 0.0, 1.0])
    with torch.no_grad():
        with mixture.gated(weights=weights):
            first = model(ids).logits
        with mixture.gated(weights=changed):
            second = model(ids).logits
    assert (first[0] - first[1]).abs().max() > 1e-3, "same prompt, other weights: other output"
    torch.testing.assert_close(second[0], first[0], rtol=0, atol=0)  # sample 0 untouched by sample 1's weights
    torch.testing.assert_close(second[2], first[2], rtol=0, atol=0)
    assert (second[1] - first[1]).abs().max() > 1e-3


def test_weights_of_one_sample_broadcast_over_the_batch():
    model = tiny_llama()
    mixture = inject_mixture(model, spec())
    randomize(mixture)
    ids = torch.randint(0, VOCAB, (4, 6))
    weights = softmax_rows(1, 3, seed=4)
    with torch.no_grad():
        with mixture.gated(weights=weights):
            broadcast = model(ids).logits
        with mixture.gated(weights=weights.expand(4, -1).clone()):
            repeated = model(ids).logits
    torch.testing.assert_close(broadcast, repeated, rtol=0, atol=0)


def test_fresh_mixture_equals_base_and_only_adapters_train():
    base = tiny_llama()
    model = copy.deepcopy(base)
    mixture = inject_mixture(model, spec(experts=4, expert_rank=2))
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad(), mixture.gated(weights=softmax_rows(2, 4, seed=0)):
        assert torch.equal(model(ids).logits, base(ids).logits)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    targets = [m for n, m in base.named_modules() if n.rpartition(".")[2] in ALL_TARGETS]
    expected = sum(4 * 2 * (m.in_features + m.out_features) for m in targets)
    counts = mixture.parameter_counts()
    assert len(mixture.layers) == 2 * 7
    assert counts.trainable == expected
    assert counts.total == sum(p.numel() for p in base.parameters()) + expected


def test_cached_decoding_applies_the_same_per_sample_mixture():
    model = tiny_llama()
    mixture = inject_mixture(model, spec())
    randomize(mixture)
    ids = torch.randint(0, VOCAB, (3, 10))
    with torch.no_grad(), mixture.gated(weights=softmax_rows(3, 3, seed=6)):
        full = model(ids).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefix.past_key_values).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Per-layer gate networks (RecLoRA)


def test_layer_gates_compute_tempered_softmax_and_differ_by_layer():
    gate_spec = GateSpec(condition_dim=5, hidden=7, temperature=0.5)
    model = tiny_llama()
    mixture = inject_mixture(model, spec(targets=("q_proj", "v_proj"), gate=gate_spec, mode="factors"))
    randomize(mixture)
    u = torch.randn(4, 5)
    per_layer = []
    for layer in mixture.layers.values():
        norm, first, _, _, last = layer.gate.mlp
        hidden = F.relu(F.linear(F.layer_norm(u, (5,), norm.weight, norm.bias, norm.eps), first.weight, first.bias))
        expected = torch.softmax(F.linear(hidden, last.weight, last.bias) / 0.5, dim=-1)
        with torch.no_grad(), mixture.gated(condition=u):
            got = layer.mixing_weights(4)
        torch.testing.assert_close(got, expected)
        per_layer.append(got)
    assert (per_layer[0] - per_layer[1]).abs().max() > 1e-3, "each layer and module owns its gate"
    ids = torch.randint(0, VOCAB, (1, 8)).expand(4, -1)
    with torch.no_grad(), mixture.gated(condition=u):
        logits = model(ids).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# 4-bit base layers (bitsandbytes NF4 on CPU dequantizes and computes through bf16 in places)


@pytest.fixture(scope="module")
def nf4_llama_dir(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    return folder


def load_nf4(folder):
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    return transformers.LlamaForCausalLM.from_pretrained(folder, quantization_config=config, dtype=torch.float32)


def test_mixture_on_a_4bit_linear_adds_the_same_delta_as_on_its_float_copy():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    float_model = one_linear(64, 48)
    linear4 = bnb.nn.Linear4bit(64, 48, compute_dtype=torch.float32, quant_type="nf4")
    linear4.load_state_dict(float_model.proj.state_dict())
    linear4.weight = linear4.weight.to("cpu")  # Params4bit quantizes on .to(device)
    assert linear4.weight.dtype == torch.uint8
    quantized = nn.Sequential(OrderedDict(proj=linear4))
    with torch.no_grad():
        float_model.proj.weight.copy_(bnb.functional.dequantize_4bit(linear4.weight.data, linear4.weight.quant_state))
    outputs = []
    for model in (float_model, quantized):
        base = copy.deepcopy(model)
        mixture = inject_mixture(model, spec(targets=("proj",)))
        randomize(mixture)
        x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), mixture.gated(weights=softmax_rows(3, 3, seed=0)):
            outputs.append((model(x), base(x)))
    (float_out, float_base), (nf4_out, nf4_base) = outputs
    torch.testing.assert_close(nf4_out - nf4_base, float_out - float_base, rtol=1e-4, atol=1e-5)
    scale = float_out.abs().max().item()
    assert (nf4_out - float_out).abs().max().item() < 2e-2 * scale  # bf16 rounding of the dequantized path


@pytest.mark.parametrize("mode", MODES)
def test_trains_on_a_4bit_backbone(nf4_llama_dir, mode):
    bnb = pytest.importorskip("bitsandbytes")
    model = load_nf4(nf4_llama_dir)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    if mode == "products":  # iLoRA: one router output shared by every layer
        mixture = inject_mixture(model, spec(experts=4, expert_rank=2, alpha=16.0, dropout=0.1, mode=mode))
        router = nn.Linear(6, 4)
        extra = list(router.parameters())
        gate_input = lambda u: {"weights": torch.softmax(router(u), dim=-1)}  # noqa: E731
    else:  # RecLoRA: one gate per layer and module, fed the same user vector
        mixture = inject_mixture(model, spec(experts=4, expert_rank=2, alpha=16.0, dropout=0.1, mode=mode,
                                             gate=GateSpec(condition_dim=6, hidden=8)))
        extra = []
        gate_input = lambda u: {"condition": u}  # noqa: E731
    counts = mixture.parameter_counts()
    assert counts.trainable == sum(p.numel() for p in mixture.parameters())
    assert counts.total == sum(p.numel() for p in tiny_llama().parameters()) + counts.trainable  # 4-bit unpacked
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, VOCAB, (4, 1), generator=generator) + torch.arange(12)) % VOCAB  # next = this + 1
    u = torch.randn(4, 6, generator=generator)
    optimizer = torch.optim.Adam(mixture.parameters() + extra, lr=1e-2)
    learned = {id(p) for p in mixture.parameters() + extra}
    losses = []
    for _ in range(12):
        with mixture.gated(**gate_input(u)):
            loss = model(ids, labels=ids).loss
            loss.backward()
        assert all(p.grad is None for p in model.parameters() if id(p) not in learned)
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.6 * losses[0], losses
    gate_params = extra or [p for n, p in mixture.named_parameters() if ".gate." in n]
    with mixture.gated(**gate_input(u)):
        model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_params), "gates must learn too"
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), f"{name} changed"


# --------------------------------------------------------------------------------------------------
# Files and errors


def test_save_load_round_trip_holds_only_adapter_and_gates(tmp_path):
    from safetensors import safe_open

    gate_spec = GateSpec(condition_dim=5)
    mixture_spec = MixtureSpec.from_mapping({"experts": 2, "expert_rank": 3, "alpha": 6, "mode": "factors",
                                             "targets": ["q_proj", "down_proj"], "gate": {"condition_dim": 5}})
    assert mixture_spec == spec(experts=2, expert_rank=3, alpha=6.0, mode="factors",
                                targets=("q_proj", "down_proj"), gate=gate_spec)
    source_model = tiny_llama()
    source = inject_mixture(source_model, mixture_spec)
    randomize(source, seed=9)
    path = tmp_path / "adapter.safetensors"
    source.save(path)
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    assert keys == {k for k, _ in source.named_parameters()}
    assert not any("base_layer" in k or "embed" in k for k in keys)
    assert any(".gate." in k for k in keys) and any(k.endswith("lora_B") for k in keys)

    target_model = tiny_llama()
    target = inject_mixture(target_model, mixture_spec)
    target.load(path)
    ids, u = torch.randint(0, VOCAB, (2, 6)), torch.randn(2, 5)
    with torch.no_grad():
        with source.gated(condition=u):
            expected = source_model(ids).logits
        with target.gated(condition=u):
            got = target_model(ids).logits
    assert torch.equal(got, expected)

    other = inject_mixture(tiny_llama(), spec(experts=3, expert_rank=3, alpha=6.0, mode="factors",
                                              targets=("q_proj", "down_proj"), gate=gate_spec))
    with pytest.raises(ValueError, match="adapter.safetensors: saved for"):
        other.load(path)


def test_actionable_errors():
    model = tiny_llama()
    mixture = inject_mixture(model, spec())
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.self_attn\.q_proj: no gate weights set"):
        model(ids)
    with mixture.gated(weights=softmax_rows(2, 3, seed=0)):
        model(ids)
    with pytest.raises(RuntimeError, match="no gate weights set"):  # the block leaves no stale gate behind
        model(ids)
    with pytest.raises(ValueError, match="gate set for 2 samples, but the input batch has 3"):
        with mixture.gated(weights=softmax_rows(2, 3, seed=0)):
            model(torch.randint(0, VOCAB, (3, 5)))
    with pytest.raises(ValueError, match=r"weights must be \[batch, 3\]"):
        with mixture.gated(weights=torch.ones(2, 4)):
            pass
    with pytest.raises(ValueError, match="pass weights"):
        with mixture.gated(condition=torch.ones(2, 4)):
            pass
    with pytest.raises(ValueError, match="already carries a lora mixture"):
        inject_mixture(model, spec())
    with pytest.raises(ValueError, match="its Linear layers are named"):
        inject_mixture(tiny_llama(), spec(targets=("c_attn",)))
    with pytest.raises(TypeError, match="model.layers.0.mlp: target is a LlamaMLP"):
        inject_mixture(tiny_llama(), spec(targets=("mlp",)))
    with pytest.raises(ValueError, match="unknown key"):
        MixtureSpec.from_mapping({"experts": 2, "expert_rank": 2, "alpha": 4, "targets": ["q_proj"], "rank": 8})
    with pytest.raises(ValueError, match="mode must be one of"):
        spec(mode="sum")
