"""Every shipped RecBole config resolves, names a real RecBole model and documents each line."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("recbole")

from baselines import recbole_compat as compat  # noqa: E402
from benchmarks import registry  # noqa: E402

#: the issue's list: registered name -> RecBole class
EXPECTED = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser", "bert4rec": "BERT4Rec",
            "deepfm": "DeepFM", "dcnv2": "DCNV2", "autoint": "AutoInt", "widedeep": "WideDeep",
            "xdeepfm": "xDeepFM", "din": "DIN"}
SEQUENTIAL = {"sasrec", "gru4rec", "caser", "bert4rec"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_resolves_to_the_recbole_model_with_known_hyperparameters(name):
    entry = registry.discover()[name]
    assert entry.family == "conventional"
    assert entry.tasks == (("next_item",) if name in SEQUENTIAL else ("ctr",))
    settings = registry.resolve_config(entry)
    assert settings.model == EXPECTED[name]
    cls = compat.model_class(settings.model, str(entry.config_file))
    known = compat.model_hyperparameters(cls)
    assert set(settings.model_params) <= known, sorted(set(settings.model_params) - known)
    if name in SEQUENTIAL or name == "din":
        # Caser: the paper's L (see caser.yaml); DIN: the ctr protocols' 60 stored items (RecLoRA's CRM)
        assert settings.max_history == {"caser": 5, "din": 60}.get(name, 50)
    if name in SEQUENTIAL:
        params = settings.model_params  # item embedding size: embedding_size, or hidden_size for transformers
        assert params.get("embedding_size", params.get("hidden_size")) == 64
        assert settings.model_params["loss_type"] == "CE"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_setting_line_explains_itself(name):
    lines = registry.discover()[name].config_file.read_text().splitlines()
    settings = [line for line in lines if re.match(r"^\s*[A-Za-z_]+:", line)]
    undocumented = [line for line in settings if "# " not in line]
    assert not undocumented, undocumented
    assert lines[0].startswith("#") and any("python -m benchmarks.run" in line for line in lines[:4])
