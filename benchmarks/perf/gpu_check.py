"""One command for a machine with a GPU: environment, hardware ceilings, QLoRA efficiency, gpu suite.

    python -m benchmarks.perf.gpu_check                      # everything; writes results/gpu/<device-kind>/
    python -m benchmarks.perf.gpu_check --skip-suite         # ceilings + efficiency only (minutes)
    python -m benchmarks.perf.gpu_check --shape tiny --device cpu --skip-suite   # smoke test without a GPU

Steps:
1. environment report (``env.json`` as in every run folder, plus ``nvidia-smi``);
2. ceilings: dense bf16 matmul throughput (TFLOP/s) and device-to-device copy bandwidth (GB/s),
   each the median of repeated timed runs after warm-up;
3. efficiency at real scale with random weights (latency needs no pretrained weights): a
   Llama-2-7B-shaped backbone built from a config, NF4 (bitsandbytes) with bf16 compute, LoRA r=8 on
   q/v (TALLRec's setting):
   * training step tokens/s and model FLOP utilization (MFU) against the measured bf16 ceiling;
   * batch-1 latency of one scoring forward (a ~133-token TALLRec prompt) and of one decode step,
     against the weight-bandwidth floor (packed NF4 weight bytes / measured copy bandwidth);
4. the ``gpu`` suite (``benchmarks/suites/gpu.yaml``) through the normal runner.

FLOP counting (per token, frozen 4-bit base + LoRA; N = parameters in the linear layers):
forward 2N, backward 2N (gradients w.r.t. activations only: the base weights are frozen, the LoRA
weights' gradients are negligible), plus attention scores and values, 4·L·s·d forward and twice that
backward (L layers, s sequence length, d model width). MFU = counted FLOPs / time / ceiling. The
often-quoted 6N convention (full fine-tuning) is reported beside it, for comparison with papers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.registry import ROOT

SHAPES = {
    # Llama-2-7B: hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    # for a CPU smoke test of this script
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1024),
}


def _median_seconds(fn, device: str, repeats: int, warmup: int = 2) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ceilings(device: str, n: int = 8192, copy_mib: int = 2048, repeats: int = 10) -> dict:
    """Measured bf16 matmul TFLOP/s and copy GB/s (read + write counted)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t_mm = _median_seconds(lambda: a @ b, device, repeats)
    src = torch.empty(copy_mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t_copy = _median_seconds(lambda: dst.copy_(src), device, repeats)
    return {"matmul_n": n, "bf16_tflops": 2 * n**3 / t_mm / 1e12,
            "copy_mib": copy_mib, "copy_gbps": 2 * src.numel() / t_copy / 1e9}


def linear_parameters(model) -> int:
    """Weights of every matmul a token passes through (NF4 ``Linear4bit`` subclasses ``nn.Linear``),
    the output head included."""
    import torch

    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def qlora_step_flops(n_linear: int, tokens: int, layers: int, seq: int, width: int) -> float:
    """Counted FLOPs of one QLoRA training step (see the module docstring)."""
    attention = 4 * layers * seq * width * tokens
    return 4 * n_linear * tokens + 3 * attention


def build_nf4_model(shape: str, device: str):
    """A randomly initialized Llama of ``shape`` whose linear layers are NF4 ``Linear4bit``."""
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    compute = torch.bfloat16
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(compute)
    generator = torch.Generator().manual_seed(0)
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                weight = torch.randn(child.out_features, child.in_features, generator=generator,
                                     dtype=torch.float32).mul_(0.02).to(compute)
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                      compute_dtype=compute, quant_type="nf4", compress_statistics=True)
                q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
                setattr(module, child_name, q)
    for p in model.parameters():
        if p.dtype.is_floating_point and p.device.type == "cpu" and p.numel() and not hasattr(p, "quant_state"):
            torch.nn.init.normal_(p.data, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p.data)
    return model.to(device)


