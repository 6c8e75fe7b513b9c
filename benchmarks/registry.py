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
``llmrec_bench.methods`` (``name = "package.module:Class"``); their class carries the decorator.

Hyperparameters are data: ``<folder>/configs/<name>.yaml``, when present, holds the method's
defaults, layered over its ``Config`` dataclass and under the suite's overrides. Unknown keys are
rejected by the dataclass.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from benchmarks.contract import TASKS

ROOT = Path(__file__).resolve().parent.parent
METHOD_PACKAGES = ("methods", "baselines")
ENTRY_POINT_GROUP = "llmrec_bench.methods"
FAMILIES = ("reference", "conventional", "llm")


class UnknownName(KeyError):
    """A name that is not registered; the message lists close matches and all known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def did_you_mean(kind: str, name: str, known: list[str]) -> UnknownName:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownName(f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class MethodEntry:
    """A registered name, known before its module is imported."""

    name: str
    tasks: tuple[str, ...]
    family: str
    target: str  # "package.module:Class"
    config_file: Path | None
    trains: bool = True  # False: fit learns nothing from the training samples (a suite's shots do not apply)

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


#: name -> entry for classes whose decorator has run (entry-point classes are known only this way).
_DECORATED: dict[str, MethodEntry] = {}


def register_method(name: str, *, tasks: tuple[str, ...] | list[str], family: str, trains: bool = True):
    """Class decorator that registers ``cls`` under ``name`` (stackable for named variants).

    The arguments must be literals: the registry reads them from the source without importing it.
    A variant (say ``reclora-shared``) is the same class registered again under another name with its
    own ``configs/<name>.yaml``. ``trains=False`` marks a method that learns nothing from its training
    samples (zero-shot): a suite's ``family_defaults`` shots are not applied to it.
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad or family not in FAMILIES:
        raise ValueError(f"register_method({name!r}): tasks must be in {TASKS}, family in {FAMILIES}")

    def wrap(cls: type) -> type:
        previous = _DECORATED.get(name)
        target = f"{cls.__module__}:{cls.__qualname__}"
        if previous is not None and previous.target != target:
            raise ValueError(f"method name '{name}' is registered twice ({previous.target} and {target})")
        _DECORATED[name] = MethodEntry(name, tuple(tasks), family, target, None, trains)
        registered = getattr(cls, "registered_names", ())
        cls.registered_names = (*registered, name)
        return cls

    return wrap


def _literal(node: ast.AST) -> Any:
    return ast.literal_eval(node)


def _scan_file(path: Path, package: str) -> list[MethodEntry]:
    tree = ast.parse(path.read_text(), filename=str(path))
    entries = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) == "register_method"):
                continue
            name = _literal(deco.args[0])
            kwargs = {kw.arg: _literal(kw.value) for kw in deco.keywords}
            entries.append(MethodEntry(
                name=name,
                tasks=tuple(kwargs["tasks"]),
                family=kwargs["family"],
                target=f"{package}.{path.stem}:{node.name}",
                config_file=path.parent / "configs" / f"{name}.yaml",
                trains=kwargs.get("trains", True),
            ))
    return entries


def _entry_point_entries() -> list[MethodEntry]:
    entries = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        entries.extend(_DECORATED[name] for name in getattr(cls, "registered_names", ()))
    return entries


def discover(roots: Mapping[str, Path] | None = None) -> dict[str, MethodEntry]:
    """All registered methods: decorated classes in ``methods/`` and ``baselines/`` plus entry points."""
    roots = roots or {pkg: ROOT / pkg for pkg in METHOD_PACKAGES}
    found: dict[str, MethodEntry] = {}
    sources = [
        entry
        for package, folder in roots.items()
        for path in sorted(folder.glob("*.py"))
        if not path.name.startswith("_")
        for entry in _scan_file(path, package)
    ]
    for entry in sources + _entry_point_entries():
        if entry.name in found and found[entry.name].target != entry.target:
            raise ValueError(f"method name '{entry.name}' is registered twice "
                             f"({found[entry.name].target} and {entry.target})")
        found[entry.name] = entry
    return found


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
