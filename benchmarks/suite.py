"""Suite schema: declarative files in ``benchmarks/suites/<name>.yaml`` that say which cells to run.

A cell is (dataset, protocol, method, seed, shots). A suite file is validated completely before any
cell starts: unknown keys and wrong types fail with the key's path. The schema, with defaults, is the
set of dataclasses below; ``benchmarks/suites/quick.yaml`` is a commented example.
"""
from __future__ import annotations

import copy
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks import registry
from benchmarks.data.cards import canonical_hash, known_cards, load_card
from benchmarks.registry import FAMILIES, did_you_mean, discover

SUITES_DIR = Path(__file__).resolve().parent / "suites"
#: a suite name is a run folder's prefix: no path separators, no leading dot (it cannot leave --out)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: YAML nodes a suite may expand to, aliases counted at every use (a billion-laughs file is refused)
MAX_NODES = 100_000
MAX_SEED = 2**32 - 1
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?")
QUANTS = ("nf4", "none")


class SuiteError(ValueError):
    """A suite file (or a CLI override of it) that cannot run; the message names the key."""


@dataclass(frozen=True)
class Budget:
    batch_size: int = 32            # scoring batch size; every method trains at the batch size of its own config
    max_epochs: int | None = None   # cap on every method's epochs (None: the method's own setting)
    eval_cap: int | None = None     # score at most this many test samples (a frozen subset)
    valid_cap: int | None = None    # validate on at most this many valid samples (a frozen subset)
    latency_samples: int = 16       # samples timed one by one for p50/p95
    warmup: int = 2                 # samples scored before timing starts
    cell_timeout_s: int = 3600      # a cell running longer is stopped and recorded as failed
    order_probe_samples: int = 200  # LLM next_item: test samples re-scored per candidate order (audits/order_probe.py)
    gpu_hours: float | None = None  # the stated cost budget of the LLM cells on one GPU, checked by --dry-run


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    protocols: tuple[str, ...] = ("ctr", "next_item")
    tiny: bool = False              # the card's tiny user subset (the ci suite)
    eval_cap: int | None = None     # this dataset's test cap, replacing the budget's (None: the budget's)


@dataclass(frozen=True)
class MethodEntry:
    config: dict = field(default_factory=dict)   # overrides of the method's configs/<name>.yaml
    shots: tuple[int | str, ...] = ("full",)                     # few-shot training sizes (ints or "full")
    datasets: tuple[str, ...] = ()      # run only on these of the suite's datasets (empty: on all of them)
    seeds: tuple[int, ...] = ()         # run only these of the suite's seeds (empty: all of them)
    per_dataset: dict = field(default_factory=dict)   # dataset -> overrides layered over `config` there (a key
    #                                     replaces the whole value, nested mappings included)
    llm: str = ""                       # this method's backbone; "" = the suite's `llm` (--llm sets both)
    sources: dict = field(default_factory=dict)   # setting -> where its value comes from, printed by --dry-run;
    #                                     a setting is a config key, "shots", "llm" or "seeds", or "key@dataset";
    #                                     "commit" names the repository and commit the lines refer to

    def config_for(self, dataset: str) -> dict:
        """The config overrides of this method on ``dataset``."""
        return {**self.config, **self.per_dataset.get(dataset, {})}


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    datasets: tuple[DatasetEntry, ...]
    methods: dict[str, MethodEntry]
    seeds: tuple[int, ...] = (1,)
    budget: Budget = Budget()
    device: str = "cpu"
    # settings for every method of a family (conventional, llm, reference) that its own entry does not
    # set, e.g. `llm: {shots: [64]}` so that `--methods lora-seq` trains on the suite's few-shot subset
    family_defaults: dict[str, MethodEntry] = field(default_factory=dict)
    llm: str = ""                   # backbone id or path for LLM methods ("" = offline SmolLM2)
    quant: str = "nf4"              # nf4 | none
    needs_gpu: bool = False         # refuse to start on a machine without CUDA (dry runs are fine)

    def digest(self) -> str:
        return canonical_hash(asdict(self))

    def budget_for(self, dataset: str) -> Budget:
        """The budget of ``dataset``'s cells: the suite's, with the dataset entry's ``eval_cap`` when it sets one."""
        entry = next((d for d in self.datasets if d.name == dataset), None)
        if entry is None or entry.eval_cap is None:
            return self.budget
        return replace(self.budget, eval_cap=entry.eval_cap)

    def seeds_for(self, method: str, trains: bool = True) -> tuple[int, ...]:
        """The seeds ``method`` runs with: its entry's, else the suite's; the first only when it does
        not train (its other seeds would repeat the same measurement)."""
        seeds = self.methods[method].seeds or self.seeds
        return seeds if trains else seeds[:1]


