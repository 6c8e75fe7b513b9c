"""What a CUDA run decides (methods/device_plan.py), checked on CPU: the plan itself for cpu and cuda, 135M
and 7B backbones, nf4 and none; then that the code consuming it follows it (backbone loading, the
optimizer, the micro-batch ceiling, gradient checkpointing, adapter dtypes and devices, determinism).
Nothing here fakes a GPU: each CUDA choice is a value of a pure function, or code run on CPU with that
value."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

from test_llm_training import build, lora_state  # noqa: E402

from benchmarks.perf.tiny_llama import tiny_backbone_dir, tiny_llama, tiny_tokenizer  # noqa: E402
from methods import device_plan  # noqa: E402
from methods.device_plan import plan  # noqa: E402
from methods.training import (  # noqa: E402
    LoraSettings,
    TrainSettings,
    add_lora,
    build_optimizer,
    enable_checkpointing,
    is_checkpointing,
    train,
)

SMOL, LLAMA_7B = 134_515_008, 6_738_415_616  # SmolLM2-135M and Llama-2-7B, parameters


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))


# --------------------------------------------------------------------------------------------------
# The decisions


@pytest.mark.parametrize("quant", ["nf4", "none"])
def test_a_7b_backbone_on_cuda_gets_bf16_sdpa_checkpointing_and_the_paged_optimizer(quant):
    p = plan("cuda", quant, LLAMA_7B, gpu_memory_gib=80)
    assert (p.device_type, p.compute_dtype, p.adapter_dtype, p.attn_implementation) == \
        ("cuda", "bfloat16", "float32", "sdpa")
    # NF4 keeps embeddings, norms and head (the residual stream) in float32; unquantized weights are bf16
    assert p.weights_dtype == {"nf4": "float32", "none": "bfloat16"}[quant]
    assert p.gradient_checkpointing is True and p.optimizer == "paged_adamw_8bit"
    assert p.deterministic is True and dict(p.env) == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert p.memory_gib == 80
    # 4.127 bits a parameter under NF4 with double quantization, 2 bytes in bf16
    assert p.weights_gib == pytest.approx(LLAMA_7B * {"nf4": 4.127 / 8, "none": 2}[quant] / 2**30)


def test_a_small_backbone_on_cuda_keeps_the_settings_optimizer_and_no_checkpointing():
    p = plan("cuda:0", "nf4", SMOL, gpu_memory_gib=80)
    assert (p.compute_dtype, p.weights_dtype, p.attn_implementation) == ("bfloat16", "float32", "sdpa")
    assert p.gradient_checkpointing is False and p.optimizer is None
    assert dict(p.env) == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def test_the_large_backbone_threshold_is_three_billion_parameters():
    assert not plan("cuda", "nf4", 2_999_999_999).gradient_checkpointing
    assert plan("cuda", "nf4", 3_000_000_000).gradient_checkpointing
    assert plan("cuda", "nf4", 2_999_999_999).optimizer is None
    assert plan("cuda", "nf4", 3_000_000_000).optimizer == "paged_adamw_8bit"


@pytest.mark.parametrize("params", [SMOL, LLAMA_7B])
@pytest.mark.parametrize("cpu_dtype", ["float32", "bfloat16"])
def test_cpu_keeps_what_it_did_before_whatever_the_size(params, cpu_dtype):
    nf4, full = plan("cpu", "nf4", params, 80, cpu_dtype), plan("cpu", "none", params, 80, cpu_dtype)
    assert nf4.compute_dtype == full.compute_dtype == full.weights_dtype == cpu_dtype
    assert nf4.weights_dtype == "float32"
    for p in (nf4, full):
        assert p.attn_implementation is None  # transformers' default: sdpa where the class has it
        assert not p.gradient_checkpointing and p.optimizer is None
        assert p.deterministic is True and p.env == ()
        assert p.memory_gib is None  # a GPU's memory means nothing to a CPU run


def test_the_plan_refuses_what_it_cannot_decide():
    with pytest.raises(ValueError, match="resolved"):
        plan("cpu", "nf4", SMOL, cpu_dtype="auto")  # measuring the CPU is not pure: resolve it first
    with pytest.raises(ValueError, match="device"):
        plan("mps", "nf4", SMOL)
    with pytest.raises(ValueError, match="quant"):
        plan("cuda", "int8", SMOL)


def test_the_micro_batch_ceiling_on_an_80_gib_card():
    """A 7B NF4 backbone takes 7e9 x 4.127 / 8 bytes = 3.363 GiB; 90% of 80 GiB leaves 68.64 GiB. A
    200-token sample through 32 layers of width 4096 saves 34 bytes per token, layer and width unit in
    16 bits, 68 with the float32 residual stream: 200 * 4096 * 68 * 32 = 1.78 GB, so 41 samples fit
    (41.3). With checkpointing each layer keeps its float32 input (200 * 4096 * 4 * 32 bytes) plus one
    layer's full set (200 * 4096 * 68): 0.161 GB, 459 samples (458.9985...)."""
    p = plan("cuda", "nf4", 7_000_000_000, gpu_memory_gib=80)
    assert p.micro_batch_ceiling(200, 32, 4096, checkpointing=False) == 41
    assert p.micro_batch_ceiling(200, 32, 4096, checkpointing=True) == 458
    assert p.micro_batch_ceiling(200, 32, 4096) == 458  # the plan's own choice for 7B: checkpointing
    full = plan("cuda", "none", 7_000_000_000, gpu_memory_gib=80)  # 13.04 GiB of bf16 weights, bf16 activations
    assert full.micro_batch_ceiling(200, 32, 4096, checkpointing=False) == 71
    assert plan("cuda", "nf4", 7_000_000_000, gpu_memory_gib=141).micro_batch_ceiling(200, 32, 4096, False) == 74
    assert plan("cuda", "nf4", 7_000_000_000, gpu_memory_gib=4).micro_batch_ceiling(200, 32, 4096) == 1
    assert plan("cuda", "nf4", 7_000_000_000).micro_batch_ceiling(200, 32, 4096) is None  # memory unknown
    assert plan("cpu", "nf4", 7_000_000_000, 80).micro_batch_ceiling(200, 32, 4096) is None


