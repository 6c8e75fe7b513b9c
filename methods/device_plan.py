"""What an LLM cell does differently on a GPU: one pure function, so CPU tests can check CUDA's choices.

:func:`plan` maps (device, quantization, backbone size, GPU memory, CPU dtype) to a frozen
:class:`DevicePlan`; nothing in it touches torch or a GPU. The code that acts on a choice reads it from
the plan: :func:`methods.backbone.load_backbone` (dtypes, attention), :func:`methods.training.add_lora`
(checkpointing, through ``tallrec``), :func:`methods.training.train` (optimizer, micro-batch ceiling) and
:func:`benchmarks.execution.cell.seed_everything` (deterministic algorithms, through
:func:`determinism`). On CPU every choice is what the code did before this module existed, so CPU
numbers are unchanged.

The choices, each with its reason (the library documentation each one rests on is cited where used):

* compute dtype: CUDA bf16 (the 4-bit matmuls' ``bnb_4bit_compute_dtype``, and every weight of an
  unquantized model), as QLoRA computes (Dettmers et al. 2023, Sec. 3); CPU the resolved
  ``cpu_dtype`` (:mod:`methods.cpu_dtype`).
* weights dtype (what embeddings, norms and head are loaded in): float32 under NF4 on both devices,
  else the compute dtype. peft's ``prepare_model_for_kbit_training`` casts these to float32 for
  ``tallrec`` anyway; loading them so gives iLoRA and RecLoRA (which do not call it) the same float32
  residual stream (on CPU a bf16 one moved iLoRA's candidate log-likelihoods by up to 0.78 between
  batch compositions, beyond the harness' batch-invariance tolerance).
* adapter (master weight) dtype: float32 on both devices. peft keeps LoRA weights in float32 on a bf16
  base (``get_peft_model(..., autocast_adapter_dtype=True)``, its default); the mixture layers of
  :mod:`methods.lora_mixture`, iLoRA's router and LLaRA's projector are created in float32.
* attention: ``attn_implementation="sdpa"`` on CUDA, named so a model class without SDPA fails at load
  instead of timing eager attention (transformers' ``from_pretrained(attn_implementation=...)``: an
  explicit ``"sdpa"`` raises where the class lacks it); None on CPU, transformers' default, which is
  SDPA where the class supports it and eager otherwise (what every CPU run has used).
* gradient checkpointing: on CUDA for backbones of at least :data:`LARGE_BACKBONE` parameters (their
  saved activations, not the 4-bit weights, limit the micro-batch), off on CPU (as before). It applies
  to peft LoRA only: the mixture layers of iLoRA and RecLoRA read their per-sample gate from a state
  set for the forward call (``MixtureLoRA.gated``), and checkpointing's recomputation runs inside
  ``backward()``, after that state is gone, so it would stop with "no gate weights set"
  (``tests/test_device_plan.py`` shows it). Those methods leave it off.
* optimizer: bitsandbytes' paged 8-bit AdamW (``paged_adamw_8bit``) on CUDA for backbones of at least
  :data:`LARGE_BACKBONE` parameters: its states page to host memory through CUDA unified memory when
  the GPU runs out (bitsandbytes, "Paged optimizers"; QLoRA Sec. 3 uses them for the memory spikes of
  gradient checkpointing). Else None: the method's own ``TrainSettings.optimizer`` (adam | adamw).
  :func:`methods.training.build_optimizer` keeps Adam with L2 decay as ``torch.optim.Adam``, since
  bitsandbytes' 8-bit Adam decays decoupled (:func:`optimizer_class`).
* deterministic algorithms: on for both devices. CPU: as before (``index_put_`` accumulates with
  atomics otherwise; docs/determinism.md). CUDA: only together with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``,
  which cuBLAS reads when CUDA initializes (torch ``use_deterministic_algorithms`` and the
  "Reproducibility" notes: without it a deterministic cuBLAS call raises); the plan returns it in
  ``env`` and the cell sets it before torch is imported.
* micro-batch ceiling (CUDA, when the GPU's memory is known): how many samples of a given length fit
  one forward/backward beside the weights (:meth:`DevicePlan.micro_batch_ceiling`); the training loop
  splits a larger micro-batch into chunks of at most that many, keeping which samples share an
  optimizer step (:func:`methods.training.train`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: backbones at least this large get gradient checkpointing and the paged 8-bit optimizer on CUDA
#: (7B-class Llama/Vicuna; the offline default SmolLM2-135M and 1B-class models do not)
LARGE_BACKBONE = 3_000_000_000
#: cuBLAS' setting for reproducible results (torch "Reproducibility" notes; ":16:8" also works, slower)
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
#: stored bytes per NF4 parameter: 4 bits plus the double-quantized block constants, 0.127 bits
#: (QLoRA, Dettmers et al. 2023, Sec. 3 "Double Quantization")
NF4_BYTES = (4 + 0.127) / 8
#: saved activation bytes per token, layer and width unit with 16-bit activations and no recomputation
#: (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1,
#: without its attention-score term, which SDPA's fused kernels never store)
ACTIVATION_BYTES = 34
#: share of the GPU's memory the ceiling plans for (allocator fragmentation, CUDA context, workspaces)
MEMORY_SHARE = 0.9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
OPTIMIZERS = ("paged_adamw_8bit",)


@dataclass(frozen=True)
class DevicePlan:
    """The choices of :func:`plan` (the module docstring gives each one's reason).

    Attributes:
        device_type: "cpu" or "cuda".
        compute_dtype: dtype the matmuls compute in ("float32" | "bfloat16").
        weights_dtype: dtype the non-4-bit weights are loaded in (embeddings, norms, head under NF4;
            every weight without quantization).
        adapter_dtype: dtype of trained adapter weights (LoRA, gates, router, projector): "float32".
        attn_implementation: passed to ``from_pretrained``; None = transformers' default.
        gradient_checkpointing: whether peft-LoRA training recomputes activations in backward.
        optimizer: None (the settings' adam | adamw) or "paged_adamw_8bit".
        deterministic: ``torch.use_deterministic_algorithms(True)`` in the cell.
        env: environment variables the cell sets before torch initializes CUDA, as (name, value) pairs.
        memory_gib: the GPU's memory (None on CPU, or when unknown).
        weights_gib: estimated memory of the loaded weights.
    """

    device_type: str
    compute_dtype: str
    weights_dtype: str
    adapter_dtype: str
    attn_implementation: str | None
    gradient_checkpointing: bool
    optimizer: str | None
    deterministic: bool
    env: tuple[tuple[str, str], ...]
    memory_gib: float | None
    weights_gib: float

    def activation_bytes(self, tokens: int, layers: int, hidden: int, checkpointing: bool | None = None) -> float:
        """Saved activations of one sample of ``tokens`` tokens through ``layers`` layers of width
        ``hidden``: all of :data:`ACTIVATION_BYTES` per layer, or with checkpointing each layer's input
        plus one layer's full set (the one being recomputed). Scaled from 16-bit to the residual
        stream's dtype (``weights_dtype``). ``checkpointing`` defaults to the plan's."""
        width = DTYPE_BYTES[self.weights_dtype]
        per_layer = tokens * hidden * ACTIVATION_BYTES * width / 2
        recompute = self.gradient_checkpointing if checkpointing is None else checkpointing
        return tokens * hidden * width * layers + per_layer if recompute else per_layer * layers

    def micro_batch_ceiling(self, tokens: int, layers: int, hidden: int,
                            checkpointing: bool | None = None) -> int | None:
        """The most samples of ``tokens`` tokens one forward/backward can hold beside the weights
        (at least 1); None where the plan knows no GPU memory (CPU: no ceiling)."""
        if self.memory_gib is None:
            return None
        free = (self.memory_gib * MEMORY_SHARE - self.weights_gib) * 2**30
        return max(1, math.floor(free / self.activation_bytes(tokens, layers, hidden, checkpointing)))


def determinism(device: str) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """(use deterministic algorithms, environment to set before CUDA initializes) for ``device``."""
    if device.startswith("cuda"):
        return True, (CUBLAS_WORKSPACE,)
    return device == "cpu", ()


def dtypes(device: str, quant: str, cpu_dtype: str = "float32") -> tuple[str, str]:
    """(compute dtype, weights dtype) of :func:`plan`, which depend on neither the backbone's size nor
    the GPU (:func:`methods.backbone.load_backbone` names its quantized copies by them before it
    knows the size).

    Raises:
        ValueError: as :func:`plan`.
    """
    cuda = device.startswith("cuda")
    if not cuda and device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if quant not in ("nf4", "none"):
        raise ValueError(f"quant must be 'nf4' or 'none', got {quant!r}")
    if cpu_dtype not in DTYPE_BYTES:
        raise ValueError(f"cpu_dtype must be resolved to one of {sorted(DTYPE_BYTES)} first, got {cpu_dtype!r}")
    compute = "bfloat16" if cuda else cpu_dtype
    return compute, "float32" if quant == "nf4" else compute


def weights_gib(backbone_params: int, quant: str, weights_dtype: str) -> float:
    """Memory of the loaded weights: NF4 at :data:`NF4_BYTES` a parameter (all of them counted so:
    the float32 embeddings and head of a 7B model add about 1 GiB, within the ceiling's margin),
    unquantized at the weights dtype's width."""
    per_param = NF4_BYTES if quant == "nf4" else DTYPE_BYTES[weights_dtype]
    return backbone_params * per_param / 2**30


def plan(device: str, quant: str, backbone_params: int, gpu_memory_gib: float | None = None,
         cpu_dtype: str = "float32") -> DevicePlan:
    """The choices for a backbone of ``backbone_params`` parameters on ``device`` (module docstring).

    Args:
        device: "cpu" or "cuda[:i]".
        quant: "nf4" or "none".
        backbone_params: parameters of the backbone, 4-bit weights unpacked.
        gpu_memory_gib: the GPU's total memory; None leaves the micro-batch unbounded.
        cpu_dtype: the RESOLVED CPU compute dtype, "float32" or "bfloat16" (ignored on CUDA).

    Raises:
        ValueError: an unknown device, quantization or dtype (``cpu_dtype="auto"`` included: resolve
            it first with :func:`methods.cpu_dtype.resolve`, which measures this CPU).
    """
    cuda = device.startswith("cuda")
    compute, weights = dtypes(device, quant, cpu_dtype)
    large = cuda and backbone_params >= LARGE_BACKBONE
    deterministic, env = determinism(device)
    return DevicePlan(
        device_type="cuda" if cuda else "cpu", compute_dtype=compute, weights_dtype=weights,
        adapter_dtype="float32", attn_implementation="sdpa" if cuda else None,
        gradient_checkpointing=large, optimizer="paged_adamw_8bit" if large else None,
        deterministic=deterministic, env=env, memory_gib=gpu_memory_gib if cuda else None,
        weights_gib=weights_gib(backbone_params, quant, weights))


def optimizer_class(planned: str | None, optimizer: str, decays: list[float]) -> str:
    """Which optimizer trains: ``"torch.optim.AdamW"``, ``"torch.optim.Adam"`` or
    ``"bitsandbytes.optim.PagedAdamW8bit"``.

    ``planned`` is the plan's optimizer, ``optimizer`` the settings' (adam | adamw), ``decays`` the
    weight decay of each parameter group. The paged 8-bit AdamW replaces AdamW, and Adam when no group
    decays (then the two are one update rule); Adam with decay stays ``torch.optim.Adam``: Adam adds
    L2 decay to the gradient, while bitsandbytes' 8-bit Adam kernels decay the weights decoupled
    (``p *= 1 - lr * wd``), AdamW's rule.

    Raises:
        ValueError: an unknown planned optimizer.
    """
    if planned is not None and planned not in OPTIMIZERS:
        raise ValueError(f"planned optimizer must be one of {OPTIMIZERS} or None, got {planned!r}")
    if planned == "paged_adamw_8bit" and (optimizer == "adamw" or not any(decays)):
        return "bitsandbytes.optim.PagedAdamW8bit"
    return "torch.optim.AdamW" if optimizer == "adamw" else "torch.optim.Adam"
