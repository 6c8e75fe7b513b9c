"""RecBole 1.2.1 on current libraries: every workaround in one place, one reason each.

RecBole's last release (1.2.1, 2023) predates numpy 2, pandas copy-on-write, torch 2.6 and the
removal of ``pkg_resources``. The rest of the benchmark reaches RecBole only through this module:

* :func:`prepare` restores what RecBole needs from numpy 1, refuses pandas 3 and replaces the
  ``eval()`` RecBole's ``Config`` runs on every string setting by :func:`literal_setting`;
* :func:`model_class` imports a model without leaving anomaly detection on;
* :func:`make_config` builds a ``recbole.config.Config`` without reading ``sys.argv`` and without
  changing ``CUDA_VISIBLE_DEVICES`` for the rest of the process;
* :func:`build_dataset` builds a dataset without RecBole's pickled-dataset cache, with pandas'
  copy-on-write off and RecBole's pandas deprecation warnings silenced;
* :func:`load_checkpoint` reads a checkpoint RecBole's ``Trainer`` wrote (torch>=2.6 refuses it);
* :func:`tensorboard_logs_in` sends the ``Trainer``'s TensorBoard files to a folder of our choice.

``recbole.quick_start`` is never imported here or anywhere in the benchmark: it imports ray
(2.6.3 in RecBole's pins), which imports ``pkg_resources``, gone from current setuptools.
"""
from __future__ import annotations

import ast
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: RecBole model packages the adapter uses (``recbole.model.<package>``).
_MODEL_PACKAGES = ("sequential_recommender", "context_aware_recommender")
_PREPARED = False


def prepare() -> None:
    """Make ``import recbole`` and ``recbole.config.Config`` work on numpy 2 and pandas 2 (idempotent).

    Raises:
        RuntimeError: under pandas >= 3, whose copy-on-write turns RecBole's
            ``df[col].fillna(..., inplace=True)`` into a silent no-op (missing features stay NaN).
    """
    global _PREPARED
    if _PREPARED:
        return
    import numpy as np
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        raise RuntimeError(f"RecBole 1.2.1 needs pandas<3 (found {pd.__version__}): its in-place fillna is a "
                           "no-op under copy-on-write; install 'pandas>=2.2,<3'")
    # numpy 2 removed these aliases; RecBole's Config.compatibility_settings reads them on every
    # Config() and then sets np.float, np.int, np.bool ... itself, which its evaluator uses.
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if alias not in np.__dict__:
            setattr(np, alias, target)
    from recbole.config import Config

    # Config._convert_config_dict calls eval() on every string of config_dict (and of the command
    # line): a suite value such as "__import__('os').system(...)" would run. Literals only.
    Config._convert_config_dict = lambda self, config_dict: {k: literal_setting(v) for k, v in config_dict.items()}
    _PREPARED = True


