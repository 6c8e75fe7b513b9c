"""What an LLM cell costs on one GPU, before it runs: a FLOP and byte model over real token counts.

Per token of a Llama-shaped backbone with N parameters in its linear layers (head included), L layers,
width d and sequence length s, a forward pass is 2N + 4·L·s·d FLOPs (the matmuls, then attention
scores and values) and a QLoRA training step adds the backward through the frozen base, 2N + 8·L·s·d
(activation gradients only; the adapters' own gradients are negligible): the count
:mod:`benchmarks.perf.gpu_check` uses for its MFU. Seconds = FLOPs / (bf16 ceiling x MFU), plus what
is bound by memory bandwidth instead: greedy decoding (one read of every weight per generated token,
per batch) and the batch-1 latency probes; plus the backbone's load.

Token counts come from the committed CPU records (``padding``: the tokens each phase ran, from the
real prompts of the protocol), per (method, task): training tokens per sample and epoch (validation
passes included), scoring tokens per scored sample (latency probes and order probes included), scaled
by the backbone's ``token_ratio``. Sample counts: the cell's shots, the suite's caps, and split sizes
from committed records, else from ``cost_model.yaml``'s dataset sizes. Peak memory: the device plan's
(:mod:`methods.device_plan`): its weights plus the saved activations of one micro-batch (capped by its
micro-batch ceiling; recomputed layer by layer where it checkpoints).

Every constant is in ``cost_model.yaml``, and a committed ``results/gpu/<kind>/gpu_check.json``
replaces the stated ceilings and MFU by measured ones.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from benchmarks.audits import order_probe
from benchmarks.registry import ROOT
from methods import device_plan

MODEL_FILE = Path(__file__).with_name("cost_model.yaml")
RESULTS = ROOT / "results"


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    token_ratio: float = 1.0

    @property
    def linear_parameters(self) -> int:
        """N: q, k, v, o, the three MLP projections per layer, and the output head."""
        kv = self.hidden // self.heads * self.kv_heads
        per_layer = 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        return self.layers * per_layer + self.hidden * self.vocab

    @property
    def parameters(self) -> int:
        """Every parameter: N plus the input embedding table (not tied to the head in these shapes)."""
        return self.linear_parameters + self.hidden * self.vocab

    def weight_bytes(self, quant: str) -> float:
        """Bytes a forward pass reads: NF4 packs two weights a byte plus a 4-byte scale per 64 (double
        quantization halves that; counted whole), embeddings and head stay bf16 (2 bytes)."""
        n, table = self.linear_parameters - self.hidden * self.vocab, 2 * self.hidden * self.vocab
        body = n * (0.5 + 4 / 64) if quant == "nf4" else 2 * n
        return body + 2 * table


@dataclass(frozen=True)
class Device:
    name: str
    bf16_tflops: float
    memory_gbps: float
    memory_gib: float
    mfu: float
    measured: bool


@dataclass(frozen=True)
class CellCost:
    seconds: float
    peak_gib: float
    parts: dict


@lru_cache(maxsize=1)
def model() -> dict:
    return yaml.safe_load(MODEL_FILE.read_text())


def shape_of(llm: str) -> Shape | None:
    """The backbone shape of an ``--llm`` id (None: not in ``cost_model.yaml``)."""
    key = model()["llm_ids"].get(llm)
    return Shape(**model()["backbones"][key]) if key else None


def device(kind: str | None = None) -> Device:
    """The assumed GPU: ``cost_model.yaml``'s ceilings, or a committed gpu_check run's measurements."""
    name = kind or model()["device"]
    spec = model()["devices"][name]
    measured = sorted((RESULTS / "gpu").glob(f"*{name}*/gpu_check.json")) if (RESULTS / "gpu").is_dir() else []
    if measured:
        report = json.loads(measured[-1].read_text())
        ceilings, train = report["ceilings"], report["efficiency"]["train"]
        return Device(name, ceilings["bf16_tflops"], ceilings["copy_gbps"] / 2, spec["memory_gib"], train["mfu"], True)
    return Device(name, spec["bf16_tflops"], spec["memory_gbps"], spec["memory_gib"], model()["mfu"], False)


def counted_flops(n_linear: float, layers: int, width: int, tokens: float, seq: float, train: bool) -> float:
    """The module docstring's count for ``tokens`` tokens of sequences of ``seq``: forward 2N + 4·L·s·d
    per token, a QLoRA training step twice that again for the base (4N) and three times for attention.
    :mod:`benchmarks.perf.gpu_check` measures its MFU against the same count."""
    attention = 4 * layers * seq * width
    return tokens * (4 * n_linear + 3 * attention if train else 2 * n_linear + attention)


def forward_flops(shape: Shape, tokens: float, seq: float) -> float:
    return counted_flops(shape.linear_parameters, shape.layers, shape.hidden, tokens, seq, train=False)


def train_flops(shape: Shape, tokens: float, seq: float) -> float:
    return counted_flops(shape.linear_parameters, shape.layers, shape.hidden, tokens, seq, train=True)


def committed_records(root: Path | None = None, exclude: tuple[Path, ...] = ()) -> Iterator[dict]:
    """Every record of every ``records.jsonl`` under ``root`` (default: the committed ``results/``),
    in file order; a line that does not parse is skipped (an estimate reads what it can). Run folders
    under ``<root>/runs/`` (where runs are written, ignored by git) are not read: an estimate depends
    on the committed results only, not on what ran on this machine. Nor are files under ``exclude``
    (resolved folders)."""
    root = root or RESULTS
    for path in sorted(root.rglob("records.jsonl")):
        if path.relative_to(root).parts[0] == "runs" or any(path.resolve().is_relative_to(f) for f in exclude):
            continue
        for line in path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


@lru_cache(maxsize=1)
def token_counts() -> dict[tuple[str, str], tuple[float, float]]:
    """(method, task) -> (training tokens per sample and epoch, scoring tokens per scored sample), the
    medians over committed CPU records that counted their tokens (SmolLM2's tokenizer)."""
    found: dict[tuple, list] = defaultdict(list)
    for record in committed_records():
        padding, budget = record.get("padding") or {}, record.get("budget") or {}
        if record.get("status") != "ok" or "score" not in padding or not record.get("n_eval"):
            continue
        epochs = (record.get("method_config") or {}).get("epochs") or 1
        if budget.get("max_epochs"):
            epochs = min(epochs, budget["max_epochs"])
        n_eval = record["n_eval"]
        scored = n_eval + (budget.get("latency_samples") or 0) + (budget.get("warmup") or 0)
        if order_probe.applies(record["task"], record.get("family")):
            scored += len(order_probe.ORDERINGS) * min(budget.get("order_probe_samples") or 0, n_eval)
        fit = padding.get("fit", {}).get("tokens", 0) / max(1, (record.get("n_train") or 0) * epochs)
        found[(record["method"], record["task"])].append((fit, padding["score"]["tokens"] / scored))
    return {key: (statistics.median(p[0] for p in points), statistics.median(p[1] for p in points))
        for key, points in found.items()}


def _tokens(method: str, task: str) -> tuple[float, float] | None:
    """A method's token counts, else those of the method it is a variant of (``lora-seq-generate``
    prompts as ``lora-seq``; ``reclora-shared`` as ``reclora``), else the median over every method
    counted on ``task`` (a method no committed record counted yet, e.g. one just contributed, prompts
    about as long as the others on its task); None when nothing on the task was counted."""
    counts = token_counts()
    for name in (method, method.removesuffix("-generate"), method.split("-")[0]):
        if (name, task) in counts:
            return counts[(name, task)]
    same_task = [value for (_name, counted), value in counts.items() if counted == task]
    if not same_task:
        return None
    return statistics.median(v[0] for v in same_task), statistics.median(v[1] for v in same_task)


@lru_cache(maxsize=1)
def recorded_sizes() -> dict[tuple[str, str], dict[str, int]]:
    """(dataset, task) -> {"train": n, "test": n} from committed records of whole splits."""
    sizes: dict[tuple, dict] = defaultdict(dict)
    for record in committed_records():
        if record.get("status") != "ok" or record.get("tiny"):
            continue
        key = (record["dataset"], record["task"])
        if record.get("shots") == "full" and record.get("n_train"):
            sizes[key]["train"] = max(sizes[key].get("train", 0), record["n_train"])
        if not (record.get("budget") or {}).get("eval_cap") and record.get("n_eval"):
            sizes[key]["test"] = max(sizes[key].get("test", 0), record["n_eval"])
    return dict(sizes)


def split_sizes(dataset: str, task: str, min_history: int = 5) -> dict[str, int] | None:
    """{"train", "test"} sample counts of a protocol: recorded, else from ``cost_model.yaml``'s dataset size."""
    recorded = recorded_sizes().get((dataset, task), {})
    if {"train", "test"} <= set(recorded):
        return recorded
    scale = model()["datasets"].get(dataset)
    if scale is None:
        return None
    inter, users = scale["interactions"], scale["users"]
    if task == "ctr":
        samples = max(0, inter - min_history * users)
        return {"train": int(0.8 * samples), "test": int(0.1 * samples), **recorded}
    return {"train": max(0, inter - 3 * users), "test": users, **recorded}


def llm_cell(*, method: str, task: str, dataset: str, shots, llm: str, quant: str, config: dict, budget,
             gpu: Device, trains: bool = True) -> CellCost | None:
    """Estimated seconds and peak GiB of one LLM cell on ``gpu``, or None when the backbone's shape,
    the method's token counts or the split's size are unknown. A method that does not train
    (``trains=False``: zero-shot) costs its loading and scoring only."""
    shape, tokens, sizes = shape_of(llm), _tokens(method, task), split_sizes(dataset, task)
    if shape is None or tokens is None or sizes is None:
        return None
    per_train, per_score = (t * shape.token_ratio for t in tokens)
    n_train = 0 if not trains else sizes["train"] if shots in ("full", None) else min(int(shots), sizes["train"])
    n_eval = min(budget.eval_cap or sizes["test"], sizes["test"])
    epochs = min(config.get("epochs", 1), budget.max_epochs or config.get("epochs", 1))
    throughput = gpu.bf16_tflops * 1e12 * gpu.mfu
    weights = shape.weight_bytes(quant)
    read_s = weights / (gpu.memory_gbps * 1e9)
    train_s = train_flops(shape, n_train * epochs * per_train, per_train) / throughput
    scored = n_eval
    if order_probe.applies(task, "llm"):  # each ordering re-scores up to that many of the scored samples
        scored += len(order_probe.ORDERINGS) * min(budget.order_probe_samples, n_eval)
    score_s = forward_flops(shape, scored * per_score, per_score) / throughput
    one = max(read_s, forward_flops(shape, per_score, per_score) / throughput)  # batch 1: often bound by the reads
    latency_s = (budget.latency_samples + budget.warmup) * one
    decode_s = 0.0
    if config.get("scorer") == "generate":
        decode_s = math.ceil(n_eval / budget.batch_size) * config.get("max_new_tokens", 64) * read_s
    load_s = weights / (model()["load_gbps"] * 1e9)
    plan = device_plan.plan("cuda", quant, shape.parameters, gpu.memory_gib)
    checkpointing = plan.gradient_checkpointing and method == "tallrec"  # peft LoRA only (methods.device_plan)
    activations = 0.0  # scoring keeps no activations for a backward pass
    if trains and round(per_train) > 0:
        micro = config.get("micro_batch_size", 1)
        ceiling = plan.micro_batch_ceiling(round(per_train), shape.layers, shape.hidden, checkpointing) or micro
        activations = min(micro, ceiling) * plan.activation_bytes(round(per_train), shape.layers, shape.hidden,
                                                                 checkpointing)
    peak = plan.weights_gib + activations / 2**30
    parts = {"load": load_s, "train": train_s, "score": score_s + latency_s, "decode": decode_s,
             "n_train": n_train, "n_eval": n_eval, "epochs": epochs}
    return CellCost(load_s + train_s + score_s + latency_s + decode_s, peak, parts)


def describe_device(gpu: Device) -> str:
    how = "measured by gpu_check" if gpu.measured else "stated in benchmarks/execution/cost_model.yaml"
    return (f"one {gpu.name.upper()} at {gpu.bf16_tflops:.0f} TFLOP/s bf16, {gpu.memory_gbps:.0f} GB/s, "
            f"MFU {gpu.mfu:.0%} ({how})")
