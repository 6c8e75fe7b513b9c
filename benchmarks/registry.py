"""Method registry: one decorator, lazy entries, did-you-mean errors.

A contributor adds a method with one file in ``methods/`` or ``baselines/``::

    @register_method("itemknn", tasks=("next_item",), family="conventional")
    class ItemKNN:
        @dataclass
        class Config: ...
        def __init__(self, config: Config, ctx: CellContext): ...

Listing is lazy (as in lm-evaluation-harness): the registry reads the ``@register_method(...)``
decorators of the files in those folders with :mod:`ast`, without importing them, so ``--list`` and
RecBole-only runs never import transformers or bitsandbytes. A module is imported only when one of
its methods is built. External packages add methods through the entry-point group
``llmrec_bench.methods`` (``name = "package.module:Class"``); their class carries the decorator, and
the key must be the name it registers.

A mistake in a method file (an argument that is no literal, an unknown task or family) stops
discovery with one :class:`RegistrationError` line naming the file and line. A broken plugin (it
fails to import, its class lacks the decorator, its key differs from the decorator's name) is
reported once on stderr, listed by :func:`broken_plugins` and skipped; only a run that names one of
its methods fails, with that line.

Hyperparameters are data: ``<folder>/configs/<name>.yaml``, when present, holds the method's
defaults, layered over its ``Config`` dataclass and under the suite's overrides. Unknown keys are
rejected by the dataclass.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks.contract import TASKS

ROOT = Path(__file__).resolve().parent.parent
METHOD_PACKAGES = ("methods", "baselines")
ENTRY_POINT_GROUP = "llmrec_bench.methods"
FAMILIES = ("reference", "conventional", "llm")
#: a method name is part of cell keys and file names: no path separators, no spaces
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYWORDS = ("tasks", "family", "trains")  # besides the name, the only arguments of register_method
_log = logging.getLogger(__name__)


class UnknownName(KeyError):
    """A name that is not registered; the message lists close matches and all known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RegistrationError(UnknownName, ValueError):
    """A method registered wrongly, in a file or a plugin: one line naming the file or distribution.

    An :class:`UnknownName` too, so the CLI prints it as one line and exits 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def did_you_mean(kind: str, name: str, known: list[str]) -> UnknownName:
    """The error for an unknown ``name``; for a method that a broken plugin provides, that plugin's problem."""
    if kind == "method":
        problem = _discover(None)[1].get(name)
        if problem is not None:
            return RegistrationError(f"method '{name}' is unavailable: {problem}")
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownName(f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class Plugin:
    """The installed distribution and entry point that provide a method."""

    distribution: str
    version: str
    entry_point: str  # "key = package.module:Class"

    def __str__(self) -> str:
        return f"plugin {self.distribution} {self.version} (entry point '{self.entry_point}')"


@dataclass(frozen=True)
class MethodEntry:
    """A registered name, known before its module is imported."""

    name: str
    tasks: tuple[str, ...]
    family: str
    target: str  # "package.module:Class"
    config_file: Path | None
    trains: bool = True  # False: fit learns nothing from the training samples (a suite's shots do not apply)
    source: Path | None = None  # in-tree methods: the module file
    plugin: Plugin | None = None  # methods from an entry point

    def load_class(self) -> type:
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def default_config(self) -> dict[str, Any]:
        if self.config_file is None or not self.config_file.exists():
            return {}
        return read_config_file(self.config_file)


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A method's YAML hyperparameters; ``include: <name>`` first reads ``<name>.yaml`` beside it, so
    a variant is a short file that includes its base and overrides a few keys."""
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameters")
    base = loaded.pop("include", None)
    if base is None:
        return loaded
    base_path = path.parent / f"{base}.yaml"
    if not base_path.exists() or base_path in (*seen, path):
        raise ValueError(f"{path}: 'include: {base}' needs {base_path}, existing and not including itself back")
    return {**read_config_file(base_path, (*seen, path)), **loaded}


#: plugin problems already written to stderr in this process
_REPORTED: set[str] = set()


def _relative(path: Path | str) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _check_arguments(where: str, name: Any, tasks: Any, family: Any, trains: Any = True) -> None:
    """Raises :class:`RegistrationError` naming ``where`` unless these are valid decorator arguments."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RegistrationError(f"{where}: register_method name {name!r} must match {NAME_PATTERN.pattern}")
    said = f"{where}: register_method({name!r})"
    if not isinstance(tasks, (tuple, list)) or not tasks:
        raise RegistrationError(f"{said}: tasks= must be a non-empty tuple from {', '.join(TASKS)}; got {tasks!r}")
    for task in tasks:
        if task not in TASKS:
            raise RegistrationError(f"{said}: unknown task {task!r}; allowed tasks: {', '.join(TASKS)}")
    if family not in FAMILIES:
        raise RegistrationError(f"{said}: unknown family {family!r}; allowed families: {', '.join(FAMILIES)}")
    if not isinstance(trains, bool):
        raise RegistrationError(f"{said}: trains= must be True or False, got {trains!r}")


def register_method(name: str, *, tasks: tuple[str, ...] | list[str], family: str, trains: bool = True):
    """Class decorator that registers ``cls`` under ``name`` (stackable for named variants).

    The arguments must be literals: the registry reads them from the source without importing it.
    A variant (say ``reclora-shared``) is the same class registered again under another name with its
    own ``configs/<name>.yaml``. ``trains=False`` marks a method that learns nothing from its training
    samples (zero-shot): a suite's ``family_defaults`` shots are not applied to it.

    Raises:
        RegistrationError: an invalid argument (a name taken twice is reported by :func:`discover`).
    """

    def wrap(cls: type) -> type:
        target = f"{cls.__module__}:{cls.__qualname__}"
        _check_arguments(_relative(getattr(sys.modules.get(cls.__module__), "__file__", None) or target),
                        name, tasks, family, trains)
        # kept on the class (not a decorated base's): two classes may claim a name, discover() decides
        cls.registered_entries = {**vars(cls).get("registered_entries", {}),
                                  name: MethodEntry(name, tuple(tasks), family, target, None, trains)}
        cls.registered_names = tuple(cls.registered_entries)  # what contributors and tests read
        return cls

    return wrap


def _decorator_arguments(deco: ast.expr, file: str) -> dict[str, Any]:
    """The literal arguments of one ``@register_method(...)`` in ``file``, read from source and checked."""
    where = f"{file}:{deco.lineno}"
    if not isinstance(deco, ast.Call):
        raise RegistrationError(f"{where}: @register_method needs arguments: (name, tasks=..., family=...)")
    if len(deco.args) != 1 or any(kw.arg not in _KEYWORDS for kw in deco.keywords):
        raise RegistrationError(f"{where}: register_method takes one name and the keywords tasks=, family=, "
                                f"trains=; got {ast.unparse(deco)}")
    values = {}
    for key, node in [("name", deco.args[0]), *((kw.arg, kw.value) for kw in deco.keywords)]:
        try:
            values[key] = ast.literal_eval(node)
        except ValueError:
            raise RegistrationError(f"{file}:{node.lineno}: register_method's {key} must be a literal (the "
                                    f"registry reads it without importing the file), got {ast.unparse(node)}") from None
    missing = [key for key in ("tasks", "family") if key not in values]
    if missing:
        raise RegistrationError(f"{where}: register_method({values['name']!r}) lacks {', '.join(missing)}=")
    _check_arguments(where, **values)
    return values


def _scan_file(path: Path, package: str) -> list[MethodEntry]:
    """The ``@register_method`` decorators of the top-level classes of ``path``, read without importing it."""
    file = _relative(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise RegistrationError(f"{file}:{err.lineno}: not valid Python ({err.msg})") from None
    entries = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            func = deco.func if isinstance(deco, ast.Call) else deco
            if getattr(func, "id", getattr(func, "attr", "")) != "register_method":
                continue
            args = _decorator_arguments(deco, file)
            entries.append(MethodEntry(
                name=args["name"], tasks=tuple(args["tasks"]), family=args["family"],
                target=f"{package}.{path.stem}:{node.name}",
                config_file=path.parent / "configs" / f"{args['name']}.yaml",
                trains=args.get("trains", True), source=path))
    return entries


def _plugin_entry(ep: importlib.metadata.EntryPoint, plugin: Plugin) -> MethodEntry:
    """The method that one entry point provides. Raises RegistrationError naming the plugin."""
    try:
        cls = ep.load()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a plugin's failure must not stop the others
        raise RegistrationError(f"{plugin}: failed to import ({type(err).__name__}: {err})") from None
    names = vars(cls).get("registered_names", ()) if isinstance(cls, type) else ()
    if not names:
        raise RegistrationError(f"{plugin}: {ep.value} is not decorated with @register_method")
    if ep.name not in names:
        raise RegistrationError(f"{plugin}: the key '{ep.name}' differs from the name the decorator "
                                f"registers ({', '.join(names)}); the key must be that name")
    return replace(vars(cls)["registered_entries"][ep.name], plugin=plugin)


def _plugins() -> tuple[list[MethodEntry], dict[str, str]]:
    """Every entry point of the group: (its methods, problems as claimed name -> one line)."""
    entries, problems = [], {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        plugin = Plugin(dist.name if dist else "?", dist.version if dist else "?", f"{ep.name} = {ep.value}")
        try:
            entries.append(_plugin_entry(ep, plugin))
        except RegistrationError as err:
            problems[ep.name] = str(err)
    return entries, problems


def _discover(roots: Mapping[str, Path] | None) -> tuple[dict[str, MethodEntry], dict[str, str]]:
    """(name -> entry, plugin problems as claimed name -> one line); reports new problems on stderr."""
    roots = roots or {pkg: ROOT / pkg for pkg in METHOD_PACKAGES}
    found: dict[str, MethodEntry] = {}
    for package, folder in roots.items():
        for path in sorted(p for p in folder.glob("*.py") if not p.name.startswith("_")):
            for entry in _scan_file(path, package):
                if entry.name in found:
                    raise RegistrationError(f"method name '{entry.name}' is registered twice "
                                            f"({_relative(found[entry.name].source)} and {_relative(path)})")
                found[entry.name] = entry
    plugin_entries, problems = _plugins()
    for entry in plugin_entries:
        taken = found.get(entry.name)
        if taken is None:
            found[entry.name] = entry
        elif taken.target != entry.target:
            by = taken.plugin or _relative(taken.source)
            problems.setdefault(entry.name, f"{entry.plugin}: method name '{entry.name}' is already registered by {by}")
    for line in problems.values():
        if line not in _REPORTED:
            _REPORTED.add(line)
            _log.warning("warning: %s; skipped", line)
    return found, problems


def discover(roots: Mapping[str, Path] | None = None) -> dict[str, MethodEntry]:
    """All registered methods: decorated classes in ``methods/`` and ``baselines/`` plus entry points.

    Raises:
        RegistrationError: a method file registers wrongly (the file and line are named).
    """
    return _discover(roots)[0]


def broken_plugins(roots: Mapping[str, Path] | None = None) -> list[str]:
    """One line per plugin entry point that was skipped, naming its distribution and the problem."""
    return sorted(set(_discover(roots)[1].values()))


def plugins(roots: Mapping[str, Path] | None = None) -> list[dict[str, str]]:
    """The plugin distributions whose methods loaded: ``[{"name", "version"}]``, sorted."""
    loaded = {(e.plugin.distribution, e.plugin.version) for e in discover(roots).values() if e.plugin}
    return [{"name": name, "version": version} for name, version in sorted(loaded)]


def provenance(entry: MethodEntry) -> dict[str, str]:
    """Where the method's code came from, for its record (JSON-serialisable).

    In-tree: ``{"kind": "in-tree", "target", "module": path relative to the repository, "sha256"}``
    of the module file (shared helpers it imports are covered by env.json's git commit and dirty
    flag). Plugin: ``{"kind": "plugin", "target", "distribution", "version", "entry_point"}``, plus
    the ``sha256`` of the plugin's module file when it has one.
    """
    module = entry.target.partition(":")[0]
    if entry.plugin is not None:
        out = {"kind": "plugin", "target": entry.target, **asdict(entry.plugin)}
        path = getattr(sys.modules.get(module), "__file__", None)
    else:
        path = entry.source
        out = {"kind": "in-tree", "target": entry.target, "module": _relative(path) if path else module}
    if path and Path(path).is_file():
        out["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def get_entry(name: str) -> MethodEntry:
    known = discover()
    if name not in known:
        raise did_you_mean("method", name, list(known))
    return known[name]


def resolve_config(entry: MethodEntry, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's ``Config`` dataclass from its defaults, its YAML file, then the suite's overrides.

    Raises:
        ValueError: naming the unknown key and the file or suite it came from.
    """
    cls = entry.load_class()
    config_cls = getattr(cls, "Config", None)
    merged = {**entry.default_config(), **(overrides or {})}
    if config_cls is None:
        if merged:
            raise ValueError(f"method '{entry.name}' takes no configuration, got {sorted(merged)}")
        return None
    if not is_dataclass(config_cls):
        raise TypeError(f"{entry.target}.Config must be a dataclass")
    allowed = {f.name for f in fields(config_cls)}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        raise ValueError(f"method '{entry.name}': unknown config key(s) {unknown}; "
                         f"known: {sorted(allowed)} (from {entry.config_file} or the suite overrides)")
    return config_cls(**merged)
