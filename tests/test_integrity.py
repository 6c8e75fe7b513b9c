"""Integrity against contributed methods: a method cannot read the answers, cannot answer the timed
calls differently from the scored ones, and meets one rule for its scores.

The snooping method is a real plugin (a module plus dist-info on PYTHONPATH), run through the CLI like
any contributed method: it tries every route to the test labels that the tree offers and prints what
each gave.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks import metrics
from benchmarks.execution import evaluation
from tests.conftest import ROOT, only_run_dir, plugin_env, read_records

SNOOP = '''
import gc, glob, json, os, subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.registry import register_method


def attempt(route, read):
    try:
        got = read()
    except OSError as err:
        print(f"ROUTE {route}: denied ({err.strerror})", flush=True)
        return None
    except subprocess.CalledProcessError as err:
        print(f"ROUTE {route}: denied ({err.stderr.decode().strip()})", flush=True)
        return None
    print(f"ROUTE {route}: {'nothing' if not got else 'READ'}", flush=True)
    return got


@register_method("snoop", tasks=("ctr",), family="reference", trains=False)
class Snoop:
    def __init__(self, config, ctx):
        self.ctx = ctx

    def fit(self, data):
        self.snooped = False

    def score(self, samples):
        if len(samples) > 1 and not self.snooped:  # once, at the first batched call
            self.snooped = True
            self.snoop(samples)
        return np.full(len(samples), 0.5)

    def parameter_counts(self):
        return None

    def snoop(self, samples):
        cache = Path(self.ctx.cache_dir)
        run_dir = Path(self.ctx.workdir).parent.parent
        root = cache.parent
        attempt("cache view", lambda: [p for p in cache.rglob("*.parquet")])
        attempt("cache protocols", lambda: [pd.read_parquet(p) for p in glob.glob(f"{root}/protocols/*/test.parquet")]
                or open(next(root.glob("protocols/*/meta.json"))).read())
        attempt("cache tables", lambda: [pd.read_parquet(p) for p in glob.glob(f"{root}/tables/*/*.parquet")]
                or open(next(root.glob("tables/*/meta.json"))).read())
        attempt("environment", lambda: [os.environ[k] for k in os.environ if k.startswith("LLMREC_BENCH_CACHE")])
        attempt("run folder records", lambda: open(run_dir / "records.jsonl").read())
        attempt("run folder suite", lambda: open(run_dir / "suite.json").read())
        attempt("run folder scores", lambda: [np.load(p)["label"] for p in (run_dir / "scores").glob("*.npz")]
                or open(next((run_dir / "scores").iterdir()), "rb").read())
        import recbole
        raw = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
        attempt("raw data", lambda: open(raw).read(100))
        attempt("own memory", lambda: open(f"/proc/{os.getpid()}/mem", "rb").read(1))
        attempt("a child process", lambda: subprocess.run(
            ["cat", str(raw)], capture_output=True, check=True).stdout)
        keys = set(zip(samples["user"], samples["item"], samples["timestamp"]))
        found = [f for f in gc.get_objects() if isinstance(f, pd.DataFrame) and "label" in f.columns
                 and keys & set(zip(f["user"], f["item"], f["timestamp"]))]
        print(f"ROUTE interpreter heap: {'READ' if found else 'nothing'}", flush=True)
'''


def test_a_method_can_reach_no_test_label(tmp_path):
    env = plugin_env(tmp_path, "llmrec_snoop", SNOOP, {"snoop": "llmrec_snoop:Snoop"})
    # pop's ctr cell runs first: its record and scores (with labels) lie in the run folder when snoop runs
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "pop,snoop",
                           "--out", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "runs")
    record = next(r for r in read_records(run_dir) if r["method"] == "snoop")
    assert record["isolation"]["mechanism"] == "landlock"
    log = (run_dir / "logs" / "movielens-100k__ctr__snoop__seed-1__shots-full.log").read_text()
    routes = dict(line[len("ROUTE "):].split(": ", 1) for line in log.splitlines() if line.startswith("ROUTE "))
    assert len(routes) == 11, log[-3000:]
    opened = {route: result for route, result in routes.items() if result == "READ"}
    assert not opened, f"routes that reached answers: {opened}"
    assert all(result.startswith("denied") for route, result in routes.items()
               if route in ("cache protocols", "cache tables", "run folder records", "run folder scores", "raw data",
                            "own memory", "a child process")), routes


def test_the_confined_process_still_reads_everything_else(tmp_path):
    """The sandbox denies only what it lists: a sibling of a denied folder stays readable."""
    code = f'''
import os
from pathlib import Path
from benchmarks.execution import sandbox
base = Path({str(tmp_path)!r})
(base / "secret").mkdir(); (base / "secret" / "labels").write_text("1")
(base / "open").mkdir(); (base / "open" / "data").write_text("2")
info = sandbox.confine([base / "secret"])
assert info["mechanism"] == "landlock", info
assert (base / "open" / "data").read_text() == "2" and os.listdir(base / "secret") == ["labels"]
try:
    (base / "secret" / "labels").read_text()
except PermissionError:
    print("denied")
'''
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "denied", proc.stderr[-2000:]


def test_a_denied_folder_stays_denied_when_a_folder_inside_it_is_denied_too(tmp_path):
    """A card's ``raw:<name>/...`` source folder lies inside the cache's denied ``raw/``."""
    code = f'''
from pathlib import Path
from benchmarks.execution import sandbox
raw = Path({str(tmp_path)!r}) / "raw"
(raw / "mine").mkdir(parents=True); (raw / "other.zip").write_text("labels")
sandbox.confine([raw, raw / "mine"])
try:
    (raw / "other.zip").read_text()
except PermissionError:
    print("denied")
'''
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "denied", proc.stderr[-2000:]


def _scores(n=6):
    return np.linspace(0.1, 0.9, n)


def test_batch_invariance_catches_a_method_that_answers_one_sample_with_a_constant():
    scores = _scores()
    faked = np.zeros(3)  # what a method returning 0.0 for single samples gave the latency calls
    with pytest.raises(evaluation.BatchInvarianceError, match=r"sample_id \[0, 1, 2\]"):
        evaluation.check_batch_invariance(scores, faked, np.arange(6), "conventional")


def test_batch_invariance_accepts_differences_within_the_family_tolerance():
    scores = _scores()
    close = scores[:3] * (1 + evaluation.BATCH_TOLERANCE["llm"] / 4)
    checked = evaluation.check_batch_invariance(scores, close, np.arange(6), "llm")
    assert checked["samples"] == 3 and 0 < checked["max_abs_diff"] < evaluation.BATCH_TOLERANCE["llm"]
    with pytest.raises(evaluation.BatchInvarianceError):
        evaluation.check_batch_invariance(scores, close, np.arange(6), "reference")


def test_batch_invariance_of_a_bf16_llm_is_checked_at_the_bf16_tolerance():
    scores = _scores()
    close = scores[:3] + evaluation.BATCH_TOLERANCE["llm-bfloat16"] / 2  # beyond 5e-3 x (1 + 0.9), within 3e-2
    with pytest.raises(evaluation.BatchInvarianceError):
        evaluation.check_batch_invariance(scores, close, np.arange(6), "llm", "float32")
    assert evaluation.check_batch_invariance(scores, close, np.arange(6), "llm", "bfloat16")["tolerance"] == \
        evaluation.BATCH_TOLERANCE["llm-bfloat16"]
    with pytest.raises(evaluation.BatchInvarianceError):  # a constant stays a constant, in any dtype
        evaluation.check_batch_invariance(scores, np.zeros(3), np.arange(6), "llm", "bfloat16")


def test_batch_invariance_treats_matching_nan_rows_as_equal_and_one_sided_nan_as_a_difference():
    scores = np.array([[np.nan, np.nan], [0.2, 0.8]])
    assert evaluation.check_batch_invariance(scores, scores.copy(), np.arange(2), "llm")["max_abs_diff"] == 0.0
    with pytest.raises(evaluation.BatchInvarianceError, match=r"sample_id \[0\]"):
        evaluation.check_batch_invariance(scores, np.array([[0.5, 0.5], [0.2, 0.8]]), np.arange(2), "llm")


def test_a_constant_answer_to_the_timed_calls_fails_the_cell(tmp_path):
    """End to end: a plugin that answers batch-1 calls with 0.0 reports a fine latency and fails."""
    source = '''
import numpy as np
from benchmarks.registry import register_method

@register_method("fast-liar", tasks=("ctr",), family="reference", trains=False)
class FastLiar:
    def __init__(self, config, ctx):
        pass
    def fit(self, data):
        pass
    def score(self, samples):
        if len(samples) == 1:
            return np.zeros(1)
        return np.linspace(0.2, 0.8, len(samples))
    def parameter_counts(self):
        return None
'''
    env = plugin_env(tmp_path, "llmrec_liar", source, {"fast-liar": "llmrec_liar:FastLiar"})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "fast-liar",
                           "--out", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    (record,) = read_records(only_run_dir(tmp_path / "runs"))
    assert record["status"] == "failed" and record["error"]["type"] == "BatchInvarianceError"
    assert "one-by-one" in record["error"]["message"] and not record["metrics"]


@pytest.mark.parametrize("scores, ok", [
    (np.array([[0.1, 0.2], [np.nan, np.nan]]), True),      # an answer that matched no candidate
    (np.array([[0.1, np.nan], [0.3, 0.4]]), False),        # a partial-NaN row
    (np.array([[0.1, 0.2], [0.3, np.inf]]), False),
])
def test_one_rule_for_next_item_rows(scores, ok):
    if ok:
        assert metrics.check_scores("next_item", scores, 2, 2).shape == (2, 2)
    else:
        with pytest.raises(ValueError):
            metrics.check_scores("next_item", scores, 2, 2)


def test_a_confined_method_can_use_library_caches_made_on_a_fresh_home(tmp_path):
    """On a new machine ~/.cache/huggingface does not exist yet, and ~/.cache holds the benchmark's
    cache: a folder the method's libraries create there after confinement would be unreadable."""
    source = '''
import os
from pathlib import Path
import numpy as np
from benchmarks.registry import register_method

@register_method("hf-cache-user", tasks=("ctr",), family="reference", trains=False)
class HfCacheUser:
    def __init__(self, config, ctx):
        pass
    def fit(self, data):
        path = Path(os.environ["HOME"]) / ".cache" / "huggingface" / "datasets" / "lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        assert path.read_text() == "x"
    def score(self, samples):
        return np.full(len(samples), 0.5)
    def parameter_counts(self):
        return None
'''
    env = plugin_env(tmp_path, "llmrec_hf_cache", source, {"hf-cache-user": "llmrec_hf_cache:HfCacheUser"})
    home = tmp_path / "home"
    home.mkdir()
    env = {**env, "HOME": str(home)}
    env.pop("LLMREC_BENCH_CACHE", None)
    env.pop("HF_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "ci", "--methods", "hf-cache-user",
                           "--out", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = read_records(only_run_dir(tmp_path / "runs"))
    assert record["status"] == "ok" and record["isolation"]["mechanism"] == "landlock"
    assert (home / ".cache" / "llmrec-bench" / "protocols").is_dir()  # the cache is beside it, denied
