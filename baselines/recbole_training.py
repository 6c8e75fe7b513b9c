"""One RecBole model, built on our train split, trained with RecBole's own loss, kept in memory.

:meth:`RecBoleModel.build` writes our train samples and the catalog as atomic files
(:mod:`baselines.recbole_atomic_files`) into a temporary folder inside the cell's workdir, builds
RecBole's ``Config`` and dataset from them (the folder is removed right after: RecBole keeps the
data in memory, and no log, checkpoint or saved dataset is written), and instantiates the model.
:meth:`RecBoleModel.train` runs ``model.calculate_loss`` over RecBole's ``TrainDataLoader`` with
Adam (RecBole's default learner) and early-stops on a number the caller computes on OUR valid
split (the harness's metric via ``FitData.validate``), keeping the best weights in memory.
Batches for scoring are built from our sample tables with RecBole's ids (:meth:`sequence_batch`,
:meth:`pointwise_batch`).

NOTE: unlike RecBole's ``Trainer``, no checkpoint file is written and no RecBole evaluator runs;
RecBole's weight decay and learning rate settings are honoured, ``clip_grad_norm`` is not used by
any registered model's configuration and is not supported.
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from baselines import recbole_atomic_files as atomic
from baselines import recbole_compat as compat
from benchmarks.contract import Catalog, CellContext, ParameterCounts, count_parameters
from benchmarks.execution import step_trace

#: RecBole's name for the dataset we write (never one RecBole ships settings for, like ``ml-100k``)
DATASET_NAME = "llmrec"


@dataclass
class RecBoleSettings:
    """What every ``baselines/configs/<name>.yaml`` of a RecBole model holds.

    Attributes:
        model: RecBole model class name (``SASRec``, ``DCNV2`` ...).
        epochs: most training epochs; the suite's ``max_epochs`` caps it further.
        train_batch_size: samples per optimizer step.
        eval_batch_size: samples per forward pass when scoring.
        learning_rate: Adam's learning rate.
        weight_decay: Adam's L2 penalty.
        stopping_step: stop after this many epochs without a better ``valid_metric``.
        valid_metric: the harness metric on our valid split that drives early stopping.
        max_history: RecBole's ``MAX_ITEM_LIST_LENGTH``: newest history items fed to the model.
        model_params: the model's own RecBole hyperparameters; only names RecBole ships in its
            ``properties/model/<model>.yaml`` are accepted, the others keep RecBole's defaults.
    """

    model: str
    epochs: int = 50
    train_batch_size: int = 512
    eval_batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    stopping_step: int = 5
    valid_metric: str = "ndcg@10"
    max_history: int = 50
    model_params: dict = field(default_factory=dict)

    def capped_epochs(self, cap: int | None) -> int:
        return self.epochs if cap is None else min(self.epochs, cap)


def _check_model_params(cls: type, params: Mapping[str, Any], where: str) -> None:
    known = compat.model_hyperparameters(cls)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{where}: model_params {unknown} are not {cls.__name__} hyperparameters "
                         f"(known: {sorted(known)})")


class RecBoleModel:
    """A RecBole model with the dataset it was built on and the maps from our codes to its ids.

    Attributes:
        model: the RecBole ``torch.nn.Module`` (eval mode after :meth:`train`).
        loader: RecBole's ``TrainDataLoader`` over ``train_data`` (shuffled with the cell's seed).
        reads_history: whether the model reads the history (RecBole's sequential models, DIN).
        item_ids: ``[n_items]`` RecBole item id of each dense item code.
        user_ids: ``[n_users]`` RecBole user id of each dense user code.
    """

    def __init__(self, config: Any, train_data: Any, loader: Any, model: Any, item_ids: np.ndarray,
                 user_ids: np.ndarray):
        from recbole.model.abstract_recommender import SequentialRecommender

        self.config, self.train_data, self.loader, self.model = config, train_data, loader, model
        self.reads_history = isinstance(model, SequentialRecommender)
        self.item_ids, self.user_ids = item_ids, user_ids
        self.device = config["device"]
        self.max_history = int(config["MAX_ITEM_LIST_LENGTH"])

    @classmethod
    def build(cls, settings: RecBoleSettings, task: str, train: pd.DataFrame, catalog: Catalog,
              ctx: CellContext, features: Mapping[str, tuple[str, ...]] | None = None,
              where: str = "") -> RecBoleModel:
        """Write ``train`` as RecBole files, load them, and build an untrained ``settings.model``.

        Args:
            task: ``"ctr"`` (rows carry a label) or ``"next_item"`` (rows are history -> target).
            train: our training samples (``user``, ``item``, ``history``; ``label`` for ctr).
            features: side features written for ``{"user": (...), "item": (...)}``; None = ids only.
            where: the config file the settings came from, for error messages.
        """
        import torch
        from recbole.data.dataloader import TrainDataLoader
        from recbole.model.abstract_recommender import SequentialRecommender
        from recbole.utils import init_seed

        model_cls = compat.model_class(settings.model, where)
        _check_model_params(model_cls, settings.model_params, where)
        reads_history = issubclass(model_cls, SequentialRecommender)
        features = features or {}
        recbole_settings = {
            **settings.model_params,
            "benchmark_filename": ["train"], "load_col": None, "seed": ctx.seed, "reproducibility": True,
            "train_batch_size": settings.train_batch_size, "eval_batch_size": settings.eval_batch_size,
            "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
            "epochs": settings.epochs, "train_neg_sample_args": None, "show_progress": False,
            "MAX_ITEM_LIST_LENGTH": settings.max_history,
        }
        if reads_history:
            recbole_settings["alias_of_item_id"] = [atomic.HISTORY]
        Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="recbole-", dir=ctx.workdir) as tmp:
            folder = Path(tmp) / DATASET_NAME
            folder.mkdir()
            atomic.write_samples(folder / f"{DATASET_NAME}.train.inter", train,
                                 settings.max_history if reads_history else None, task)
            atomic.write_features(folder / f"{DATASET_NAME}.item", catalog.items, "item", features.get("item", ()))
            atomic.write_features(folder / f"{DATASET_NAME}.user", catalog.users, "user", features.get("user", ()))
            config = compat.make_config(model_cls, DATASET_NAME,
                                        {**recbole_settings, "data_path": tmp, "checkpoint_dir": tmp}, ctx.device)
            dataset = compat.build_dataset(config)
            (train_data,) = dataset.build()
        if reads_history:  # RecBole pads lists to the longest one read; DIN and Caser need the full width
            seq = train_data.inter_feat[atomic.HISTORY]
            width = settings.max_history - seq.shape[1]
            train_data.inter_feat[atomic.HISTORY] = torch.nn.functional.pad(seq, (0, width))
        # the loader first: its batch transform (BERT4Rec's masking) writes field names into the
        # config that the model reads when it is built (RecBole's own order)
        loader = TrainDataLoader(config, train_data, None, shuffle=True)
        init_seed(ctx.seed, True)
        model = model_cls(config, train_data).to(config["device"])
        item_ids = atomic.internal_ids(dataset, atomic.ITEM, catalog.items["item"])
        user_ids = atomic.internal_ids(dataset, atomic.USER, catalog.users["user"])
        return cls(config, train_data, loader, model, item_ids, user_ids)

    def train(self, settings: RecBoleSettings, epochs: int, evaluate: Callable[[], float] | None,
              higher_is_better: bool = True) -> list[float]:
        """Train up to ``epochs`` epochs; after each, ``evaluate()`` (if given) returns the valid
        metric and the best epoch's weights are kept. Returns the metric of every epoch run."""
        import torch

        optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate,
                                     weight_decay=settings.weight_decay)
        sign = 1.0 if higher_is_better else -1.0
        best, best_state, since_best, trace = -np.inf, None, 0, []
        params, step = list(self.model.parameters()), 0
        step_trace.trace(type(self.model).__name__, step, params)
        for _ in range(epochs):
            self.model.train()
            for batch in self.loader:
                optimizer.zero_grad()
                loss = self.model.calculate_loss(batch.to(self.device))
                loss.backward()
                optimizer.step()
                step += 1
                step_trace.trace(type(self.model).__name__, step, params, (loss.detach(),))  # read only if on
            self.model.eval()
            if evaluate is None:
                continue
            value = evaluate()
            trace.append(value)
            if sign * value > best:
                best, best_state, since_best = sign * value, copy.deepcopy(self.model.state_dict()), 0
            else:
                since_best += 1
                if since_best >= settings.stopping_step:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        return trace

    # ---------------------------------------------------------------------------------- batches

    def history_tensor(self, histories):
        """``([n, max_history], [n])``: the newest ``max_history`` items of each history as RecBole
        ids, left-aligned and zero-padded as RecBole stores sequences, and their lengths.

        Raises:
            ValueError: an empty history (RecBole's models read the item at ``length - 1``).
        """
        import torch

        clipped = [np.asarray(h, dtype=np.int64)[-self.max_history:] for h in histories]
        lengths = np.array([len(h) for h in clipped], dtype=np.int64)
        if (lengths == 0).any():
            raise ValueError(f"sample {int(np.argmax(lengths == 0))} has an empty history; RecBole's "
                             "sequential models need at least one item")
        padded = np.zeros((len(clipped), self.max_history), dtype=np.int64)
        rows = np.repeat(np.arange(len(clipped)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        if len(clipped):
            padded[rows, cols] = self.item_ids[np.concatenate(clipped)]
        return torch.from_numpy(padded), torch.from_numpy(lengths)

    def sequence_batch(self, samples: pd.DataFrame):
        """A RecBole ``Interaction`` with the user and history of each sample (next-item scoring)."""
        import torch
        from recbole.data.interaction import Interaction

        seq, lengths = self.history_tensor(samples["history"])
        users = torch.from_numpy(self.user_ids[samples["user"].to_numpy()])
        return Interaction({self.model.ITEM_SEQ: seq, self.model.ITEM_SEQ_LEN: lengths,
                            self.model.USER_ID: users}).to(self.device)

    def pointwise_batch(self, samples: pd.DataFrame):
        """A RecBole ``Interaction`` of (user, item[, history]) with the user and item side features
        joined, as RecBole's dataloaders hand them to ``predict`` (ctr scoring)."""
        import torch
        from recbole.data.interaction import Interaction

        fields = {self.train_data.uid_field: torch.from_numpy(self.user_ids[samples["user"].to_numpy()]),
                  self.train_data.iid_field: torch.from_numpy(self.item_ids[samples["item"].to_numpy()])}
        if self.reads_history:
            fields[self.model.ITEM_SEQ], fields[self.model.ITEM_SEQ_LEN] = self.history_tensor(samples["history"])
        return self.train_data.join(Interaction(fields)).to(self.device)

    def parameter_counts(self) -> ParameterCounts:
        return count_parameters(self.model.parameters())
