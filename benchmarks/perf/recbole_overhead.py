"""Harness overhead of the RecBole adapter: RecBole's own fit+evaluate against the adapter's fit+score.

    python -m benchmarks.perf.recbole_overhead                          # sasrec, deepfm; tiny subset, 1 epoch
    python -m benchmarks.perf.recbole_overhead --full --models deepfm --epochs 2 --repeats 3
    python -m benchmarks.perf.recbole_overhead --full --out bench.json
    python -m benchmarks.perf.recbole_overhead --threads 1 --clock cpu   # stable on a busy shared CPU

Both sides get the same frozen protocol, the same model settings (``baselines/configs/<name>.yaml``
with the given epochs and early stopping off), the same seed, a validation pass after every epoch
and one evaluation of the test split:

* native: RecBole as its own users run it, from our splits written once as atomic files (writing is
  not timed): Config, dataset and ``data_preparation``, ``Trainer.fit(train, valid)`` (which saves
  the best checkpoint, RecBole's default), reloading that checkpoint, ``Trainer.evaluate(test)``
  (full ranking for next_item, AUC/LogLoss on the labelled samples for ctr);
* adapter: the registered method through the contract: ``fit(FitData)`` (writes the files, builds
  RecBole's dataset, trains, validates through ``FitData.validate`` on our valid samples) and
  ``score(test)`` on our test samples.

The two sides alternate within every repeat (which goes first alternates too), so load from other
processes on a shared CPU hits both alike. Reported per model: median wall and process-CPU seconds of
each side and their ratios minus one (the overhead; target at most 5%). ``--clock`` picks the one
checked against the target; on a CPU shared with other jobs, ``--threads 1 --clock cpu`` measures
work rather than waiting (with several threads, waiting threads spin and inflate CPU time too).
Exit status 1 when a model's overhead exceeds the target.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks import metrics, registry
from benchmarks.contract import CellContext, FitData, without_labels
from benchmarks.data import canonical, protocols

TARGET_OVERHEAD = 0.05
DATASET = "movielens-100k"
NATIVE_NAME = "bench"


def settings_for(name: str, epochs: int):
    """The model's shipped settings with exactly ``epochs`` epochs (early stopping never fires)."""
    return registry.resolve_config(registry.get_entry(name), {"epochs": epochs, "stopping_step": epochs + 1})


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) since ``start`` (from :func:`clocks`)."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def run_native(name: str, proto, catalog, epochs: int, seed: int, folder: Path):
    """RecBole's own Trainer on our splits: ((wall s, CPU s), RecBole's test NDCG@10 over the full
    ranking, or AUC), the metric being a sanity value only."""
    from recbole.data import data_preparation
    from recbole.model.abstract_recommender import SequentialRecommender
    from recbole.utils import get_trainer, init_seed

    from baselines import recbole_atomic_files as atomic
    from baselines import recbole_compat as compat

    settings = settings_for(name, epochs)
    cls = compat.model_class(settings.model)
    reads_history = issubclass(cls, SequentialRecommender)
    task = proto.info.name
    data_dir = folder / NATIVE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        atomic.write_samples(data_dir / f"{NATIVE_NAME}.{split}.inter", proto.split(split),
                             settings.max_history if reads_history else None, task)
    features = getattr(settings, "user_features", []), getattr(settings, "item_features", [])
    atomic.write_features(data_dir / f"{NATIVE_NAME}.user", catalog.users, "user", features[0])
    atomic.write_features(data_dir / f"{NATIVE_NAME}.item", catalog.items, "item", features[1])
    evaluation = ({"eval_args": {"order": "TO", "mode": "full", "group_by": "user", "split": {"LS": "valid_and_test"}},
                   "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10"} if task == "next_item" else
                  {"eval_args": {"order": "TO", "mode": "labeled", "group_by": None, "split": {"LS": "valid_and_test"}},
                   "metrics": ["AUC", "LogLoss"], "valid_metric": "AUC"})
    recbole_settings = {
        **settings.model_params, **evaluation,
        "data_path": str(folder), "checkpoint_dir": str(folder / "saved"),
        "benchmark_filename": ["train", "valid", "test"], "load_col": None, "seed": seed, "reproducibility": True,
        "epochs": epochs, "stopping_step": epochs + 1,
        "train_batch_size": settings.train_batch_size, "eval_batch_size": settings.eval_batch_size,
        "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
        "train_neg_sample_args": None, "show_progress": False, "MAX_ITEM_LIST_LENGTH": settings.max_history,
        **({"alias_of_item_id": [atomic.HISTORY]} if reads_history else {}),
    }
    start = clocks()
    config = compat.make_config(cls, NATIVE_NAME, recbole_settings, "cpu")
    init_seed(seed, True)
    train_data, valid_data, test_data = data_preparation(config, compat.build_dataset(config))
    init_seed(seed, True)
    model = cls(config, train_data._dataset)
    with compat.tensorboard_logs_in(folder / "tensorboard"):
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    checkpoint = compat.load_checkpoint(trainer.saved_model_file)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return since(start), float(result["ndcg@10" if task == "next_item" else "auc"])


