"""Several low-rank adapters mixed per sample on a (possibly 4-bit) base Linear: the layer shared by
iLoRA (instance-wise MoE LoRA, [F4]) and RecLoRA (personalized LoRA, [F5]).

The math, for one wrapped Linear ``W`` (``torch.nn.Linear`` or bitsandbytes ``Linear4bit``), E experts
``A_k`` in R^{r x d_in}, ``B_k`` in R^{d_out x r}, and per-sample mixing weights ``g_b`` in R^E (one
vector per sample, shared by all tokens of that sample)::

    y_b = W x_b + s * delta_b(x_b),                     s = alpha / r   (r = rank of ONE expert)
    "products":  delta_b(x) = sum_k g_bk B_k A_k x
    "factors":   delta_b(x) = (sum_k g_bk B_k) (sum_k g_bk A_k) x

Dropout (``lora_dropout``) is applied to x before the A factors; A is kaiming-uniform and B zero at
init, so an injected model starts equal to its base. The base layer is never modified: no merge into
4-bit weights (merging a per-sample delta has no meaning anyway). With one expert, or a one-hot
``g``, both modes equal plain LoRA (Hu et al. 2021, Eq. 3) with scale alpha / r.

Who uses which mode:

* iLoRA (arXiv 2408.10159; AkaliKong/iLoRA ``model/peft/tuners/moelora.py``): "products". One rank-r
  LoRA is split into E experts of rank r/E (r=8, E=4: rank 2 each); ONE gate vector (a softmax
  router over the frozen SASRec representation of the history) is read by every layer. Its code
  scales by ``lora_alpha / (r // num_moe)``, alpha over the expert rank, as here (alpha=32: s=16).
* RecLoRA paper text (arXiv 2408.03533): "products", A_p B_p^T = sum_k alpha_k A_k B_k^T (as quoted
  by a review of the paper; the PDF itself was not at hand).
* RecLoRA code (Gebro13/RecLoRA ``modeling_lorec_trash_v1.py``, ``Loreclayer``): "factors".
  ``Linear(N, d_in * r)`` and ``Linear(N, r * d_out)`` applied to the weights give A_u and B_u, then
  ``bmm(bmm(x, A_u), B_u) * alpha / r``; every meta-LoRA has rank r (r=8, alpha=2r=16). One gate PER
  layer and module, fed by the same CRM user vector u: LayerNorm -> Linear(d_u, 60) -> ReLU ->
  Dropout(0.1) -> Linear(60, N), softmax(logits / temperature) (:class:`GateNetwork`).

Cost: "products" runs all experts' A as one ``[E*r, d_in]`` matmul, scales the rank slices by the
gate and runs one ``[d_out, E*r]`` matmul: a plain LoRA of rank E*r plus one elementwise product.
"factors" mixes the factors per sample first (``O(batch * E * r * (d_in + d_out))``, independent of
sequence length), then runs two batched matmuls of rank r: a plain rank-r LoRA per token.

Gate plumbing: every wrapped layer of a model reads one shared :class:`GateState`, set for a forward
by :meth:`MixtureLoRA.gated`: ``weights=[batch, E]`` (iLoRA: one router output for all layers) or
``condition=[batch, d_u]`` (RecLoRA: each layer's own :class:`GateNetwork` maps it to its weights).
A batch of one broadcasts to any input batch (one prompt's weights over its candidates).

Injection is done here rather than through peft's custom-module registration
(``LoraConfig._register_custom_module``): that API is marked experimental and "subject to change"
while this project accepts peft >= 0.13; a registered class must follow ``LoraLayer``'s per-adapter
conventions (ModuleDicts keyed by adapter name, ``update_layer``, merge/unmerge) that a per-sample
mixture cannot honour; and peft's adapter files keep ``lora_`` keys only, knowing nothing of per-layer
gate networks. Swapping modules by name suffix, freezing, counting and saving take a few lines here.
(peft's X-LoRA is no alternative: it swaps no 4-bit layer.)
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.contract import ParameterCounts, count_parameters

MODES = ("products", "factors")
FILE_FORMAT = "llmrec-bench/lora-mixture/1"


@dataclass(frozen=True)
class GateSpec:
    """A gate network owned by each wrapped layer (RecLoRA); defaults are the authors' code.

    Attributes:
        condition_dim: d_u, the size of the conditioning vector (the CRM's user representation).
        hidden: width of the hidden layer (60 in RecLoRA's ``Loreclayer``).
        dropout: dropout after the hidden ReLU (0.1).
        temperature: softmax temperature (the authors' ``--temperature``, default 1).
    """

    condition_dim: int
    hidden: int = 60
    dropout: float = 0.1
    temperature: float = 1.0

    def __post_init__(self):
        if self.condition_dim < 1 or self.hidden < 1 or self.temperature <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"GateSpec: need condition_dim, hidden >= 1, temperature > 0, 0 <= dropout < 1; "
                             f"got {self}")


@dataclass(frozen=True)
class MixtureSpec:
    """What to inject and how to mix.

    Attributes:
        experts: E (iLoRA experts) or N (RecLoRA meta-LoRAs).
        expert_rank: r, the rank of ONE expert (iLoRA: total rank / E; RecLoRA: r of each meta-LoRA).
        alpha: LoRA alpha; the delta is scaled by alpha / expert_rank (both authors' codes).
        targets: module-name suffixes to wrap, e.g. ("q_proj", "v_proj").
        dropout: lora_dropout on the adapter input.
        mode: "products" or "factors" (see the module docstring).
        gate: a per-layer gate network (RecLoRA), or None when weights are set from outside (iLoRA).
    """

    experts: int
    expert_rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0
    mode: str = "products"
    gate: GateSpec | None = None

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.gate, Mapping):
            object.__setattr__(self, "gate", GateSpec(**self.gate))
        if self.mode not in MODES:
            raise ValueError(f"MixtureSpec.mode must be one of {MODES}, got {self.mode!r}")
        if self.experts < 1 or self.expert_rank < 1 or not self.targets or not 0 <= self.dropout < 1:
            raise ValueError(f"MixtureSpec: need experts, expert_rank >= 1, some targets, 0 <= dropout < 1; got {self}")

    @property
    def scale(self) -> float:
        return self.alpha / self.expert_rank

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> MixtureSpec:
        """Build from a YAML/JSON mapping (``gate`` a nested mapping or null); unknown keys are refused."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"MixtureSpec: unknown key(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class GateNetwork(nn.Module):
    """RecLoRA's gate: softmax(MLP(u) / temperature) with MLP = LayerNorm -> Linear -> ReLU -> Dropout -> Linear.

    Linear weights keep PyTorch's kaiming-uniform init and biases start at zero, as in the authors'
    ``reset_lorec_parameters``.
    """

    def __init__(self, spec: GateSpec, experts: int):
        super().__init__()
        self.temperature = spec.temperature
        self.mlp = nn.Sequential(
            nn.LayerNorm(spec.condition_dim),
            nn.Linear(spec.condition_dim, spec.hidden),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, experts),
        )
        for layer in (self.mlp[1], self.mlp[4]):
            nn.init.zeros_(layer.bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``[batch, d_u]`` -> mixing weights ``[batch, E]`` (rows sum to 1)."""
        return F.softmax(self.mlp(condition) / self.temperature, dim=-1)


@dataclass
class GateState:
    """What every wrapped layer of one model reads at forward time; set by :meth:`MixtureLoRA.gated`."""

    weights: torch.Tensor | None = None  # [batch, E]
    condition: torch.Tensor | None = None  # [batch, d_u]


class MixtureLoRALinear(nn.Module):
    """A base Linear plus ``scale * delta_b(x)`` mixed per sample (see the module docstring).

    Parameters: ``lora_A`` ``[E*r, d_in]`` (expert k owns rows k*r..(k+1)*r) and ``lora_B``
    ``[d_out, E*r]`` (expert k owns the same columns); with E=1 they are peft's ``lora_A.weight`` and
    ``lora_B.weight``. Inputs are ``[batch, ..., d_in]``; adapter math runs in the adapter's dtype
    (float32) and is cast back to the base output's dtype.
    """

    def __init__(self, base_layer: nn.Linear, spec: MixtureSpec, state: GateState, name: str):
        super().__init__()
        self.base_layer = base_layer
        self.spec = spec
        self.state = state
        self.name = name
        # on the base layer's device, in float32 whatever the base computes in (bf16 on CUDA): the
        # adapters' master weights (methods.device_plan)
        device, dtype = base_layer.weight.device, torch.float32
        width = spec.experts * spec.expert_rank
        self.lora_A = nn.Parameter(torch.empty(width, base_layer.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, width, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # fan_in = d_in, as for each expert alone
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.gate = GateNetwork(spec.gate, spec.experts).to(device=device, dtype=dtype) \
            if spec.gate is not None else None

    def extra_repr(self) -> str:
        s = self.spec
        return f"mode={s.mode}, experts={s.experts}, expert_rank={s.expert_rank}, scale={s.scale:g}"

    def mixing_weights(self, batch: int) -> torch.Tensor:
        """The ``[batch, E]`` weights of this forward, from the shared state (and this layer's gate)."""
        source = self.state.condition if self.gate is not None else self.state.weights
        if source is None:
            kind = "condition" if self.gate is not None else "weights"
            raise RuntimeError(
                f"{self.name}: no gate {kind} set; run the forward inside `with mixture.gated({kind}=...)` "
                f"(under activation checkpointing, the backward too)")
        weights = self.gate(source.to(self.lora_A)) if self.gate is not None else source.to(self.lora_A)
        if weights.shape[0] == batch:
            return weights
        if weights.shape[0] == 1:
            return weights.expand(batch, -1)
        raise ValueError(f"{self.name}: gate set for {weights.shape[0]} samples, but the input batch has {batch}")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        batch = x.shape[0]
        weights = self.mixing_weights(batch)
        h = self.dropout(x.to(self.lora_A.dtype)).reshape(batch, -1, x.shape[-1])
        delta = self._products(h, weights) if self.spec.mode == "products" else self._factors(h, weights)
        return result + delta.reshape(result.shape).to(result.dtype)

    def _products(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k g_k B_k A_k h: one A matmul for all experts, rank slices scaled by the gate, one B matmul."""
        slice_weights = (weights * self.spec.scale).repeat_interleave(self.spec.expert_rank, dim=-1)
        return F.linear(F.linear(h, self.lora_A) * slice_weights[:, None, :], self.lora_B)

    def _factors(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(sum_k g_k B_k)(sum_k g_k A_k) h: per-sample mixed factors, then two batched rank-r matmuls."""
        experts, rank = self.spec.experts, self.spec.expert_rank
        a_mixed = torch.einsum("be,erd->brd", weights, self.lora_A.view(experts, rank, -1))
        b_mixed = torch.einsum("be,oer->bor", weights * self.spec.scale, self.lora_B.view(-1, experts, rank))
        return torch.bmm(torch.bmm(h, a_mixed.transpose(1, 2)), b_mixed.transpose(1, 2))

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the adapter and gate, never of the base layer."""
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("base_layer."))


class MixtureLoRA:
    """The mixture injected into one model: its wrapped layers, the shared gate state, counts, files.

    Built by :func:`inject_mixture`. Train with ``mixture.parameters()`` (plus whatever the method
    adds, e.g. iLoRA's router) and run every forward inside :meth:`gated`.
    """

    def __init__(self, model: nn.Module, spec: MixtureSpec, layers: dict[str, MixtureLoRALinear], state: GateState):
        self.model = model
        self.spec = spec
        self.layers = layers
        self.state = state

    @contextmanager
    def gated(self, *, weights: torch.Tensor | None = None, condition: torch.Tensor | None = None):
        """Set the per-sample gate input of every layer for the forwards (and backward) inside the block.

        Args:
            weights: ``[batch, E]`` mixing weights read by all layers (layers without gate networks).
            condition: ``[batch, d_u]`` vector each layer's own gate maps to weights (``spec.gate`` set).

        Raises:
            ValueError: the wrong one of the two, or a wrong shape.
        """
        gate = self.spec.gate
        if gate is not None:
            if condition is None or weights is not None:
                raise ValueError("this mixture's layers own gate networks: pass condition=[batch, d_u] only")
            if condition.dim() != 2 or condition.shape[1] != gate.condition_dim:
                raise ValueError(f"condition must be [batch, {gate.condition_dim}], got {list(condition.shape)}")
        else:
            if weights is None or condition is not None:
                raise ValueError("this mixture reads weights set from outside: pass weights=[batch, E] only")
            if weights.dim() != 2 or weights.shape[1] != self.spec.experts:
                raise ValueError(f"weights must be [batch, {self.spec.experts}], got {list(weights.shape)}")
        previous = (self.state.weights, self.state.condition)
        self.state.weights, self.state.condition = weights, condition
        try:
            yield self
        finally:
            self.state.weights, self.state.condition = previous

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Adapter and gate parameters, keyed ``<module name>.<parameter>`` as in the saved file."""
        for name, layer in self.layers.items():
            for key, param in layer.adapter_parameters():
                yield f"{name}.{key}", param

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def parameter_counts(self, *frozen: nn.Parameter) -> ParameterCounts:
        """Trainable (adapter + gates) and total parameters of the model, 4-bit weights unpacked, plus
        ``frozen`` ones the method holds beside it (RecLoRA's CRM) in the total and the digest."""
        return count_parameters([*self.model.parameters(), *frozen], trainable=self.parameters())

    def save(self, path: str | Path) -> None:
        """Write adapter and gate weights (no base weights) as safetensors, with the spec as metadata."""
        from safetensors.torch import save_file

        tensors = {k: p.detach().contiguous().cpu() for k, p in self.named_parameters()}
        save_file(tensors, str(path), metadata={"format": FILE_FORMAT, "spec": self.spec.to_json(),
                                                "torch": torch.__version__})

    def load(self, path: str | Path) -> None:
        """Read weights written by :meth:`save` for the same spec and model.

        Raises:
            ValueError: not such a file, another spec, or keys/shapes that do not match this model.
        """
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FILE_FORMAT:
                raise ValueError(f"{path}: not a lora-mixture adapter file (format {meta.get('format')!r})")
            saved = MixtureSpec.from_mapping(json.loads(meta["spec"]))
            if saved != self.spec:
                raise ValueError(f"{path}: saved for {saved}, but this model's mixture is {self.spec}")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        own = dict(self.named_parameters())
        missing, unexpected = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
        wrong = sorted(k for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f"{path}: does not fit this model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}, wrong shape {wrong[:3]})")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(tensors[key])


def inject_mixture(model: nn.Module, spec: MixtureSpec) -> MixtureLoRA:
    """Wrap every Linear whose name ends with one of ``spec.targets``; freeze everything else.

    Works on float and bitsandbytes 4-bit models alike (``Linear4bit`` is an ``nn.Linear``).

    Raises:
        ValueError: no module matches the targets, or the model already carries a mixture.
        TypeError: a matching module is not a Linear.
    """
    model.requires_grad_(False)
    state = GateState()
    layers: dict[str, MixtureLoRALinear] = {}
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if child not in spec.targets:
            continue
        if isinstance(module, MixtureLoRALinear):
            raise ValueError(f"{name}: already carries a lora mixture; inject once per model")
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name}: target is a {type(module).__name__}, not a Linear (nn.Linear or Linear4bit)")
        layer = MixtureLoRALinear(module, spec, state, name).train(module.training)  # dropout follows the model
        setattr(model.get_submodule(parent_name), child, layer)
        layers[name] = layer
    if not layers:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no module of {type(model).__name__} ends with {list(spec.targets)}; "
                         f"its Linear layers are named {linear}")
    return MixtureLoRA(model, spec, layers, state)
