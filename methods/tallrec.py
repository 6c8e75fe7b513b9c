"""``tallrec``: TALLRec, LoRA instruction tuning of an LLM for ctr on a few shots.

Paper: Bao, Zhang, Zhang, Wang, Feng, He. "TALLRec: An Effective and Efficient Tuning Framework to
Align Large Language Model with Recommendation", RecSys 2023. Reference code: SAI990323/TALLRec
(``finetune_rec.py``, ``evaluate.py``, ``preprocess_movie.py``).

What is kept: the prompt (liked / disliked history titles, the target title, "Yes."/"No." answers;
``methods/prompts/tallrec.yaml``), LoRA r=8, alpha=16, dropout 0.05 on q_proj/v_proj, loss on the
answer only, few-shot training sets (16/64/256 ... drawn by the harness, frozen per seed), early
stopping on valid AUC, scores read from the Yes/No logits.

NOTE, where this differs:
* backbone: any HF causal LM, 4-bit NF4 (QLoRA) by default instead of LLaMA-7B in 8 bit; the
  offline default is SmolLM2-135M-Instruct, and the prompt is wrapped in its chat template.
* scoring: one forward pass, P(yes) = softmax over the (Yes, No) logits; the authors generate up to
  128 tokens and apply a softmax to the two first-step probabilities (kept as the speed reference in
  ``methods/scoring.py``).
* optimization: the authors train up to 200 epochs at lr 1e-4, batch 128, with HF Trainer's linear
  decay; CPU budgets allow 1-2 epochs, so the defaults here use a larger learning rate, a smaller
  batch and a constant rate after warm-up (``methods/configs/tallrec.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts, count_parameters
from benchmarks.registry import register_method
from methods.backbone import load_backbone
from methods.scoring import CtrScorer
from methods.training import LoraSettings, TrainSettings, add_lora, train


@register_method("tallrec", tasks=("ctr",), family="llm")
class TALLRec:
    @dataclass
    class Config(TrainSettings):
        prompt: str = "tallrec"
        cpu_4bit_kernel: str = "dequant"
        cpu_dtype: str = "auto"
        lora_r: int = 8
        lora_alpha: int = 16
        lora_dropout: float = 0.05
        lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

        def lora(self) -> LoraSettings:
            return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, list(self.lora_target_modules))

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.ctx = ctx
        self.backbone = None
        self.scorer: CtrScorer | None = None
        self.result = None

    def fit(self, data: FitData) -> None:
        self.backbone = load_backbone(self.ctx.llm, self.ctx.quant, self.ctx.device, cache=self.ctx.cache_dir,
                                      cpu_4bit_kernel=self.config.cpu_4bit_kernel, cpu_dtype=self.config.cpu_dtype)
        plan = self.backbone.plan  # on a GPU: checkpointing and the optimizer for large backbones
        self.backbone.model = add_lora(self.backbone.model, self.config.lora(), plan.gradient_checkpointing)
        scorer = CtrScorer(self.backbone, self.config.prompt, data.catalog, data.protocol)
        self.scorer = scorer
        examples = scorer.prompts(data.train, self.ctx.cache_dir)

        def valid_auc() -> float:
            scorer.invalidate()
            return data.validate(scorer.score(data.valid, self.ctx.batch_size, self.ctx.cache_dir))["auc"]

        evaluate = valid_auc if len(data.valid) else None
        self.result = train(self.backbone.model, examples, TrainSettings.from_config(self.config, self.ctx.max_epochs),
                            seed=self.ctx.seed, pad_id=scorer.pad_id, evaluate=evaluate, plan=plan)
        scorer.invalidate()

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return self.scorer.score(samples, self.ctx.batch_size)

    def parameter_counts(self) -> ParameterCounts | None:
        return count_parameters(self.backbone.model.parameters())

    def backbone_info(self) -> dict:
        return self.backbone.info()