@pytest.mark.parametrize("planned, optimizer, decays, expected", [
    (None, "adamw", [0.01], "torch.optim.AdamW"),
    (None, "adam", [0.0], "torch.optim.Adam"),
    ("paged_adamw_8bit", "adamw", [0.0, 0.01], "bitsandbytes.optim.PagedAdamW8bit"),
    ("paged_adamw_8bit", "adam", [0.0, 0.0], "bitsandbytes.optim.PagedAdamW8bit"),  # no decay: one rule
    ("paged_adamw_8bit", "adam", [0.0, 1e-5], "torch.optim.Adam"),  # L2 decay has no 8-bit twin
])
def test_which_optimizer_trains(planned, optimizer, decays, expected):
    assert device_plan.optimizer_class(planned, optimizer, decays) == expected


# --------------------------------------------------------------------------------------------------
# The code that consumes the plan


def three_groups():
    model = torch.nn.ModuleDict({"projector": torch.nn.Linear(64, 80), "router": torch.nn.Linear(2, 2),
                                 "lora": torch.nn.Linear(2, 2)})
    settings = TrainSettings(learning_rate=1e-3, optimizer="adamw", weight_decay=0.0,
                             param_groups={"projector": {"weight_decay": 1e-5},
                                           "router": {"weight_decay": 1e-5, "lr_scale": 0.3}})
    return model, settings


def test_build_optimizer_gives_the_paged_8bit_adamw_the_plan_asks_for_with_groups_kept():
    model, settings = three_groups()
    optimizer = build_optimizer(model, settings, plan("cuda", "nf4", LLAMA_7B).optimizer)
    assert type(optimizer) is bnb.optim.PagedAdamW8bit
    by_param = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, (lr, decay) in {"projector": (1e-3, 1e-5), "router": (3e-4, 1e-5), "lora": (1e-3, 0.0)}.items():
        for param in model[name].parameters():
            assert by_param[id(param)]["lr"] == pytest.approx(lr) and by_param[id(param)]["weight_decay"] == decay
    before = model["projector"].weight.detach().clone()
    model["projector"](torch.randn(3, 64)).sum().backward()
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        optimizer.step()  # on CPU bitsandbytes steps without paging
    assert not torch.equal(before, model["projector"].weight)
    assert type(build_optimizer(model, settings, plan("cuda", "nf4", SMOL).optimizer)) is torch.optim.AdamW
    adam_l2 = replace(settings, optimizer="adam")
    assert type(build_optimizer(model, adam_l2, plan("cuda", "nf4", LLAMA_7B).optimizer)) is torch.optim.Adam


