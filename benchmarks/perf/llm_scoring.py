"""Speed of ctr scoring with the LLM backbone: where the time goes, and what reuse buys.

    python -m benchmarks.perf.llm_scoring                       # SmolLM2 NF4, 48 ML-100K test prompts
    python -m benchmarks.perf.llm_scoring --samples 96 --batch-size 8 --kernels dequant,packed-bf16
    python -m benchmarks.perf.llm_scoring --llm <id-or-path> --quant none --device cuda

Variants, all on the same prompts (the ctr protocol's first test samples, TALLRec template):

* ``full bs1`` / ``full bsB``: every whole prompt, one at a time / in length-bucketed batches;
* ``prefix bs1`` / ``prefix bsB``: the shared instruction's keys/values computed once, per-sample parts only;
* ``generate bs1``: TALLRec's reference, ``generate`` up to 128 new tokens (stopping at EOS), one prompt
  at a time, on ``--generate-samples`` prompts.

Reported per variant: samples/s, tokens the model processed (prompt tokens actually run, plus generated
steps), effective GFLOP/s = 2 x parameters x tokens / seconds, the speed-up over ``full bs1`` and over the
generate reference, AUC on these samples, and the largest |P(yes) difference| to ``full bs1`` of the same
kernel (the prefix cache's numerical drift). One warm-up prompt per variant is not timed. Results are
printed as a table and written as JSON (``--out``).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from benchmarks import metrics
    from benchmarks.contract import count_parameters, without_labels
    from benchmarks.data import canonical, protocols
    from methods.backbone import load_backbone
    from methods.scoring import CtrScorer, generate_reference, yes_probability

    torch.set_num_threads(args.threads) if args.threads else None
    data = canonical.load(args.dataset, tiny=False)
    protocol = protocols.load(data, "ctr")
    samples = protocol.test.iloc[: args.samples]
    labels = samples["label"].to_numpy()
    rows: list[dict] = []
    for kernel in args.kernels.split(","):
        backbone = load_backbone(args.llm, args.quant, args.device, cpu_4bit_kernel=kernel)
        params = count_parameters(backbone.model.parameters(), digest=False).total
        scorer = CtrScorer(backbone, args.prompt, data.catalog, protocol.info)
        prompts = scorer.prompts(without_labels(samples))
        n_prefix, suffix = len(prompts.prefix_ids), prompts.suffix_lengths()
        warm = scorer.prompts(without_labels(samples.iloc[:1]))
        base = {"kernel": kernel, "quant": args.quant, "device": args.device, "backbone": backbone.name,
                "parameters": params, "prefix_tokens": n_prefix, "mean_suffix_tokens": float(suffix.mean())}
        reference = None
        variants = [("full", 1, False), ("full", args.batch_size, False), ("prefix", 1, True),
                    ("prefix", args.batch_size, True)]
        for name, bs, reuse in variants:
            score = functools.partial(yes_probability, backbone.model, answers=scorer.answers, batch_size=bs,
                                      reuse_prefix=reuse, pad_id=scorer.pad_id)
            score(warm)
            p_yes, seconds = _timed(functools.partial(score, prompts))
            tokens = int(suffix.sum()) + (n_prefix if reuse else n_prefix * len(suffix))
            if reference is None:
                reference = p_yes
            rows.append({**base, "variant": f"{name} bs{bs}", "samples": len(suffix), "seconds": seconds,
                         "samples_per_s": len(suffix) / seconds, "tokens": tokens,
                         "gflops": 2 * params * tokens / seconds / 1e9,
                         "auc": metrics.auc(labels, p_yes),
                         "max_abs_dp_vs_full_bs1": float(np.abs(p_yes - reference).max())})
        if args.generate_samples:
            subset = prompts.table.select(range(min(args.generate_samples, len(prompts))))
            sub = type(prompts)(prompts.prefix_ids, subset)
            generate_reference(backbone.model, backbone.tokenizer, type(prompts)(prompts.prefix_ids,
                               prompts.table.select([0])), scorer.answers)
            ref, seconds = _timed(functools.partial(generate_reference, backbone.model, backbone.tokenizer, sub,
                                                    scorer.answers))
            tokens = int(sum(len(prompts.prefix_ids) + len(s) for s in subset["suffix_ids"]) + ref.new_tokens.sum())
            rows.append({**base, "variant": "generate bs1", "samples": len(sub), "seconds": seconds,
                         "samples_per_s": len(sub) / seconds, "tokens": tokens,
                         "gflops": 2 * params * tokens / seconds / 1e9,
                         "auc": metrics.auc(labels[: len(sub)], ref.scores),
                         "mean_new_tokens": float(ref.new_tokens.mean()), "answers": sorted(set(ref.texts))[:5]})
    for row in rows:
        same = [r for r in rows if r["kernel"] == row["kernel"]]
        row["speedup_vs_full_bs1"] = row["samples_per_s"] / same[0]["samples_per_s"]
        gen = [r for r in same if r["variant"] == "generate bs1"]
        if gen:
            row["speedup_vs_generate"] = row["samples_per_s"] / gen[0]["samples_per_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--llm", default="", help="backbone id or path ('' = offline SmolLM2)")
    parser.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kernels", default="dequant", help="comma list of cpu_4bit_kernel values")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--prompt", default="tallrec")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--generate-samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args)
    from tabulate import tabulate

    columns = ["kernel", "variant", "samples", "samples_per_s", "tokens", "gflops", "speedup_vs_full_bs1",
               "speedup_vs_generate", "auc", "max_abs_dp_vs_full_bs1", "mean_new_tokens"]
    print(tabulate([[r.get(c, "") for c in columns] for r in rows], headers=columns, floatfmt=".4g"))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
