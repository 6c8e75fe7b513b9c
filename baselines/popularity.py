"""``pop``: popularity from the training samples, the floor every learned method must clear.

next_item: a candidate's score is how often it is a training target. ctr: an item's share of
positive training labels, shrunk towards the global positive rate by ``shrinkage`` pseudo-samples
(popular items keep their own rate, rare ones fall back to the average), so that LogLoss is finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method


@register_method("pop", tasks=("ctr", "next_item"), family="reference")
class Popularity:
    @dataclass
    class Config:
        shrinkage: float = 10.0  # pseudo-samples at the global positive rate (ctr)

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.table: np.ndarray | None = None
        self.task = ""

    def fit(self, data: FitData) -> None:
        self.task = data.task
        items = data.train["item"].to_numpy()
        counts = np.bincount(items, minlength=data.catalog.n_items).astype(np.float64)
        if data.task == "next_item":
            self.table = counts
            return
        positives = np.bincount(items, weights=data.train["label"].to_numpy(), minlength=data.catalog.n_items)
        prior = data.train["label"].mean()
        m = self.config.shrinkage
        self.table = (positives + m * prior) / (counts + m)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        if self.task == "ctr":
            return self.table[samples["item"].to_numpy()]
        return self.table[np.stack(samples["candidates"].to_numpy())]

    def parameter_counts(self) -> ParameterCounts | None:
        return None