def test_train_takes_its_optimizer_from_the_plan(tok, monkeypatch):
    import methods.training

    built = []
    real_build = methods.training.build_optimizer

    def recording(model, settings, *planned):
        built.append(real_build(model, settings, *planned))
        return built[-1]

    monkeypatch.setattr(methods.training, "build_optimizer", recording)
    _, prompts = build(tok, n=4)
    settings = TrainSettings(learning_rate=1e-2, epochs=1, batch_size=4, micro_batch_size=4)
    model = add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=0.0))
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        train(model, prompts, settings, seed=0, pad_id=tok.pad_token_id, progress=False,
              plan=plan("cuda", "nf4", LLAMA_7B))
    train(model, prompts, settings, seed=0, pad_id=tok.pad_token_id, progress=False,
          plan=plan("cpu", "nf4", LLAMA_7B))
    assert [type(o) for o in built] == [bnb.optim.PagedAdamW8bit, torch.optim.AdamW]


def test_a_micro_batch_over_the_ceiling_runs_in_chunks_with_the_same_samples_per_step(tok, monkeypatch):
    """A plan whose GPU barely holds the weights caps the tiny Llama at one sample per forward: every
    micro-batch of 4 then runs as 4 chunks of 1, each optimizer step still sees the same 8 samples, and
    the adapter ends where one forward per micro-batch leaves it (gradient accumulation)."""
    import methods.training

    seen: list[list[int]] = []
    real_loss = methods.training.answer_loss

    def recording(model, prompts, rows, *args):
        seen.append([int(r) for r in rows])
        return real_loss(model, prompts, rows, *args)

    monkeypatch.setattr(methods.training, "answer_loss", recording)
    _, prompts = build(tok, n=16)
    settings = TrainSettings(learning_rate=1e-2, epochs=1, batch_size=8, micro_batch_size=4)
    cramped = plan("cuda", "nf4", SMOL)
    cramped = replace(cramped, memory_gib=(cramped.weights_gib + 1e-6) / device_plan.MEMORY_SHARE)

    def run(p):
        seen.clear()
        torch.manual_seed(0)
        model = add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=0.0))
        train(model, prompts, settings, seed=0, pad_id=tok.pad_token_id, progress=False, plan=p)
        return list(seen), lora_state(model)

    whole, whole_state = run(None)
    chunked, chunked_state = run(cramped)
    assert [len(rows) for rows in whole] == [4] * 4 and [len(rows) for rows in chunked] == [1] * 16
    assert [r for rows in chunked for r in rows] == [r for rows in whole for r in rows]
    for name, value in whole_state.items():
        torch.testing.assert_close(chunked_state[name], value, rtol=1e-4, atol=1e-6)
    _, roomy = run(plan("cuda", "nf4", SMOL, gpu_memory_gib=80))  # plenty of memory: one forward each
    assert [len(rows) for rows in seen] == [4] * 4


def test_the_ceiling_follows_the_models_own_checkpointing(tok):
    """What train() asks the plan: the longest training sequence through the model's layers, with
    checkpointing as the model has it (so a checkpointed model is capped later)."""
    from methods.training import micro_batch_ceiling

    _, prompts = build(tok, n=8)
    tokens = len(prompts.prefix_ids) + int(prompts.suffix_lengths().max()) + \
        max(len(a) for a in prompts.table["answer_ids"])
    p = plan("cuda", "none", SMOL)
    # memory for 3 samples without checkpointing: a micro-batch of 4 is chunked unless the model recomputes
    need = p.activation_bytes(tokens, 2, 64, checkpointing=False) * 3.5 / 2**30
    p = replace(p, memory_gib=(p.weights_gib + need) / device_plan.MEMORY_SHARE)
    plain = add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=0.0))
    recomputing = add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=0.0),
                           gradient_checkpointing=True)
    assert micro_batch_ceiling(plain, prompts, 4, p) == 3
    assert micro_batch_ceiling(recomputing, prompts, 4, p) is None
    assert micro_batch_ceiling(plain, prompts, 4, None) is None
    assert micro_batch_ceiling(plain, prompts, 4, plan("cpu", "none", SMOL)) is None


