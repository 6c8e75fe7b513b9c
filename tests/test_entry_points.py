"""A method added from outside the repository, through the ``llmrec_bench.methods`` entry points.

A package installed at run time (a module plus a dist-info folder on PYTHONPATH, see
``conftest.plugin_env``) shows in ``--list``, runs in a suite, and is tested by the conformance suite
with no other change: its good method passes every check, and each broken one fails the check it
breaks. Its distribution is listed in the run's ``env.json``. A plugin that fails to import is
reported in one line and skipped: runs that do not name it go on, and one that does exits 2 naming
the distribution.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ROOT, only_run_dir, plugin_env, read_records

PLUGIN = '''
"""A contributor's method package, outside the repository."""
import numpy as np

from benchmarks.registry import register_method


def mean_rating_scores(task, samples, popularity):
    """ctr: the user's mean history rating mapped to [0, 1]; next_item: training popularity."""
    if task == "ctr":
        return np.array([(np.mean(r) - 1.0) / 4.0 for r in samples["history_ratings"]]).clip(0.0, 1.0)
    return popularity[np.stack(samples["candidates"].to_numpy())]


class MeanRatingBase:
    def __init__(self, config, ctx):
        self.task, self.popularity = "", None

    def fit(self, data):
        self.task = data.task
        self.popularity = np.bincount(data.train["item"], minlength=data.catalog.n_items).astype(float)

    def score(self, samples):
        return mean_rating_scores(self.task, samples, self.popularity)

    def parameter_counts(self):
        return None


@register_method("demo-mean-rating", tasks=("ctr", "next_item"), family="reference")
class MeanRating(MeanRatingBase):
    """Follows the contract."""


@register_method("demo-unseeded", tasks=("ctr", "next_item"), family="reference")
class Unseeded(MeanRatingBase):
    """Adds per-item noise drawn in fit from an unseeded generator: two runs with one seed differ
    (one run's scores still do not depend on the batching)."""

    def fit(self, data):
        super().fit(data)
        self.noise = np.random.default_rng().normal(0, 0.01, data.catalog.n_items)

    def score(self, samples):
        scores = mean_rating_scores(self.task, samples, self.popularity)
        items = samples["item"].to_numpy() if self.task == "ctr" else np.stack(samples["candidates"].to_numpy())
        return np.clip(scores + self.noise[items], 0.0, 1.0)


@register_method("demo-self-graded", tasks=("ctr", "next_item"), family="reference")
class SelfGraded(MeanRatingBase):
    """Computes a metric itself while fitting."""

    def fit(self, data):
        import importlib

        super().fit(data)
        importlib.import_module("benchmarks.metrics").accuracy(np.array([1, 0]), np.array([0.9, 0.2]))


@register_method("demo-wrong-shape", tasks=("ctr", "next_item"), family="reference")
class WrongShape(MeanRatingBase):
    """Returns one score too many per sample."""

    def score(self, samples):
        scores = mean_rating_scores(self.task, samples, self.popularity)
        return np.column_stack([scores, scores[:, :1] if scores.ndim == 2 else scores])
