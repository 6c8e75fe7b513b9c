"""The training loop every LLM method shares: QLoRA on answer tokens, seeded, early-stopped on valid AUC.

``add_lora`` puts peft LoRA adapters on a (4-bit) backbone (QLoRA, Dettmers et al. 2023; TALLRec's
setting r=8, alpha=16, dropout 0.05 on ``q_proj``/``v_proj``). ``train`` is adapter-agnostic: it
optimizes whatever parameters require grad, so a method may insert its own layers instead.

Each training sequence is ``prefix_ids + suffix_ids + answer_ids`` (see :mod:`methods.prompting`);
the loss is the cross-entropy of the answer tokens only (the prompt is masked; TALLRec's script passes
``--train_on_inputs`` and also trains on the prompt, a deviation listed in docs/methods/tallrec.md),
averaged over the answer tokens of an optimizer step. Micro-batches are
drawn from length buckets (a seeded shuffle, then sorted within windows of a few micro-batches) so
padding stays small; gradients are accumulated to ``batch_size`` samples per step. The optimizer (Adam or
AdamW, per-parameter-group rates and decay), warm-up, decay schedule and clipping are
:class:`TrainSettings` fields, so each method's YAML can state its authors' values.

The model call is pluggable (``forward``, as in :mod:`methods.prefix_cache`), and ``extra_inputs(rows)``
may add per-sample keyword inputs (say a user vector for per-layer gates, or item embeddings placed
at extra token positions) that the method's ``forward`` consumes.

On a GPU the backbone's :class:`methods.device_plan.DevicePlan` (``train(..., plan=backbone.plan)``)
may replace the optimizer by bitsandbytes' paged 8-bit AdamW and cap how many samples one
forward/backward holds; without a plan (and on CPU, whose plan changes neither) training is as
described above.
"""
from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.execution import step_trace
from benchmarks.execution.progress import report as report_progress
from methods.prefix_cache import ModelCall, call_model
from methods.prompting import PromptSet
from methods.scoring import right_padded

if TYPE_CHECKING:
    import torch

ExtraInputs = Callable[[np.ndarray], Mapping[str, Any]]


