"""``itemknn``: item-based k-nearest-neighbour recommender, the worked example of CONTRIBUTING.md.

Similarity (Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001,
Sec. 3.1.1): cosine between the items' binary user vectors, built from the training samples (each
sample's target and history). Each item keeps only its ``neighbors`` most similar items (Deshpande &
Karypis, "Item-based top-N recommendation algorithms", TOIS 2004, Sec. 4). A sample's user is
described by the last ``protocol.params["history_len"]`` items of its history, the window the LLM
methods see in their prompts.

* next_item: a candidate scores the sum of its similarities to those history items (Deshpande &
  Karypis, Eq. 2), plus ``popularity_weight`` times its normalized training popularity, which only
  orders candidates that no history item is similar to.
* ctr: the item-based prediction of the user's rating deviation (Sarwar et al., Eq. 1, on ratings
  centred on the user's mean history rating, shrunk by ``rating_shrinkage``), the user's mean
  history rating and the target's positive-label log-odds (shrunk towards the global rate as in
  ``pop``) are combined by a logistic regression fitted on the training samples, so the output is a
  calibrated probability.

NOTE: deterministic, so the seed does not matter. On the full MovieLens-100K protocols it clears
``pop`` by a wide margin (measured: next_item HR@1 0.34 vs 0.17; ctr AUC 0.77 vs 0.71); in ctr most
of the gain comes from the user's mean rating, the neighbours add about 0.01 AUC.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.registry import register_method


@register_method("itemknn", tasks=("ctr", "next_item"), family="conventional")
class ItemKNN:
    """Defaults live in ``baselines/configs/itemknn.yaml``."""

    @dataclass
    class Config:
        neighbors: int = 100              # similar items kept per item (0: all)
        popularity_weight: float = 1e-6   # next_item: weight of normalized popularity (tie-break)
        rating_shrinkage: float = 1.0     # ctr: pseudo-similarity added to the deviation's denominator
        prior_shrinkage: float = 10.0     # ctr: pseudo-samples at the global positive rate

    def __init__(self, config: Config, ctx: CellContext):
        self.config = config
        self.task = ""
        self.window = 0
        self.similarity: sp.csr_matrix | None = None
        self.popularity: np.ndarray | None = None
        self.log_odds: np.ndarray | None = None
        self.calibration = None  # ctr: sklearn LogisticRegression

    def fit(self, data: FitData) -> None:
        self.task = data.task
        self.window = int(data.protocol.params["history_len"])
        n_items = data.catalog.n_items
        self.similarity = top_k_cosine(user_item_matrix(data.train, n_items), self.config.neighbors)
        items = data.train["item"].to_numpy()
        counts = np.bincount(items, minlength=n_items).astype(np.float64)
        if data.task == "next_item":
            self.popularity = counts / max(counts.max(), 1.0)
            return
        from sklearn.linear_model import LogisticRegression

        labels = data.train["label"].to_numpy()
        if len(np.unique(labels)) < 2:
            raise ValueError(f"itemknn (ctr): the {len(labels)} training samples hold one class only")
        m, prior = self.config.prior_shrinkage, labels.mean()
        rate = (np.bincount(items, weights=labels, minlength=n_items) + m * prior) / (counts + m)
        self.log_odds = np.log(rate / (1.0 - rate))
        self.calibration = LogisticRegression().fit(self._ctr_features(data.train), labels)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        if self.task == "next_item":
            candidates = np.stack(samples["candidates"].to_numpy())
            _, _, similarity = self._history_similarity(samples, candidates)
            return similarity.sum(axis=1) + self.config.popularity_weight * self.popularity[candidates]
        return self.calibration.predict_proba(self._ctr_features(samples))[:, 1]

    def parameter_counts(self) -> ParameterCounts | None:
        return None

    def _history_similarity(self, samples: pd.DataFrame, targets: np.ndarray):
        """(recent history, its ratings, similarity [n, window, m] of each history item to each target).

        Histories shorter than the window are padded; padded slots have similarity 0 and rating NaN.
        """
        history = np.full((len(samples), self.window), -1, dtype=np.int64)
        ratings = np.full((len(samples), self.window), np.nan)
        for row, (items, rated) in enumerate(zip(samples["history"], samples["history_ratings"])):
            recent = slice(max(len(items) - self.window, 0), len(items))
            history[row, : len(items[recent])] = items[recent]
            ratings[row, : len(items[recent])] = rated[recent]
        present = history >= 0
        similarity = np.zeros((*history.shape, targets.shape[1]))
        rows, slots = np.nonzero(present)
        similarity[rows, slots] = self.similarity[history[rows, slots][:, None], targets[rows]].toarray()
        return history, ratings, similarity

    def _ctr_features(self, samples: pd.DataFrame) -> np.ndarray:
        """[user's mean history rating, item-kNN rating deviation, target's positive log-odds]."""
        targets = samples["item"].to_numpy()
        _, ratings, similarity = self._history_similarity(samples, targets[:, None])
        weights = similarity[:, :, 0]
        mean = np.nanmean(ratings, axis=1)
        deviation = np.nansum(weights * (ratings - mean[:, None]), axis=1)
        deviation /= weights.sum(axis=1) + self.config.rating_shrinkage
        return np.column_stack([mean, deviation, self.log_odds[targets]])


def user_item_matrix(train: pd.DataFrame, n_items: int) -> sp.csr_matrix:
    """Binary [n_users, n_items] matrix: a user 'has' every training target and history item."""
    lengths = train["history"].map(len).to_numpy()
    users = np.concatenate([train["user"].to_numpy(), np.repeat(train["user"].to_numpy(), lengths)])
    items = np.concatenate([train["item"].to_numpy(), *train["history"].to_numpy()]).astype(np.int64)
    matrix = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(users.max() + 1, n_items))
    matrix.data[:] = 1.0  # duplicates were summed
    return matrix


def top_k_cosine(matrix: sp.csr_matrix, k: int, block: int = 1024) -> sp.csr_matrix:
    """Item-item cosine similarity [n_items, n_items], zero diagonal, each row keeping its k largest
    entries (k = 0 keeps all). Rows are computed ``block`` items at a time to bound memory."""
    columns = matrix.tocsc()
    norms = np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0))).ravel()
    n_items = matrix.shape[1]
    blocks = []
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        cosine = (columns[:, start:stop].T @ columns).toarray()
        cosine /= np.maximum(np.outer(norms[start:stop], norms), 1e-12)
        cosine[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if 0 < k < n_items:
            dropped = np.argpartition(-cosine, k, axis=1)[:, k:]
            np.put_along_axis(cosine, dropped, 0.0, axis=1)
        blocks.append(sp.csr_matrix(cosine))
    return sp.vstack(blocks).tocsr()