def test_load_backbone_takes_dtypes_and_attention_from_the_plan(tiny_dir, monkeypatch):
    from methods import backbone as bb

    default = bb.load_backbone(str(tiny_dir), "none")
    assert default.plan == plan("cpu", "none", default.info()["parameters"])  # counted before loading
    assert default.model.config._attn_implementation == "sdpa"  # transformers' default on CPU, as before
    asked = []
    real_plan = device_plan.plan

    def eager_bf16(*args, **kwargs):
        asked.append(args)
        return replace(real_plan(*args, **kwargs), attn_implementation="eager", weights_dtype="bfloat16",
                       compute_dtype="bfloat16")

    monkeypatch.setattr(device_plan, "plan", eager_bf16)
    loaded = bb.load_backbone(str(tiny_dir), "none")
    assert loaded.model.config._attn_implementation == "eager"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.info()["compute_dtype"] == "bfloat16" and loaded.plan.attn_implementation == "eager"
    recorded = loaded.info()["plan"]
    assert recorded["attn_implementation"] == "eager" and recorded["weights_dtype"] == "bfloat16"
    assert default.info()["plan"]["attn_implementation"] == "sdpa"  # what transformers resolved, not the plan's None
    assert asked[0][:3] == ("cpu", "none", default.info()["parameters"])


