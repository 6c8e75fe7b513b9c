"""``majority``: every ctr sample gets the training positive rate, the no-information reference.

Its accuracy is the share of the majority class (when the positive rate is at least 0.5; of the
negatives otherwise), its AUC 0.5 and its LogLoss the entropy of the labels: a method below it in
accuracy or LogLoss does worse than saying nothing about the sample.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method


@register_method("majority", tasks=("ctr",), family="reference")
class Majority:
    def __init__(self, config: None, ctx: CellContext):
        self.rate = 0.5

    def fit(self, data: FitData) -> None:
        self.rate = float(data.train["label"].mean())

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return np.full(len(samples), self.rate)

    def parameter_counts(self) -> ParameterCounts | None:
        return None
