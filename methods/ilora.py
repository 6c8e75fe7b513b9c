"""``ilora``: instance-wise mixture-of-experts LoRA for next-item prediction; ``lora-seq``: its plain-LoRA ablation.

Paper: Kong, Wu, Zhang, Sheng, Lin, Wang, He. "Customizing Language Models with Instance-wise LoRA
for Sequential Recommendation", NeurIPS 2024 (arXiv 2408.10159). Reference code: AkaliKong/iLoRA,
built on ljy0ustc/LLaRA (Liao et al., SIGIR 2024), whose LoRA tuning is ``lora-seq``.

Mechanism (what is reproduced):

* task ``next_item``: the prompt names the last 10 history titles and the 20 frozen candidate titles
  (``methods/prompts/llara.yaml``, the authors' wording); the answer is the target's title; the loss
  is on the answer tokens only.
* hybrid prompt (LLaRA): one extra position after every history and candidate title, embedded as
  ``projector(SASRec item embedding)``, projector = Linear(64, d) -> GELU -> Linear(d, d), trainable
  (:mod:`methods.hybrid_prompt`); ``hybrid: false`` gives text-only prompts.
* MoE LoRA (:mod:`methods.lora_mixture`, "products" mode): the rank-r LoRA (r=8, alpha=32, dropout
  0.1 on q,k,v,o,gate,up,down) is split into E=4 experts of rank r/E; output = W x + alpha/(r/E) *
  sum_k g_k B_k A_k x, as the authors' ``moelora.py`` scales it.
* gate: the frozen SASRec's representation of the history (its last position's hidden state,
  :func:`baselines.recbole_encoders.fit_frozen_encoder`, trained on the whole train split) ->
  :class:`Router` -> softmax over E, one weight vector per sample, read by every wrapped layer.
* ``lora-seq`` (``configs/lora-seq.yaml``): the same prompt, projector and training with one expert
  of rank r and no gate: plain LoRA (Hu et al. 2021) with scale alpha/r, LLaRA's setting.
* scoring: ``scorer: likelihood`` (each candidate title's log-likelihood on one shared prompt pass)
  or ``generate`` (greedy decoding matched to the candidate titles, the papers' HR@1/ValidRatio);
  the ``-generate`` names are the same methods with the second scorer (:mod:`methods.candidate_scoring`).

NOTE, where this differs (details and numbers in ``docs/methods/ilora.md``):

* backbone: any HF causal LM, 4-bit NF4 by default (offline default SmolLM2-135M-Instruct, prompt in
  its chat template) instead of Llama-2-7B in bf16.
* router: a two-layer MLP (Linear -> GELU -> Linear -> softmax) instead of the authors' 1-D
  convolutional residual network over the 64-d representation. The CPU default trains it at the
  adapters' rate; the ``paper`` suite gives it the authors' 0.3x and weight decay 1e-5
  (``param_groups`` of :class:`methods.training.TrainSettings`).
* SASRec: RecBole's SASRec trained on our train split (histories up to 50 items), not the authors'
  checkpoint on 10-item windows; LLaRA's curriculum (text-only prompts early in training, hybrid
  later) is not used: hybrid prompts throughout.
* training negatives: 19 per training sample drawn once per fit (the authors redraw every epoch).
* optimization: the CPU default (``methods/configs/ilora.yaml``) is AdamW with a constant rate after
  linear warm-up and CPU-sized batches and epochs; the ``paper`` suite runs the authors' Adam, 5% warm-up
  from lr/100, cosine decay to lr/100, batch 128, 5 epochs, no clipping.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks.contract import CellContext, FitData, ParameterCounts, count_parameters
from benchmarks.metrics import METRICS
from benchmarks.registry import register_method
from methods.candidate_scoring import SCORERS
from methods.hybrid_prompt import HybridEmbedding, ItemProjector
from methods.lora_mixture import MixtureLoRA, MixtureSpec, inject_mixture
from methods.training import TrainSettings

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Router(nn.Module):
    """iLoRA's gate: ``softmax(W2 GELU(W1 u + b1) + b2)`` over E experts for a representation u ``[B, d_rec]``;
    ``hidden=0`` is one Linear layer."""

    def __init__(self, rec_dim: int, experts: int, hidden: int):
        super().__init__()
        layers = [nn.Linear(rec_dim, hidden), nn.GELU(), nn.Linear(hidden, experts)] if hidden else \
            [nn.Linear(rec_dim, experts)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        """``[B, d_rec]`` -> ``[B, E]`` mixing weights (rows sum to 1)."""
        return torch.softmax(self.mlp(representation.float()), dim=-1)


class GatedHybridLM(nn.Module):
    """The backbone with its LoRA mixture, the hybrid item embedding and the router, called like the backbone.

    ``forward(input_ids | inputs_embeds, gate_input=[B, d_rec], **backbone kwargs)``: item ids are
    embedded by ``embedding`` (when set); the mixture's weights are ``router(gate_input)``, or 1 for a
    single expert without router.
    """

    def __init__(self, llm: nn.Module, mixture: MixtureLoRA, embedding: HybridEmbedding | None,
                 router: Router | None):
        super().__init__()
        self.llm, self.embedding, self.router = llm, embedding, router
        self.mixture = mixture

    @property
    def config(self):
        return self.llm.config

    def forward(self, input_ids=None, inputs_embeds=None, gate_input=None, **kwargs):
        if inputs_embeds is None and self.embedding is not None:
            inputs_embeds, input_ids = self.embedding(input_ids), None
        source = input_ids if input_ids is not None else inputs_embeds
        if self.router is not None:
            if gate_input is None:
                raise ValueError("iLoRA's forward needs gate_input=[batch, d_rec] (the SASRec representation)")
            weights = self.router(gate_input)
        else:
            weights = torch.ones(source.shape[0], 1, device=source.device)
        with self.mixture.gated(weights=weights):
            return self.llm(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


@register_method("ilora", tasks=("next_item",), family="llm")
@register_method("ilora-generate", tasks=("next_item",), family="llm")
@register_method("lora-seq", tasks=("next_item",), family="llm")
@register_method("lora-seq-generate", tasks=("next_item",), family="llm")
class ILoRA:
    @dataclass
    class Config(TrainSettings):
        prompt: str = "llara"
        scorer: str = "likelihood"
        hybrid: bool = True
        experts: int = 4
        lora_r: int = 8
        lora_alpha: float = 32.0
        lora_dropout: float = 0.1
        lora_target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
        router_hidden: int = 64
        encoder: str = "sasrec"
        cpu_4bit_kernel: str = "dequant"
        cpu_dtype: str = "float32"
        valid_metric: str = "ndcg@5"
        max_new_tokens: int = 64
        max_answer_tokens: int = 512

        def __post_init__(self):
            super().__post_init__()
            if self.experts < 1 or self.lora_r % self.experts:
                raise ValueError(f"ilora config: lora_r ({self.lora_r}) must split evenly into experts "
                                 f"({self.experts})")
            if self.scorer not in SCORERS:
                raise ValueError(f"ilora config: scorer must be one of {SCORERS}, got {self.scorer!r}")
            metric = METRICS.get(self.valid_metric)
            if metric is None or metric.task != "next_item":
                raise ValueError(f"ilora config: valid_metric {self.valid_metric!r} is not a next_item metric of "
                                 f"benchmarks/metrics.py")

        @property
        def gated(self) -> bool:
            return self.experts > 1

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.ctx = ctx
        self.backbone = None
        self.encoder = None
        self.model = None
        self.scorer = None
        self.result = None

    def _gate_inputs(self, samples: pd.DataFrame):
        """``rows -> {"gate_input": [B, d_rec]}`` for the rows of ``samples`` (None without a gate)."""
        if not self.config.gated:
            return None
        representation = self.encoder.sequence_representation(list(samples["history"]))
        return lambda rows: {"gate_input": representation[np.asarray(rows)]}

    def build_model(self, llm: nn.Module, item_vectors: torch.Tensor) -> GatedHybridLM:
        """Inject the mixture into ``llm`` (frozen) and wrap it with the hybrid embedding and the router.

        Args:
            item_vectors: ``[n_items, d_rec]`` frozen item embeddings (the projector's input).
        """
        config = self.config
        spec = MixtureSpec(experts=config.experts, expert_rank=config.lora_r // config.experts, alpha=config.lora_alpha,
                           targets=tuple(config.lora_target_modules), dropout=config.lora_dropout, mode="products")
        mixture = inject_mixture(llm, spec)
        tokens = llm.get_input_embeddings()
        device, rec_dim = tokens.weight.device, item_vectors.shape[1]
        embedding = HybridEmbedding(tokens, item_vectors, ItemProjector(rec_dim, tokens.embedding_dim)).to(device) \
            if config.hybrid else None
        router = Router(rec_dim, config.experts, config.router_hidden).to(device) if config.gated else None
        return GatedHybridLM(llm, mixture, embedding, router).eval()

    def fit(self, data: FitData) -> None:
        from baselines.recbole_encoders import fit_frozen_encoder
        from methods.backbone import load_backbone
        from methods.candidate_scoring import NextItemScorer
        from methods.next_item_prompts import with_training_candidates
        from methods.training import train

        ctx, config = self.ctx, self.config
        self.encoder = fit_frozen_encoder(config.encoder, data, ctx, full_train=True)
        self.backbone = load_backbone(ctx.llm, ctx.quant, ctx.device, cache=ctx.cache_dir,
                                      cpu_4bit_kernel=config.cpu_4bit_kernel, cpu_dtype=config.cpu_dtype)
        torch.manual_seed(ctx.seed)  # the same initial adapters whether SASRec was trained here or memoized
        self.model = self.build_model(self.backbone.model, self.encoder.item_embeddings())
        base = self.model.embedding.base if self.model.embedding is not None else None
        self.scorer = NextItemScorer(self.backbone, config.prompt, data.catalog, data.protocol, model=self.model,
                                     item_token_base=base, sample_inputs=self._gate_inputs, scorer=config.scorer,
                                     max_new_tokens=config.max_new_tokens, max_answer_tokens=config.max_answer_tokens)
        rng = np.random.default_rng([ctx.seed, int(data.protocol.hash[:8], 16)])
        train_samples = with_training_candidates(data.train, int(data.protocol.params["n_candidates"]),
                                                 data.catalog.n_items, rng)
        prompts = self.scorer.prompts(train_samples)

        def valid_metric() -> float:
            return data.validate(self.scorer.score(data.valid, ctx.batch_size))[config.valid_metric]

        # the plan's optimizer and micro-batch ceiling; never its gradient checkpointing: the mixture's
        # gate state is set for the forward only, and checkpointing recomputes inside backward()
        self.result = train(self.model, prompts, TrainSettings.from_config(config, ctx.max_epochs), seed=ctx.seed,
                            pad_id=self.scorer.pad_id, evaluate=valid_metric if len(data.valid) else None,
                            extra_inputs=self._gate_inputs(train_samples), plan=self.backbone.plan)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return self.scorer.score(samples, self.ctx.batch_size)

    def parameter_counts(self) -> ParameterCounts | None:
        """Trainable: adapters, projector and router. Total: those, the backbone (4-bit weights unpacked)
        and the frozen SASRec."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return count_parameters([*self.model.parameters(), *self.encoder.net.model.parameters()], trainable)

    def backbone_info(self) -> dict:
        return self.backbone.info()
