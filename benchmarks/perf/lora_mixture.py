"""Step time of the per-sample LoRA mixture against plain peft LoRA (issues F4 and F5).

    python -m benchmarks.perf.lora_mixture                       # SmolLM2-135M NF4, batch 2 x 128 tokens
    python -m benchmarks.perf.lora_mixture --threads 1 --clock cpu      # on a CPU shared with other jobs
    python -m benchmarks.perf.lora_mixture --repeats 3 --cases ilora
    python -m benchmarks.perf.lora_mixture --llm <hf-id-or-path> --device cuda --out bench.json

For each case, two copies of the backbone (NF4 by default) get the same targets, rank and dropout:
one plain peft LoRA, one :mod:`methods.lora_mixture` mixture. Both run the same random batch:

* train step: forward with the causal-LM loss, then backward (no optimizer step);
* inference: one forward without gradients.

The two variants alternate within every repeat (which goes first alternates too), so load from
other processes hits both alike; warm-up steps are not measured. The mixture's gate cost is
included: per-layer gate networks (RecLoRA) run inside the timed forward; iLoRA's router lives in
the method, so its case gets fixed softmax weights. Each step is timed on two clocks: wall time and
the process's CPU time. On a CPU shared with other jobs wall time swings by 2-3x from step to step;
``--threads 1 --clock cpu`` then measures the work itself (one thread: no time spent waiting for a
descheduled sibling thread). Reported: median seconds per step on both clocks and the ratio of
medians mixture / LoRA. Target: at most 1.15x for both steps on ``--clock``. Exit status 1 when a
case misses it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.execution.timing import synchronize

TARGET_RATIO = 1.15
STEPS = ("train", "infer")
CLOCKS = ("wall", "cpu")

#: name -> (the mixture as in methods/lora_mixture.MixtureSpec, the plain LoRA at the same rank).
CASES = {
    # iLoRA defaults: rank 8 split into 4 experts of rank 2, alpha 32, dropout 0.1, all projections.
    "ilora": (
        {"experts": 4, "expert_rank": 2, "alpha": 32, "dropout": 0.1, "mode": "products",
         "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    ),
    # RecLoRA authors' code: 8 meta-LoRAs of rank 8 mixed as factors, alpha 2r, dropout 0.05, q and v,
    # one gate per layer and module on a 64-dimensional CRM user vector.
    "reclora": (
        {"experts": 8, "expert_rank": 8, "alpha": 16, "dropout": 0.05, "mode": "factors",
         "targets": ["q_proj", "v_proj"], "gate": {"condition_dim": 64}},
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    ),
    # RecLoRA mixed as products (the paper's formula): all 8 experts' rank-8 slices are computed.
    "reclora-products": (
        {"experts": 8, "expert_rank": 8, "alpha": 16, "dropout": 0.05, "mode": "products",
         "targets": ["q_proj", "v_proj"], "gate": {"condition_dim": 64}},
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    ),
}


def build_variants(case: str, args):
    """{"lora": (model, gate context), "mixture": (model, gate context)} for one case."""
    import contextlib

    import torch

    from methods.backbone import load_backbone, quiet_bitsandbytes

    quiet_bitsandbytes()
    from peft import LoraConfig, get_peft_model

    from methods.lora_mixture import MixtureSpec, inject_mixture

    mixture_values, lora_values = CASES[case]
    spec = MixtureSpec.from_mapping(mixture_values)
    lora_model = get_peft_model(load_backbone(args.llm, args.quant, args.device).model, LoraConfig(**lora_values))
    mixture_model = load_backbone(args.llm, args.quant, args.device).model
    mixture = inject_mixture(mixture_model, spec)
    generator = torch.Generator().manual_seed(0)
    if spec.gate is None:
        gate = {"weights": torch.softmax(torch.randn(args.batch, spec.experts, generator=generator), dim=-1)}
    else:
        gate = {"condition": torch.randn(args.batch, spec.gate.condition_dim, generator=generator)}
    gate = {k: v.to(args.device) for k, v in gate.items()}
    return {"lora": (lora_model, contextlib.nullcontext), "mixture": (mixture_model, lambda: mixture.gated(**gate))}


def timed_step(model, gated, ids, train: bool, device: str) -> dict[str, float]:
    """Seconds of one train step (forward with loss, backward) or inference forward, on both clocks."""
    import torch

    model.train(train)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.set_grad_enabled(train), gated():
        output = model(input_ids=ids, labels=ids if train else None)
        if train:
            output.loss.backward()
    synchronize(device)
    seconds = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    model.zero_grad(set_to_none=True)
    return seconds


def run_case(case: str, args) -> dict:
    import torch

    variants = build_variants(case, args)
    vocab = variants["lora"][0].config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(args.device)
    times = {(name, step, clock): [] for name in variants for step in STEPS for clock in CLOCKS}
    for repeat in range(args.warmup + args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for step in STEPS:
            for name in order:
                seconds = timed_step(*variants[name], ids, step == "train", args.device)
                for clock in CLOCKS:
                    if repeat >= args.warmup:
                        times[name, step, clock].append(seconds[clock])
    result = {"case": case, "batch": args.batch, "seq": args.seq, "repeats": args.repeats, "threads": args.threads}
    for step in STEPS:
        for clock in CLOCKS:
            lora, mixture = (statistics.median(times[name, step, clock]) for name in ("lora", "mixture"))
            result[f"{step}_{clock}"] = {"lora_s": lora, "mixture_s": mixture, "ratio": mixture / lora,
                                         "lora_all_s": times["lora", step, clock],
                                         "mixture_all_s": times["mixture", step, clock]}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.lora_mixture",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    p.add_argument("--llm", default="", help="backbone id or path ('' = the offline default SmolLM2-135M)")
    p.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128, help="tokens per sample")
    p.add_argument("--repeats", type=int, default=5, help="measured steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clock", default="wall", choices=CLOCKS, help="the clock the target is checked on")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results, missed = [], []
    print(f"median of {args.repeats} steps, batch {args.batch} x {args.seq} tokens, {args.quant}, {args.device}, "
          f"{torch.get_num_threads()} thread(s); target checked on the {args.clock} clock")
    print(f"{'case':<18}{'step':<7}{'clock':<6}{'LoRA s':>9}{'mixture s':>11}{'ratio':>8}")
    for case in cases:
        result = run_case(case, args)
        results.append(result)
        for step in STEPS:
            for clock in CLOCKS:
                row = result[f"{step}_{clock}"]
                flag = f"  > {TARGET_RATIO}x" if clock == args.clock and row["ratio"] > TARGET_RATIO else ""
                missed += [f"{case}/{step}"] if flag else []
                print(f"{case:<18}{step:<7}{clock:<6}{row['lora_s']:>9.3f}{row['mixture_s']:>11.3f}"
                      f"{row['ratio']:>7.3f}x{flag}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"target_ratio": TARGET_RATIO, "results": results}, indent=2, sort_keys=True))
    if missed:
        print(f"target missed (> {TARGET_RATIO}x plain LoRA): {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
