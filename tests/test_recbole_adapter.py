"""The RecBole adapter trains on OUR train split and scores OUR frozen candidates and samples.

Every check reads RecBole's side independently (its dataset's ids and tokens, its model's own
``forward`` and embedding table) and compares with our sample tables. Models are shrunk and trained
for one epoch on a few hundred rows of the tiny subset: the checks are about plumbing, not accuracy.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("recbole")
torch = pytest.importorskip("torch")

from baselines import recbole_encoders, trained_model_cache  # noqa: E402
from baselines.recbole_adapter import RecBoleCTR, RecBoleNextItem  # noqa: E402
from baselines.recbole_encoders import fit_frozen_encoder  # noqa: E402
from baselines.recbole_training import RecBoleModel  # noqa: E402
from benchmarks import registry  # noqa: E402
from benchmarks.contract import CellContext, FitData, without_labels  # noqa: E402
from benchmarks.data import canonical, protocols  # noqa: E402

SMALL_SASREC = {"train_batch_size": 128, "model_params": {
    "n_layers": 1, "n_heads": 1, "hidden_size": 16, "inner_size": 32, "loss_type": "CE"}}
SMALL_DEEPFM = {"model_params": {"embedding_size": 4, "mlp_hidden_size": [16]}}
SMALL_DIN = {"train_batch_size": 128, "model_params": {"embedding_size": 4, "mlp_hidden_size": [16]}}
TRAIN_ROWS = 400


@pytest.fixture(scope="module")
def tiny():
    data = canonical.load("movielens-100k", tiny=True)
    return data, {task: protocols.load(data, task) for task in ("ctr", "next_item")}


def settings(name: str, overrides: dict):
    return registry.resolve_config(registry.get_entry(name), overrides)


def fit_data(tiny, task: str, rows: int = TRAIN_ROWS, validate=None) -> FitData:
    data, protos = tiny
    proto = protos[task]
    valid = proto.valid.iloc[:20]
    return FitData(task=task, train=proto.train.iloc[:rows], train_full=proto.train, valid=without_labels(valid),
                   validate=validate or (lambda scores: {"ndcg@10": 0.0, "auc": 0.5}), catalog=data.catalog,
                   protocol=proto.info)


def context(tmp_path: Path, **kw) -> CellContext:
    return CellContext(seed=kw.pop("seed", 3), max_epochs=kw.pop("max_epochs", 1), workdir=tmp_path, **kw)


@pytest.fixture(scope="module")
def sasrec_context(tmp_path_factory) -> CellContext:
    return context(tmp_path_factory.mktemp("sasrec"))


@pytest.fixture(scope="module")
def sasrec(tiny, sasrec_context) -> RecBoleNextItem:
    """The adapter's SASRec, trained once through ``fit_frozen_encoder`` (which calls its ``fit``)."""
    encoder = fit_frozen_encoder("sasrec", fit_data(tiny, "next_item"), sasrec_context, overrides=SMALL_SASREC)
    method = RecBoleNextItem(settings("sasrec", SMALL_SASREC), sasrec_context)
    method.net = encoder.net
    return method


@pytest.fixture(scope="module")
def deepfm(tiny, tmp_path_factory) -> RecBoleCTR:
    method = RecBoleCTR(settings("deepfm", SMALL_DEEPFM), context(tmp_path_factory.mktemp("deepfm")))
    method.fit(fit_data(tiny, "ctr"))
    return method


def eval_samples(tiny, task: str, n: int = 12) -> pd.DataFrame:
    return without_labels(tiny[1][task].test.iloc[:n]).reset_index(drop=True)


# ---------------------------------------------------------------- the train split RecBole sees


def tokens(dataset, field: str, ids) -> np.ndarray:
    return np.asarray(dataset.id2token(field, np.asarray(ids))).astype(np.int64)


def recbole_histories(dataset) -> list[np.ndarray]:
    inter = dataset.inter_feat
    ids, lengths = inter["item_id_list"].numpy(), inter["item_length"].numpy()
    return [tokens(dataset, "item_id", row[:n]) for row, n in zip(ids, lengths)]


def test_recbole_trains_on_exactly_our_next_item_rows(sasrec, tiny):
    ours = tiny[1]["next_item"].train.iloc[:TRAIN_ROWS]
    seen = sasrec.net.train_data
    assert len(seen) == len(ours)
    assert np.array_equal(tokens(seen, "user_id", seen.inter_feat["user_id"]), ours["user"])
    assert np.array_equal(tokens(seen, "item_id", seen.inter_feat["item_id"]), ours["item"])
    for got, expected in zip(recbole_histories(seen), ours["history"]):
        assert np.array_equal(got, np.asarray(expected)[-50:])


