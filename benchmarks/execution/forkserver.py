"""Cells forked from a warm process: a run pays Python's start and the heavy imports once, not per cell.

The local executor starts, on first use, one server per preload profile (``python -m
benchmarks.execution.forkserver PROFILE``, stderr in ``logs/forkserver-PROFILE.log``). The server
imports the profile's modules (:data:`PROFILES`: what every cell that gets this profile imports
anyway, so a cell's peak RSS is not inflated by libraries it would not load) and then waits on its
stdin for one JSON request per line, ``{"argv": [...], "log": PATH}``. For each it forks a child that
runs :func:`benchmarks.execution.cell.main` with stdin on ``/dev/null`` and stdout and stderr on
``PATH``; it answers ``{"pid": N}`` at once and ``{"pid": N, "returncode": RC}`` when the child has
ended (``RC`` as :attr:`subprocess.Popen.returncode`: negative for a signal).

The child is a process of its own, as a spawned cell is: a copy-on-write copy of the server's memory,
its own peak RSS (Linux starts a forked child's ``ru_maxrss`` at its inherited resident set, the
preloaded libraries, as a fresh process that imported them would have), its own confinement
(:mod:`benchmarks.execution.sandbox`) and seeds, and it dies alone when it crashes, is killed or times
out. It dies with the server and the server with the executor (``PR_SET_PDEATHSIG``). The server
itself never runs a cell's code or a torch operation, so every child starts from the same state, and
no torch or Arrow thread pool exists at ``fork``. The threads that do exist are native ones that
handle ``fork`` themselves (OpenBLAS's pool, jemalloc's background thread), as under
:mod:`multiprocessing`'s ``fork`` start; the server refuses to serve if its imports leave a Python
thread running.

Which profile a method gets (:func:`profile_for`) depends on the module that registers it; a method
this table does not name (a plugin, a new file) gets ``harness`` and imports its own libraries, as in
a fresh process.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.registry import ROOT

_HARNESS = ("numpy", "pandas", "scipy.sparse", "yaml", "benchmarks.execution.cell", "benchmarks.metrics")
#: preload profile -> what its server imports ("module" or "module:function" to call once, idempotent)
PROFILES: dict[str, tuple[str, ...]] = {
    "harness": _HARNESS,
    # every RecBole model cell: torch, RecBole behind its compatibility shims, the adapter
    "recbole": (*_HARNESS, "torch", "baselines.recbole_compat:prepare", "recbole.model.sequential_recommender",
                "recbole.model.context_aware_recommender", "recbole.trainer", "baselines.recbole_adapter"),
    # every LLM cell on the default NF4 backbone (a Llama-architecture model): transformers, bitsandbytes,
    # datasets (prompt tokenization); peft and RecBole are left to the cells that use them
    "llm": (*_HARNESS, "torch", "transformers", "transformers.models.llama.modeling_llama", "bitsandbytes",
            "datasets", "methods.backbone", "methods.scoring", "methods.prompting"),
}
#: registering module (prefix) -> profile; anything else gets "harness"
PROFILE_OF_MODULE = (("baselines.recbole_adapter", "recbole"), ("methods.", "llm"))
READY_TIMEOUT_S = 300


class ForkServerError(RuntimeError):
    """A server that cannot start or serve; the executor then spawns the cell's process instead."""


def forks_cells(device: str) -> bool:
    """Whether cells on ``device`` are forked: on CPU only. On CUDA they are spawned, so that nothing a
    preloaded library did to the CUDA driver before ``fork`` (a device count, an initialized
    runtime) is inherited by the child, and a cell's start is small beside its GPU work."""
    return device == "cpu"


def profile_for(target: str) -> str:
    """The preload profile of a method registered at ``target`` ("package.module:Class")."""
    module = target.split(":")[0]
    return next((profile for prefix, profile in PROFILE_OF_MODULE
                 if module == prefix or (prefix.endswith(".") and module.startswith(prefix))), "harness")