def run_adapter(name: str, proto, catalog, epochs: int, seed: int, folder: Path):
    """The registered method through the contract: ((wall s, CPU s), our test NDCG@10 over the 20
    candidates, or AUC)."""
    task = proto.info.name
    valid, test = proto.valid, proto.test

    def validate(scores: np.ndarray) -> dict[str, float]:
        return metrics.compute(task, valid["label"].to_numpy(), scores)

    entry = registry.get_entry(name)
    data = FitData(task=task, train=proto.train, train_full=proto.train, valid=without_labels(valid),
                   validate=validate, catalog=catalog, protocol=proto.info)
    ctx = CellContext(seed=seed, max_epochs=epochs, workdir=folder)
    start = clocks()
    method = entry.load_class()(settings_for(name, epochs), ctx)
    method.fit(data)
    scores = method.score(without_labels(test))
    seconds = since(start)
    return seconds, metrics.compute(task, test["label"].to_numpy(), scores)["ndcg@10" if task == "next_item" else "auc"]


def import_everything(names: list[str]) -> None:
    """Import both sides' modules before timing, so that neither pays the first import."""
    import recbole.data  # noqa: F401
    import recbole.trainer  # noqa: F401 (imports tensorboard, the Trainer's optimizers)
    import torch
    import torch.utils.tensorboard  # noqa: F401

    from baselines import recbole_compat as compat

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (~5 s)

    for name in names:
        compat.model_class(registry.resolve_config(registry.get_entry(name)).model)
        registry.get_entry(name).load_class()


def measure(name: str, side: str, proto, catalog, epochs: int, seed: int) -> dict:
    runner = run_native if side == "native" else run_adapter
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        (wall, cpu), metric = runner(name, proto, catalog, epochs, seed, Path(tmp))
        return {"wall_s": wall, "cpu_s": cpu, "metric": metric}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:5]))
    parser.add_argument("--models", default="sasrec,deepfm", help="registered RecBole methods, comma-separated")
    parser.add_argument("--full", action="store_true", help="all of MovieLens-100K (default: the tiny subset)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which overhead is checked against the target")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")  # RecBole's torch.cuda.amp use
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = args.models.split(",")
    import_everything(names)
    data = canonical.load(DATASET, tiny=not args.full)
    report, worst = {}, 0.0
    for name in names:
        task = registry.get_entry(name).tasks[0]
        proto = protocols.load(data, task)
        runs = {"native": [], "adapter": []}
        for repeat in range(args.repeats):
            order = ("native", "adapter") if repeat % 2 == 0 else ("adapter", "native")
            for side in order:
                runs[side].append(measure(name, side, proto, data.catalog, args.epochs, args.seed))
        med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s")} for side, rs in runs.items()}
        overhead = {k: med["adapter"][k] / med["native"][k] - 1 for k in ("wall_s", "cpu_s")}
        worst = max(worst, overhead[f"{args.clock}_s"])
        report[name] = {"task": task, "train_samples": len(proto.train), "epochs": args.epochs, "runs": runs,
                        "median": med, "overhead": overhead}
        print(f"{name:9s} {task:9s} native {med['native']['wall_s']:7.1f}s  adapter {med['adapter']['wall_s']:7.1f}s  "
              f"overhead {overhead['wall_s']:+.1%} wall, {overhead['cpu_s']:+.1%} cpu  "
              f"(test {'NDCG@10' if task == 'next_item' else 'AUC'}: RecBole's "
              f"{'full ranking ' if task == 'next_item' else ''}{runs['native'][0]['metric']:.3f}, "
              f"ours {'on 20 candidates ' if task == 'next_item' else ''}{runs['adapter'][0]['metric']:.3f})",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"dataset": DATASET, "full": args.full, "repeats": args.repeats,
                                        "threads": args.threads, "clock": args.clock,
                                        "target_overhead": TARGET_OVERHEAD, "models": report}, indent=1))
    return 0 if worst <= TARGET_OVERHEAD else 1


if __name__ == "__main__":
    sys.exit(main())
