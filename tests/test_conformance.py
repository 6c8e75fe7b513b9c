"""Conformance: every registered method honours the method contract (benchmarks/contract.py).

The methods come from ``registry.discover()`` (decorated classes in methods/ and baselines/ plus the
``llmrec_bench.methods`` entry points), so a new method is tested here without writing a test.

Each method runs on every task it declares through the harness's own ``run_cell``, in this process,
on the ``ci`` shape: the ci suite's dataset (tiny subset), budget and seed, and the ci suite's
settings for the method where it lists it. A method it does not list trains on a frozen few-shot
subset and is scored on fewer samples (``UNLISTED``), so that slow models stay fast. A spy between
the harness and the method records what the method is handed and watches what it calls. The checks:

* scores: one row per sample; ctr probabilities in [0, 1]; next_item one finite score per candidate,
  or a whole row of NaN (an answer that matched no candidate). Checked here on the scores ``score``
  returned, independently of the harness's own check.
* labels: no answer column of the task (``contract.ANSWER_COLUMNS``) reaches ``score``, nor ``fit`` in ``valid``.
* seed: the same seed gives the same scores. A method the ci suite lists is compared with its cell
  in the session's ci run (another process); any other method is run twice here.
* metrics: while the method's code runs, no function of a metric module runs (``benchmarks.metrics``,
  ``sklearn.metrics`` except its ``pairwise`` similarities, ``torchmetrics``, ``recbole.evaluator``),
  except inside ``FitData.validate``. This watches every Python call (``sys.setprofile``), so it
  holds however the module was reached (importing one is not a call); it sees the code paths the
  ci shape exercises, on the thread that calls ``fit`` and ``score``. Reading metric metadata
  (``METRICS[name].higher_is_better``) calls nothing and is allowed.

Methods of the ``llm`` family that the ci suite does not list run on a tiny random Llama
(``benchmarks/perf/tiny_llama.py``): the contract does not depend on the backbone, and the real SmolLM2 runs in
the ci suite (tallrec) and in the methods' own tests. They are marked slow.
"""
from __future__ import annotations

import copy
import functools
import sys
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import metrics, records, registry
from benchmarks import suite as suites
from benchmarks.contract import ANSWER_COLUMNS
from benchmarks.execution.cell import run_cell
from tests.conftest import read_records

METRIC_MODULES = ("benchmarks.metrics", "sklearn.metrics", "torchmetrics", "recbole.evaluator")
NOT_METRICS = ("sklearn.metrics.pairwise",)
#: family -> relative tolerance on scores between two runs with the same seed (see the seed check);
#: a family not listed (reference: exact arithmetic) must be bitwise equal
SCORE_RTOL = {"llm": 1e-3, "conventional": 1e-4}
_SMALL = {"shots": 256, "budget": {"eval_cap": 16, "valid_cap": 16, "latency_samples": 1, "warmup": 1}}
#: family -> few-shot training size and budget overrides for a method the ci suite does not list
UNLISTED = {"reference": _SMALL, "conventional": _SMALL,
            "llm": {"shots": 8, "budget": {"eval_cap": 4, "valid_cap": 8, "latency_samples": 1, "warmup": 0}}}


def is_metric_module(module: str) -> bool:
    inside = any(module == m or module.startswith(m + ".") for m in METRIC_MODULES)
    return inside and not any(module == m or module.startswith(m + ".") for m in NOT_METRICS)