def literal_setting(value: Any) -> Any:
    """What RecBole's string conversion was meant to do, without running code: a string that spells
    a Python literal (``"[64, 64]"``, ``"0.2"``) becomes it, ``"true"``/``"false"`` become booleans,
    any other string stays a string (RecBole then rejects it where a number belongs)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(value.lower(), value)


def model_class(name: str, where: str = "") -> type:
    """The RecBole model class called ``name`` (e.g. ``"SASRec"``, ``"DCNV2"``).

    Importing ``recbole.model.sequential_recommender`` imports SINE, whose module runs
    ``torch.autograd.set_detect_anomaly(True)`` for the whole process: every backward pass then
    checks every gradient for NaN (several times slower, here and in any LLM method run after it).
    It is switched off again right after the import.

    Raises:
        ValueError: ``name`` is not a RecBole sequential or context-aware model (``where`` names the
            config file it came from).
    """
    prepare()
    import importlib

    import torch

    anomaly_before = torch.is_anomaly_enabled()
    packages = [importlib.import_module(f"recbole.model.{pkg}") for pkg in _MODEL_PACKAGES]
    torch.autograd.set_detect_anomaly(anomaly_before)
    for package in packages:
        if isinstance(getattr(package, name, None), type):
            return getattr(package, name)
    raise ValueError(f"{where or 'config'}: RecBole 1.2.1 has no sequential or context-aware model '{name}'")


def model_hyperparameters(cls: type) -> set[str]:
    """Names of the hyperparameters RecBole ships for ``cls`` (its ``properties/model/<Name>.yaml``)."""
    import recbole
    import yaml

    path = Path(recbole.__file__).parent / "properties" / "model" / f"{cls.__name__}.yaml"
    return set(yaml.safe_load(path.read_text()) or {}) if path.exists() else set()


@contextmanager
def _isolated_process_state() -> Iterator[None]:
    """Hide our CLI's ``sys.argv`` from RecBole (its Config turns ``--key=value`` flags into settings)
    and undo the ``CUDA_VISIBLE_DEVICES`` that ``Config._init_device`` writes for the whole process."""
    argv, cuda = sys.argv, os.environ.get("CUDA_VISIBLE_DEVICES")
    sys.argv = [argv[0] if argv else "llmrec-bench"]
    try:
        yield
    finally:
        sys.argv = argv
        if cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda


def make_config(cls: type, dataset: str, settings: Mapping[str, Any], device: str) -> Any:
    """A RecBole ``Config`` for model class ``cls`` from ``settings`` only (plus RecBole's defaults).

    Args:
        cls: a RecBole model class (see :func:`model_class`).
        dataset: RecBole dataset name (the atomic files' stem); never a name RecBole ships settings
            for, such as ``ml-100k``.
        settings: every RecBole setting we choose (data_path, seed, model hyperparameters ...).
        device: ``"cpu"`` or ``"cuda[:i]"``; RecBole's own ``gpu_id`` logic is overridden.
    """
    prepare()
    import torch
    from recbole.config import Config

    with _isolated_process_state():
        config = Config(model=cls, dataset=dataset,
                        config_dict={**settings, "use_gpu": device.startswith("cuda")})
    config["device"] = torch.device(device)
    return config


def build_dataset(config: Any) -> Any:
    """RecBole's dataset for ``config``, built from the atomic files every time.

    ``recbole.data.create_dataset`` would first look for a pickled dataset in ``checkpoint_dir`` and
    reuse it when the settings match; we always read the files we just wrote. Copy-on-write is kept
    off (see :func:`prepare`) and RecBole's pandas deprecation warnings are silenced.
    """
    prepare()
    import pandas as pd
    from recbole.data.dataset import Dataset, SequentialDataset
    from recbole.utils import ModelType

    dataset_class = SequentialDataset if config["MODEL_TYPE"] == ModelType.SEQUENTIAL else Dataset
    with warnings.catch_warnings(), pd.option_context("mode.copy_on_write", False):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        return dataset_class(config)


def load_checkpoint(path: Path | str, device: str = "cpu") -> dict:
    """A checkpoint written by RecBole's ``Trainer`` in this process.

    torch>=2.6 loads with ``weights_only=True`` by default, which refuses RecBole's checkpoints (they
    pickle the Config object); RecBole 1.2.1 calls ``torch.load`` without the argument. Only load
    files this process wrote.
    """
    import torch

    return torch.load(path, map_location=device, weights_only=False)


@contextmanager
def tensorboard_logs_in(folder: Path) -> Iterator[None]:
    """While open, a RecBole ``Trainer`` built here writes its TensorBoard files under ``folder``
    (RecBole hard-codes ``./log_tensorboard`` in the working directory)."""
    import recbole.trainer.trainer as trainer_module
    from torch.utils.tensorboard import SummaryWriter

    original = trainer_module.get_tensorboard
    trainer_module.get_tensorboard = lambda logger: SummaryWriter(str(folder))
    try:
        yield
    finally:
        trainer_module.get_tensorboard = original
