"""RecBole baselines trained and scored on the benchmark's own frozen splits (issue F2).

RecBole, left to itself, makes its own splits and its own negatives. Here it sees exactly what every
other method sees:

* ``next_item`` (``sasrec``, ``gru4rec``, ``caser``, ``bert4rec``): RecBole trains on OUR train split,
  one row per training sample (user, the last ``max_history`` items of its history, its target),
  with the model's own loss (CE over all items for the registered configurations). ``score`` gathers
  the columns of OUR frozen candidates from ``model.full_sort_predict``: shape ``[n, C]``.
* ``ctr`` (``deepfm``, ``dcnv2``, ``autoint``, ``widedeep``, ``xdeepfm``, ``din``): RecBole trains on
  OUR train samples (possibly a few-shot subset) with their labels and the side features of the
  catalog (user age, gender, occupation; item year, genres); DIN also reads the history. ``score``
  returns ``model.predict``, the probability of a positive, for each of our samples in order.

Both early-stop on OUR valid split through ``FitData.validate`` (``valid_metric`` in the config),
keeping the best epoch, and honour the suite's epoch cap and seed. Hyperparameters live in
``baselines/configs/<name>.yaml``; RecBole-specific mechanics are in :mod:`baselines.recbole_training`,
and library breakages in :mod:`baselines.recbole_compat`. The frozen encoders the LLM methods use
(iLoRA's SASRec, RecLoRA's DIN or SASRec) are in :mod:`baselines.recbole_encoders`.

NOTE: RecBole's full-ranking HR@10/NDCG@10 are not reported; every number comes from the harness
on the frozen candidates. The suite's ``batch_size`` is not used: RecBole models train and score
with their own ``train_batch_size`` / ``eval_batch_size`` (scoring is chunked, so any number of
samples per ``score`` call works).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from baselines import trained_model_cache
from baselines.recbole_encoders import ENCODER_MODELS
from baselines.recbole_training import RecBoleModel, RecBoleSettings
from benchmarks.contract import CellContext, FitData, ParameterCounts
from benchmarks.metrics import METRICS
from benchmarks.registry import register_method


def _in_chunks(samples: pd.DataFrame, size: int, fn: Callable[[pd.DataFrame], np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        parts = [fn(samples.iloc[i: i + size]) for i in range(0, len(samples), size)]
    return np.concatenate(parts) if parts else np.zeros(0)


def fit_recbole(settings: RecBoleSettings, task: str, data: FitData, ctx: CellContext,
                score: Callable[[RecBoleModel, pd.DataFrame], np.ndarray],
                features: dict[str, tuple[str, ...]] | None = None, reuse: bool = False) -> RecBoleModel:
    """Build ``settings.model`` on ``data.train`` and train it, early-stopping on ``data.valid``
    scored by ``score`` and measured by ``data.validate`` (skipped when ``data.valid`` is empty).

    The trained weights of a model a frozen encoder can be (SASRec, GRU4Rec, DIN) are stored in
    ``ctx.cache_dir`` (:mod:`baselines.trained_model_cache`); with ``reuse`` (a frozen encoder, not
    a timed conventional cell) stored weights of the same key are loaded instead of training.

    Raises:
        ValueError: ``settings.valid_metric`` is not a ``task`` metric of :mod:`benchmarks.metrics`.
    """
    metric = METRICS.get(settings.valid_metric)
    if metric is None or metric.task != task:
        known = sorted(m.name for m in METRICS.values() if m.task == task)
        raise ValueError(f"RecBole {settings.model}: valid_metric '{settings.valid_metric}' is not a {task} "
                         f"metric (known: {known})")
    net = RecBoleModel.build(settings, task, data.train, data.catalog, ctx, features,
                             where=f"baselines/configs/*.yaml (model: {settings.model})")
    if ctx.cache_dir is None or settings.model not in ENCODER_MODELS:  # only what an encoder can reuse is kept
        folder = key = None
    else:
        key = trained_model_cache.cache_key(settings, data, ctx)
        folder = trained_model_cache.entry_folder(ctx.cache_dir, settings, key)
        if reuse and trained_model_cache.load_into(net.model, folder):
            net.model.eval()
            trained_model_cache.announce(settings.model, "loaded", folder)
            return net

    def evaluate() -> float:
        return data.validate(score(net, data.valid))[settings.valid_metric]

    net.train(settings, settings.capped_epochs(ctx.max_epochs), evaluate if len(data.valid) else None,
              metric.higher_is_better)
    if folder is not None:
        trained_model_cache.store(net.model, folder, key)
        trained_model_cache.announce(settings.model, "trained", folder)
    return net


@register_method("sasrec", tasks=("next_item",), family="conventional")
@register_method("gru4rec", tasks=("next_item",), family="conventional")
@register_method("caser", tasks=("next_item",), family="conventional")
@register_method("bert4rec", tasks=("next_item",), family="conventional")
class RecBoleNextItem:
    """A RecBole sequential model scored on our frozen candidates (see the module docstring)."""

    Config = RecBoleSettings

    def __init__(self, config: RecBoleSettings, ctx: CellContext):
        self.config, self.ctx = config, ctx
        self.net: RecBoleModel | None = None

    def candidate_scores(self, net: RecBoleModel, samples: pd.DataFrame) -> np.ndarray:
        """``[n, C]``: the model's full-ranking scores at the columns of each sample's candidates."""
        import torch

        def chunk(part: pd.DataFrame) -> np.ndarray:
            full = net.model.full_sort_predict(net.sequence_batch(part)).view(len(part), -1)
            columns = torch.from_numpy(net.item_ids[np.stack(part["candidates"].to_numpy())]).to(full.device)
            return full.gather(1, columns).float().cpu().numpy()

        return _in_chunks(samples, self.config.eval_batch_size, chunk)

    def fit(self, data: FitData, reuse: bool = False) -> None:
        """Train on ``data`` (``reuse``: load stored weights of the same key instead, see :func:`fit_recbole`)."""
        self.net = fit_recbole(self.config, "next_item", data, self.ctx, self.candidate_scores, reuse=reuse)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return self.candidate_scores(self.net, samples)

    def parameter_counts(self) -> ParameterCounts | None:
        return self.net.parameter_counts()


@dataclass
class CTRSettings(RecBoleSettings):
    """:class:`RecBoleSettings` plus the catalog columns handed to RecBole as side features
    (RecBole's own MovieLens-100K context settings load the same ones); absent columns are skipped."""

    valid_metric: str = "auc"
    user_features: list = field(default_factory=lambda: ["age", "gender", "occupation"])
    item_features: list = field(default_factory=lambda: ["year", "genres"])


@register_method("deepfm", tasks=("ctr",), family="conventional")
@register_method("dcnv2", tasks=("ctr",), family="conventional")
@register_method("autoint", tasks=("ctr",), family="conventional")
@register_method("widedeep", tasks=("ctr",), family="conventional")
@register_method("xdeepfm", tasks=("ctr",), family="conventional")
@register_method("din", tasks=("ctr",), family="conventional")
class RecBoleCTR:
    """A RecBole click-through model (context-aware, or DIN) scored on our samples."""

    Config = CTRSettings

    def __init__(self, config: CTRSettings, ctx: CellContext):
        self.config, self.ctx = config, ctx
        self.net: RecBoleModel | None = None

    def probabilities(self, net: RecBoleModel, samples: pd.DataFrame) -> np.ndarray:
        """``[n]``: ``model.predict`` (a sigmoid output) for each sample, in order."""
        return _in_chunks(samples, self.config.eval_batch_size,
                          lambda part: net.model.predict(net.pointwise_batch(part)).double().cpu().numpy())

    def fit(self, data: FitData, reuse: bool = False) -> None:
        """Train on ``data`` (``reuse``: load stored weights of the same key instead, see :func:`fit_recbole`)."""
        features = {"user": tuple(self.config.user_features), "item": tuple(self.config.item_features)}
        self.net = fit_recbole(self.config, "ctr", data, self.ctx, self.probabilities, features, reuse=reuse)

    def score(self, samples: pd.DataFrame) -> np.ndarray:
        return self.probabilities(self.net, samples)

    def parameter_counts(self) -> ParameterCounts | None:
        return self.net.parameter_counts()
