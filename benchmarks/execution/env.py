"""What a run ran on: versions, device, git commit and dirty flag, the plugin distributions that provided
methods and the plugins skipped as broken (written to ``env.json``)."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone

from benchmarks import registry
from benchmarks.registry import ROOT
from methods.cpu_dtype import cpu_model

PACKAGES = ("llmrec-bench", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "recbole",
            "numpy", "pandas", "pyarrow", "datasets", "scikit-learn", "tabulate", "gguf", "ray")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu() -> dict | None:
    """CUDA device name and memory, importing torch only if it is installed."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(), "cuda": torch.version.cuda}


#: how this cell's process started; a fork server's child updates it
#: (``{"kind": "forked", "profile", "preloaded_rss_mb"}``: the resident set it inherited; see
#: benchmarks.execution.forkserver)
PROCESS_START: dict = {"kind": "spawned"}


def process_facts() -> dict:
    """What a cell's process computed with, recorded at its end (for a person chasing a drift between
    reruns): how the process started, the CPU model and how many CPUs it may run on, the machine's 1-minute load, MKL's
    reproducibility mode and, if the cell used torch, its intra- and inter-op threads and the CPU
    kernel set ATen dispatched to."""
    import os

    facts = {"process_start": dict(PROCESS_START), "cpu": cpu_model(),
             "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
             "load_1m": round(os.getloadavg()[0], 2), "mkl_cbwr": os.environ.get("MKL_CBWR")}
    torch = sys.modules.get("torch")  # a reference method never loads it; importing it here costs ~2 s
    if torch is not None:
        facts.update(torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                     cpu_capability=torch.backends.cpu.get_cpu_capability())
    return facts


def collect(device: str) -> dict:
    import os

    status = _git("status", "--porcelain")
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "gpu": gpu() if device.startswith("cuda") else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": versions(),
        "plugins": registry.plugins(),  # [{"name", "version"}] of every distribution whose methods loaded
        "plugin_problems": registry.broken_plugins(),  # one line per skipped plugin entry point
    }