def importing(frame) -> bool:
    """Whether ``frame`` runs under the import machinery (a module's body, not a call of its code)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@dataclass
class SpyLog:
    """What the spied method was handed and what it called."""

    score_calls: list[tuple[int, tuple, list[str]]] = field(default_factory=list)  # (rows in, shape out, columns)
    valid_columns: list[str] = field(default_factory=list)
    metric_calls: set[str] = field(default_factory=set)


class MetricWatch:
    """A ``sys.setprofile`` hook that notes calls into metric modules while armed."""

    def __init__(self, log: SpyLog):
        self.log, self.armed = log, False

    def __call__(self, frame, event, arg) -> None:
        if self.armed and event == "call":
            module = frame.f_globals.get("__name__", "")
            if is_metric_module(module) and not importing(frame):
                self.log.metric_calls.add(f"{module}.{frame.f_code.co_name}")

    def watching(self, call, *args):
        """``call(*args)`` with the hook armed (re-entrant: validate disarms it inside fit)."""
        previous, self.armed = self.armed, True
        outer = sys.getprofile()
        sys.setprofile(self)
        try:
            return call(*args)
        finally:
            self.armed = previous
            sys.setprofile(outer)

    def paused(self, call, *args):
        previous, self.armed = self.armed, False
        try:
            return call(*args)
        finally:
            self.armed = previous


def spied(cls: type, log: SpyLog) -> type:
    """A class the harness builds like ``cls``; its instances forward to a ``cls`` instance."""
    watch = MetricWatch(log)

    class Spied:
        Config = getattr(cls, "Config", None)

        def __init__(self, config, ctx):
            self.inner = cls(config, ctx)

        def fit(self, data):
            log.valid_columns = list(data.valid.columns)
            allowed = replace(data, validate=lambda scores: watch.paused(data.validate, scores))
            watch.watching(self.inner.fit, allowed)

        def score(self, samples):
            out = np.asarray(watch.watching(self.inner.score, samples))
            log.score_calls.append((len(samples), out.shape, list(samples.columns)))
            return out

        def parameter_counts(self):
            return self.inner.parameter_counts()

        def __getattr__(self, name):  # backbone_info and anything else the harness asks for
            return getattr(self.inner, name)

    return Spied


# ------------------------------------------------------------------------------------------ runs


@functools.cache
def _tiny_backbone() -> Path:
    from benchmarks.perf.tiny_llama import tiny_backbone_dir

    return tiny_backbone_dir(Path(tempfile.mkdtemp(prefix="conformance-llm-")))


def ci_raw() -> dict:
    raw = yaml.safe_load((suites.SUITES_DIR / "ci.yaml").read_text())
    methods = raw.get("methods") or {}
    raw["methods"] = {m: {} for m in methods} if isinstance(methods, list) else methods
    return raw


def conformance_suite(name: str, family: str) -> tuple[suites.Suite, bool]:
    """(the ci suite reduced to ``name``, whether the ci suite lists ``name``)."""
    raw = ci_raw()
    listed = name in raw["methods"]
    spec = copy.deepcopy(raw["methods"].get(name) or {})
    if not listed:
        spec["shots"] = [UNLISTED[family]["shots"]]
        raw["budget"] = {**raw.get("budget", {}), **UNLISTED[family]["budget"]}
        if family == "llm":  # the contract, not the model's quality, is under test: a tiny random Llama
            raw["llm"] = str(_tiny_backbone())
    raw["methods"] = {name: spec}
    return suites.parse(raw, f"ci.yaml reduced to {name}"), listed


@dataclass
class Observed:
    key: str
    record: dict
    scores: np.ndarray | None
    log: SpyLog
    listed_in_ci: bool


def observe(name: str, task: str, run_dir: Path) -> Observed:
    """Run the first ci-shaped cell of (name, task) through ``run_cell`` with the method spied."""
    entry = registry.discover()[name]
    suite, listed = conformance_suite(name, entry.family)
    cell = next(c for c in suites.cells(suite) if c.task == task)
    log = SpyLog()
    original = registry.MethodEntry.load_class

    def load_class(self):
        cls = original(self)
        return spied(cls, log) if self.name == name else cls

    (run_dir / "work").mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry.MethodEntry, "load_class", load_class)
        record = run_cell(suite, cell, run_dir, "conformance").as_dict()
    scores = records.load_scores(run_dir, cell.key)["score"] if record["status"] == "ok" else None
    return Observed(cell.key, record, scores, log, listed)


def method_cases() -> list:
    return [pytest.param(name, task, id=f"{name}/{task}",
                         marks=[pytest.mark.slow] if entry.family == "llm" else [])
            for name, entry in sorted(registry.discover().items()) for task in entry.tasks]


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """``observed(name, task)``: the spied run of that method, made once per module."""
    cache: dict[tuple[str, str], Observed] = {}

    def get(name: str, task: str) -> Observed:
        if (name, task) not in cache:
            cache[name, task] = observe(name, task, tmp_path_factory.mktemp(f"{name}-{task}"))
        return cache[name, task]

    return get


def ran_ok(obs: Observed) -> Observed:
    error = obs.record.get("error") or {}
    assert obs.record["status"] == "ok", f"{obs.key} failed: {error.get('type')}: {error.get('message')}\n" \
                                         f"{error.get('traceback', '')}"
    return obs


# ---------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize("name, task", method_cases())
def test_scores_have_the_contract_shape_and_range(observed, name, task):
    obs = ran_ok(observed(name, task))
    assert obs.log.score_calls, "score was never called"
    for rows, shape, _ in obs.log.score_calls:
        assert shape[:1] == (rows,), f"score returned {shape} for {rows} samples"
    # the rule every cell applies (metrics.check_scores): ctr probabilities without NaN; next_item rows
    # all finite, or all NaN for an answer that matched no candidate
    metrics.check_scores(task, obs.scores, obs.record["n_eval"], obs.record["protocol_params"].get("n_candidates"))


@pytest.mark.parametrize("name, task", method_cases())
def test_labels_never_reach_the_method(observed, name, task):
    obs = ran_ok(observed(name, task))
    answers = set(ANSWER_COLUMNS[task])  # next_item: the target item is the answer too
    leaked = {col for _, _, columns in obs.log.score_calls for col in columns} & answers
    assert not leaked, f"score() was handed label columns {sorted(leaked)}"
    leaked = set(obs.log.valid_columns) & answers
    assert not leaked, f"fit() got valid samples with label columns {sorted(leaked)}"


@pytest.mark.parametrize("name, task", method_cases())
def test_the_same_seed_gives_the_same_scores(observed, name, task, request, tmp_path):
    obs = ran_ok(observed(name, task))
    if obs.listed_in_ci:
        ci_dir = request.getfixturevalue("ci_run")[0]
        again = records.load_scores(ci_dir, obs.key)["score"]
        other = next(r for r in read_records(ci_dir) if r["cell"] == obs.key)
        where = f"the session's ci run ({ci_dir})"
    else:
        second = ran_ok(observe(name, task, tmp_path))
        again, other = second.scores, second.record
        where = "a second run in this process"
    # Scores of trained models drift between processes on CPU, rarely and so far only against the
    # session's first ci run: a next_item log-likelihood (ilora's ci scores lie in [-26, -2.7]) moved by
    # 2.5e-4 and by 2.7e-4 in two full test runs, DeepFM's probabilities by up to 1.2e-7 (1.8e-7
    # relative) in a third; in the other runs every score was bitwise equal. Another seed moves
    # ilora's ci scores by 41% and DeepFM's by 16% relative (medians), so SCORE_RTOL still catches a
    # seed bug. README, "Determinism".
    bitwise = np.array_equal(obs.scores, again, equal_nan=True)
    rtol = SCORE_RTOL.get(obs.record["family"])
    same = bitwise or (rtol is not None and obs.scores.shape == again.shape
                       and np.allclose(obs.scores, again, rtol=rtol, atol=1e-6, equal_nan=True))
    found = f"{difference(obs.scores, again)}; {weights_compared(obs.record, other)}"
    assert same, f"{obs.key}: scores differ from {where} with the same seed: {found}"
    if not bitwise:  # within tolerance, but the drift is still unexplained: leave a trace in the log
        warnings.warn(f"{obs.key}: scores drifted against {where}: {found}", stacklevel=1)


def weights_compared(a: dict, b: dict) -> str:
    """Whether two records' fitted weights are equal to the bit (``parameters.sha256``)."""
    digests = [(r.get("parameters") or {}).get("sha256") for r in (a, b)]
    if digests[0] is None:
        return "no trained weights"
    return "trained weights identical: the drift arose in scoring" if digests[0] == digests[1] \
        else "trained weights differ: the drift arose in training"