@pytest.mark.parametrize("name, overrides", [("deepfm", SMALL_DEEPFM), ("din", SMALL_DIN)])
def test_recbole_trains_on_exactly_our_ctr_rows_with_side_features(tiny, tmp_path, name, overrides):
    data, protos = tiny
    ours = protos["ctr"].train.iloc[:TRAIN_ROWS]
    config = settings(name, overrides)
    net = RecBoleModel.build(config, "ctr", ours, data.catalog, context(tmp_path),
                             {"user": tuple(config.user_features), "item": tuple(config.item_features)})
    seen = net.train_data
    users = tokens(seen, "user_id", seen.inter_feat["user_id"])
    assert np.array_equal(users, ours["user"])
    assert np.array_equal(tokens(seen, "item_id", seen.inter_feat["item_id"]), ours["item"])
    assert np.array_equal(seen.inter_feat["label"].numpy(), ours["label"].to_numpy(dtype=np.float32))
    if name == "din":
        assert config.max_history == 60, "DIN reads the ctr protocol's whole stored history"
        for got, expected in zip(recbole_histories(seen), ours["history"]):
            assert np.array_equal(got, np.asarray(expected)[-config.max_history:])
    # side features, read back through RecBole's own user and item tables
    user_row = seen.get_user_feature()[torch.tensor(seen.token2id("user_id", str(users[0])))]
    expected_user = data.catalog.users.set_index("user").loc[users[0]]
    for feature in ("age", "gender", "occupation"):
        assert seen.id2token(feature, user_row[feature].item()) == str(expected_user[feature])
    item = int(ours["item"].iloc[0])
    item_row = seen.get_item_feature()[torch.tensor(seen.token2id("item_id", str(item)))]
    genres = set(seen.id2token("genres", item_row["genres"][item_row["genres"] > 0].numpy()))
    assert genres == set(data.catalog.items.loc[item, "genres"].split("|"))


# ------------------------------------------------------------------- next_item: our candidates


def independent_candidate_scores(method: RecBoleNextItem, samples: pd.DataFrame) -> np.ndarray:
    """SASRec's last hidden state times the item embedding table, at each candidate's RecBole id."""
    net = method.net
    dataset, model = net.train_data, net.model
    seq = torch.zeros(len(samples), 50, dtype=torch.long)
    lengths = torch.zeros(len(samples), dtype=torch.long)
    for row, history in enumerate(samples["history"]):
        ids = [dataset.token2id("item_id", str(i)) for i in np.asarray(history)[-50:]]
        seq[row, : len(ids)], lengths[row] = torch.tensor(ids), len(ids)
    with torch.no_grad():
        state = model.forward(seq, lengths)
        out = np.zeros(np.stack(samples["candidates"]).shape)
        for row, cands in enumerate(samples["candidates"]):
            ids = torch.tensor([dataset.token2id("item_id", str(c)) for c in cands])
            out[row] = (model.item_embedding.weight[ids] @ state[row]).numpy()
    return out


def test_next_item_scores_are_the_models_scores_of_our_candidates(sasrec, tiny):
    samples = eval_samples(tiny, "next_item")
    scores = sasrec.score(samples)
    assert scores.shape == (len(samples), 20)
    np.testing.assert_allclose(scores, independent_candidate_scores(sasrec, samples), rtol=1e-5, atol=1e-5)


def test_planting_an_item_changes_only_its_position(sasrec, tiny):
    samples = eval_samples(tiny, "next_item", 4)
    before = sasrec.score(samples)
    trained_on = set(tiny[1]["next_item"].train.iloc[:TRAIN_ROWS]["item"])
    catalog_items = tiny[0].catalog.items["item"].to_numpy()
    unseen = int(next(i for i in catalog_items if i not in trained_on and i not in samples["candidates"][0]))
    planted = samples.copy()
    planted.at[0, "candidates"] = np.concatenate([samples["candidates"][0][:5], [unseen], samples["candidates"][0][6:]])
    after = sasrec.score(planted)
    changed = ~np.isclose(before, after)
    assert changed[0, 5] and changed.sum() == 1
    assert np.isfinite(after[0, 5])  # an item never trained on still has a score column
    moved = planted.copy()
    moved.at[0, "candidates"] = np.roll(planted["candidates"][0], 3)
    np.testing.assert_allclose(sasrec.score(moved)[0], np.roll(after[0], 3), rtol=1e-6)


