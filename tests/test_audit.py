"""The protocol leakage audit: clean protocols pass, and every check catches the leak it names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.data import audit, canonical, cards, protocols
from benchmarks.data.canonical import CanonicalData

N_ITEMS, N_CANDIDATES = 40, 5


def _synthetic() -> CanonicalData:
    """6 users with 9 interactions each over 40 items, timestamps with many ties."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(6):
        items = rng.choice(N_ITEMS, size=9, replace=False)
        stamps = np.sort(rng.integers(0, 10, size=9))
        rows += [(user, int(i), float(rng.integers(1, 6)), int(t)) for i, t in zip(items, stamps)]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).astype(
        {"user": "int64", "item": "int64", "rating": "float32", "timestamp": "int64"})
    inter = inter.sort_values(["user", "timestamp", "item"], kind="stable", ignore_index=True)
    protos = {"ctr": {"history_len": 3, "max_history": 4, "min_history": 2, "split": [0.6, 0.2, 0.2],
                      "eval_cap": None, "seed": 0},
              "next_item": {"history_len": 3, "max_history": 4, "n_candidates": N_CANDIDATES,
                            "min_interactions": 3, "seed": 0}}
    card = cards.Card(name="synthetic", version=1, domain={"item": "item"}, sources=(), filtering={},
                      label_threshold=3, max_bad_line_ratio=0.0, protocols=protos, tiny={},
                      raw={"protocols": protos}, path=Path("synthetic.yaml"))
    items = pd.DataFrame({"item": np.arange(N_ITEMS), "raw_id": [str(i) for i in range(N_ITEMS)],
                          "title": [f"t{i}" for i in range(N_ITEMS)], "year": pd.NA, "genres": ""})
    users = pd.DataFrame({"user": np.arange(6), "raw_id": [str(u) for u in range(6)]})
    return CanonicalData(card, inter, items, users, {}, False)


DATA = _synthetic()


def _frames(task: str) -> dict[str, pd.DataFrame]:
    built = protocols.BUILDERS[task](DATA, DATA.card.protocols[task])
    return {split: protocols._frame(columns) for split, columns in built.items()}


def _audit(task: str, frames: dict[str, pd.DataFrame]) -> dict:
    return audit.audit_protocol(task, frames, DATA.interactions, N_ITEMS, DATA.card.protocols[task])


def _own(user: int) -> pd.DataFrame:
    inter = DATA.interactions
    return inter[inter.user == user]


def _unseen(user: int) -> int:
    return int(np.setdiff1d(np.arange(N_ITEMS), _own(user).item)[0])


def _set(frame: pd.DataFrame, row: int, **values) -> None:
    for column, value in values.items():
        frame.at[row, column] = np.asarray(value) if isinstance(value, list) else value


@pytest.mark.parametrize("task", ["ctr", "next_item"])
def test_the_builders_protocols_pass_every_check(task):
    report = _audit(task, _frames(task))
    assert report["passed"] and report["checks"]
    assert all(c["count"] == 0 and c["checked"] > 0 and c["example"] is None for c in report["checks"].values())


# ------------------------------------------------------------------ ctr: one planted leak per check

def _ctr_target_in_history(f):
    row = f["train"].iloc[0]
    _set(f["train"], 0, history=[*row.history, row["item"]])


def _ctr_same_second_history(f):
    """The leak the builder had before version 2: an item rated in the target's own second."""
    for k, row in f["train"].iterrows():
        own = _own(row.user)
        twins = own[(own.timestamp == row.timestamp) & (own.item != row["item"])]
        if len(twins):
            _set(f["train"], k, history=[*row.history, int(twins.item.iloc[0])])
            return
    raise AssertionError("the fixture has no same-second interactions")


def _ctr_foreign_history_item(f):
    row = f["valid"].iloc[0]
    _set(f["valid"], 0, history=[*row.history[:-1], _unseen(row.user)])


def _ctr_test_sample_in_train(f):
    f["train"] = pd.concat([f["train"], f["test"].iloc[[0]]], ignore_index=True)


def _ctr_test_pair_in_train(f):
    test = f["test"].iloc[-1]
    k = int(np.flatnonzero(f["train"].user.to_numpy() == test.user)[0])
    _set(f["train"], k, item=int(test["item"]))


CTR_LEAKS = {"history_before_target": _ctr_target_in_history,
             "history_before_target/same second": _ctr_same_second_history,
             "history_is_users": _ctr_foreign_history_item,
             "train_before_eval": _ctr_test_sample_in_train,
             "test_pair_in_train": _ctr_test_pair_in_train}


@pytest.mark.parametrize("leak", list(CTR_LEAKS))
def test_a_planted_ctr_leak_is_counted_by_its_check(leak):
    frames = _frames("ctr")
    CTR_LEAKS[leak](frames)
    report = _audit("ctr", frames)
    check = report["checks"][leak.split("/")[0]]
    assert not report["passed"] and check["count"] >= 1 and check["example"] is not None


