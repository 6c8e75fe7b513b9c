"""``zeroshot-llm``: the backbone asked as it is, with the same prompt as TALLRec and no training.

The floor for every tuned LLM method: what the instruction-tuned backbone knows about the user's
taste from the prompt alone (TALLRec, Bao et al. RecSys 2023, Table 2 reports Alpaca-LoRA zero-shot
at about AUC 0.5 on MovieLens). ctr: P(yes) in one forward pass (:mod:`methods.scoring`).
next_item: each candidate title's log-likelihood after LLaRA's text-only prompt, on one shared
prompt pass (:mod:`methods.candidate_scoring`), the floor for ``ilora`` and ``lora-seq``.

A task is one entry of ``SCORERS``: a class built as ``Scorer(backbone, template, catalog, protocol)``
with ``score(samples, batch_size, cache_dir) -> ndarray``; next_item is added by adding its scorer
(and its prompt file) there and its name to the decorator's tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts, count_parameters
from benchmarks.registry import register_method
from methods.backbone import load_backbone
from methods.candidate_scoring import NextItemScorer
from methods.scoring import CtrScorer

SCORERS = {"ctr": CtrScorer, "next_item": NextItemScorer}


@register_method("zeroshot-llm", tasks=("ctr", "next_item"), family="llm", trains=False)
class ZeroShotLLM:
    @dataclass
    class Config:
        prompt: str = "tallrec"            # methods/prompts/<prompt>.yaml
        next_item_prompt: str = "llara"    # the next_item task's prompt file
        cpu_4bit_kernel: str = "dequant"   # dequant | packed-bf16 (see methods/backbone.py)
        cpu_dtype: str = "auto"            # auto | float32 | bfloat16 (see methods/cpu_dtype.py)
        next_item_cpu_dtype: str = "float32"  # the next_item task's CPU compute dtype (see the YAML file)

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.ctx = ctx
        self.backbone = None
        self.scorer = None

    def fit(self, data: FitData) -> None:
        ctr = data.task == "ctr"
        self.backbone = load_backbone(self.ctx.llm, self.ctx.quant, self.ctx.device, cache=self.ctx.cache_dir,
                                      cpu_4bit_kernel=self.config.cpu_4bit_kernel,
                                      cpu_dtype=self.config.cpu_dtype if ctr else self.config.next_item_cpu_dtype)
        prompt = self.config.prompt if ctr else self.config.next_item_prompt
        self.scorer = SCORERS[data.task](self.backbone, prompt, data.catalog, data.protocol)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return self.scorer.score(samples, self.ctx.batch_size)

    def parameter_counts(self) -> ParameterCounts | None:
        return count_parameters(self.backbone.model.parameters(), trainable=[])

    def backbone_info(self) -> dict:
        return self.backbone.info()