def weight_bytes(model) -> int:
    """Bytes the forward pass must read: packed NF4 weights + their statistics + other parameters."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    return total


def efficiency(shape: str, device: str, batch: int, seq: int, prompt_tokens: int, steps: int,
               ceiling: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    model = build_nf4_model(shape, device)
    n_linear = linear_parameters(model)
    floor_bytes = weight_bytes(model)
    cfg = model.config
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.train()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=3e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)

    def step():
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_step = _median_seconds(step, device, steps)
    tokens = batch * seq
    flops = qlora_step_flops(n_linear, tokens, cfg.num_hidden_layers, seq, cfg.hidden_size)
    lora.eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_tokens), device=device)
    with torch.no_grad():
        t_score = _median_seconds(lambda: lora(input_ids=prompt), device, steps)
        cache = lora(input_ids=prompt, use_cache=True).past_key_values
        nxt = prompt[:, -1:]
        t_decode = _median_seconds(lambda: lora(input_ids=nxt, past_key_values=cache, use_cache=True),
                                   device, steps)
    floor_s = floor_bytes / (ceiling["copy_gbps"] * 1e9 / 2)  # copy_gbps counts read+write; a read is half
    score_floor = max(floor_s, 2 * n_linear * prompt_tokens / (ceiling["bf16_tflops"] * 1e12))
    return {
        "shape": shape, "linear_params": n_linear, "weight_bytes": floor_bytes,
        "train": {"batch": batch, "seq": seq, "step_s": t_step, "tokens_per_s": tokens / t_step,
                  "mfu": flops / t_step / (ceiling["bf16_tflops"] * 1e12),
                  "mfu_6n_convention": 6 * n_linear * tokens / t_step / (ceiling["bf16_tflops"] * 1e12)},
        "inference_bs1": {"prompt_tokens": prompt_tokens, "score_forward_ms": t_score * 1e3,
                          "score_floor_ms": score_floor * 1e3, "score_vs_floor": t_score / score_floor,
                          "decode_step_ms": t_decode * 1e3, "weight_read_floor_ms": floor_s * 1e3,
                          "decode_vs_floor": t_decode / floor_s},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.gpu_check", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=133)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-suite", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.execution import env

    info = env.collect(args.device)
    kind = (info.get("gpu") or {}).get("name", "cpu").lower().replace(" ", "-")
    out = args.out or ROOT / "results" / "gpu" / kind
    out.mkdir(parents=True, exist_ok=True)
    on_cuda = args.device.startswith("cuda")
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout if on_cuda else ""
    small = args.device == "cpu"
    ceiling = ceilings(args.device, n=1024 if small else 8192, copy_mib=64 if small else 2048)
    report = {"env": info, "nvidia_smi": smi, "ceilings": ceiling,
              "efficiency": efficiency(args.shape, args.device, args.batch, args.seq, args.prompt_tokens,
                                       args.steps, ceiling)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    eff = report["efficiency"]
    print(f"bf16 matmul {ceiling['bf16_tflops']:.1f} TFLOP/s, copy {ceiling['copy_gbps']:.0f} GB/s\n"
          f"QLoRA train ({args.shape}, {args.batch}x{args.seq}): {eff['train']['tokens_per_s']:.0f} tok/s, "
          f"MFU {eff['train']['mfu']:.1%} (6N convention {eff['train']['mfu_6n_convention']:.1%})\n"
          f"batch-1 score forward {eff['inference_bs1']['score_forward_ms']:.1f} ms "
          f"({eff['inference_bs1']['score_vs_floor']:.2f}x floor); decode step "
          f"{eff['inference_bs1']['decode_step_ms']:.1f} ms ({eff['inference_bs1']['decode_vs_floor']:.2f}x floor)\n"
          f"wrote {out / 'gpu_check.json'}")
    if args.skip_suite:
        return 0
    from benchmarks.run import main as run_main

    return run_main(["--suite", "gpu", "--device", args.device, "--out", str(out / "runs")])


if __name__ == "__main__":
    sys.exit(main())