def die_with_parent() -> None:
    """In a new process, before it starts: SIGKILL it when the process that started it dies (a SIGTERM
    or SIGKILL sent to the run alone leaves no cell running)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---- the server process -------------------------------------------------------------------------

def _preload(profile: str) -> None:
    for name in PROFILES[profile]:
        module, _, function = name.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(request: dict, profile: str, preloaded_rss_mb: float) -> None:
    """In the forked child: the cell's process from here on; never returns."""
    code = 1
    try:
        from benchmarks.execution import cell, env

        die_with_parent()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(source, target)
        os.close(log)
        os.close(null)
        env.PROCESS_START.update(kind="forked", profile=profile, preloaded_rss_mb=round(preloaded_rss_mb, 1))
        sys.argv = [cell.__file__, *request["argv"]]
        code = cell.main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child reports everything through its log and exit status
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _rss_mb() -> float:
    """This process's resident set now (what a child forked now inherits), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def serve(profile: str) -> int:
    """The server's loop (``python -m benchmarks.execution.forkserver PROFILE``)."""
    start = time.perf_counter()
    try:
        _preload(profile)
    except Exception as err:  # noqa: BLE001 - reported to the executor, which spawns cells instead
        _send({"error": f"preloading profile {profile!r} failed: {type(err).__name__}: {err}"})
        return 1
    import threading

    if threading.active_count() > 1:
        _send({"error": f"profile {profile!r} leaves {threading.active_count()} Python threads after its imports; "
                        "forking them is unsafe"})
        return 1
    _send({"ready": True, "preload_seconds": round(time.perf_counter() - start, 2), "rss_mb": round(_rss_mb(), 1)})
    try:
        for line in sys.stdin:
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            rss_mb = _rss_mb()
            pid = os.fork()
            if pid == 0:
                _child(request, profile, rss_mb)
            _send({"pid": pid})
            _, status = os.waitpid(pid, 0)
            _send({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
    except (KeyboardInterrupt, BrokenPipeError):
        return 130
    return 0


# ---- the executor's side ------------------------------------------------------------------------

class ForkServer:
    """One running server (see the module docstring); :meth:`launch` starts a cell's process."""

    def __init__(self, profile: str, log_dir: Path):
        self.profile = profile
        self._stderr = open(log_dir / f"forkserver-{profile}.log", "ab")
        self._proc = subprocess.Popen([sys.executable, "-m", "benchmarks.execution.forkserver", profile],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      cwd=ROOT, preexec_fn=die_with_parent, bufsize=0)
        self._buffer = b""
        ready = self._next(READY_TIMEOUT_S)
        if ready is None or "error" in ready:
            self.close()
            reason = ready["error"] if ready else f"no answer within {READY_TIMEOUT_S} s or it exited"
            raise ForkServerError(f"fork server {profile!r}: {reason}")
        self.ready = ready

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _next(self, timeout: float | None) -> dict | None:
        """The server's next message; None at end of stream or after ``timeout`` seconds (None: wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def launch(self, argv: list[str], log: Path) -> ForkedCell:
        """Fork the cell's process: ``benchmarks.execution.cell.main(argv)``, its output in ``log``."""
        try:
            self._proc.stdin.write((json.dumps({"argv": argv, "log": str(log)}) + "\n").encode())
        except OSError as err:
            raise ForkServerError(f"fork server {self.profile!r} is gone: {err}") from None
        answer = self._next(READY_TIMEOUT_S)
        if answer is None or "pid" not in answer:
            raise ForkServerError(f"fork server {self.profile!r} did not fork the cell")
        return ForkedCell(self, answer["pid"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


class ForkedCell:
    """A forked cell's process, with the part of :class:`subprocess.Popen` the executor uses."""

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def _settle(self, timeout: float | None) -> None:
        message = self.server._next(timeout)
        if message is not None and message.get("pid") == self.pid and "returncode" in message:
            self.returncode = message["returncode"]
        elif message is None and not self.server.alive():  # the server died: so did its child
            self.returncode = self.server._proc.returncode or -signal.SIGKILL

    def poll(self) -> int | None:
        if self.returncode is None:
            self._settle(0)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._settle(None)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Launcher:
    """Starts cells' processes for one run: forked from a server per profile, spawned when forking is off
    or a server cannot serve (once per profile, with a warning in the run's output)."""

    def __init__(self, log_dir: Path, fork: bool = True):
        self.log_dir, self.fork = log_dir, fork
        self._servers: dict[str, ForkServer | None] = {}

    def start(self, argv: list[str], log: Path, profile: str):
        server = self._server(profile) if self.fork else None
        if server is not None:
            try:
                return server.launch(argv, log)
            except ForkServerError as err:
                print(f"warning: {err}; this cell's process is spawned", file=sys.stderr, flush=True)
                server.close()
                self._servers.pop(profile, None)
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "benchmarks.execution.cell", *argv], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=die_with_parent)

    def _server(self, profile: str) -> ForkServer | None:
        """The profile's server, started (or restarted after it died) on demand; None once it failed to start."""
        if profile in self._servers and self._servers[profile] is None:
            return None
        server = self._servers.get(profile)
        if server is not None and server.alive():
            return server
        if server is not None:
            server.close()
        try:
            server = ForkServer(profile, self.log_dir)
        except ForkServerError as err:
            print(f"warning: {err}; cells of this profile are spawned", file=sys.stderr, flush=True)
            server = None
        self._servers[profile] = server
        return server

    def close(self) -> None:
        for server in self._servers.values():
            if server is not None:
                server.close()
        self._servers.clear()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