def test_the_old_ctr_histories_fail_the_audit_on_movielens(monkeypatch):
    """Before builder version 2, a history ended at the target's row: on ML-100K half of the samples
    then held an item rated in the target's own second."""
    data = canonical.load("movielens-100k")
    params = data.card.protocols["ctr"]
    monkeypatch.setattr(protocols, "_second_starts", lambda ordered: np.arange(len(ordered["user"])))
    leaky = audit.audit_protocol("ctr", protocols.build_ctr(data, params), data.interactions, data.catalog.n_items,
                                 params)
    assert leaky["checks"]["history_before_target"]["count"] > 0.3 * leaky["checks"]["history_before_target"]["checked"]
    monkeypatch.undo()
    assert audit.audit_protocol("ctr", protocols.build_ctr(data, params), data.interactions, data.catalog.n_items,
                                params)["passed"]


# ------------------------------------------------------------------ next_item: one planted leak per check

def _ni_valid_target_as_test(f):
    valid = f["valid"].iloc[0]
    k = int(np.flatnonzero(f["test"].user.to_numpy() == valid.user)[0])
    _set(f["test"], k, item=int(valid["item"]), timestamp=int(valid.timestamp))


def _ni_target_in_history(f):
    row = f["test"].iloc[0]
    _set(f["test"], 0, history=[*row.history, row["item"]])


def _ni_foreign_history_item(f):
    row = f["train"].iloc[2]
    _set(f["train"], 2, history=[_unseen(row.user), *row.history[1:]])


def _ni_repeated_candidate(f):
    row = f["test"].iloc[0]
    others = [j for j in range(N_CANDIDATES) if j != row.label]
    cands = list(row.candidates)
    cands[others[1]] = cands[others[0]]
    _set(f["test"], 0, candidates=cands)


def _ni_label_off_target(f):
    _set(f["valid"], 1, label=(int(f["valid"].label[1]) + 1) % N_CANDIDATES)


def _ni_seen_negative(f):
    row = f["test"].iloc[0]
    cands = list(row.candidates)
    cands[(row.label + 1) % N_CANDIDATES] = int(row.history[0])
    _set(f["test"], 0, candidates=cands)


def _ni_valid_interaction_trained_on(f):
    valid = f["valid"].iloc[0]
    k = int(np.flatnonzero(f["train"].user.to_numpy() == valid.user)[-1])
    _set(f["train"], k, item=int(valid["item"]), timestamp=int(valid.timestamp))


NEXT_ITEM_LEAKS = {"target_is_last": _ni_valid_target_as_test, "history_before_target": _ni_target_in_history,
                   "history_is_users": _ni_foreign_history_item, "candidates_unique": _ni_repeated_candidate,
                   "target_once": _ni_label_off_target, "negatives_unseen": _ni_seen_negative,
                   "eval_not_in_training": _ni_valid_interaction_trained_on}


@pytest.mark.parametrize("leak", list(NEXT_ITEM_LEAKS))
def test_a_planted_next_item_leak_is_counted_by_its_check(leak):
    frames = _frames("next_item")
    NEXT_ITEM_LEAKS[leak](frames)
    report = _audit("next_item", frames)
    check = report["checks"][leak]
    assert not report["passed"] and check["count"] >= 1 and check["example"] is not None


def test_the_audit_names_the_first_offending_sample():
    frames = _frames("next_item")
    _ni_label_off_target(frames)
    with pytest.raises(audit.ProtocolAuditError,
                       match=r"^protocol audit failed: target_once: 1 of \d+ samples, e.g. sample_id 1 \(valid\)$"):
        audit.require_passed({"protocol": _audit("next_item", frames)})


def test_past_the_sampling_cap_a_leak_in_the_subset_is_still_found(monkeypatch):
    monkeypatch.setattr(audit, "MAX_LISTS_CHECKED", 4)
    frames = _frames("next_item")
    for k in range(len(frames["train"])):  # every training history leaks: any subset holds a leak
        row = frames["train"].iloc[k]
        _set(frames["train"], k, history=[*row.history, row["item"]])
    check = _audit("next_item", frames)["checks"]["history_before_target"]
    assert min(len(frames[s]) for s in protocols.SPLITS) > 4
    assert check["count"] == 4 and check["checked"] == 3 * 4  # 4 samples of each split, the 4 of train leak


