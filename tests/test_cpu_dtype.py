"""The CPU compute dtype is chosen by a measured bf16 / float32 matmul ratio, kept per machine."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from methods import cpu_dtype  # noqa: E402


def _cached(tmp_path, speedup: float) -> None:
    entry = {"float32_gflops": 100.0, "bfloat16_gflops": 100.0 * speedup, "speedup": speedup, "shape": [1, 1, 1]}
    (tmp_path / cpu_dtype.CACHE_FILE).write_text(json.dumps({cpu_dtype.machine_key(): entry}))


@pytest.mark.parametrize("speedup, expected", [(1.0, "float32"), (cpu_dtype.MIN_SPEEDUP - 0.01, "float32"),
                                               (cpu_dtype.MIN_SPEEDUP, "bfloat16"), (4.0, "bfloat16")])
def test_auto_follows_the_measured_ratio_of_this_machine(tmp_path, speedup, expected, monkeypatch):
    _cached(tmp_path, speedup)
    monkeypatch.setattr(cpu_dtype, "matmul_gflops", lambda *a, **k: pytest.fail("measured again despite the cache"))
    assert cpu_dtype.resolve("auto", tmp_path) == expected


def test_an_explicit_dtype_is_kept_and_an_unknown_one_refused(tmp_path):
    _cached(tmp_path, 4.0)
    assert cpu_dtype.resolve("float32", tmp_path) == "float32"
    with pytest.raises(ValueError, match="cpu_dtype must be one of"):
        cpu_dtype.resolve("fp16", tmp_path)


def test_a_measurement_is_taken_once_and_kept_beside_other_machines(tmp_path, monkeypatch):
    (tmp_path / cpu_dtype.CACHE_FILE).write_text(json.dumps({"another CPU | torch 0 | 64 threads": {"speedup": 9.0}}))
    calls = []
    monkeypatch.setattr(cpu_dtype, "matmul_gflops", lambda dtype, *a, **k: calls.append(dtype) or
                        {"float32": 150.0, "bfloat16": 375.0}[dtype])
    first = cpu_dtype.measured_speedup(tmp_path)
    assert first["speedup"] == 2.5 and calls == ["float32", "bfloat16"]
    assert cpu_dtype.measured_speedup(tmp_path) == first and len(calls) == 2
    kept = json.loads((tmp_path / cpu_dtype.CACHE_FILE).read_text())
    assert set(kept) == {"another CPU | torch 0 | 64 threads", cpu_dtype.machine_key()}


def test_the_matmul_timer_reports_a_plausible_rate():
    rate = cpu_dtype.matmul_gflops("float32", (64, 64, 64), seconds=0.05)
    assert 0.01 < rate < 1e5  # GFLOP/s: a wrong FLOP count or time unit is off by 1e3 or more