def test_checkpointing_asked_of_add_lora_is_on_for_a_full_precision_model_and_changes_no_gradient(tok):
    """add_lora's flag reached only 4-bit models (through peft's prepare_model_for_kbit_training); a
    bf16 backbone on CUDA is not 4-bit. Recomputation must leave the adapters' gradients as they were."""
    _, prompts = build(tok, n=4)
    rows = np.arange(4)

    def gradients(checkpointing: bool):
        from methods.prefix_cache import call_model
        from methods.training import answer_loss

        torch.manual_seed(0)
        model = add_lora(tiny_llama(len(tok), seed=1), LoraSettings(r=4, alpha=8, dropout=0.0),
                         gradient_checkpointing=checkpointing)
        with torch.no_grad():  # non-zero B, so that A's gradient is not zero
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        model.train()
        loss, _ = answer_loss(model, prompts, rows, tok.pad_token_id, call_model, {})
        loss.backward()
        return model, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, plain_grads = gradients(False)
    recomputed, recomputed_grads = gradients(True)
    assert not is_checkpointing(plain) and is_checkpointing(recomputed)
    assert plain_grads.keys() == recomputed_grads.keys() and all(g.abs().sum() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_checkpointing_would_lose_a_mixtures_gate_so_the_plan_leaves_it_to_peft_lora():
    """Why iLoRA and RecLoRA never take the plan's checkpointing: the gate weights are set for the
    forward only, and the recomputation runs inside backward(), after they are gone."""
    from methods.lora_mixture import MixtureSpec, inject_mixture

    def forward_then_backward(checkpointing: bool):
        torch.manual_seed(0)
        model = tiny_llama(64)
        if checkpointing:
            enable_checkpointing(model)
        mixture = inject_mixture(model, MixtureSpec(experts=2, expert_rank=2, alpha=4.0, targets=("q_proj",)))
        model.train()
        with mixture.gated(weights=torch.tensor([[0.3, 0.7]])):
            logits = model(torch.arange(1, 9)[None]).logits
        logits.sum().backward()
        return mixture

    assert all(p.grad is not None for p in forward_then_backward(False).parameters())
    with pytest.raises(RuntimeError, match="no gate weights set"):
        forward_then_backward(True)


def test_adapters_router_and_projector_are_float32_on_a_bf16_backbone():
    """On CUDA an unquantized backbone is bf16; every trained weight stays float32 (the plan's adapter
    dtype), and a forward and backward run through the mixed dtypes."""
    from methods.ilora import ILoRA
    from methods.lora_mixture import GateSpec, MixtureSpec, inject_mixture

    assert plan("cuda", "none", LLAMA_7B).adapter_dtype == "float32"
    llm = tiny_llama(64).to(torch.bfloat16)
    ilora = ILoRA(ILoRA.Config(lora_target_modules=["q_proj", "v_proj"]), None).build_model(llm, torch.randn(5, 8))
    trained = {n: p for n, p in ilora.named_parameters() if p.requires_grad}
    assert any("router" in n for n in trained) and any("projector" in n for n in trained)
    assert any("lora_A" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert ilora.embedding.item_vectors.dtype == torch.float32
    assert {p.dtype for n, p in ilora.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    ilora.train()
    ids = torch.tensor([[1, 2, 3, 64 + 4, 5]])  # one item position (id >= vocabulary size)
    logits = ilora(input_ids=ids, gate_input=torch.randn(1, 8)).logits
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())

    gated = tiny_llama(64).to(torch.bfloat16)
    mixture = inject_mixture(gated, MixtureSpec(experts=2, expert_rank=2, alpha=4.0, targets=("v_proj",),
                                                gate=GateSpec(condition_dim=3)))
    assert {p.dtype for p in mixture.parameters()} == {torch.float32}
    peft_model = add_lora(tiny_llama(64).to(torch.bfloat16), LoraSettings(r=4, alpha=8, dropout=0.0))
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}


def test_adapters_router_and_projector_are_created_on_the_backbones_device():
    """The meta device stands in for a GPU: whatever device the backbone's weights are on, every
    trained weight and the frozen item vectors are created there too (no GPU and no fake needed)."""
    from methods.ilora import ILoRA
    from methods.lora_mixture import GateSpec, MixtureSpec, inject_mixture

    with torch.device("meta"):
        llm = tiny_llama(64)
    ilora = ILoRA(ILoRA.Config(lora_target_modules=["q_proj"]), None).build_model(llm, torch.randn(5, 8))
    assert {t.device.type for t in [*ilora.parameters(), *ilora.buffers()]} == {"meta"}
    with torch.device("meta"):
        other = tiny_llama(64)
    mixture = inject_mixture(other, MixtureSpec(experts=2, expert_rank=2, alpha=4.0, targets=("q_proj",),
                                                gate=GateSpec(condition_dim=3)))
    assert {p.device.type for p in mixture.parameters()} == {"meta"}


@pytest.fixture
def torch_determinism():
    """Leave torch's global deterministic settings as the test found them."""
    was, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(was)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def test_seed_everything_turns_deterministic_mode_on_with_cublas_workspace_for_cuda(monkeypatch, torch_determinism):
    from benchmarks.execution.cell import apply_device_env, seed_everything

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    seed_everything(1, "llm", "cpu")
    assert torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    torch.use_deterministic_algorithms(False)
    seed_everything(1, "conventional", "cuda")  # no CUDA call: the mode and the environment are set
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own valid choice stays
    apply_device_env("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    torch.use_deterministic_algorithms(False)
    seed_everything(1, "reference", "cuda")  # reference methods never touch torch
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_frozen_encoder_answers_on_its_own_device_even_for_no_history():
    """iLoRA's and RecLoRA's encoder runs on the cell's device; an empty request must not come back on
    the CPU (the meta device stands in for a GPU)."""
    from types import SimpleNamespace

    from baselines.recbole_encoders import FrozenEncoder

    model = torch.nn.Module()
    model.item_embedding = torch.nn.Embedding(6, 3, device="meta")
    encoder = FrozenEncoder(SimpleNamespace(model=model, item_ids=np.arange(5), device=torch.device("meta")), 4)
    assert encoder.item_embeddings().device.type == "meta"
    empty = encoder.sequence_representation([])
    assert empty.shape == (0, 3) and empty.device.type == "meta"


def test_a_copy_quantized_on_cuda_is_kept_apart_from_the_cpu_copies(tmp_path):
    """CPU copies keep their names (nf4-float32, nf4-float32-compute-bfloat16); the CUDA plan's dtypes
    (float32 weights, bf16 compute) equal the second, so a CUDA copy carries the device in its name."""
    from methods.backbone import quantized_copy_folder

    converted = tmp_path / "SmolLM2-135M-Instruct-b179c9523d0e"
    names = {(device, dtype): quantized_copy_folder(converted, device.split(":")[0],
                                                    *device_plan.dtypes(device, "nf4", dtype)).name
             for device in ("cpu", "cuda") for dtype in ("float32", "bfloat16")}
    assert names == {("cpu", "float32"): f"{converted.name}-nf4-float32",
                     ("cpu", "bfloat16"): f"{converted.name}-nf4-float32-compute-bfloat16",
                     ("cuda", "float32"): f"{converted.name}-nf4-float32-compute-bfloat16-cuda",
                     ("cuda", "bfloat16"): f"{converted.name}-nf4-float32-compute-bfloat16-cuda"}
