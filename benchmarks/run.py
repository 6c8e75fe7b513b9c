"""Command line: run a suite of cells and write a run folder with records and tables.

Two config layers only: the suite file, then these flags. The resolved suite is saved as
``suite.json`` in the run folder and logged before the first cell.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import records, registry
from benchmarks import suite as suites
from benchmarks.data import cards
from benchmarks.data.cache import ENV_VAR, CacheError, cache_location, clean_cache
from benchmarks.execution import estimate, run_folder
from benchmarks.execution import progress as cell_progress
from benchmarks.execution.run_folder import RunFolderError
from benchmarks.registry import ROOT, UnknownName

DEFAULT_OUT = ROOT / "results" / "runs"

EXAMPLES = """examples:
  python -m benchmarks.run                                  # the default suite "quick" (MovieLens-100K, CPU)
  python -m benchmarks.run --suite ci                       # tiny subsets, a few minutes on 2 CPU cores
  python -m benchmarks.run --list                           # suites, datasets and methods known
  python -m benchmarks.run --suite full --dry-run           # print the cells without running them
  python -m benchmarks.run --methods tallrec,reclora,din --shots 16,64,256   # a few-shot curve, baselines alike
  python -m benchmarks.run --suite quick --methods tallrec,sasrec --seeds 1,2,3 --llm <hf-id-or-path>
  python -m benchmarks.run --resume results/runs/quick-20261122-101500   # finish an interrupted run
  python -m benchmarks.run --suite full --device cuda --executor ray --ray-address HEAD_IP:6379  # on a Ray cluster
"""


class CliError(Exception):
    """A mistake in the command line or in a named suite/dataset/method: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise CliError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", help="suite name in benchmarks/suites/ or a YAML path (default: quick)")
    p.add_argument("--list", action="store_true", help="list suites, datasets and methods, then exit")
    p.add_argument("--methods", help="comma-separated method names (replaces the suite's list)")
    p.add_argument("--datasets", help="comma-separated dataset cards (replaces the suite's list)")
    p.add_argument("--seeds", help="comma-separated integer seeds")
    p.add_argument("--shots", help="comma-separated few-shot sizes (ints or 'full') for every listed method that "
                                   "trains (replaces the suite's; a few-shot curve with the baselines alike)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the suite's)")
    p.add_argument("--llm", help="backbone for LLM methods: a Hugging Face id or a local path")
    p.add_argument("--quant", choices=suites.QUANTS, help="backbone quantization (default: the suite's, nf4)")
    p.add_argument("--executor", default="local", help="how cells run: local (default) or ray (one Ray task per cell)")
    p.add_argument("--ray-address", help="--executor ray: the cluster's head, HOST:PORT or auto "
                                         "(default: $RAY_ADDRESS, else a private Ray instance on this machine)")
    p.add_argument("--no-fork", action="store_true", help="--executor local: spawn every cell's process afresh "
                   "instead of forking it from a warm process with its imports loaded (the default on CPU)")
    p.add_argument("--out", help="parent folder of run folders (default: results/runs)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and the estimated cost, then exit")
    p.add_argument("--yes", action="store_true", help=f"start a run past {estimate.MAX_CELLS} cells or "
                                                      f"{estimate.MAX_HOURS} estimated hours")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish a run folder: skip finished cells, rerun the rest")
    p.add_argument("--allow-mixed", action="store_true", help="--resume: accept records made with another "
                                                              "method config, protocol or code version")
    p.add_argument("--clean-cache", action="store_true", help="delete the prepared-data cache, then exit")
    return p