@dataclass(frozen=True)
class Cell:
    dataset: str
    task: str
    method: str
    seed: int
    shots: int | str

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.task}/{self.method}/seed={self.seed}/shots={self.shots}"


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _check_type(value, option, where)
            except SuiteError:
                continue
        raise SuiteError(f"{where}: expected {hint}, got {value!r}")
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SuiteError(f"{where}: expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(hint) or (Any,)
        return tuple(_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise SuiteError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise SuiteError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    values = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise SuiteError(f"{where}: missing required key '{name}'")
            continue
        values[name] = _check_type(raw[name], hints[name], f"{where}.{name}")
    return cls(**values)


def parse(raw: dict, where: str) -> Suite:
    # top-level keys named x-... only hold YAML anchors for the rest of the file (paper.yaml's shared recipes)
    raw = {key: value for key, value in copy.deepcopy(raw).items() if not str(key).startswith("x-")}
    datasets = raw.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise SuiteError(f"{where}.datasets: expected a non-empty list")
    raw["datasets"] = tuple(_build(DatasetEntry, d if isinstance(d, dict) else {"name": d},
                                   f"{where}.datasets[{i}]") for i, d in enumerate(datasets))
    methods = raw.get("methods")
    if isinstance(methods, list):
        methods = {m: {} for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise SuiteError(f"{where}.methods: expected a non-empty list or mapping")
    raw["family_defaults"] = _family_defaults(raw.get("family_defaults") or {}, f"{where}.family_defaults")
    registered = discover()
    raw["methods"] = {m: _build(MethodEntry, _with_family_defaults(m, spec or {}, raw["family_defaults"], registered),
                                f"{where}.methods.{m}")
                      for m, spec in methods.items()}
    raw["budget"] = _build(Budget, raw.get("budget") or {}, f"{where}.budget")
    suite = _build(Suite, raw, where)
    _check_values(suite, where)
    _check_names(suite, where)
    return suite


def _check_values(suite: Suite, where: str) -> None:
    """Values of the right type that still cannot run: each would fail (or silently misbehave) inside
    every cell, so they fail here, before a run folder exists."""
    if not NAME_PATTERN.fullmatch(suite.name):
        raise SuiteError(f"{where}.name: {suite.name!r} must match {NAME_PATTERN.pattern} "
                         "(letters, digits, '.', '_', '-'; at most 64; it names the run folder)")
    if not suite.seeds:
        raise SuiteError(f"{where}.seeds: empty; give at least one seed")
    bad = [s for s in suite.seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise SuiteError(f"{where}.seeds: {bad} outside 0..{MAX_SEED}")
    if len(set(suite.seeds)) != len(suite.seeds):
        raise SuiteError(f"{where}.seeds: duplicate seeds in {list(suite.seeds)}")
    if not DEVICE_PATTERN.fullmatch(suite.device):
        raise SuiteError(f"{where}.device: {suite.device!r}; expected cpu, cuda or cuda:N")
    if suite.quant not in QUANTS:
        raise SuiteError(f"{where}.quant: {suite.quant!r}; expected one of {list(QUANTS)}")
    budget = suite.budget
    for key, low in (("batch_size", 1), ("cell_timeout_s", 1), ("latency_samples", 0), ("warmup", 0),
                     ("max_epochs", 1), ("eval_cap", 1), ("valid_cap", 1)):
        value = getattr(budget, key)
        if value is not None and value < low:
            raise SuiteError(f"{where}.budget.{key}: {value}; expected an integer >= {low}")
    if budget.gpu_hours is not None and not budget.gpu_hours > 0:
        raise SuiteError(f"{where}.budget.gpu_hours: {budget.gpu_hours}; expected a positive number of hours")
    for i, entry in enumerate(suite.datasets):
        if entry.eval_cap is not None and entry.eval_cap < 1:
            raise SuiteError(f"{where}.datasets[{i}].eval_cap: {entry.eval_cap}; expected an integer >= 1")
    for name, spec in suite.methods.items():
        outside = sorted(set(spec.seeds) - set(suite.seeds))
        if outside or len(set(spec.seeds)) != len(spec.seeds):
            raise SuiteError(f"{where}.methods.{name}.seeds: {list(spec.seeds)}; expected distinct seeds among "
                             f"the suite's {list(suite.seeds)}")


def _family_defaults(raw: Any, where: str) -> dict[str, MethodEntry]:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping of family -> method settings, got {raw!r}")
    out = {}
    for family, spec in raw.items():
        if family not in FAMILIES:
            raise SuiteError(f"{where}: unknown family {family!r}; known: {sorted(FAMILIES)}")
        out[family] = _build(MethodEntry, spec or {}, f"{where}.{family}")
    return out


def _with_family_defaults(name: str, spec: Any, defaults: dict[str, MethodEntry], registered: dict) -> Any:
    """``spec`` with the keys it leaves out taken from its family's defaults; shots only for methods
    that train (unknown names: unchanged, ``_check_names`` reports them)."""
    entry = registered.get(name)
    if not isinstance(spec, dict) or entry is None or entry.family not in defaults:
        return spec
    family = defaults[entry.family]
    given = {f.name: getattr(family, f.name) for f in fields(MethodEntry)
             if getattr(family, f.name) != getattr(MethodEntry(), f.name) and (entry.trains or f.name != "shots")}
    return {**given, **spec}


def _check_names(suite: Suite, where: str) -> None:
    registered = discover()
    cards = known_cards()
    for entry in suite.datasets:
        if entry.name not in cards:
            raise SuiteError(f"{where}: {did_you_mean('dataset', entry.name, cards)}")
        for proto in entry.protocols:
            if proto not in ("ctr", "next_item"):
                raise SuiteError(f"{where}: dataset '{entry.name}': unknown protocol '{proto}'")
    for name, spec in suite.methods.items():
        if name not in registered:
            raise SuiteError(f"{where}: {did_you_mean('method', name, list(registered))}")
        for dataset in (*spec.datasets, *spec.per_dataset):
            if dataset not in cards:
                raise SuiteError(f"{where}.methods.{name}: {did_you_mean('dataset', dataset, cards)}")
        for dataset, overrides in spec.per_dataset.items():
            if not isinstance(overrides, dict):
                raise SuiteError(f"{where}.methods.{name}.per_dataset.{dataset}: expected a mapping of config "
                                 f"overrides, got {overrides!r}")
        for shots in spec.shots:
            if shots != "full" and not (isinstance(shots, int) and shots > 0):
                raise SuiteError(f"{where}.methods.{name}.shots: expected positive ints or 'full', got {shots!r}")


def config_dict(config: Any) -> dict:
    """A method's resolved config as a plain mapping (what records store and hash)."""
    if config is None:
        return {}
    return asdict(config) if is_dataclass(config) else dict(config)


def config_hash(method: str, config: dict) -> str:
    return canonical_hash({"method": method, "config": config})


def config_key(method: str, dataset: str, spec: MethodEntry) -> str:
    """The key of :func:`resolve_configs` that holds ``method``'s config on ``dataset``."""
    return f"{method}@{dataset}" if dataset in spec.per_dataset else method


def _resolved(name: str, overrides: dict, where: str) -> dict:
    try:
        config = registry.resolve_config(registry.get_entry(name), overrides)
    except (ValueError, TypeError) as err:
        raise SuiteError(f"{where}: {err}") from None
    if is_dataclass(config):
        try:
            hints = typing.get_type_hints(type(config))
        except Exception:  # noqa: BLE001 - hints a method wrote loosely are not checked
            hints = {}
        for f in fields(config):
            if f.name in hints:
                _check_type(getattr(config, f.name), hints[f.name], f"{where}.{f.name}")
    return config_dict(config)


def resolve_configs(suite: Suite) -> dict[str, tuple[str, dict]]:
    """:func:`config_key` -> (config hash, config) for every method of ``suite`` (and every dataset with
    its own overrides): its defaults, its YAML file and the suite's overrides, with each value checked
    against the ``Config`` dataclass's type hints, so a mistyped key or a string where a number belongs
    fails before any cell (this imports the methods' modules). A ``sources`` entry must name a setting."""
    out = {}
    for name, spec in suite.methods.items():
        where = f"{suite.name}.methods.{name}"
        variants = {name: (spec.config, f"{where}.config")}
        variants.update({config_key(name, d, spec): (spec.config_for(d), f"{where}.per_dataset.{d}")
                         for d in spec.per_dataset})
        for key, (overrides, at) in variants.items():
            as_dict = _resolved(name, overrides, at)
            out[key] = (config_hash(name, as_dict), as_dict)
        settings = {*out[name][1], "shots", "llm", "seeds", "commit"}
        for source in spec.sources:
            setting, _, dataset = str(source).partition("@")
            if setting not in settings or (dataset and dataset not in spec.per_dataset):
                raise SuiteError(f"{where}.sources: {source!r} names no setting of {name} (a config key, shots, "
                                 "llm, seeds or commit, with @dataset only for a dataset listed in per_dataset)")
    return out


def settings_lines(suite: Suite, configs: dict[str, tuple[str, dict]]) -> list[str]:
    """What ``--dry-run`` prints after the cells: per method, its config hash, backbone and every setting
    the suite gives it, each with its source where the suite names one (``# file:line``)."""
    lines = []
    for name, spec in suite.methods.items():
        if not (spec.config or spec.per_dataset or spec.sources or spec.llm or spec.seeds):
            continue
        llm = spec.llm or suite.llm
        lines.append(f"{name}: config {configs[name][0][:10]}" + (f", backbone {llm}" if llm else "")
                     + (f", on {', '.join(spec.datasets)} only" if spec.datasets else "")
                     + (f", seeds {', '.join(map(str, spec.seeds))} only" if spec.seeds else "")
                     + (f"; sources at {spec.sources['commit']}" if "commit" in spec.sources else ""))
        given = [(key, key, value) for key, value in spec.config.items()]
        given += [(key, key, value) for key, value in (("shots", list(spec.shots)), ("llm", llm))
                  if key in spec.sources]
        for dataset, values in spec.per_dataset.items():
            hashed = configs[config_key(name, dataset, spec)][0][:10]
            given += [(f"{key}@{dataset}", f"{key}@{dataset} (config {hashed})", value)
                      for key, value in values.items()]
        for setting, label, value in given:
            source = spec.sources.get(setting)
            lines.append(f"    {label} = {value!r}" + (f"    # {source}" if source else ""))
    return lines


def known_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    """The file a suite is named by: a path to a YAML file, or a name in ``benchmarks/suites/``."""
    try:
        path = Path(name_or_path)
        if path.is_dir():
            raise SuiteError(f"--suite {name_or_path}: a folder; give a suite name or a YAML file")
        if path.is_file():
            return path
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    except OSError as err:  # e.g. a name longer than the file system allows
        raise SuiteError(f"--suite: cannot use {name_or_path[:80]!r} ({err.strerror})") from None
    raise SuiteError(str(did_you_mean("suite", name_or_path, known_suites())))


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    return parse(read_suite_file(path), str(path))


def read_suite_file(path: Path) -> dict:
    """A suite file's mapping, refused with one line if it is no file, not YAML, not a mapping, or
    expands (anchors and aliases counted at every use) to more than :data:`MAX_NODES` nodes."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path}: cannot read the suite file ({type(err).__name__}: {err})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        size = _expanded_nodes(root)
        if size > MAX_NODES:
            raise SuiteError(f"{path}: expands to more than {MAX_NODES:,} YAML nodes (aliases counted at "
                             "each use); refusing it")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite file must be a mapping (name, datasets, methods ...), "
                         f"got {type(raw).__name__}")
    return raw


def _expanded_nodes(root: yaml.Node | None) -> int:
    """Nodes of ``root`` with every alias expanded, computed without expanding (memoized per node)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_NODES + 1  # a node that contains itself expands forever
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_NODES + 1)
        return sizes[id(node)]

    return size(root) if root is not None else 0


def cells(suite: Suite) -> list[Cell]:
    """Every cell of the suite, in a stable order, skipping methods that lack a dataset's protocol. A
    method that learns nothing from its training samples (``trains=False``: random, zero-shot) runs
    with the suite's first seed only: its other seeds would repeat the same measurement."""
    registered = discover()
    out = []
    for entry in suite.datasets:
        card_protocols = load_card(entry.name).protocols
        for task in entry.protocols:
            if task not in card_protocols:
                continue
            for method, spec in suite.methods.items():
                if task not in registered[method].tasks or (spec.datasets and entry.name not in spec.datasets):
                    continue
                for shots in spec.shots:
                    for seed in suite.seeds_for(method, registered[method].trains):
                        out.append(Cell(entry.name, task, method, seed, shots))
    return out