@dataclass
class LoraSettings:
    """peft LoRA hyperparameters (TALLRec's defaults)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("constant", "linear", "cosine")
GROUP_KEYS = ("lr_scale", "weight_decay")


@dataclass
class TrainSettings:
    """Optimization hyperparameters of :func:`train`. Each LLM method's ``Config`` extends this class, so
    every field below is a key of its YAML (see each method's YAML for its values and the authors').

    The learning rate at optimizer step s (0-based) of T planned steps, W of them warm-up, is
    ``learning_rate * lr_factor(s)`` (:func:`lr_factor`). ``param_groups`` maps a substring of parameter
    names to ``{lr_scale, weight_decay}`` for the parameters whose name holds it (the first key that
    matches wins; the others get the global values): iLoRA decays only its projector and router and
    trains the router at 0.3x the rate.
    """

    learning_rate: float = 1e-4
    epochs: int = 1             # passes over the training set (the harness' max_epochs caps it)
    batch_size: int = 16        # samples per optimizer step
    micro_batch_size: int = 8   # samples per forward/backward (gradient accumulation in between)
    optimizer: str = "adamw"    # adamw (decoupled weight decay) | adam (L2 added to the gradient, as torch.optim.Adam)
    schedule: str = "constant"  # after warm-up: constant | linear | cosine decay to final_lr_ratio x the rate
    warmup_steps: int = 0       # linear warm-up steps ...
    warmup_ratio: float = 0.0   # ... or this share of all planned steps (ceil; use one of the two)
    warmup_start: float = 0.0   # the warm-up's first step runs at about this factor of the rate (LLaRA: 0.01)
    final_lr_ratio: float = 0.0  # where linear and cosine decay end, as a factor of the rate (LLaRA: 0.01)
    weight_decay: float = 0.0
    param_groups: dict = field(default_factory=dict)  # name substring -> {lr_scale, weight_decay}
    max_grad_norm: float = 1.0  # gradient clipping by global norm; 0 = none
    eval_every: int = 0         # optimizer steps between validations; 0 = at the end of each epoch
    patience: int = 10          # validations without improvement before stopping

    def __post_init__(self):
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps and self.warmup_ratio:
            problems.append("set warmup_steps or warmup_ratio, not both")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.warmup_start <= 1 or not 0 <= self.final_lr_ratio <= 1:
            problems.append("warmup_ratio must lie in [0, 1), warmup_start and final_lr_ratio in [0, 1]")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            problems.append(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                            f"({self.micro_batch_size})")
        for key, group in self.param_groups.items():
            if not isinstance(group, dict) or set(group) - set(GROUP_KEYS):
                problems.append(f"param_groups.{key} must be a mapping with keys among {GROUP_KEYS}, got {group!r}")
        if problems:
            raise ValueError("training settings: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: Any, max_epochs: int | None = None) -> TrainSettings:
        """These fields read from a method's ``Config`` (a subclass), epochs capped by ``max_epochs``."""
        values = {f.name: getattr(config, f.name) for f in fields(cls)}
        if max_epochs is not None:
            values["epochs"] = min(values["epochs"], max_epochs)
        return cls(**values)

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps W out of ``total_steps``."""
        return math.ceil(self.warmup_ratio * total_steps) if self.warmup_ratio else self.warmup_steps

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The rate's factor at optimizer step ``step`` (0-based) of ``total_steps``.

        Warm-up (s < W): ``start + (1 - start) (s + 1) / W``, so step W - 1 runs at the full rate. Then,
        with p = (s - W) / (T - W): constant 1; linear ``1 - (1 - f) p``; cosine
        ``f + (1 - f) (1 + cos(pi p)) / 2`` (f = ``final_lr_ratio``). With start = f = 0 the decays are
        Hugging Face's ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup`` after
        warm-up; iLoRA's cosine (its ``optims.py``) also starts after warm-up.
        """
        warm = self.warmup(total_steps)
        if step < warm:
            return self.warmup_start + (1 - self.warmup_start) * (step + 1) / warm
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        final = self.final_lr_ratio
        if self.schedule == "linear":
            return 1 - (1 - final) * progress
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What happened: one entry per validation, and the step whose adapter was kept."""

    history: list[dict[str, float]]
    best_step: int
    best_metric: float
    steps: int


#: torch.utils.checkpoint without re-entrant autograd: torch's recommended mode, and it needs no
#: input that requires grad (the frozen embeddings give none)
CHECKPOINTING = {"use_reentrant": False}


def add_lora(model, settings: LoraSettings, gradient_checkpointing: bool = False):
    """Freeze the backbone and wrap it with LoRA adapters; returns the ``PeftModel``.

    ``gradient_checkpointing`` (``Backbone.plan.gradient_checkpointing``) recomputes each decoder
    layer's activations in backward instead of keeping them, for 4-bit and full-precision backbones
    alike; peft's LoRA layers hold no per-forward state, so the recomputation sees what the forward saw.
    """
    from methods.backbone import quiet_bitsandbytes

    quiet_bitsandbytes()  # peft imports bitsandbytes
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads a transformers property deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    gradient_checkpointing_kwargs=dict(CHECKPOINTING))
        else:
            for param in model.parameters():
                param.requires_grad_(False)
            if gradient_checkpointing:  # prepare_model_for_kbit_training does this for 4-bit models only
                enable_checkpointing(model)
        return get_peft_model(model, config)


def enable_checkpointing(model) -> None:
    """Turn on activation (gradient) checkpointing of a transformers model, non-re-entrant."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x; the old name warns
    if enable is not None:
        enable(activation_checkpointing_kwargs=dict(CHECKPOINTING))
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINTING))


