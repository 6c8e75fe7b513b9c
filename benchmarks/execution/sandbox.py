"""Label isolation: a cell's process gives up, before the method is built, the right to read any file
that holds answers, using Linux's Landlock (kernel 5.13+, no root needed).

Landlock rules grant rights beneath a folder; there is no "deny". So :func:`confine` grants reading
everywhere except beneath the denied paths: for every folder on the way from ``/`` to a denied path
it grants listing only (file names, not contents), and to every other entry of that folder it grants
reading. A file or folder made later directly inside one of those listed-only folders cannot be read
back, so the cell creates its workdir (where ``TMPDIR`` points) and the libraries' caches (Hugging
Face, torch, matplotlib) before it confines itself; writes are not restricted. The restriction is
inherited by every process the method starts, and it also forbids tracing or reading the memory of
processes outside it.

What is denied (see :func:`label_paths`): the cache's ``raw/``, ``tables/`` and ``protocols/``, every
dataset card's source folder, the whole run folder except the cell's workdir, and the process's own
``/proc/<pid>/mem``.
"""
from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same numbers on x86-64 and arm64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3


#: what :func:`label_paths` closes, in words (records carry it)
DENIED = ("cache raw/, tables/, protocols/", "every dataset card's source folder",
          "the run folder except the cell's workdir", "/proc/<pid>/mem")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class IsolationError(RuntimeError):
    """The process could not confine itself although the kernel offers Landlock."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    if not os.uname().sysname == "Linux":
        return 0
    abi = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def label_paths(cache_root: Path, source_folders: Iterable[Path], run_dir: Path, workdir: Path) -> list[Path]:
    """Everything a method must not read; ``workdir`` (inside ``run_dir``) stays readable."""
    denied = [cache_root / name for name in ("raw", "tables", "protocols")]
    denied += list(source_folders)
    run_dir, workdir = run_dir.resolve(), workdir.resolve()
    denied += [child for child in _entries(run_dir) if child != workdir and child not in workdir.parents]
    denied += [child for child in _entries(run_dir / "work") if child != workdir]
    proc = Path(f"/proc/{os.getpid()}")
    denied += [proc / "mem", *(task / "mem" for task in _entries(proc / "task"))]
    return denied


def _entries(folder: Path) -> list[Path]:
    try:
        return [folder / name for name in os.listdir(folder)]
    except OSError:
        return []


def confine(denied: Iterable[Path]) -> dict:
    """Restrict this process (for good) so that nothing beneath ``denied`` can be opened for reading.

    Returns what the record says about it: ``{"mechanism", "abi"}``; mechanism "none" where the
    kernel has no Landlock (nothing is then enforced, and the record says so).
    """
    abi = landlock_abi()
    paths = {Path(os.path.realpath(p)) for p in denied if os.path.lexists(p)}
    # a target beneath another is already denied, and granting its parents would open the outer one
    targets = sorted(p for p in paths if not any(outer in p.parents for outer in paths))
    if abi < 1:
        return {"mechanism": "none", "abi": 0}
    libc = _libc()
    attr = _RulesetAttr(_READ_FILE | _READ_DIR)
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise IsolationError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        for path, access in _grants(targets):
            _add_rule(libc, ruleset, path, access)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise IsolationError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise IsolationError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return {"mechanism": "landlock", "abi": abi}


def _grants(targets: list[Path]) -> list[tuple[Path, int]]:
    """(path, rights) for every rule: listing on the folders above a target, reading on the rest."""
    above = {parent for target in targets for parent in target.parents}
    grants = [(folder, _READ_DIR) for folder in sorted(above)]
    for folder in sorted(above):
        for name in sorted(os.listdir(folder)) if os.access(folder, os.R_OK) else []:
            child = folder / name
            if child in above or child in targets:
                continue
            try:
                mode = os.lstat(child).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):  # a link's target is granted (or not) where it lies
                continue
            grants.append((child, _READ_FILE | _READ_DIR if stat.S_ISDIR(mode) else _READ_FILE))
    return grants


def _add_rule(libc, ruleset: int, path: Path, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # gone since it was listed: nothing to grant
    try:
        rule = _PathBeneathAttr(access, fd)
        if libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise IsolationError(f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
