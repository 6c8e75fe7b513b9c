"""``pop``: popularity, how often an item occurs in the training samples; the floor of both tasks.

next_item: a candidate's score is how often it is a training target. ctr: the same count, turned into
a probability by a logistic fit of the training labels on log(1 + count) (two parameters), so its AUC
is the count's ranking and its LogLoss is that of a calibrated popularity model. The label-aware item
model that was once called ``pop`` here is ``item-rate``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method


@register_method("pop", tasks=("ctr", "next_item"), family="reference")
class Popularity:
    def __init__(self, config: None, ctx: CellContext):
        self.counts: np.ndarray | None = None
        self.calibration = None
        self.prior = 0.5
        self.task = ""

    def fit(self, data: FitData) -> None:
        from sklearn.linear_model import LogisticRegression

        self.task = data.task
        items = data.train["item"].to_numpy()
        self.counts = np.bincount(items, minlength=data.catalog.n_items).astype(np.float64)
        if data.task == "ctr":
            labels = data.train["label"].to_numpy()
            self.prior = float(labels.mean())
            if len(np.unique(labels)) == 2:
                self.calibration = LogisticRegression().fit(self._feature(items), labels)

    def _feature(self, items: np.ndarray) -> np.ndarray:
        return np.log1p(self.counts[items])[:, None]

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        if self.task == "next_item":
            return self.counts[np.stack(samples["candidates"].to_numpy())]
        items = samples["item"].to_numpy()
        if self.calibration is None:  # one class in training: its rate, whatever the count
            return np.full(len(items), self.prior)
        return self.calibration.predict_proba(self._feature(items))[:, 1]

    def parameter_counts(self) -> ParameterCounts | None:
        return None