def _csv(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise CliError(f"{flag}: empty; give a comma-separated list (leave the flag out for the suite's own)")
    return items


#: flags that change what a run computes; ``--resume`` takes all of them from the run folder
WHAT_FLAGS = ("methods", "datasets", "seeds", "shots", "device", "llm", "quant")


def apply_overrides(raw: dict, args: argparse.Namespace) -> dict:
    """The suite's raw mapping with the command line's flags applied."""
    raw = dict(raw)
    if args.methods is not None:
        current = _methods_mapping(raw)
        raw["methods"] = {m: current.get(m, {}) for m in _csv(args.methods, "--methods")}
    if args.datasets is not None:
        current = {(d["name"] if isinstance(d, dict) else d): d for d in raw.get("datasets", [])}
        raw["datasets"] = [current.get(d, {"name": d}) for d in _csv(args.datasets, "--datasets")]
    if args.seeds is not None:
        try:
            raw["seeds"] = [int(s) for s in _csv(args.seeds, "--seeds")]
        except ValueError:
            raise CliError(f"--seeds: expected comma-separated integers, got '{args.seeds}'") from None
        # the flag names every cell's seeds, those of methods that run on fewer of the suite's included
        raw["methods"] = {m: {k: v for k, v in spec.items() if k != "seeds"} if isinstance(spec, dict) else spec
                          for m, spec in _methods_mapping(raw).items()}
    if args.shots is not None:
        shots = [s if s == "full" else _positive_int(s, "--shots") for s in _csv(args.shots, "--shots")]
        registered = registry.discover()
        raw["methods"] = {m: {**(spec or {}), "shots": shots} if m not in registered or registered[m].trains else spec
                          for m, spec in _methods_mapping(raw).items()}
    for flag in ("device", "llm", "quant"):
        if getattr(args, flag) is not None:
            raw[flag] = getattr(args, flag)
    if args.llm is not None:  # the flag names the backbone of every LLM cell, its methods' own included
        raw["methods"] = {m: {k: v for k, v in spec.items() if k != "llm"} if isinstance(spec, dict) else spec
                          for m, spec in _methods_mapping(raw).items()}
    return raw


def _methods_mapping(raw: dict) -> dict:
    """A suite file's ``methods`` as a mapping (a list of names is allowed there)."""
    current = raw.get("methods") or {}
    return {m: {} for m in current} if isinstance(current, list) else current


def _positive_int(value: str, flag: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise CliError(f"{flag}: expected comma-separated positive integers or 'full', got '{value}'")
    return int(value)


def list_everything() -> str:
    lines = ["suites:"]
    for name in suites.known_suites():
        raw = suites.read_suite_file(suites.SUITES_DIR / f"{name}.yaml")
        lines.append(f"  {name:<10} {raw.get('description', '')}")
    lines.append("datasets:")
    for name in cards.known_cards():
        card = cards.load_card(name)
        lines.append(f"  {name:<22} protocols: {', '.join(card.protocols)}")
    lines.append("methods:")
    for name, entry in sorted(registry.discover().items()):
        lines.append(f"  {name:<22} {entry.family:<13} tasks: {', '.join(entry.tasks)}")
    broken = registry.broken_plugins()
    if broken:
        lines.append("broken plugins (skipped):")
        lines.extend(f"  {line}" for line in broken)
    return "\n".join(lines)


def _check_device(suite: suites.Suite) -> None:
    if not suite.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CliError(f"device '{suite.device}' requested but CUDA is not available on this machine")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into what Ctrl-C raises so that both stop a run the same way."""


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return _main(argv)
    except (CliError, UnknownName, suites.SuiteError, RunFolderError, CacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any cell ran; nothing was kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    os.environ[ENV_VAR] = str(cache_location())  # resolved once, here: cells inherit the absolute path
    if args.list:
        print(list_everything())
        return 0
    if args.clean_cache:
        print(f"cleaned {clean_cache()}")
        return 0

    if args.resume:
        given = [f"--{flag}" for flag in (*WHAT_FLAGS, "suite", "out") if getattr(args, flag) is not None]
        if given:
            raise CliError(f"--resume takes the run's own suite and folder; {', '.join(given)} cannot change "
                           "them (start a new run instead)")
        run_dir = Path(os.path.abspath(args.resume))
        saved = run_folder.read_suite_file(run_dir)
        suite, source, run_id = suites.parse(saved["suite"], saved["source"]), saved["source"], saved["run_id"]
    else:
        path = suites.suite_path(args.suite or "quick")
        raw = apply_overrides(suites.read_suite_file(path), args)
        suite, source, saved = suites.parse(raw, str(path)), str(path), None
        run_id = run_folder.new_run_id(suite.name)
        run_dir = run_folder.check_out_dir(Path(args.out or DEFAULT_OUT)) / run_id

    todo = suites.cells(suite)
    configs = suites.resolve_configs(suite)
    print(estimate.describe(todo, suite, configs), flush=True)
    if args.dry_run:
        registered = registry.discover()
        for cell in todo:
            print(estimate.cell_line(cell, suite, configs, registered))
        print(f"{len(todo)} cells")
        print("\n".join(suites.settings_lines(suite, configs)))
        return 0
    if not todo:
        raise CliError(f"suite '{suite.name}' has no cell to run (no listed method runs on a listed protocol)")
    if estimate.needs_confirmation(todo, suite, configs) and not args.yes:
        raise CliError(f"{len(todo)} cells is past what a run starts without asking "
                       f"({estimate.MAX_CELLS} cells or {estimate.MAX_HOURS} estimated hours); "
                       "check --dry-run, then pass --yes")
    if suite.needs_gpu and not suite.device.startswith("cuda"):
        raise CliError(f"suite '{suite.name}' needs a GPU: add --device cuda")
    if args.ray_address and args.executor != "ray":
        raise CliError("--ray-address needs --executor ray")
    if args.executor != "ray":  # a Ray driver needs no GPU; the executor checks the cluster's
        _check_device(suite)
    if args.no_fork and args.executor != "local":
        raise CliError("--no-fork needs --executor local (Ray tasks always spawn their cell's process)")
    options = {"address": args.ray_address} if args.ray_address else {"fork": False} if args.no_fork else {}
    run_dir.mkdir(parents=True, exist_ok=args.resume is not None)
    with run_folder.locked(run_dir):
        if saved is not None:
            _check_resume(run_dir, saved, suite, todo, configs, args.allow_mixed)
        return execute(suite, source, run_id, run_dir, todo, args.executor, options, configs)


def _check_resume(run_dir: Path, saved: dict, suite: suites.Suite, todo: list, configs: dict,
                  allow_mixed: bool) -> None:
    from benchmarks.data import canonical, protocols
    from benchmarks.execution import env

    try:
        existing = records.read(run_dir / "records.jsonl")
    except ValueError as err:
        raise CliError(f"{err}; remove that line to resume") from None
    tiny = {d.name: d.tiny for d in suite.datasets}
    protocol_hashes = {}
    for dataset, task in sorted({(r.get("dataset"), r.get("task")) for r in existing if r.get("status") == "ok"}):
        if dataset in tiny and not allow_mixed:
            info, _sizes = protocols.prepare(canonical.load(dataset, tiny=tiny[dataset]), task)
            protocol_hashes[(dataset, tiny[dataset], task)] = info.hash
    # the hash of suite.json as written, not of the suite parsed from it: a key that a later version
    # of the schema added (with its default) is not an edit
    run_folder.check_resume(saved, cards.canonical_hash(saved["suite"]), {c.key for c in todo}, existing, configs,
                            protocol_hashes, env.collect(suite.device), allow_mixed)


def _took(record: dict) -> float | None:
    """A record's wall seconds from its start and finish stamps (None when either is missing)."""
    from datetime import datetime

    try:
        start, end = (datetime.fromisoformat(record[key]) for key in ("started_at", "finished_at"))
        return (end - start).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def execute(suite: suites.Suite, source: str, run_id: str, run_dir: Path, todo: list, executor: str,
            options: dict | None = None, configs: dict | None = None) -> int:
    """Run the cells of ``todo`` not yet finished in ``run_dir`` (which the caller holds locked). Each
    finished cell's line gives its wall time beside the estimate printed before the run, so the cost
    model can be checked and corrected (``configs``: :func:`benchmarks.suite.resolve_configs`)."""
    from tqdm import tqdm

    from benchmarks.execution import env
    from benchmarks.execution.executors import EXECUTORS, ExecutorError
    from benchmarks.reporting.report import write_reports

    if executor not in EXECUTORS:
        raise CliError(str(registry.did_you_mean("executor", executor, list(EXECUTORS))))
    for sub in ("work", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    if not (run_dir / "suite.json").exists():
        facts = env.collect(suite.device)
        run_folder.write_suite_file(run_dir, asdict(suite), suite.digest(), source, run_id, facts)
        (run_dir / "env.json").write_text(json.dumps(facts, indent=1, sort_keys=True))
    suite_file = run_dir / "suite.json"
    records_path = run_dir / "records.jsonl"
    done = {key for key, r in records.latest_by_cell(records.read(records_path)).items() if r["status"] == "ok"}
    pending = [c for c in todo if c.key not in done]
    print(f"run folder: {run_dir}\nresolved suite: {json.dumps(asdict(suite), sort_keys=True)}\n"
          f"{len(todo)} cells, {len(todo) - len(pending)} already finished", flush=True)
    resume_hint = f"python -m benchmarks.run --resume {run_dir}"

    registered = registry.discover()
    estimated = {cell.key: estimate.cell_estimate(cell, suite, configs, registered)[0] for cell in pending}
    eta = cell_progress.EstimatedEta(estimated)
    started = [time.monotonic()]  # when the running cell started
    progress = tqdm(total=len(pending), unit="cell", dynamic_ncols=True, desc=eta.text(),
                    bar_format="{bar:20}| {n_fmt}/{total_fmt} cells, {elapsed} elapsed, {desc}{postfix}")
    kept = len(todo) - len(pending)
    options = dict(options or {})
    if executor == "local":  # the running cell's phase beside its name
        def on_progress(cell, text: str) -> None:
            progress.set_description_str(eta.text(time.monotonic() - started[0]), refresh=False)
            progress.set_postfix_str(f"{cell.key}: {text}")

        options["on_progress"] = on_progress
    try:
        for record in EXECUTORS[executor](suite_file, suite, pending, run_dir, run_id, **options):
            try:
                records.append(records_path, record)
            except OSError as err:
                raise CliError(f"cannot write {records_path} ({err.strerror or err}): {kept} finished records "
                               f"kept; free space, then resume: {resume_hint}") from None
            kept += record["status"] == "ok"
            progress.set_postfix_str(f"{record['cell']} {record['status']}")
            took, guess = _took(record), estimated.get(record["cell"])
            tqdm.write(f"{record['cell']}: {record['status']} in "
                       + (f"{took:.0f} s" if took is not None else "an unknown time")
                       + (f" (estimated {guess:.0f} s)" if guess is not None else " (no estimate)"))
            eta.finished(record["cell"], took)
            started[0] = time.monotonic()
            progress.set_description_str(eta.text(), refresh=False)
            progress.update()
            if record["status"] != "ok":
                tqdm.write(f"FAILED {record['cell']}: {record['error']['type']}: "
                           f"{record['error']['message'].splitlines()[0] if record['error']['message'] else ''}")
    except ExecutorError as err:
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: the running cell was stopped; {kept} of {len(todo)} cells finished and kept. "
              f"Resume: {resume_hint}", file=sys.stderr)
        return 130
    finally:
        progress.close()
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    print(write_reports(run_dir))
    print(f"records: {records_path}")
    latest = records.latest_by_cell(records.read(records_path))
    failed = [c.key for c in todo if latest.get(c.key, {}).get("status") != "ok"]
    if failed:
        print(f"{len(failed)} of {len(todo)} cells failed (table 'failed cells' above, logs in {run_dir / 'logs'}); "
              f"after a fix: {resume_hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