'''

ENTRY_POINTS = {"demo-mean-rating": "llmrec_demo_plugin:MeanRating",
                "demo-unseeded": "llmrec_demo_plugin:Unseeded",
                "demo-self-graded": "llmrec_demo_plugin:SelfGraded",
                "demo-wrong-shape": "llmrec_demo_plugin:WrongShape"}
CHECKS = ("test_scores_have_the_contract_shape_and_range", "test_labels_never_reach_the_method",
          "test_the_same_seed_gives_the_same_scores", "test_no_metric_is_computed_inside_the_method",
          "test_training_throughput_only_for_methods_that_train")
#: method -> the conformance checks it must fail (every other check must pass)
EXPECTED_FAILURES = {"demo-mean-rating": set(), "demo-unseeded": {"test_the_same_seed_gives_the_same_scores"},
                     "demo-self-graded": {"test_no_metric_is_computed_inside_the_method"},
                     "demo-wrong-shape": set(CHECKS)}  # its cells fail, so nothing can be checked


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return plugin_env(tmp_path_factory.mktemp("plugin"), "llmrec_demo_plugin", PLUGIN, ENTRY_POINTS)


def test_plugin_methods_show_in_list(env):
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--list"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0]: line.split()[1:] for line in out.split("methods:")[1].strip().splitlines()}
    for name in ENTRY_POINTS:
        assert listed[name] == ["reference", "tasks:", "ctr,", "next_item"]
    assert "pop" in listed  # the repository's own methods are still there


def test_plugin_method_runs_in_a_suite(env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "demo-mean-rating",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = read_records(only_run_dir(tmp_path))
    assert {(r["task"], r["method"], r["status"]) for r in recs} == {
        ("ctr", "demo-mean-rating", "ok"), ("next_item", "demo-mean-rating", "ok")}
    assert all(r["provenance"]["kind"] == "plugin" and r["provenance"]["distribution"] == "llmrec_demo_plugin"
               and r["provenance"]["version"] == "0.0.1" for r in recs)
    facts = json.loads((only_run_dir(tmp_path) / "env.json").read_text())
    assert facts["plugins"] == [{"name": "llmrec_demo_plugin", "version": "0.0.1"}]
    assert facts["plugin_problems"] == []


def test_conformance_suite_tests_plugin_methods_without_a_new_test(env, tmp_path):
    report = tmp_path / "conformance.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_conformance.py", "-k", "demo", "-q",
                           "-p", "no:cacheprovider", f"--junitxml={report}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    failed, passed = set(), set()
    for case in ET.parse(report).getroot().iter("testcase"):
        check, _, param = case.get("name").partition("[")
        method, task = param.rstrip("]").split("/")
        (failed if case.find("failure") is not None or case.find("error") is not None else passed).add(
            (check, method, task))
    expected_failed = {(check, method, task) for method, checks in EXPECTED_FAILURES.items()
                       for check in checks for task in ("ctr", "next_item")}
    everything = {(check, method, task) for check in CHECKS for method in ENTRY_POINTS for task in ("ctr", "next_item")}
    assert failed == expected_failed, proc.stdout[-4000:]
    assert passed == everything - expected_failed


BROKEN = '''
"""A plugin that cannot be imported on this machine."""
import llmrec_missing_dependency  # noqa: F401
'''
BROKEN_LINE = ("plugin llmrec_broken_plugin 0.0.1 (entry point 'demo-broken = llmrec_broken_plugin:Broken'): "
               "failed to import (ModuleNotFoundError: No module named 'llmrec_missing_dependency')")


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory):
    return plugin_env(tmp_path_factory.mktemp("broken"), "llmrec_broken_plugin", BROKEN,
                      {"demo-broken": "llmrec_broken_plugin:Broken"})


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_broken_plugin_is_reported_and_skipped_by_runs_that_do_not_use_it(broken_env):
    listed = cli(broken_env, "--list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    methods = listed.stdout.split("methods:")[1].split("broken plugins")[0]
    assert "pop" in methods and "demo-broken" not in methods
    assert f"broken plugins (skipped):\n  {BROKEN_LINE}" in listed.stdout
    dry = cli(broken_env, "--suite", "ci", "--methods", "pop", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.strip().endswith("2 cells")
    assert dry.stderr.splitlines() == [f"warning: {BROKEN_LINE}; skipped"]  # one line, once


def test_a_run_that_names_a_broken_plugin_method_fails_naming_the_distribution(broken_env):
    proc = cli(broken_env, "--suite", "ci", "--methods", "demo-broken", "--dry-run")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith("error: ")
    assert proc.stderr.splitlines()[-1].endswith(f"method 'demo-broken' is unavailable: {BROKEN_LINE}")
    assert "Traceback" not in proc.stderr
