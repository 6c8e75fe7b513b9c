"""baselines/recbole_compat.py: each RecBole breakage it works around is real, and the workaround holds.

The first test imports RecBole in a fresh interpreter, where import-time side effects show.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("recbole")
torch = pytest.importorskip("torch")

from baselines import recbole_compat as compat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_breakages_are_real_in_a_fresh_interpreter_and_the_shims_undo_them():
    out = run_python("""
        import importlib, os, sys
        import numpy as np, torch
        os.environ["CUDA_VISIBLE_DEVICES"] = "7"
        missing = [a for a in ("float_", "complex_", "unicode_") if not hasattr(np, a)]
        from baselines import recbole_compat as compat
        compat.model_class("SASRec")
        after_shim = torch.is_anomaly_enabled()
        compat.make_config(compat.model_class("DeepFM"), "x", {}, "cpu")  # Config reads np.float_ etc.
        importlib.reload(sys.modules["recbole.model.sequential_recommender.sine"])  # what a plain import does
        print(",".join(missing), np.float_ is np.float64, after_shim, torch.is_anomaly_enabled(),
              os.environ["CUDA_VISIBLE_DEVICES"], "recbole.quick_start" in sys.modules, "ray" in sys.modules)
    """)
    assert out.split() == ["float_,complex_,unicode_", "True", "False", "True", "7", "False", "False"]


def test_config_ignores_our_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks.run", "--learning_rate=0.5", "--suite", "ci"])
    config = compat.make_config(compat.model_class("DeepFM"), "x", {"learning_rate": 0.002}, "cpu")
    assert config["learning_rate"] == 0.002
    assert sys.argv == ["benchmarks.run", "--learning_rate=0.5", "--suite", "ci"]
    assert config["device"] == torch.device("cpu")


def test_prepare_refuses_pandas_3(monkeypatch):
    monkeypatch.setattr(compat, "_PREPARED", False)
    monkeypatch.setattr(pd, "__version__", "3.0.0")
    with pytest.raises(RuntimeError, match="pandas<3"):
        compat.prepare()


def test_missing_float_features_are_filled_even_with_copy_on_write_switched_on(tmp_path):
    folder = tmp_path / "cow"
    folder.mkdir()
    (folder / "cow.inter").write_text("user_id:token\titem_id:token\tlabel:float\n1\t1\t1\n2\t2\t0\n")
    (folder / "cow.item").write_text("item_id:token\tscore:float\n1\t\n2\t4.0\n")
    config = compat.make_config(compat.model_class("DeepFM"), "cow",
                                {"data_path": str(tmp_path), "load_col": None, "train_neg_sample_args": None}, "cpu")
    from recbole.data.dataset import Dataset

    with pd.option_context("mode.copy_on_write", True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas says so: ChainedAssignmentError
        plain = Dataset(config)
        filled = compat.build_dataset(config)
    assert np.isnan(plain.item_feat["score"].to_numpy(dtype=float)).any(), "the breakage is gone: drop the shim"
    assert not np.isnan(filled.item_feat["score"].to_numpy(dtype=float)).any(), \
        "RecBole's in-place fillna did nothing (copy-on-write)"


def test_checkpoints_recbole_writes_load_here_but_not_with_torch_defaults(tmp_path):
    path = tmp_path / "model.pth"  # a Namespace stands for RecBole's pickled Config object
    torch.save({"config": argparse.Namespace(lr=0.1), "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path)
    loaded = compat.load_checkpoint(path)
    assert loaded["config"].lr == 0.1 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_unknown_model_name_says_where():
    with pytest.raises(ValueError, match="configs/x.yaml: RecBole 1.2.1 has no .* model 'SASRek'"):
        compat.model_class("SASRek", "configs/x.yaml")


def test_no_recbole_file_lands_in_the_working_directory_or_the_workdir(tmp_path, monkeypatch):
    from baselines.recbole_training import RecBoleModel, RecBoleSettings
    from benchmarks.contract import CellContext
    from benchmarks.data import canonical, protocols

    data = canonical.load("movielens-100k", tiny=True)
    train = protocols.load(data, "next_item").train.iloc[:50]
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = RecBoleSettings(model="GRU4Rec", model_params={"embedding_size": 8, "hidden_size": 8})
    net = RecBoleModel.build(settings, "next_item", train, data.catalog, CellContext(seed=1, workdir=work))
    net.train(settings, 1, None)
    assert list(work.iterdir()) == []  # the atomic files' folder is gone once RecBole has read it
    assert list(cwd.iterdir()) == []  # no log/, saved/, log_tensorboard/


def test_a_string_setting_never_reaches_recboles_eval(tmp_path):
    """A suite value reaches RecBole's Config as config_dict; RecBole eval()s every string there."""
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x') or 0.2"
    config = compat.make_config(compat.model_class("DeepFM"), "bench", {"dropout_prob": payload,
                                                                        "mlp_hidden_size": "[64, 32]",
                                                                        "loss_type": "BCE"}, "cpu")
    assert not marker.exists()
    assert config["dropout_prob"] == payload          # left a string: RecBole fails on it, nothing ran
    assert config["mlp_hidden_size"] == [64, 32]      # literals still convert as RecBole intends
    assert config["loss_type"] == "BCE"