def test_next_item_scores_do_not_read_the_target_column(sasrec, tiny):
    samples = eval_samples(tiny, "next_item")
    assert "item" not in samples.columns  # the target is the answer: the harness drops it
    planted = samples.assign(item=np.arange(len(samples)))  # and a column of that name changes nothing
    np.testing.assert_array_equal(sasrec.score(samples), sasrec.score(planted))


# ----------------------------------------------------------------------------- ctr: our samples


def test_ctr_scores_are_probabilities_in_sample_order(deepfm, tiny):
    samples = eval_samples(tiny, "ctr", 50)
    scores = deepfm.score(samples)
    assert scores.shape == (50,) and np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(deepfm.score(samples.iloc[::-1]), scores[::-1], rtol=1e-6)
    one_by_one = np.concatenate([deepfm.score(samples.iloc[i: i + 1]) for i in range(5)])
    np.testing.assert_allclose(one_by_one, scores[:5], rtol=1e-5)
    other_item = samples.assign(item=samples["item"].to_numpy()[::-1])
    assert not np.allclose(deepfm.score(other_item), scores)


def test_ctr_trains_on_a_16_sample_few_shot_subset(tiny, tmp_path):
    method = RecBoleCTR(settings("din", SMALL_DIN), context(tmp_path))
    method.fit(fit_data(tiny, "ctr", rows=16))
    scores = method.score(eval_samples(tiny, "ctr", 30))
    assert scores.shape == (30,) and np.all((scores >= 0) & (scores <= 1))
    assert len(method.net.train_data) == 16


# --------------------------------------------------------------- epochs, early stopping, errors


def test_early_stopping_keeps_the_best_epoch_and_honours_the_epoch_cap(tiny, tmp_path):
    seen: list[np.ndarray] = []
    values = iter([0.30, 0.20, 0.10, 0.0])

    def validate(scores):
        seen.append(np.array(scores))
        return {"ndcg@10": next(values)}

    config = settings("sasrec", {**SMALL_SASREC, "epochs": 4, "stopping_step": 2})
    method = RecBoleNextItem(config, context(tmp_path, max_epochs=10))
    data = fit_data(tiny, "next_item", rows=150, validate=validate)
    method.fit(data)
    assert len(seen) == 3  # epoch 1 best, then two epochs without improvement
    np.testing.assert_allclose(method.score(data.valid), seen[0], rtol=1e-6)

    capped = RecBoleNextItem(config, context(tmp_path, max_epochs=1))
    seen.clear()
    values = iter([0.1, 0.2, 0.3])
    capped.fit(data)
    assert len(seen) == 1


def test_unknown_model_hyperparameter_is_named(tiny, tmp_path):
    bad = settings("sasrec", {"model_params": {"hidden_size": 16, "hiden_dropout": 0.1}})
    with pytest.raises(ValueError, match="hiden_dropout"):
        RecBoleNextItem(bad, context(tmp_path)).fit(fit_data(tiny, "next_item", rows=20))


def test_valid_metric_of_the_wrong_task_is_refused(tiny, tmp_path):
    bad = settings("deepfm", {**SMALL_DEEPFM, "valid_metric": "ndcg@10"})
    with pytest.raises(ValueError, match="valid_metric 'ndcg@10' is not a ctr metric"):
        RecBoleCTR(bad, context(tmp_path)).fit(fit_data(tiny, "ctr", rows=20))


# ---------------------------------------------------------------------- frozen encoders (LLMs)


def test_sasrec_encoder_reproduces_the_adapters_candidate_scores(sasrec, sasrec_context, tiny):
    encoder = fit_frozen_encoder("sasrec", fit_data(tiny, "next_item"), sasrec_context, overrides=SMALL_SASREC)
    assert encoder.net is sasrec.net  # memoized: the fixture's encoder, not a second training
    samples = eval_samples(tiny, "next_item")
    users = encoder.sequence_representation(list(samples["history"]))
    items = encoder.item_embeddings()
    assert users.shape == (len(samples), 16) and items.shape == (tiny[0].catalog.n_items, 16)
    assert not users.requires_grad and not items.requires_grad
    via_encoder = np.take_along_axis((users @ items.T).numpy(), np.stack(samples["candidates"]), axis=1)
    np.testing.assert_allclose(via_encoder, sasrec.score(samples), rtol=1e-4, atol=1e-5)