def test_the_candidate_position_test_sees_a_biased_order():
    frames = _frames("next_item")
    fair = _audit("next_item", frames)["candidate_position"]["test"]
    assert sum(fair["counts"]) == len(frames["test"]) and fair["p_value"] is not None
    data = canonical.load("movielens-100k")
    params = data.card.protocols["next_item"]
    built = {s: protocols._frame(c) for s, c in protocols.build_next_item(data, params).items()}
    uniform = audit.audit_protocol("next_item", built, data.interactions, data.catalog.n_items, params)
    for split in ("valid", "test"):  # a seeded shuffle: no evidence against uniform positions
        assert uniform["candidate_position"][split]["p_value"] > 0.01
    first = built["test"].copy()  # the target always first: what an unshuffled candidate list gives
    first["candidates"] = [np.concatenate([[t], np.delete(c, lab)]) for t, c, lab in
                           zip(first.item, first.candidates, first.label)]
    first["label"] = 0
    biased = audit.audit_protocol("next_item", {**built, "test": first}, data.interactions, data.catalog.n_items,
                                  params)
    assert biased["passed"]  # informational: the order is reported, not failed
    assert biased["candidate_position"]["test"]["p_value"] < 1e-6


# ------------------------------------------------------------------ few-shot subsets

def _subsets(proto: protocols.FrozenProtocol, shots=(2, 4)) -> dict:
    return {k: proto.few_shot(k, seed=1) for k in shots}


def test_the_protocols_few_shot_subsets_pass():
    proto = protocols.build(DATA, "next_item")
    report = audit.audit_few_shot(_subsets(proto), proto.valid, proto.test)
    assert report["passed"] and set(report["checks"]) == {"few_shot_nested", "few_shot_disjoint"}


def test_subsets_that_are_not_nested_fail():
    proto = protocols.build(DATA, "ctr")
    subsets = {2: proto.few_shot(2, seed=1), 4: proto.few_shot(4, seed=2)}
    if set(subsets[2].sample_id) <= set(subsets[4].sample_id):
        subsets[4] = proto.train[~proto.train.sample_id.isin(subsets[2].sample_id)].head(4)
    assert audit.audit_few_shot(subsets, proto.valid, proto.test)["checks"]["few_shot_nested"]["count"] >= 1


def test_a_subset_holding_a_test_interaction_fails():
    proto = protocols.build(DATA, "next_item")
    subsets = _subsets(proto)
    subsets[4] = pd.concat([subsets[4], proto.test.iloc[[0]]], ignore_index=True)
    report = audit.audit_few_shot(subsets, proto.valid, proto.test)
    assert report["checks"]["few_shot_disjoint"]["count"] == 1 and not report["passed"]


# ------------------------------------------------------------------ a cell on a leaking protocol

def _pop_suite():
    from benchmarks import suite as suites

    raw = {"name": "audit-check", "version": 1, "description": "", "methods": ["pop"],
           "datasets": [{"name": "movielens-100k", "tiny": True, "protocols": ["next_item"]}],
           "budget": {"latency_samples": 1, "warmup": 0}}
    return suites.parse(raw, "test_audit")


def test_a_cell_on_a_leaking_protocol_fails_with_one_line_and_keeps_the_audit(tmp_path, monkeypatch):
    from benchmarks import suite as suites
    from benchmarks.execution.cell import run_cell

    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path / "cache"))
    clean = protocols.BUILDERS["next_item"]

    def leaking(data, params):  # every test history ends with its own target
        splits = clean(data, params)
        test = dict(splits["test"])
        rows = [np.append(h, t) for h, t in zip(test["history"].arrays(), test["item"])]
        length = np.array([len(r) for r in rows], dtype=np.int64)
        test["history"] = protocols._Windows(np.concatenate(rows), np.cumsum(length), length, int(length.max()))
        return {**splits, "test": test}

    monkeypatch.setitem(protocols.BUILDERS, "next_item", leaking)
    suite = _pop_suite()
    (tmp_path / "work").mkdir()
    (cell,) = suites.cells(suite)
    record = run_cell(suite, cell, tmp_path, "audit")
    assert record.status == "failed" and record.error["type"] == "ProtocolAuditError"
    assert record.error["message"].startswith("protocol audit failed: history_before_target: ")
    assert "\n" not in record.error["message"] and "sample_id 0 (test)" in record.error["message"]
    assert record.audit["passed"] is False and record.audit["protocol"]["checks"]["history_before_target"]["count"]
    assert not record.metrics


def test_a_cell_records_its_protocol_and_few_shot_audit(tmp_path, monkeypatch):
    from benchmarks.execution import cell as cells
    from benchmarks.suite import Cell

    monkeypatch.setenv("LLMREC_BENCH_CACHE", str(tmp_path / "cache"))
    proto = protocols.load(canonical.load("movielens-100k", tiny=True), "next_item")
    report = cells._audit(proto, Cell("movielens-100k", "next_item", "lora-seq", 0, 2), (2, 8))
    assert report["passed"] and report["protocol"] == proto.info.audit
    assert report["few_shot"]["shots"] == [2, 8] and report["few_shot"]["checks"]["few_shot_nested"]["checked"] == 10
