"""Command line: run a suite of cells and write a run folder with records and tables.

Two config layers only: the suite file, then these flags. The resolved suite is saved as
``suite.json`` in the run folder and logged before the first cell.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import yaml

from benchmarks import cards, records, registry
from benchmarks import suite as suites
from benchmarks.registry import ROOT, UnknownName

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
    p.add_argument("--suite", default="quick", help="suite name in benchmarks/suites/ or a YAML path (default: quick)")
    p.add_argument("--list", action="store_true", help="list suites, datasets and methods, then exit")
    p.add_argument("--methods", help="comma-separated method names (replaces the suite's list)")
    p.add_argument("--datasets", help="comma-separated dataset cards (replaces the suite's list)")
    p.add_argument("--seeds", help="comma-separated integer seeds")
    p.add_argument("--shots", help="comma-separated few-shot sizes (ints or 'full') for every listed method that "
                                   "trains (replaces the suite's; a few-shot curve with the baselines alike)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the suite's)")
    p.add_argument("--llm", help="backbone for LLM methods: a Hugging Face id or a local path")
    p.add_argument("--quant", choices=["nf4", "none"], help="backbone quantization (default: the suite's, nf4)")
    p.add_argument("--executor", default="local", help="how cells run: local (default) or ray (one Ray task per cell)")
    p.add_argument("--ray-address", help="--executor ray: the cluster's head, HOST:PORT or auto "
                                         "(default: $RAY_ADDRESS, else a private Ray instance on this machine)")
    p.add_argument("--out", default=str(ROOT / "results" / "runs"), help="parent folder of run folders")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish a run folder: skip finished cells, rerun the rest")
    p.add_argument("--clean-cache", action="store_true", help="delete the prepared-data cache, then exit")
    return p


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def apply_overrides(raw: dict, args: argparse.Namespace) -> dict:
    """The suite's raw mapping with the command line's flags applied."""
    raw = dict(raw)
    if args.methods:
        current = _methods_mapping(raw)
        raw["methods"] = {m: current.get(m, {}) for m in _csv(args.methods)}
    if args.datasets:
        current = {(d["name"] if isinstance(d, dict) else d): d for d in raw.get("datasets", [])}
        raw["datasets"] = [current.get(d, {"name": d}) for d in _csv(args.datasets)]
    if args.seeds:
        try:
            raw["seeds"] = [int(s) for s in _csv(args.seeds)]
        except ValueError:
            raise CliError(f"--seeds: expected comma-separated integers, got '{args.seeds}'") from None
    if args.shots:
        shots = [s if s == "full" else _positive_int(s, "--shots") for s in _csv(args.shots)]
        registered = registry.discover()
        raw["methods"] = {m: {**(spec or {}), "shots": shots} if m not in registered or registered[m].trains else spec
                          for m, spec in _methods_mapping(raw).items()}
    for flag in ("device", "llm", "quant"):
        if getattr(args, flag):
            raw[flag] = getattr(args, flag)
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
        raw = yaml.safe_load((suites.SUITES_DIR / f"{name}.yaml").read_text())
        lines.append(f"  {name:<10} {raw.get('description', '')}")
    lines.append("datasets:")
    for name in cards.known_cards():
        card = cards.load_card(name)
        lines.append(f"  {name:<22} protocols: {', '.join(card.protocols)}")
    lines.append("methods:")
    for name, entry in sorted(registry.discover().items()):
        lines.append(f"  {name:<22} {entry.family:<13} tasks: {', '.join(entry.tasks)}")
    return "\n".join(lines)


def _check_device(suite: suites.Suite) -> None:
    if not suite.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CliError(f"device '{suite.device}' requested but CUDA is not available on this machine")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (CliError, UnknownName, suites.SuiteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_everything())
        return 0
    if args.clean_cache:
        from benchmarks.cache import clean_cache

        print(f"cleaned {clean_cache()}")
        return 0

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "suite.json").exists():
            raise CliError(f"--resume {run_dir}: not a run folder (no suite.json)")
        saved = json.loads((run_dir / "suite.json").read_text())
        suite, source, run_id = suites.parse(saved["suite"], saved["source"]), saved["source"], saved["run_id"]
    else:
        path = Path(args.suite)
        if not path.exists():
            path = suites.SUITES_DIR / f"{args.suite}.yaml"
            if not path.exists():
                raise CliError(str(registry.did_you_mean("suite", args.suite, suites.known_suites())))
        raw = apply_overrides(yaml.safe_load(path.read_text()), args)
        suite, source = suites.parse(raw, str(path)), str(path)
        run_id = f"{suite.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.out) / run_id

    todo = suites.cells(suite)
    if args.dry_run:
        for cell in todo:
            print(cell.key)
        print(f"{len(todo)} cells")
        return 0
    if suite.needs_gpu and not suite.device.startswith("cuda"):
        raise CliError(f"suite '{suite.name}' needs a GPU: add --device cuda")
    if args.ray_address and args.executor != "ray":
        raise CliError("--ray-address needs --executor ray")
    if args.executor != "ray":  # a Ray driver needs no GPU; the executor checks the cluster's
        _check_device(suite)
    options = {"address": args.ray_address} if args.ray_address else {}
    return execute(suite, source, run_id, run_dir, todo, args.executor, options)


def execute(suite: suites.Suite, source: str, run_id: str, run_dir: Path, todo: list, executor: str,
            options: dict | None = None) -> int:
    from tqdm import tqdm

    from benchmarks import env
    from benchmarks.executors import EXECUTORS, ExecutorError
    from benchmarks.report import write_reports

    if executor not in EXECUTORS:
        raise CliError(str(registry.did_you_mean("executor", executor, list(EXECUTORS))))
    for sub in ("work", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    suite_file = run_dir / "suite.json"
    if not suite_file.exists():
        suite_file.write_text(json.dumps({"suite": asdict(suite), "source": source, "run_id": run_id},
                                         indent=1, sort_keys=True))
        (run_dir / "env.json").write_text(json.dumps(env.collect(suite.device), indent=1, sort_keys=True))
    records_path = run_dir / "records.jsonl"
    done = {key for key, r in records.latest_by_cell(records.read(records_path)).items() if r["status"] == "ok"}
    pending = [c for c in todo if c.key not in done]
    print(f"run folder: {run_dir}\nresolved suite: {json.dumps(asdict(suite), sort_keys=True)}\n"
          f"{len(todo)} cells, {len(todo) - len(pending)} already finished", flush=True)

    progress = tqdm(total=len(pending), unit="cell", dynamic_ncols=True)
    try:
        for record in EXECUTORS[executor](suite_file, suite, pending, run_dir, run_id, **(options or {})):
            records.append(records_path, record)
            progress.set_postfix_str(f"{record['cell']} {record['status']}")
            progress.update()
            if record["status"] != "ok":
                tqdm.write(f"FAILED {record['cell']}: {record['error']['type']}: "
                           f"{record['error']['message'].splitlines()[0] if record['error']['message'] else ''}")
    except ExecutorError as err:
        progress.close()
        raise CliError(str(err)) from None
    progress.close()
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    print(write_reports(run_dir))
    print(f"records: {records_path}")
    latest = records.latest_by_cell(records.read(records_path))
    failed = [c.key for c in todo if latest.get(c.key, {}).get("status") != "ok"]
    if failed:
        print(f"{len(failed)} of {len(todo)} cells failed (table 'failed cells' above, logs in {run_dir / 'logs'}); "
              f"after a fix: python -m benchmarks.run --resume {run_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
