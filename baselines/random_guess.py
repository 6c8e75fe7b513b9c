"""``random``: seeded uniform scores; the chance level of every metric (AUC 0.5, HR@1 1/C)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method


@register_method("random", tasks=("ctr", "next_item"), family="reference", trains=False)
class RandomGuess:
    def __init__(self, config: None, ctx: CellContext):
        self.seed = ctx.seed
        self.task = ""

    def fit(self, data: FitData) -> None:
        self.task = data.task

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        # One draw per sample from a generator keyed by the sample, so the scores do not depend on
        # how the harness batches them.
        keys = samples["sample_id"].to_numpy()
        width = 1 if self.task == "ctr" else len(samples["candidates"].iloc[0])
        out = np.stack([np.random.default_rng([self.seed, int(k)]).random(width) for k in keys])
        return out[:, 0] if self.task == "ctr" else out

    def parameter_counts(self) -> ParameterCounts | None:
        return None
