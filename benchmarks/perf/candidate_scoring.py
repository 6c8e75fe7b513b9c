"""next_item speed on the real backbone (issue F4): shared-prefix candidate scoring, and iLoRA's step time.

    python -m benchmarks.perf.candidate_scoring                      # both parts, SmolLM2-135M, ML-100K tiny
    python -m benchmarks.perf.candidate_scoring --part scoring --samples 4 --repeats 5 --out scoring.json
    python -m benchmarks.perf.candidate_scoring --part step --batch 2 --repeats 7
    python -m benchmarks.perf.candidate_scoring --llm <hf-id-or-path> --device cuda

Part ``scoring``: the first ``--samples`` next_item test samples of MovieLens-100K (tiny subset), LLaRA's
text-only prompt on the plain backbone (what ``zeroshot-llm`` runs), every candidate's title
log-likelihood computed two ways (:func:`methods.candidate_scoring.candidate_log_likelihoods`):

* shared: one pass over each prompt, the 20 candidate answers as continuations on its keys/values;
* per-candidate: 20 full prompts per sample (prompt + answer, logits kept only at answer positions).

Reported per quantization (``--quant``, default "nf4,none": NF4 and float32): the token count of each
way and its ratio (the prediction), the median seconds of each and their ratio (measured), and the
largest score difference between them. Targets: measured ratio >= 3; float32 difference <= 1e-4.

Part ``step``: ``ilora`` (4 experts of rank 2 + router) against ``lora-seq`` (one rank-8 LoRA), built as
the methods build them (same backbone, targets, hybrid prompt, batch of real prompts; random item
vectors and gate inputs stand in for SASRec's): a train step (answer loss, backward) and an inference
forward of the prompts. Target: ilora <= 1.15x lora-seq.

Both parts alternate the two variants within every repeat (and which goes first), exclude warm-up,
and report medians on the wall clock and on the process CPU clock (less sensitive to other processes
on a shared CPU). Exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.execution.timing import synchronize

SPEEDUP_TARGET = 3.0
FLOAT32_TOLERANCE = 1e-4
STEP_TARGET = 1.15
CLOCKS = ("wall", "cpu")


def timed(call, device: str):
    """(result, {"wall": s, "cpu": s}) of ``call()``."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    synchronize(device)
    return result, {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def alternate(variants: dict, args) -> dict[str, dict[str, list[float]]]:
    """Run each variant ``warmup + repeats`` times, alternating their order; seconds per clock."""
    times = {name: {clock: [] for clock in CLOCKS} for name in variants}
    for repeat in range(args.warmup + args.repeats):
        for name in (list(variants) if repeat % 2 == 0 else list(reversed(variants))):
            _, seconds = timed(variants[name], args.device)
            for clock in CLOCKS:
                if repeat >= args.warmup:
                    times[name][clock].append(seconds[clock])
    return times


def medians(times: dict, slow: str, fast: str) -> dict:
    out = {}
    for clock in CLOCKS:
        a, b = statistics.median(times[slow][clock]), statistics.median(times[fast][clock])
        out[clock] = {f"{slow}_s": a, f"{fast}_s": b, "ratio": a / b, f"{slow}_all_s": times[slow][clock],
                      f"{fast}_all_s": times[fast][clock]}
    return out


def test_samples(n: int):
    from benchmarks.contract import without_labels
    from benchmarks.data import canonical, protocols

    data = canonical.load("movielens-100k", tiny=True)
    protocol = protocols.load(data, "next_item")
    return data.catalog, protocol.info, without_labels(protocol.test.iloc[:n])


def scoring_part(quant: str, args) -> dict:
    from methods.backbone import load_backbone
    from methods.candidate_scoring import NextItemScorer, candidate_log_likelihoods

    catalog, protocol, samples = test_samples(args.samples)
    backbone = load_backbone(args.llm, quant, args.device)
    scorer = NextItemScorer(backbone, "llara", catalog, protocol)
    prompts = scorer.prompts(samples)
    answers = scorer.builder.answers([c for row in prompts.table["candidates"] for c in row])
    prompt_tokens = [len(prompts.full_ids(r)) for r in range(len(prompts))]
    answer_tokens = [[len(answers[c]) for c in row] for row in prompts.table["candidates"]]
    shared_tokens = sum(prompt_tokens) + sum(map(sum, answer_tokens))
    separate_tokens = sum(len(a) * p + sum(a) for p, a in zip(prompt_tokens, answer_tokens))
    scores = {}

    def run(reuse: bool):
        def call():
            scores[reuse] = candidate_log_likelihoods(backbone.model, prompts, answers, batch_size=args.batch,
                                                      pad_id=scorer.pad_id, reuse_prefix=reuse)
        return call

    times = alternate({"per_candidate": run(False), "shared": run(True)}, args)
    return {"quant": quant, "samples": len(prompts), "mean_prompt_tokens": statistics.mean(prompt_tokens),
            "mean_answer_tokens": statistics.mean(t for row in answer_tokens for t in row),
            "tokens": {"shared": shared_tokens, "per_candidate": separate_tokens,
                       "ratio": separate_tokens / shared_tokens},
            "seconds": medians(times, "per_candidate", "shared"),
            "max_abs_diff": float(abs(scores[True] - scores[False]).max())}


def step_part(args) -> dict:
    import numpy as np
    import torch

    from benchmarks import registry
    from benchmarks.contract import CellContext
    from methods.backbone import load_backbone
    from methods.candidate_scoring import NextItemScorer, left_padded
    from methods.next_item_prompts import with_training_candidates
    from methods.training import answer_loss

    catalog, protocol, samples = test_samples(args.batch)
    labeled = with_training_candidates(samples.assign(label=0), int(protocol.params["n_candidates"]), catalog.n_items,
                                       np.random.default_rng(0))
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(catalog.n_items, 64, generator=generator)
    gate = torch.randn(args.batch, 64, generator=generator).to(args.device)
    rows = np.arange(args.batch)
    variants, prompt_tokens = {}, 0
    for name in ("ilora", "lora-seq"):
        entry = registry.get_entry(name)
        method = entry.load_class()(registry.resolve_config(entry), CellContext(seed=0, device=args.device))
        backbone = load_backbone(args.llm, args.quant, args.device)
        model = method.build_model(backbone.model, vectors)
        scorer = NextItemScorer(backbone, method.config.prompt, catalog, protocol, model=model,
                                item_token_base=model.embedding.base)
        prompts = scorer.prompts(labeled)
        prompt_tokens = sum(len(prompts.full_ids(r)) for r in rows)
        extra = {"gate_input": gate} if method.config.gated else {}

        def train_step(model=model, prompts=prompts, extra=extra, pad=scorer.pad_id):
            model.train()
            loss, count = answer_loss(model, prompts, rows, pad, lambda m, **kw: m(**kw), extra)
            (loss / count).backward()
            model.zero_grad(set_to_none=True)

        def inference(model=model, prompts=prompts, extra=extra, pad=scorer.pad_id):
            model.eval()
            ids, mask = left_padded([prompts.full_ids(r) for r in rows], pad, args.device)
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1, **extra)

        variants[name] = {"train": train_step, "inference": inference}
    result = {"batch": args.batch, "prompt_tokens": prompt_tokens}
    for step in ("train", "inference"):
        times = alternate({name: calls[step] for name, calls in variants.items()}, args)
        result[step] = medians(times, "ilora", "lora-seq")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.candidate_scoring",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="scoring,step", help="comma-separated: scoring, step")
    p.add_argument("--llm", default="", help="backbone id or path ('' = the offline default SmolLM2-135M)")
    p.add_argument("--quant", default="nf4,none", help="scoring part: comma-separated nf4, none (step: the first)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=2, help="scoring part: test samples scored")
    p.add_argument("--batch", type=int, default=2, help="prompts per pass (scoring) / per step (step)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clock", default="wall", choices=CLOCKS, help="the clock the targets are checked on")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.part.split(",") if x.strip()]
    quants = [x.strip() for x in args.quant.split(",") if x.strip()]
    if set(parts) - {"scoring", "step"} or set(quants) - {"nf4", "none"}:
        p.error("--part takes scoring and/or step; --quant takes nf4 and/or none")
    args.quant = quants[0]

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"median of {args.repeats} runs (after {args.warmup} warm-up), {args.device}, {torch.get_num_threads()} "
          f"thread(s); targets checked on the {args.clock} clock", flush=True)
    out, missed = {"targets": {"speedup": SPEEDUP_TARGET, "float32_tolerance": FLOAT32_TOLERANCE,
                               "step_ratio": STEP_TARGET}}, []
    if "scoring" in parts:
        out["scoring"] = []
        for quant in quants:
            r = scoring_part(quant, args)
            out["scoring"].append(r)
            seconds = r["seconds"][args.clock]
            print(f"scoring {quant}: {r['samples']} samples, prompt ~{r['mean_prompt_tokens']:.0f} tokens, answer "
                  f"~{r['mean_answer_tokens']:.1f}; tokens per-candidate/shared {r['tokens']['per_candidate']}/"
                  f"{r['tokens']['shared']} = {r['tokens']['ratio']:.1f}x; seconds {seconds['per_candidate_s']:.2f}/"
                  f"{seconds['shared_s']:.2f} = {seconds['ratio']:.2f}x (cpu clock "
                  f"{r['seconds']['cpu']['ratio']:.2f}x); max |diff| {r['max_abs_diff']:.2e}", flush=True)
            if seconds["ratio"] < SPEEDUP_TARGET:
                missed.append(f"scoring {quant}: {seconds['ratio']:.2f}x < {SPEEDUP_TARGET}x")
            if quant == "none" and r["max_abs_diff"] > FLOAT32_TOLERANCE:
                missed.append(f"scoring float32: |diff| {r['max_abs_diff']:.2e} > {FLOAT32_TOLERANCE}")
    if "step" in parts:
        r = step_part(args)
        out["step"] = r
        for step in ("train", "inference"):
            seconds = r[step][args.clock]
            print(f"step {step} ({args.quant}, batch {r['batch']}, {r['prompt_tokens']} prompt tokens): ilora "
                  f"{seconds['ilora_s']:.2f}s / lora-seq {seconds['lora-seq_s']:.2f}s = {seconds['ratio']:.3f}x "
                  f"(cpu clock {r[step]['cpu']['ratio']:.3f}x)", flush=True)
            if seconds["ratio"] > STEP_TARGET:
                missed.append(f"step {step}: {seconds['ratio']:.3f}x > {STEP_TARGET}x")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, sort_keys=True))
    for line in missed:
        print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