def is_checkpointing(model) -> bool:
    """Whether ``model`` (a transformers or peft model; False for anything else) recomputes activations."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new name first: the old warns
        value = getattr(model, name, None)
        if value is not None:
            return bool(value)
    return False


def micro_batches(lengths: np.ndarray, micro_batch_size: int, rng: np.random.Generator,
                  window: int = 4) -> list[np.ndarray]:
    """One epoch of micro-batches: shuffle, sort by length within windows of ``window`` micro-batches,
    cut, and shuffle the order of the cuts."""
    order = rng.permutation(len(lengths))
    span = micro_batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start: start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def answer_loss(model, prompts: PromptSet, rows: np.ndarray, pad_id: int, forward: ModelCall,
                extra: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the answer tokens of ``rows`` and how many tokens it sums."""
    import torch

    device = next(p.device for p in model.parameters())
    sequences, spans = [], []
    for row in rows:
        record = prompts.table[int(row)]
        prompt = prompts.prefix_ids + record["suffix_ids"]
        sequences.append(prompt + record["answer_ids"])
        spans.append((len(prompt) - 1, record["answer_ids"]))  # logits at p predict token p + 1
    ids, mask = right_padded(sequences, pad_id, device)
    positions = torch.tensor([p + k for p, answer in spans for k in range(len(answer))], device=device)
    targets = torch.tensor([t for _, answer in spans for t in answer], device=device)
    owner = torch.tensor([b for b, (_, answer) in enumerate(spans) for _ in answer], device=device)
    keep, where = torch.unique(positions, return_inverse=True)
    logits = forward(model, input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
    picked = logits[owner, where].float()
    loss = torch.nn.functional.cross_entropy(picked, targets, reduction="sum")
    return loss, len(targets)


def _check_trainable_4bit(model) -> None:
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError("a 4-bit layer was repacked for bitsandbytes' bf16 CPU inference kernel, which "
                               "has no gradient: load the backbone with cpu_4bit_kernel='dequant' to train it")


def build_optimizer(model, settings: TrainSettings, planned: str | None = None):
    """Adam or AdamW over the parameters that require grad, one group per ``param_groups`` key that
    matches (plus the rest at the global rate and decay).

    ``planned`` is the device plan's optimizer (``Backbone.plan.optimizer``): ``"paged_adamw_8bit"``
    builds bitsandbytes' ``PagedAdamW8bit`` over the same groups, rates and decays, where it computes
    the settings' update rule (:func:`methods.device_plan.optimizer_class`); None keeps the settings'.

    Raises:
        ValueError: a ``param_groups`` key that names no trainable parameter (a typo would otherwise
            leave the intended parameters at the global settings without a word), or an unknown
            ``planned`` optimizer.
    """
    import torch

    from methods.device_plan import optimizer_class

    members: dict[str | None, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = next((k for k in settings.param_groups if k in name), None)
            members.setdefault(key, []).append(param)
    unmatched = [k for k in settings.param_groups if k not in members]
    if unmatched:
        raise ValueError(f"training settings: param_groups {unmatched} match no trainable parameter name")
    groups = []
    for key, params in members.items():
        spec = settings.param_groups.get(key, {}) if key is not None else {}
        groups.append({"params": params, "lr": settings.learning_rate * float(spec.get("lr_scale", 1.0)),
                       "weight_decay": float(spec.get("weight_decay", settings.weight_decay))})
    kind = optimizer_class(planned, settings.optimizer, [group["weight_decay"] for group in groups])
    if kind == "bitsandbytes.optim.PagedAdamW8bit":
        from methods.backbone import quiet_bitsandbytes

        quiet_bitsandbytes()
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, lr=settings.learning_rate)
    if planned is not None:
        print(f"[train] {planned} asked for by the device plan, but {settings.optimizer} with weight decay has no "
              f"bitsandbytes equivalent (its 8-bit Adam decays decoupled): training with {kind}", file=sys.stderr)
    return (torch.optim.AdamW if kind == "torch.optim.AdamW" else torch.optim.Adam)(groups, lr=settings.learning_rate)


def micro_batch_ceiling(model, prompts: PromptSet, micro_batch_size: int, plan) -> int | None:
    """How many samples one forward/backward may hold, when ``plan`` caps it below ``micro_batch_size``
    for the longest training sequence (prefix + suffix + answer) through ``model``'s layers; None
    otherwise (no plan, no GPU memory in it, or a model whose config names no layers and width)."""
    if plan is None or plan.memory_gib is None:
        return None
    config = getattr(model, "config", None)
    layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not layers or not hidden or not len(prompts):
        return None
    tokens = len(prompts.prefix_ids) + int(prompts.suffix_lengths().max()) + \
        max(len(answer) for answer in prompts.table["answer_ids"])
    checkpointing = is_checkpointing(model)
    ceiling = plan.micro_batch_ceiling(tokens, int(layers), int(hidden), checkpointing)
    if ceiling is None or ceiling >= micro_batch_size:
        return None
    print(f"[train] micro-batches of {micro_batch_size} samples of up to {tokens} tokens exceed what "
          f"{plan.memory_gib:.0f} GiB holds; each runs in chunks of {ceiling} (same samples per optimizer step)",
          file=sys.stderr)
    return ceiling


def _chunks(rows: np.ndarray, size: int | None) -> list[np.ndarray]:
    return [rows] if size is None else [rows[i: i + size] for i in range(0, len(rows), size)]


def _trainable_state(model) -> dict[str, Any]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def train(model, prompts: PromptSet, settings: TrainSettings, *, seed: int, pad_id: int,
          evaluate: Callable[[], float] | None = None, forward: ModelCall = call_model,
          extra_inputs: ExtraInputs | None = None, progress: bool = True, plan=None) -> TrainResult:
    """Train the parameters of ``model`` that require grad on the labeled ``prompts``.

    Args:
        evaluate: returns the validation metric (higher is better, e.g. AUC from ``FitData.validate``);
            called every ``eval_every`` steps or per epoch (not at all when that would be only once:
            there is nothing to choose), the best adapter state is restored at the end, and training
            stops after ``patience`` validations without improvement.
        extra_inputs: per-sample keyword inputs for ``forward`` (see the module docstring).
        plan: the backbone's :class:`methods.device_plan.DevicePlan`: its optimizer (see
            :func:`build_optimizer`) and micro-batch ceiling (:func:`micro_batch_ceiling`: a micro-batch
            above it runs in chunks, gradients accumulated, so the samples of each step stay the same).

    Raises:
        RuntimeError: a 4-bit layer cannot back-propagate (see ``backbone.use_cpu_4bit_kernel``).
    """
    import torch
    from tqdm.auto import tqdm

    _check_trainable_4bit(model)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("train(): the model has no parameter that requires grad (add adapters first)")
    optimizer = build_optimizer(model, settings, plan.optimizer if plan is not None else None)
    chunk = micro_batch_ceiling(model, prompts, settings.micro_batch_size, plan)
    lengths = prompts.suffix_lengths()
    accumulate = max(1, settings.batch_size // settings.micro_batch_size)
    steps_per_epoch = math.ceil(math.ceil(len(prompts) / settings.micro_batch_size) / accumulate)

    total_steps = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: settings.lr_factor(step, total_steps))
    checks = settings.epochs if not settings.eval_every else math.ceil(total_steps / settings.eval_every)
    if checks <= 1:
        evaluate = None  # a single candidate adapter: nothing to choose, skip the validation pass
    history: list[dict[str, float]] = []
    best = (-math.inf, 0, _trainable_state(model))
    stale, step = 0, 0
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress,
               leave=False)

    def validate() -> bool:
        nonlocal best, stale
        if evaluate is None:
            return False
        model.eval()
        metric = float(evaluate())
        model.train()
        history.append({"step": step, "valid": metric})
        bar.set_postfix(valid=f"{metric:.4f}")
        if metric > best[0]:
            best, stale = (metric, step, _trainable_state(model)), 0
        elif math.isnan(metric) and best[0] == -math.inf:  # e.g. a one-class valid set: keep the latest
            best = (best[0], step, _trainable_state(model))
        else:
            stale += 1
        return stale >= settings.patience

    model.train()
    stop = False
    step_trace.trace("llm", 0, params)
    for _ in range(settings.epochs):
        batches = micro_batches(lengths, settings.micro_batch_size, rng)
        for first in range(0, len(batches), accumulate):
            group = batches[first: first + accumulate]
            n_tokens = sum(len(prompts.table[int(r)]["answer_ids"]) for rows in group for r in rows)
            losses = []
            for rows in (part for micro in group for part in _chunks(micro, chunk)):
                extra = extra_inputs(rows) if extra_inputs is not None else {}
                loss, _ = answer_loss(model, prompts, rows, pad_id, forward, extra)
                (loss / n_tokens).backward()
                losses.append(loss.item())
            total = sum(losses) / n_tokens
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_trace.trace("llm", step, params, losses)
            report_progress("fit: step", step, total_steps)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if settings.eval_every and step % settings.eval_every == 0 and validate():
                stop = True
                break
        if stop:
            break
        if not settings.eval_every and validate():
            break
    if evaluate is not None and not stop and (not history or history[-1]["step"] != step):
        validate()  # the last steps were never validated
    bar.close()
    model.eval()
    if evaluate is not None and best[1] != step:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for name, value in best[2].items():
                named[name].copy_(value)
    return TrainResult(history, best[1], best[0], step)