def difference(a: np.ndarray, b: np.ndarray) -> str:
    """Where and how much two score arrays differ, for a person chasing the drift."""
    if a.shape != b.shape:
        return f"shapes differ ({a.shape} against {b.shape})"
    differs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    diff = np.where(differs, np.nan_to_num(np.abs(a - b), nan=np.inf), 0.0)  # NaN against a number: inf
    at = np.unravel_index(np.argmax(diff), diff.shape)
    rows = np.unique(np.nonzero(differs)[0]).size
    return (f"{int(differs.sum())} of {a.size} scores in {rows} of {len(a)} rows; max |diff| {diff[at]:.3g} "
            f"(relative {diff[at] / max(abs(b[at]), 1e-12):.3g}) at {tuple(int(i) for i in at)}, value {b[at]:.6g}")


@pytest.mark.parametrize("name, task", method_cases())
def test_training_throughput_only_for_methods_that_train(observed, name, task):
    obs = ran_ok(observed(name, task))
    timing = obs.record["timing"]
    if registry.discover()[name].trains:
        assert obs.record["n_train"] > 0 and timing["train_samples_per_s"] > 0
    else:  # a zero-shot fit is set-up: no training samples, no samples/s
        assert obs.record["n_train"] == 0 and timing["train_samples_per_s"] is None


@pytest.mark.parametrize("name, task", method_cases())
def test_no_metric_is_computed_inside_the_method(observed, name, task):
    obs = ran_ok(observed(name, task))
    assert not obs.log.metric_calls, \
        f"the method called metric code outside FitData.validate: {sorted(obs.log.metric_calls)}"


# ------------------------------------------------------------------------- the checks can fail


def test_a_harness_that_leaks_labels_is_caught(monkeypatch, tmp_path):
    """If ``run_cell`` stopped removing labels, the label check above would see them."""
    import benchmarks.execution.cell

    monkeypatch.setattr(benchmarks.execution.cell, "without_labels", lambda frame: frame)
    obs = ran_ok(observe("pop", "ctr", tmp_path))
    assert {"label", "rating"} <= {col for _, _, columns in obs.log.score_calls for col in columns}
    assert "label" in obs.log.valid_columns


def test_metric_watch_sees_calls_through_any_path_but_not_inside_validate():
    import importlib

    log = SpyLog()
    watch = MetricWatch(log)
    auc = importlib.import_module("benchmarks.metrics").auc
    labels, scores = np.array([0, 1, 1]), np.array([0.1, 0.8, 0.3])
    watch.watching(lambda: watch.paused(auc, labels, scores))
    assert not log.metric_calls
    watch.watching(auc, labels, scores)
    assert "benchmarks.metrics.auc" in log.metric_calls
    assert sys.getprofile() is not watch
    assert is_metric_module("sklearn.metrics._ranking") and not is_metric_module("sklearn.metrics.pairwise")
