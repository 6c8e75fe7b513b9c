"""The GPU check's FLOP and byte counting, on the tiny shape (runs on CPU)."""
import pytest

from benchmarks.perf import gpu_check


def test_tiny_nf4_model_counts():
    pytest.importorskip("bitsandbytes")
    shape = gpu_check.SHAPES["tiny"]
    model = gpu_check.build_nf4_model("tiny", "cpu")
    d, m, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    per_layer = 4 * d * d + 3 * d * m  # q, k, v, o (no GQA in this shape) + gate, up, down
    # every matmul a token goes through, the output head included
    assert gpu_check.linear_parameters(model) == layers * per_layer + d * shape["vocab_size"]
    packed = gpu_check.weight_bytes(model)
    embeddings = 2 * shape["vocab_size"] * d * 2  # input + output embeddings stay bf16
    # NF4 stores half a byte per weight plus block statistics: far below bf16's two bytes
    assert packed - embeddings < layers * per_layer * 0.6


def test_qlora_flops_scale_with_tokens_and_parameters():
    base = gpu_check.qlora_step_flops(1_000_000, 100, layers=2, seq=10, width=8)
    assert gpu_check.qlora_step_flops(1_000_000, 200, layers=2, seq=10, width=8) == pytest.approx(2 * base)
    no_attention = gpu_check.qlora_step_flops(1_000_000, 100, layers=0, seq=10, width=8)
    assert no_attention == 4 * 1_000_000 * 100  # forward 2N + activation-gradient backward 2N
