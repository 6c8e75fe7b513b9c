"""Per-method settings of a suite: datasets, per-dataset overrides, own backbone, and their sources
(what ``paper.yaml`` uses to state each author's setting and where it comes from)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from benchmarks import suite as suite_schema
from benchmarks.registry import ROOT, get_entry, resolve_config
from benchmarks.run import apply_overrides, build_parser


def _raw(**tallrec) -> dict:
    return {"name": "s", "version": 1, "description": "", "datasets": ["movielens-100k", "movielens-1m"],
            "methods": {"pop": {}, "tallrec": {"shots": [16], **tallrec}}, "x-notes": {"anchor": 1}}


def test_a_method_runs_only_on_its_datasets_with_its_per_dataset_overrides():
    suite = suite_schema.parse(_raw(datasets=["movielens-1m"], config={"learning_rate": 1e-3},
                                    per_dataset={"movielens-1m": {"learning_rate": 5e-4, "epochs": 3}},
                                    sources={"learning_rate": "a.sh:1", "learning_rate@movielens-1m": "b.sh:2"}),
                               "test")
    cells = suite_schema.cells(suite)
    assert {c.dataset for c in cells if c.method == "tallrec"} == {"movielens-1m"}
    assert {c.dataset for c in cells if c.method == "pop"} == {"movielens-100k", "movielens-1m"}
    spec = suite.methods["tallrec"]
    assert spec.config_for("movielens-1m") == {"learning_rate": 5e-4, "epochs": 3}
    assert spec.config_for("movielens-100k") == {"learning_rate": 1e-3}
    configs = suite_schema.resolve_configs(suite)
    assert configs["tallrec"][1]["learning_rate"] == 1e-3
    on_1m = configs["tallrec@movielens-1m"]
    assert on_1m[1]["learning_rate"] == 5e-4 and on_1m[1]["epochs"] == 3
    assert configs["tallrec"][0] != on_1m[0]
    lines = "\n".join(suite_schema.settings_lines(suite, configs))
    assert "learning_rate = 0.001    # a.sh:1" in lines
    assert f"learning_rate@movielens-1m (config {on_1m[0][:10]}) = 0.0005    # b.sh:2" in lines


@pytest.mark.parametrize("tallrec, fragment", [
    ({"datasets": ["movielens-2m"]}, "movielens-2m"),
    ({"per_dataset": {"movielens-1m": 3}}, "per_dataset.movielens-1m: expected a mapping"),
    ({"per_dataset": {"movielens-1m": {"learning_rte": 1.0}}}, "learning_rte"),
])
def test_a_wrong_per_method_setting_fails_before_any_cell(tallrec, fragment):
    with pytest.raises(suite_schema.SuiteError, match=fragment):
        suite_schema.resolve_configs(suite_schema.parse(_raw(**tallrec), "test"))


@pytest.mark.parametrize("sources", [{"learning_rte": "x"}, {"learning_rate@movielens-1m": "x"}])
def test_a_source_must_name_a_setting(sources):
    suite = suite_schema.parse(_raw(sources=sources), "test")
    with pytest.raises(suite_schema.SuiteError, match="names no setting of tallrec"):
        suite_schema.resolve_configs(suite)


def test_the_llm_flag_names_every_cells_backbone_a_methods_own_included():
    raw = _raw(llm="org/own-backbone")
    assert suite_schema.parse(apply_overrides(raw, build_parser().parse_args([])), "t").methods["tallrec"].llm \
        == "org/own-backbone"
    overridden = suite_schema.parse(apply_overrides(raw, build_parser().parse_args(["--llm", "org/other"])), "t")
    assert overridden.llm == "org/other" and overridden.methods["tallrec"].llm == ""


def test_paper_gives_every_llm_setting_a_source_and_the_authors_values():
    """paper.yaml's promise: each setting it gives an LLM method names where the value comes from."""
    suite = suite_schema.load_suite("paper")
    for name, spec in suite.methods.items():
        if get_entry(name).family != "llm":
            continue
        given = {*spec.config, "llm"} | {f"{k}@{d}" for d, values in spec.per_dataset.items() for k in values}
        assert "commit" in spec.sources, name
        assert given - set(spec.sources) == set(), name
    configs = suite_schema.resolve_configs(suite)
    reclora = configs["reclora"][1]
    assert (reclora["meta_loras"], reclora["batch_size"], reclora["learning_rate"], reclora["history_pool"]) == \
        (16, 256, 1e-3, "full")
    ilora = configs["ilora"][1]
    assert (ilora["optimizer"], ilora["schedule"], ilora["learning_rate"], ilora["max_grad_norm"]) == \
        ("adam", "cosine", 8e-4, 0.0)
    assert configs["ilora@steam"][1]["learning_rate"] == 5e-4
    assert suite.methods["ilora"].llm == "meta-llama/Llama-2-7b-hf"
    default = resolve_config(get_entry("ilora"))
    assert default.learning_rate != ilora["learning_rate"], "paper must not run the CPU defaults"


def test_the_dry_run_prints_the_settings_with_their_sources():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "paper", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "reclora: config " in out and "backbone lmsys/vicuna-7b-v1.5" in out
    assert "meta_loras = 16    # help_lorec.txt:56" in out
    raw = yaml.safe_load((suite_schema.SUITES_DIR / "paper.yaml").read_text())
    assert raw["methods"]["reclora"]["sources"]["meta_loras"] in out


def test_a_method_runs_on_its_own_seeds_and_the_seeds_flag_names_every_cells():
    raw = {**_raw(seeds=[1]), "seeds": [1, 2, 3]}
    suite = suite_schema.parse(raw, "test")
    seeds = {m: sorted(c.seed for c in suite_schema.cells(suite) if c.method == m and c.dataset == "movielens-1m"
                       and c.task == "ctr") for m in ("pop", "tallrec")}
    assert seeds == {"pop": [1, 2, 3], "tallrec": [1]}
    assert "tallrec: config" in "\n".join(suite_schema.settings_lines(suite, suite_schema.resolve_configs(suite)))
    flagged = suite_schema.parse(apply_overrides(raw, build_parser().parse_args(["--seeds", "4,5"])), "t")
    assert sorted({c.seed for c in suite_schema.cells(flagged) if c.method == "tallrec"}) == [4, 5]


@pytest.mark.parametrize("seeds", [[4], [1, 1]])
def test_a_methods_seeds_must_be_distinct_seeds_of_the_suite(seeds):
    with pytest.raises(suite_schema.SuiteError, match="methods.tallrec.seeds"):
        suite_schema.parse({**_raw(seeds=seeds), "seeds": [1, 2, 3]}, "test")


def test_a_datasets_eval_cap_replaces_the_budgets_there_only():
    raw = {**_raw(), "datasets": ["movielens-100k", {"name": "movielens-1m", "eval_cap": 500}],
           "budget": {"eval_cap": 2000}}
    suite = suite_schema.parse(raw, "test")
    assert suite.budget_for("movielens-1m").eval_cap == 500
    assert suite.budget_for("movielens-100k").eval_cap == 2000
    assert suite.budget_for("movielens-1m").batch_size == suite.budget.batch_size
    with pytest.raises(suite_schema.SuiteError, match=r"datasets\[1\].eval_cap"):
        suite_schema.parse({**raw, "datasets": ["movielens-100k", {"name": "movielens-1m", "eval_cap": 0}]}, "t")
    with pytest.raises(suite_schema.SuiteError, match="budget.gpu_hours"):
        suite_schema.parse({**raw, "budget": {"gpu_hours": 0}}, "t")
