"""Frozen RecBole encoders for the LLM methods: iLoRA's SASRec and RecLoRA's conventional model.

Public API::

    from baselines.recbole_encoders import fit_frozen_encoder

    encoder = fit_frozen_encoder("sasrec", data, ctx)                  # iLoRA: on data.train
    encoder = fit_frozen_encoder("din", data, ctx, full_train=True)    # RecLoRA's CRM: data.train_full
    u = encoder.sequence_representation(histories, targets)  # [n, d] float tensor
    items = encoder.item_embeddings()                          # [n_items, d], row = dense item code

``histories`` are lists of dense item codes, oldest first (a sample table's ``history`` column);
the newest ``max_history`` are read. Everything runs in eval mode without gradients and returns
tensors on the encoder's device (``ctx.device``).

* Sequence encoders (``sasrec``, ``gru4rec``): the representation is the model's hidden state at the
  last position (RecBole's ``forward(item_seq, item_seq_len)``, SASRec Eq. 6's F at t = n); ``targets``
  are not read; item embeddings are the model's item embedding table (its output layer too).
* ``din``: the representation is DIN's attention-pooled interest of the history with respect to each
  target (Zhou et al. 2018, Eq. 3), so ``targets`` are required; item embeddings are the concatenated
  embeddings of each item's features (id, year, genres), the space DIN pools in.

The model is the registered method of that name with its ``baselines/configs/<name>.yaml`` (plus
``overrides``), trained exactly as that method trains, on ``data.train`` (or ``data.train_full``).
On a ``ctr`` split a sequence encoder trains on every sample's (history -> item), whatever the
label, without early stopping (the ctr valid split has no candidates). Encoders are memoized per
process under the disk cache's key (settings, protocol hash, training and validation rows, seed,
device, epoch cap), so several calls in one cell train once; across cells and runs, trained
weights are kept in ``ctx.cache_dir`` and verified by sha256 (:mod:`baselines.trained_model_cache`),
so an encoder trains only when no cell trained the same model before: iLoRA's SASRec on a
next_item split is then the ``sasrec`` cell's model, loaded.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from baselines import trained_model_cache
from baselines.recbole_training import RecBoleModel
from benchmarks import registry
from benchmarks.contract import CellContext, FitData
from benchmarks.data.cards import canonical_hash

#: RecBole classes whose ``forward(item_seq, item_seq_len)`` returns one ``[B, d]`` state per sequence
SEQUENCE_ENCODERS = ("SASRec", "GRU4Rec")
#: RecBole classes a frozen encoder can be (their trained weights are kept for reuse)
ENCODER_MODELS = (*SEQUENCE_ENCODERS, "DIN")
_MEMO: dict[str, FrozenEncoder] = {}


class FrozenEncoder:
    """A trained RecBole model answering the two calls of the module docstring."""

    def __init__(self, net: RecBoleModel, batch_size: int):
        self.net, self.batch_size = net, batch_size
        self.kind = "din" if type(net.model).__name__ == "DIN" else "sequence"
        self._items: Any = None
        net.model.eval()
        for param in net.model.parameters():
            param.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.item_embeddings().shape[1])

    def sequence_representation(self, histories: Sequence[Sequence[int]],
                                targets: Sequence[int] | None = None):
        """``[n, d]``: the user representation of each history (and target, for DIN).

        Raises:
            ValueError: DIN without ``targets``, or lengths that differ.
        """
        import torch

        if self.kind == "din" and targets is None:
            raise ValueError("DIN's representation attends with respect to a target item: pass targets")
        if targets is not None and len(targets) != len(histories):
            raise ValueError(f"{len(histories)} histories but {len(targets)} targets")
        frame = pd.DataFrame({"history": list(histories)})
        frame["item"] = np.asarray(targets, dtype=np.int64) if targets is not None else 0
        parts = []
        with torch.no_grad():
            for begin in range(0, len(frame), self.batch_size):
                part = frame.iloc[begin: begin + self.batch_size]
                parts.append(self._din_pass(part)[0] if self.kind == "din" else self._sequence_pass(part))
        return torch.cat(parts) if parts else torch.zeros(0, self.dim, device=self.net.device)

    def item_embeddings(self):
        """``[n_items, d]``: the embedding of every dense item code (computed once)."""
        import torch

        if self._items is None:
            with torch.no_grad():
                if self.kind == "din":
                    codes = np.arange(len(self.net.item_ids))
                    frame = pd.DataFrame({"history": [[c] for c in codes], "item": codes})
                    self._items = torch.cat([self._din_pass(frame.iloc[b: b + self.batch_size])[1]
                                             for b in range(0, len(frame), self.batch_size)])
                else:
                    table = self.net.model.item_embedding.weight
                    self._items = table[torch.from_numpy(self.net.item_ids).to(table.device)].clone()
        return self._items

    def _sequence_pass(self, part: pd.DataFrame):
        seq, lengths = self.net.history_tensor(part["history"])
        return self.net.model.forward(seq.to(self.net.device), lengths.to(self.net.device))

    def _din_pass(self, part: pd.DataFrame):
        """(interest ``[b, d]``, target item embedding ``[b, d]``) read from DIN's attention layer,
        whose inputs are (target embedding, history embeddings, lengths) and output the interest."""
        captured = {}

        def hook(module, inputs, output):
            captured["interest"], captured["target"] = output.squeeze(1), inputs[0]

        handle = self.net.model.attention.register_forward_hook(hook)
        try:
            self.net.model.predict(self.net.pointwise_batch(part.assign(user=0)))
        finally:
            handle.remove()
        return captured["interest"], captured["target"]


def fit_frozen_encoder(name: str, data: FitData, ctx: CellContext, *, full_train: bool = False,
                       overrides: Mapping[str, Any] | None = None) -> FrozenEncoder:
    """Train (or reuse) the registered RecBole model ``name`` on ``data`` and freeze it.

    Args:
        name: ``"sasrec"``, ``"gru4rec"`` or ``"din"`` (a registered RecBole method).
        data: the cell's FitData; ``full_train`` trains on ``data.train_full`` instead of ``data.train``.
        ctx: the cell's context (seed, device, epoch cap, workdir).
        overrides: settings layered over ``baselines/configs/<name>.yaml``.

    Raises:
        ValueError: ``name`` is not an encoder this module supports, or DIN on a next_item split.
    """
    from baselines.recbole_adapter import RecBoleCTR, RecBoleNextItem

    entry = registry.get_entry(name)
    settings = registry.resolve_config(entry, overrides)
    model_name = getattr(settings, "model", "")
    if model_name not in ENCODER_MODELS:
        raise ValueError(f"fit_frozen_encoder: '{name}' ({model_name or entry.target}) is not an encoder; "
                         f"use a method whose RecBole model is one of {list(ENCODER_MODELS)}")
    if model_name == "DIN" and data.task != "ctr":
        raise ValueError("fit_frozen_encoder: DIN trains on labelled ctr samples; this cell is next_item")
    fit_data = dataclasses.replace(data, train=data.train_full if full_train else data.train)
    if model_name in SEQUENCE_ENCODERS and data.task == "ctr":
        fit_data = dataclasses.replace(fit_data, valid=data.valid.iloc[:0])
    key = canonical_hash({"name": name, **trained_model_cache.cache_key(settings, fit_data, ctx)})
    if key not in _MEMO:
        method = (RecBoleCTR if model_name == "DIN" else RecBoleNextItem)(settings, ctx)
        method.fit(fit_data, reuse=True)
        _MEMO[key] = FrozenEncoder(method.net, settings.eval_batch_size)
    return _MEMO[key]
