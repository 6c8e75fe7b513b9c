"""``reclora``: RecLoRA, personalized low-rank adaptation of an LLM for ctr, with a frozen CRM.

Paper: Zhu et al. "Lifelong Personalized Low-Rank Adaptation of Large Language Models for
Recommendation", arXiv 2408.03533. Reference code: Gebro13/RecLoRA (``modeling_lorec_trash_v1.py``
``Loreclayer``/``Lorec``, ``finetune_lorec.py``, ``help_lorec.txt``), on the ReLLa pipeline
(LaVieEnRose365/ReLLa). Neither runs as published (a missing module, no data); facts only were read.

Mechanism, per sample (user history h, target item t):

1. CRM: a conventional model (DIN by default) trained on the FULL train split, then frozen (eval
   mode, no gradient), reads the long history (the protocol's 60 items) and gives u in R^{d_u}
   (:mod:`baselines.recbole_encoders`; for DIN, the attention-pooled interest w.r.t. t).
2. Long-short modality retriever (:mod:`methods.retrieval`): the prompt shows the K = 10 items of the
   user's WHOLE history before t (``history_pool: full``, as ReLLa's retrieval; not only the stored
   window the CRM reads) most similar to t (cosine of the CRM's item embeddings, or of the backbone's
   mean-pooled title states), in chronological order, with their ratings (ReLLa's prompt,
   ``prompts/rella.yaml``).
3. Personalized LoRA (:mod:`methods.lora_mixture`): every target module (q_proj, v_proj) of every
   layer holds N meta-LoRAs of rank r and its own gate
   alpha = softmax(MLP(u) / temperature), MLP = LayerNorm -> Linear(d_u, 60) -> ReLU -> Dropout(0.1)
   -> Linear(60, N). The authors' code mixes the factors, A_u = sum_k alpha_k A_k and
   B_u = sum_k alpha_k B_k ("factors", the default here); the paper's text writes the mixture of
   products sum_k alpha_k B_k A_k ("products", ``mixing: products``).
4. Few2Many: the LLM trains on ``FitData.train`` (the cell's few-shot subset) while the CRM has seen
   ``FitData.train_full``. Only the meta-LoRAs and gates train; the loss is on the answer tokens and
   P(yes) is read from the Yes/No logits in one pass (:mod:`methods.scoring`), as for ``tallrec``.

Variants (``configs/<name>.yaml``): ``reclora-no-retrieval`` shows the most recent K items;
``reclora-shared`` has one meta-LoRA and no gate (plain LoRA with the same prompt and retrieval).

NOTE, where this differs (details and the authors' settings in ``docs/methods/reclora.md``):

* backbone: SmolLM2-135M-Instruct in 4-bit NF4 (any HF causal LM via ``--llm``) instead of
  Vicuna-7B/13B in 8 bit; the prompt is wrapped in the backbone's chat template.
* CRM: RecBole's DIN on (item id, year, genres) with this benchmark's config, instead of the
  authors' own DIN over their feature fields with rating embeddings; u is DIN's pooled interest
  (d_u = 30) rather than the output of its final hidden layer.
* scoring: every prompt is run whole. The per-sample adapters on q/v change the keys and values of
  the shared instruction too, so the prefix cache of ``tallrec`` does not apply (``reclora-shared``
  runs the same path, so the variants differ only in their switches).
* optimization: CPU budgets allow 1-2 epochs on a few shots; the learning rate is the authors'
  MovieLens one (1e-3), batch 16 instead of 256, constant rate after warm-up (``configs/reclora.yaml``).
* parameters: ``trainable`` counts meta-LoRAs and gates; ``total`` adds the backbone and the CRM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks.contract import HISTORY_POOLS, CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method
from methods.prompting import CtrPrompts
from methods.retrieval import STRATEGIES
from methods.training import TrainSettings

ITEM_VECTORS = ("crm", "backbone")


class RatedHistoryPrompts(CtrPrompts):
    """ReLLa-style ctr prompts: one numbered list of history titles with ratings, then the target.

    The samples handed to :meth:`sample_texts` already hold only the items to show (see
    :func:`methods.retrieval.select_history`); the template's ``title`` formats one history line.
    A template without ``{history}`` (TALLRec's, with ``{liked}`` and ``{disliked}``) shows the same
    items split by the card's label threshold instead, as :class:`CtrPrompts` does.
    """

    def sample_texts(self, samples: pd.DataFrame) -> list[str]:
        if "{history}" not in self.template.sample:
            return super().sample_texts(samples)
        template, titles = self.template, self.catalog.titles
        texts = []
        for history, ratings, target in zip(samples["history"], samples["history_ratings"],
                                            titles(samples["item"].to_numpy())):
            lines = template.separator.join(
                template.title.format(position=position, title=title, rating=float(rating))
                for position, (title, rating) in enumerate(zip(titles(history), ratings), start=1))
            texts.append(template.sample.format(history=lines, target=target, **self.catalog.domain) + self.tail)
        return texts


@register_method("reclora", tasks=("ctr",), family="llm")
@register_method("reclora-no-retrieval", tasks=("ctr",), family="llm")
@register_method("reclora-shared", tasks=("ctr",), family="llm")
class RecLoRA:
    """RecLoRA as the module docstring describes; its variants differ only in their config files."""

    @dataclass
    class Config(TrainSettings):
        """Hyperparameters, each explained in ``methods/configs/reclora.yaml`` (defaults: the authors')."""

        prompt: str = "rella"
        cpu_4bit_kernel: str = "dequant"
        cpu_dtype: str = "float32"
        crm: str = "din"
        crm_overrides: dict = field(default_factory=dict)
        retrieval: str = "relevant"
        history_pool: str = "full"
        item_vectors: str = "crm"
        item_text: str = "Here is a {item}. Its title is {title}. The {item}'s genre is {genres}."
        meta_loras: int = 8
        lora_r: int = 8
        lora_alpha: int = 16
        lora_dropout: float = 0.0
        lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
        mixing: str = "factors"
        gate_hidden: int = 60
        gate_dropout: float = 0.1
        temperature: float = 5.0

        def __post_init__(self):
            super().__post_init__()
            if self.retrieval not in STRATEGIES or self.item_vectors not in ITEM_VECTORS or self.meta_loras < 1 \
                    or self.history_pool not in HISTORY_POOLS:
                raise ValueError(f"reclora config: retrieval must be one of {STRATEGIES}, item_vectors one of "
                                 f"{ITEM_VECTORS}, history_pool one of {HISTORY_POOLS}, meta_loras >= 1; got "
                                 f"{self.retrieval!r}, {self.item_vectors!r}, {self.history_pool!r}, "
                                 f"{self.meta_loras}")

        def mixture(self, condition_dim: int):
            """The :class:`~methods.lora_mixture.MixtureSpec`: N meta-LoRAs, one gate each (none for N=1)."""
            from methods.lora_mixture import GateSpec, MixtureSpec

            gate = GateSpec(condition_dim, self.gate_hidden, self.gate_dropout, self.temperature) \
                if self.meta_loras > 1 else None
            return MixtureSpec(experts=self.meta_loras, expert_rank=self.lora_r, alpha=self.lora_alpha,
                               targets=tuple(self.lora_target_modules), dropout=self.lora_dropout,
                               mode=self.mixing, gate=gate)

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.ctx = ctx
        self.crm = None
        self.backbone = None
        self.mixture = None
        self.builder: RatedHistoryPrompts | None = None
        self.item_vectors: np.ndarray | None = None
        self.history_len = 0
        self.result = None

    @property
    def personalized(self) -> bool:
        return self.config.meta_loras > 1

    def fit(self, data: FitData) -> None:
        import torch

        from baselines.recbole_encoders import fit_frozen_encoder
        from benchmarks.data.cards import load_card
        from methods.backbone import load_backbone
        from methods.lora_mixture import inject_mixture
        from methods.prompting import PromptTemplate
        from methods.training import train

        cfg = self.config
        self._check_history(data)
        self.crm = fit_frozen_encoder(cfg.crm, data, self.ctx, full_train=True, overrides=cfg.crm_overrides)
        self.backbone = load_backbone(self.ctx.llm, self.ctx.quant, self.ctx.device, cache=self.ctx.cache_dir,
                                      cpu_4bit_kernel=cfg.cpu_4bit_kernel, cpu_dtype=cfg.cpu_dtype)
        self.history_len = int(data.protocol.params["history_len"])
        self.builder = RatedHistoryPrompts(PromptTemplate.load(cfg.prompt), self.backbone.tokenizer, data.catalog,
                                           self.history_len, liked_above=load_card(data.catalog.name).label_threshold)
        self.item_vectors = self._item_vectors(data) if cfg.retrieval == "relevant" else None
        torch.manual_seed(self.ctx.seed)  # adapter init independent of what the CRM's training drew
        self.mixture = inject_mixture(self.backbone.model, cfg.mixture(self.crm.dim))

        prompts, conditions = self.inputs(data.train, self.ctx.cache_dir)
        evaluate = (lambda: data.validate(self.score(data.valid))["auc"]) if len(data.valid) else None
        # the plan's optimizer and micro-batch ceiling; never its gradient checkpointing: the mixture's
        # gate state is set for the forward only, and checkpointing recomputes inside backward()
        self.result = train(self.backbone.model, prompts, TrainSettings.from_config(cfg, self.ctx.max_epochs),
                            seed=self.ctx.seed, pad_id=self.backbone.tokenizer.pad_token_id, evaluate=evaluate,
                            forward=self.forward, extra_inputs=self.gate_inputs(conditions), plan=self.backbone.plan)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        """P(yes) per sample; the CRM's forward and the retrieval run here, inside the timed call."""
        from methods.scoring import yes_probability

        prompts, conditions = self.inputs(samples)
        return yes_probability(self.backbone.model, prompts, self.builder.answers, batch_size=self.ctx.batch_size,
                               reuse_prefix=False, pad_id=self.backbone.tokenizer.pad_token_id,
                               forward=self.forward, extra_inputs=self.gate_inputs(conditions))

    def parameter_counts(self) -> ParameterCounts | None:
        """Trainable: the meta-LoRAs and gate. Total: those, the backbone (4-bit weights unpacked) and
        the frozen CRM."""
        return self.mixture.parameter_counts(*self.crm.net.model.parameters())

    def backbone_info(self) -> dict:
        return self.backbone.info()

    # -------------------------------------------------------------- the steps of fit and score, also timed
    # one by one in benchmarks/perf/reclora.py

    def _check_history(self, data: FitData) -> None:
        """Refuse, in one line, a protocol whose stored histories are too short for this configuration:
        a retriever limited to the stored window (``history_pool: stored``) needs more items than the
        prompt shows (else it chooses nothing and ``reclora`` equals ``reclora-no-retrieval``), and a CRM
        whose config reads more items than are stored would silently read fewer.

        Raises:
            ValueError: naming the setting to change.
        """
        from benchmarks import registry

        stored, shown = int(data.protocol.params["max_history"]), int(data.protocol.params["history_len"])
        where = f"datasets/{data.catalog.name}.yaml (protocols: ctr: max_history)"
        if self.config.retrieval == "relevant" and self.config.history_pool == "stored" and stored <= shown:
            raise ValueError(f"reclora: the ctr protocol stores {stored} history items per sample, no more than the "
                             f"{shown} its prompts show, so retrieval from the stored window would choose nothing; "
                             f"set history_pool: full, raise max_history in {where} or run reclora-no-retrieval")
        crm = registry.resolve_config(registry.get_entry(self.config.crm), self.config.crm_overrides)
        wanted = getattr(crm, "max_history", None)
        if wanted is not None and int(wanted) > stored:
            raise ValueError(f"reclora: its CRM ({self.config.crm}) reads {wanted} history items, but the ctr protocol "
                             f"of {data.catalog.name} stores {stored}; set crm_overrides: {{max_history: {stored}}} "
                             f"or raise max_history in {where}")

    def _item_vectors(self, data: FitData) -> np.ndarray:
        """``[n_items, d]`` vectors the retriever compares: the CRM's item embeddings or the backbone's
        mean-pooled states of ``item_text`` (computed before any adapter is added)."""
        from methods.retrieval import title_embeddings

        if self.config.item_vectors == "crm":
            return self.crm.item_embeddings().float().cpu().numpy()
        items = data.catalog.items
        texts = [self.config.item_text.format(**{**row, **data.catalog.domain})  # {item} is the domain word
                 for row in items.to_dict("records")]
        return title_embeddings(self.backbone, texts, self.ctx.batch_size)

    def inputs(self, samples: pd.DataFrame, cache_dir=None):
        """(prompt set with the retrieved short history, CRM vectors ``[n, d_u]`` of the long history
        or None without gates)."""
        from methods.retrieval import select_history

        pool = "full_history" if self.config.history_pool == "full" else "history"
        shown = select_history(samples, self.history_len, self.config.retrieval, self.item_vectors, pool)
        prompts = self.builder.build(shown, cache_dir)
        conditions = None
        if self.personalized:
            conditions = self.crm.sequence_representation(samples["history"].tolist(),
                                                          samples["item"].to_numpy()).detach()
        return prompts, conditions

    def gate_inputs(self, conditions):
        """``extra_inputs(rows)`` for training and scoring: each row's CRM vector (or weight 1 for N=1)."""
        import torch

        device = self.backbone.device

        def extra(rows: np.ndarray) -> dict:
            if conditions is None:
                return {"gate": {"weights": torch.ones(len(rows), 1, device=device)}}
            return {"gate": {"condition": conditions[torch.as_tensor(rows, dtype=torch.long)].to(device)}}

        return extra

    def forward(self, model, gate: dict, **inputs):
        """The model call with this batch's gate input set on every mixture layer."""
        with self.mixture.gated(**gate):
            return model(**inputs)