def test_din_encoder_pools_the_history_towards_each_target(tiny, tmp_path):
    data = fit_data(tiny, "ctr")
    encoder = fit_frozen_encoder("din", data, context(tmp_path), full_train=False, overrides=SMALL_DIN)
    samples = eval_samples(tiny, "ctr", 6)
    histories, targets = list(samples["history"]), samples["item"].to_numpy()
    interest = encoder.sequence_representation(histories, targets)
    items = encoder.item_embeddings()
    assert interest.shape == (6, items.shape[1]) and items.shape[0] == tiny[0].catalog.n_items
    other_targets = encoder.sequence_representation(histories, targets[::-1].copy())
    assert not torch.allclose(interest, other_targets)
    with pytest.raises(ValueError, match="targets"):
        encoder.sequence_representation(histories)
    with pytest.raises(ValueError, match="not an encoder"):
        fit_frozen_encoder("deepfm", data, context(tmp_path))


def test_sequence_encoder_on_a_ctr_split_trains_without_early_stopping(tiny, tmp_path):
    calls = []
    data = replace(fit_data(tiny, "ctr", rows=120), validate=lambda s: calls.append(s) or {"ndcg@10": 0.0})
    encoder = fit_frozen_encoder("sasrec", data, context(tmp_path, seed=11), overrides=SMALL_SASREC)
    assert not calls and len(encoder.net.train_data) == 120


# ------------------------------------------------------------- trained weights kept on disk


def _weights(net) -> dict:
    return {name: value.clone() for name, value in net.model.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_an_encoder_loads_the_conventional_cells_model_instead_of_training(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recbole_encoders, "_MEMO", {})
    data = fit_data(tiny, "next_item")
    ctx = context(tmp_path / "work", cache_dir=tmp_path / "cache")
    cell = RecBoleNextItem(settings("sasrec", SMALL_SASREC), ctx)
    cell.fit(data)  # the sasrec cell: trains, stores
    assert "trained SASRec; stored in" in capsys.readouterr().err
    (entry,) = (tmp_path / "cache" / trained_model_cache.FOLDER).iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"]["seed"] == 3 and manifest["key"]["protocol"] == data.protocol.hash

    trainings = []
    monkeypatch.setattr(RecBoleModel, "train", lambda self, *a, **k: trainings.append(1))
    encoder = fit_frozen_encoder("sasrec", data, ctx, overrides=SMALL_SASREC)
    assert not trainings, "the encoder retrained although the sasrec cell stored its model"
    assert "cache hit: SASRec loaded from" in capsys.readouterr().err
    assert _same_weights(_weights(encoder.net), _weights(cell.net))
    samples = eval_samples(tiny, "next_item")
    np.testing.assert_array_equal(RecBoleNextItem.candidate_scores(cell, encoder.net, samples), cell.score(samples))

    cell.fit(data)  # a conventional cell trains (and is timed) even when its model is cached
    assert trainings == [1]


def test_the_cached_encoder_is_the_model_an_uncached_encoder_trains(tiny, tmp_path, monkeypatch):
    """Same key, same weights: what the sasrec cell stored is what the encoder would have trained."""
    data = fit_data(tiny, "next_item")
    cell = RecBoleNextItem(settings("sasrec", SMALL_SASREC), context(tmp_path / "a", cache_dir=tmp_path / "cache"))
    cell.fit(data)
    monkeypatch.setattr(recbole_encoders, "_MEMO", {})
    fresh = fit_frozen_encoder("sasrec", data, context(tmp_path / "b"), overrides=SMALL_SASREC)  # no cache
    assert _same_weights(_weights(fresh.net), _weights(cell.net))


def test_a_tampered_or_foreign_entry_is_retrained_not_loaded(tiny, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recbole_encoders, "_MEMO", {})
    data = fit_data(tiny, "next_item", rows=200)
    ctx = context(tmp_path / "work", cache_dir=tmp_path / "cache")
    cell = RecBoleNextItem(settings("sasrec", SMALL_SASREC), ctx)
    cell.fit(data)
    trained = _weights(cell.net)
    (entry,) = (tmp_path / "cache" / trained_model_cache.FOLDER).iterdir()
    weights = entry / trained_model_cache.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    encoder = fit_frozen_encoder("sasrec", data, ctx, overrides=SMALL_SASREC)
    assert "does not match its sha256" in caplog.text
    assert _same_weights(_weights(encoder.net), trained), "retrained from scratch: the same weights"

    monkeypatch.setattr(recbole_encoders, "_MEMO", {})
    other_seed = fit_frozen_encoder("sasrec", data, replace(ctx, seed=4), overrides=SMALL_SASREC)
    assert not _same_weights(_weights(other_seed.net), trained), "another seed is another entry"
    assert len(list((tmp_path / "cache" / trained_model_cache.FOLDER).iterdir())) == 2
