"""RecLoRA's step time against plain LoRA at the same backbone, rank, batch and prompt (issue F5).

    python -m benchmarks.perf.reclora                              # SmolLM2-135M NF4, tiny ML-100K, batch 8
    python -m benchmarks.perf.reclora --threads 1 --clock cpu      # on a CPU shared with other jobs
    python -m benchmarks.perf.reclora --meta-loras 16 --mixing products --repeats 9 --out bench.json

Two models, each on its own copy of the backbone, rank r on the same modules (``configs/reclora.yaml``):

* ``reclora``: the registered method (N meta-LoRAs, a gate per layer and module, the frozen CRM, the
  retriever), fitted on a few shots so that its adapters and gates are trained;
* ``lora``: peft LoRA with reclora's rank, alpha and dropout, on the very same prompts (the
  retrieved K items, chosen before the clock starts), with no CRM and no gate.

Steps, on the same samples for both:

* ``train``: one optimizer step on a micro-batch of training prompts (answer-token loss, backward,
  AdamW). The CRM's vectors of a training set are computed once before training (it is frozen),
  so they are outside this step, as in ``fit``.
* ``infer``: one scoring call on a batch of B test samples, from the sample table to P(yes). For
  reclora it includes the CRM's forward over the long history, the retrieval and the prompt
  building; for lora the prompt building (same tokens). Both run every prompt whole.
* ``latency``: the same with one sample (the median over ``--latency-samples`` samples).

``lora+prefix`` (inference only, not part of the target) is plain LoRA through the shared-prefix
cache, ``tallrec``'s path; reclora cannot take it (per-sample adapters change the prefix's keys
and values). The variants alternate within every repeat (and which goes first alternates), warm-up
steps are not measured, and each step is timed on wall time and the process's CPU time (see
``bench_lora_mixture``: on a shared CPU, ``--threads 1 --clock cpu`` measures the work itself).
Target: reclora / lora at most 1.15x for train, infer and latency on ``--clock``; exit status 1
when missed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.execution.timing import synchronize

TARGET_RATIO = 1.15
CLOCKS = ("wall", "cpu")
STEPS = ("train", "infer", "latency")


def timed(fn, device: str) -> dict[str, float]:
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def setup(args):
    """(reclora method, {variant: {step: callable}}) on the chosen data and backbone."""
    import torch

    from benchmarks import registry
    from benchmarks.contract import CellContext, FitData, without_labels
    from benchmarks.data import canonical, protocols
    from benchmarks.data.cache import cache_root
    from methods.backbone import load_backbone
    from methods.prefix_cache import call_model
    from methods.prompting import PromptTemplate
    from methods.reclora import RatedHistoryPrompts
    from methods.retrieval import select_history
    from methods.scoring import yes_probability
    from methods.training import LoraSettings, add_lora, answer_loss

    data = canonical.load(args.dataset, tiny=args.tiny)
    proto = protocols.load(data, "ctr")
    fit = FitData("ctr", proto.few_shot(args.shots, 1), proto.train, without_labels(proto.valid.iloc[:0]),
                  lambda scores: {}, data.catalog, proto.info)
    ctx = CellContext(seed=1, device=args.device, batch_size=args.batch, max_epochs=1,
                      workdir=Path(tempfile.mkdtemp(prefix="bench-reclora-")), cache_dir=cache_root(),
                      llm=args.llm, quant=args.quant)
    entry = registry.get_entry("reclora")
    overrides = {"micro_batch_size": args.batch, "batch_size": args.batch, "epochs": 1,
                 "meta_loras": args.meta_loras, "mixing": args.mixing}
    reclora = entry.load_class()(registry.resolve_config(entry, overrides), ctx)
    reclora.fit(fit)
    cfg, k = reclora.config, reclora.history_len

    backbone = load_backbone(args.llm, args.quant, args.device, cpu_4bit_kernel=cfg.cpu_4bit_kernel)
    lora = add_lora(backbone.model, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                                 list(cfg.lora_target_modules)))
    builder = RatedHistoryPrompts(PromptTemplate.load(cfg.prompt), backbone.tokenizer, data.catalog, k, None)
    pad = backbone.tokenizer.pad_token_id

    def lora_score(shown, reuse_prefix=False):
        return yes_probability(lora, builder.build(shown), builder.answers, batch_size=args.batch,
                               reuse_prefix=reuse_prefix, pad_id=pad)

    train_samples = proto.train.iloc[: args.batch]
    rows = list(range(len(train_samples)))
    prompts, conditions = reclora.inputs(train_samples)  # the same token ids for both models
    extra = reclora.gate_inputs(conditions)(rows)

    def train_step(model, prompts, forward, extra):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=0.0)  # the full update, weights left as they are

        def step():
            model.train()
            loss, n = answer_loss(model, prompts, rows, pad, forward, extra)
            (loss / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        return step

    test = without_labels(proto.test.iloc[: args.batch])
    shown = select_history(test, k, cfg.retrieval, reclora.item_vectors)
    singles = range(min(args.latency_samples, len(test)))

    variants = {
        "reclora": {"train": train_step(reclora.backbone.model, prompts, reclora.forward, extra),
                    "infer": lambda: reclora.score(test),
                    "latency": lambda: [reclora.score(test.iloc[[i]]) for i in singles]},
        "lora": {"train": train_step(lora, prompts, call_model, {}),
                 "infer": lambda: lora_score(shown),
                 "latency": lambda: [lora_score(shown.iloc[[i]]) for i in singles]},
        "lora+prefix": {"infer": lambda: lora_score(shown, True),
                        "latency": lambda: [lora_score(shown.iloc[[i]], True) for i in singles]},
    }
    return reclora, variants


def run(args) -> dict:
    reclora, variants = setup(args)
    times = {(name, step, clock): [] for name, steps in variants.items() for step in steps for clock in CLOCKS}
    for repeat in range(args.warmup + args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for step in STEPS:
            for name in order:
                if step not in variants[name]:
                    continue
                seconds = timed(variants[name][step], args.device)
                if repeat >= args.warmup:
                    for clock in CLOCKS:
                        times[name, step, clock].append(seconds[clock])
    cfg = reclora.config
    result = {"meta_loras": cfg.meta_loras, "mixing": cfg.mixing, "rank": cfg.lora_r, "batch": args.batch,
              "latency_samples": args.latency_samples, "repeats": args.repeats, "threads": args.threads,
              "dataset": args.dataset, "tiny": args.tiny, "backbone": reclora.backbone.name, "quant": args.quant,
              "steps": {}}
    for (name, step, clock), values in times.items():
        scale = 1.0 / args.latency_samples if step == "latency" else 1.0  # seconds per sample
        result["steps"].setdefault(step, {}).setdefault(clock, {})[name] = {
            "median_s": statistics.median(values) * scale, "all_s": [v * scale for v in values]}
    for _step, clocks in result["steps"].items():
        for row in clocks.values():
            row["ratio"] = row["reclora"]["median_s"] / row["lora"]["median_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.reclora", description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default="", help="backbone id or path ('' = the offline default SmolLM2-135M)")
    p.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=True,
                   help="the card's tiny user subset (default; --no-tiny: all users, a longer CRM fit)")
    p.add_argument("--shots", type=int, default=16, help="few-shot samples reclora is fitted on before timing")
    p.add_argument("--meta-loras", type=int, default=8, help="N (the reclora config's meta_loras)")
    p.add_argument("--mixing", default="factors", choices=("factors", "products"))
    p.add_argument("--batch", type=int, default=8, help="samples per train step and per inference batch")
    p.add_argument("--latency-samples", type=int, default=4, help="samples scored one at a time per repeat")
    p.add_argument("--repeats", type=int, default=5, help="measured repeats per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clock", default="wall", choices=CLOCKS, help="the clock the target is checked on")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(f"median of {args.repeats} repeats; N={result['meta_loras']} ({result['mixing']}), r={result['rank']}, "
          f"batch {args.batch}, {args.quant}, {args.device}, {torch.get_num_threads()} thread(s); latency in s per "
          f"sample; target checked on the {args.clock} clock")
    print(f"{'step':<9}{'clock':<6}{'lora s':>9}{'reclora s':>11}{'ratio':>8}{'lora+prefix s':>15}")
    missed = []
    for step in STEPS:
        for clock in CLOCKS:
            row = result["steps"][step][clock]
            flag = f"  > {TARGET_RATIO}x" if clock == args.clock and row["ratio"] > TARGET_RATIO else ""
            missed += [step] if flag else []
            prefix = row.get("lora+prefix", {}).get("median_s")
            print(f"{step:<9}{clock:<6}{row['lora']['median_s']:>9.3f}{row['reclora']['median_s']:>11.3f}"
                  f"{row['ratio']:>7.3f}x{'' if prefix is None else f'{prefix:>15.3f}'}{flag}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"target_ratio": TARGET_RATIO, **result}, indent=2, sort_keys=True))
    if missed:
        print(f"target missed (> {TARGET_RATIO}x plain LoRA): {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
