"""Backbone memorization probe: does the bare LLM know the dataset's raw file by heart?

Di Palma et al., "Do LLMs Memorize Recommendation Datasets? A Preliminary Study on MovieLens-1M"
(arXiv 2505.10212, 2025) measure item memorization as the share of items whose attributes an LLM
reproduces when prompted with the raw file's line for the item id (GPT-4: 80.76% of ML-1M's items).
A backbone that has memorized the catalog can look better on it than it would on unseen items, so
every (backbone, dataset) pair gets this score beside its results.

The probe: the bare base model (no adapters, no chat template: raw text completion) reads a few-shot
prompt written in the raw file's line format and ending with a held-out item's id (ML-100K:
``"12|"``), and greedy decoding writes the rest of the line. The answer is the text up to the
format's end delimiter (or a newline); it is compared with the title as the file writes it, rebuilt
from the catalog (:func:`file_title`: "The Usual Suspects" + 1995 -> "Usual Suspects, The (1995)").
The line formats and the settings are data (``memorization.yaml``); a dataset without a known line
format (Amazon, Steam) is not probed.

Scores (each with its count and a 95% Wilson interval, :func:`wilson_interval`):

* ``exact``: the stripped answer equals the file's form of the title;
* ``normalized``: equal after :func:`normalize_title` (lowercase, trailing article moved to the front,
  year parenthetical dropped, punctuation dropped, whitespace folded).

What keeps the prompt from fooling the probe:

* the examples are ONE seeded set of items shared by every query (the prefix is identical, so its
  keys and values are computed once), never probed themselves;
* an item whose normalized title equals an example's is not probed (ML-100K repeats 23 titles), and
  an answer equal to an example's title counts as ``copied``, never as a match: copying the prompt
  cannot score;
* items whose raw id lies within ``id_gap`` of an example's are not probed, so no query sits right
  next to a line the prompt shows (neighbouring ids are often sequels or the same batch of films);
  the examples are written in id order, as in the file, and say nothing about the queried item;
* the answer is read from the generated text only, never from the prompt.

NOTE (deviations from the paper): only the title (with year) is asked for, not genres; the examples
are few lines of the file (u.item's lines stop after the title: the catalog keeps no release date or
URL), not the paper's prompt; scoring is string equality, not a judged match. Greedy decoding is
deterministic, so one run is the result: it is cached under ``<cache>/memorization/`` by the backbone's
and the dataset's hashes, the catalog rows read and the settings (:func:`cached_probe`).
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.contract import Catalog
from benchmarks.data.cache import atomic_path
from benchmarks.data.canonical import PLACEHOLDER_TITLE

_log = logging.getLogger(__name__)

CONFIG = Path(__file__).with_name("memorization.yaml")
#: the cache subfolder (under the cell's cache dir)
SUBFOLDER = "memorization"
LEVEL = 0.95

#: ``generate(prompts) -> one generated text per prompt, in order`` (the text after the prompt)
Generate = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True)
class ProbeSettings:
    """How many items and examples, and how to decode (see ``memorization.yaml``)."""

    n_items: int = 500
    n_examples: int = 3
    seed: int = 2025
    id_gap: int = 2
    max_new_tokens: int = 24
    batch_size: int = 64
    n_shown: int = 5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name in ("id_gap", "n_shown", "seed") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"memorization setting {f.name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class LineFormat:
    """One raw file's line format (see ``memorization.yaml`` for the fields)."""

    file: str
    header: str
    line: str
    query: str
    end: str
    quoting: str
    articles: tuple[str, ...]
    skip_titles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.quoting not in ("none", "csv"):
            raise ValueError(f"{self.file}: quoting must be 'none' or 'csv', got {self.quoting!r}")
        if not self.end or "{raw_id}" not in self.query or "{title}" not in self.line:
            raise ValueError(f"{self.file}: needs an end delimiter, {{raw_id}} in query and {{title}} in line")

    def field(self, title: str) -> str:
        """``title`` as it stands on a line (a CSV field when quoting is csv)."""
        if self.quoting == "csv":
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow([title])
            return out.getvalue()
        return title

    def render(self, raw_id: str, title: str, genres: str) -> str:
        return self.line.format(raw_id=raw_id, title=self.field(title), genres=genres)

    def answer(self, text: str) -> str:
        """The title in a generated continuation: up to the end delimiter or a newline, stripped."""
        line = text.lstrip(" \t").split("\n", 1)[0]
        if self.quoting == "csv" and line.startswith('"'):
            return next(csv.reader([line]))[0].strip()
        return line.split(self.end, 1)[0].strip()

    def complete(self, text: str) -> bool:
        """Whether a continuation already holds its whole answer (decoding may stop)."""
        line = text.lstrip(" \t")
        if "\n" in line:
            return True
        if self.quoting == "csv" and line.startswith('"'):
            return re.match(r'"(?:[^"]|"")*"', line) is not None
        return self.end in line


@dataclass(frozen=True)
class ProbeConfig:
    version: int
    settings: ProbeSettings
    normalize_articles: tuple[str, ...]
    formats: Mapping[str, LineFormat]


def _checked_keys(found: Mapping, known: set[str], where: str) -> None:
    unknown = sorted(set(found) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"{where}: unknown key '{unknown[0]}'{hint}; known: {', '.join(sorted(known))}")


def load_config(path: Path = CONFIG) -> ProbeConfig:
    """Read ``memorization.yaml``; unknown keys are rejected.

    Raises:
        ValueError: an unknown key, a missing field or a value out of range.
    """
    raw = yaml.safe_load(path.read_text())
    _checked_keys(raw, {"version", "settings", "normalize_articles", "formats"}, str(path))
    settings = raw.get("settings") or {}
    _checked_keys(settings, {f.name for f in fields(ProbeSettings)}, f"{path} settings")
    formats = {}
    for name, spec in (raw.get("formats") or {}).items():
        _checked_keys(spec, {f.name for f in fields(LineFormat)}, f"{path} formats.{name}")
        formats[name] = LineFormat(**{**spec, "articles": tuple(spec.get("articles") or ()),
                                      "skip_titles": tuple(spec.get("skip_titles") or ())})
    return ProbeConfig(int(raw["version"]), ProbeSettings(**settings), tuple(raw.get("normalize_articles") or ()),
                       formats)


def line_format(dataset: str, config: ProbeConfig | None = None) -> LineFormat | None:
    """The raw line format of dataset card ``dataset``, or None when none is known (not probed)."""
    return (config or load_config()).formats.get(dataset)


# --------------------------------------------------------------------------------------------------
# Titles: the file's form, and the normalized form both sides are compared in


def file_title(title: str, year: Any, articles: Sequence[str]) -> str:
    """The title as the MovieLens files write it, from the catalog's clean title and year.

    A leading article of ``articles`` goes back to the end of the main title, before any
    parenthetical ("The City of Lost Children (Cité des enfants perdus, La)" -> "City of Lost
    Children, The (Cité des enfants perdus, La)"), and " (year)" is appended when the year is known.
    """
    for art in articles:
        lead = art if art.endswith("'") else art + " "
        if title.startswith(lead) and len(title) > len(lead):
            main = title[len(lead):]
            cut = main.find(" (")
            title = f"{main[:cut]}, {art}{main[cut:]}" if cut > 0 else f"{main}, {art}"
            break
    if year is not None and not pd.isna(year):
        title = f"{title} ({int(year)})"
    return title


_YEAR = re.compile(r"\s*\(\s*\d{4}\s*\)")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_title(text: str, articles: Sequence[str]) -> str:
    """Lowercase, year parentheticals "(1995)" dropped, a trailing ", The" (any of ``articles``, before
    an optional parenthetical) moved to the front, apostrophes dropped, other punctuation turned into
    spaces, whitespace folded: "Usual Suspects, The (1995)" and "the usual suspects" both give
    "the usual suspects"."""
    text = " ".join(_YEAR.sub(" ", text.lower()).split())
    if articles:
        alternatives = "|".join(re.escape(a.lower()) for a in sorted(articles, key=len, reverse=True))
        match = re.fullmatch(rf"(?P<main>.+?), (?P<art>{alternatives})(?P<rest>\s*\(.*\))?", text)
        if match:
            text = f"{match['art']} {match['main']}{match['rest'] or ''}"
    text = _PUNCTUATION.sub(" ", text.replace("'", "").replace("\u2019", ""))
    return " ".join(text.split())


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): the ``p`` whose score test
    ``|x - n p| <= z sqrt(n p (1 - p))`` does not reject, i.e. ``(p̂ + z²/2n ± z sqrt(p̂(1-p̂)/n +
    z²/4n²)) / (1 + z²/n)``. Unlike the normal approximation it stays inside [0, 1] and is not empty
    at 0 or n successes. ``(0.0, 1.0)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exactly 0 / 1 there, not a rounding away
    return low, 1.0 if successes >= n else min(1.0, centre + half)


# --------------------------------------------------------------------------------------------------
# The plan (examples, items, prompts) and the scores


@dataclass(frozen=True)
class ProbePlan:
    """What one probe asks: the shared prefix, and per probed item its query and expected title.

    Attributes:
        prefix: header + one line per example (each ending in a newline), identical for every query.
        examples: raw ids of the example items, in the order shown.
        example_titles: their titles in the file's form.
        raw_ids / expected: the probed items' raw ids and file-form titles, in raw id order.
    """

    prefix: str
    examples: list[str]
    example_titles: list[str]
    raw_ids: list[str]
    expected: list[str]
    queries: list[str]

    @property
    def prompts(self) -> list[str]:
        return [self.prefix + q for q in self.queries]


def _numeric(raw_ids: pd.Series) -> np.ndarray:
    return pd.to_numeric(raw_ids, errors="coerce").to_numpy(dtype=np.float64)


def plan_probe(catalog: Catalog, fmt: LineFormat, settings: ProbeSettings,
               normalize_articles: Sequence[str] = ()) -> ProbePlan:
    """Draw the examples and the probed items (seeded, deterministic) and write the prompts.

    Eligible: items with a real title (not empty, not the catalog's placeholder, none of the format's
    ``skip_titles``); examples also need a known year and, when the line shows them, genres. Probed:
    eligible items other than the examples, whose normalized title is no example's and whose raw id
    is more than ``id_gap`` from every example's; ``n_items`` of them drawn uniformly (all when fewer).
    """
    items = catalog.items
    placeholder = PLACEHOLDER_TITLE.format(item=catalog.domain.get("item", "item")) + " " + items["raw_id"].astype(str)
    titles = items["title"].astype(str)
    skip = {t.lower() for t in fmt.skip_titles}
    eligible = (titles.str.strip() != "") & (titles != placeholder) & ~titles.str.lower().isin(skip)
    forms = [file_title(t, y, fmt.articles) for t, y in zip(titles, items["year"])]
    norms = np.array([normalize_title(f, normalize_articles) for f in forms], dtype=object)
    genres = items["genres"].fillna("").astype(str)
    can_show = eligible & items["year"].notna()
    if "{genres}" in fmt.line:
        can_show &= genres != ""
    rng = np.random.default_rng(settings.seed)
    shown = np.flatnonzero(can_show.to_numpy())
    if len(shown) < settings.n_examples:
        raise ValueError(f"{catalog.name}: {len(shown)} items can be examples, {settings.n_examples} asked for")
    ids = _numeric(items["raw_id"])
    examples = rng.choice(shown, size=settings.n_examples, replace=False)
    examples = examples[np.lexsort((items["raw_id"].to_numpy()[examples].astype(str), ids[examples]))]
    pool = eligible.to_numpy().copy()
    pool[examples] = False
    pool &= ~np.isin(norms, norms[examples])
    for ex in ids[examples]:
        if not np.isnan(ex):
            pool &= ~(np.abs(ids - ex) <= settings.id_gap)
    candidates = np.flatnonzero(pool)
    probed = rng.choice(candidates, size=min(settings.n_items, len(candidates)), replace=False)
    probed = probed[np.lexsort((items["raw_id"].to_numpy()[probed].astype(str), ids[probed]))]
    raw = items["raw_id"].astype(str).to_numpy()
    prefix = fmt.header + "".join(fmt.render(raw[i], forms[i], genres.iloc[i]) + "\n" for i in examples)
    return ProbePlan(prefix=prefix, examples=[raw[i] for i in examples], example_titles=[forms[i] for i in examples],
                     raw_ids=[raw[i] for i in probed], expected=[forms[i] for i in probed],
                     queries=[fmt.query.format(raw_id=raw[i]) for i in probed])


def _rate(count: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(count, n)
    return {"count": count, "rate": count / n if n else None, "ci95": [low, high]}


def score_answers(plan: ProbePlan, texts: Sequence[str], fmt: LineFormat,
                  normalize_articles: Sequence[str] = (), n_shown: int = 5) -> dict[str, Any]:
    """Counts, rates and Wilson intervals of ``exact`` and ``normalized`` matches of the generated
    ``texts`` (one per probed item), ``copied`` (an answer equal to an example's title after
    normalization: never a match), ``empty`` answers, and the first ``n_shown`` rows."""
    if len(texts) != len(plan.expected):
        raise ValueError(f"generate returned {len(texts)} texts for {len(plan.expected)} prompts")
    copies = {normalize_title(t, normalize_articles) for t in plan.example_titles}
    exact = normalized = copied = empty = 0
    rows = []
    for raw_id, expected, text in zip(plan.raw_ids, plan.expected, texts):
        answer = fmt.answer(text)
        norm = normalize_title(answer, normalize_articles)
        is_copy = norm in copies
        hit_exact = not is_copy and answer == expected
        hit_norm = not is_copy and norm == normalize_title(expected, normalize_articles)
        exact, normalized = exact + hit_exact, normalized + hit_norm
        copied, empty = copied + is_copy, empty + (answer == "")
        if len(rows) < n_shown:
            rows.append({"raw_id": raw_id, "expected": expected, "answer": answer})
    n = len(plan.expected)
    return {"n_items": n, "exact": _rate(exact, n), "normalized": _rate(normalized, n), "copied": copied,
            "empty": empty, "shown": rows}


def run_probe(catalog: Catalog, fmt: LineFormat, generate: Generate, settings: ProbeSettings | None = None,
              normalize_articles: Sequence[str] | None = None) -> dict[str, Any]:
    """Plan, generate (one call with every prompt) and score; ``seconds`` is the wall time of it all."""
    config = load_config() if settings is None or normalize_articles is None else None
    settings = settings or config.settings
    articles = config.normalize_articles if normalize_articles is None else tuple(normalize_articles)
    start = time.perf_counter()
    plan = plan_probe(catalog, fmt, settings, articles)
    texts = list(generate(plan.prompts))
    result = score_answers(plan, texts, fmt, articles, settings.n_shown)
    return {"format": fmt.file, "n_examples": len(plan.examples), "examples": plan.examples,
            "prompt_prefix": plan.prefix, **result, "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------------
# Greedy decoding with a loaded backbone


def _common_length(sequences: Sequence[Sequence[int]]) -> int:
    first, length = sequences[0], min(len(s) for s in sequences)
    for seq in sequences[1:]:
        k = 0
        while k < length and seq[k] == first[k]:
            k += 1
        length = k
    return length


def backbone_generator(backbone, batch_size: int = 64, max_new_tokens: int = 24,
                       done: Callable[[str], bool] | None = None) -> Generate:
    """``generate(prompts)`` by greedy decoding with ``backbone.model`` / ``backbone.tokenizer`` (raw
    text: no chat template, the tokenizer's own special tokens only).

    The token prefix that every prompt of a call shares (the few-shot lines) is run once and its keys
    and values copied into each batch (:mod:`methods.prefix_cache`); the rest of each prompt is
    left-padded, in batches of prompts of similar length. A row stops at end-of-sequence or when
    ``done(text so far)`` (default: once it holds a newline) and leaves the batch (its keys and values
    are dropped, so a step costs what the rows still running cost); the batch stops when every row
    stopped or after ``max_new_tokens``.
    """
    import torch

    from methods.prefix_cache import encode_prefix, positions_from_mask

    model, tokenizer = backbone.model, backbone.tokenizer
    done = done or (lambda text: "\n" in text)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)

    def step(tokens, mask, positions, cache):
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    def decode_batch(rest: list[list[int]], prefix, device) -> list[str]:
        width = max(len(s) for s in rest)
        tokens = torch.full((len(rest), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rest), width), dtype=torch.long)
        for b, seq in enumerate(rest):
            tokens[b, width - len(seq):] = torch.as_tensor(seq)
            mask[b, width - len(seq):] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        if prefix is not None:
            zeros = torch.zeros(len(rest), dtype=torch.long, device=device)
            positions = positions_from_mask(mask, start=prefix.lengths.index_select(0, zeros))
            cache = prefix.cache_for(zeros, model.config)
            mask = torch.cat([prefix.attention_mask.index_select(0, zeros), mask], dim=1)
        else:
            from transformers import DynamicCache

            positions, cache = positions_from_mask(mask), DynamicCache(config=model.config)
        logits, cache = step(tokens, mask, positions, cache)
        positions = positions[:, -1:] + 1
        generated: list[list[int]] = [[] for _ in rest]
        alive = list(range(len(rest)))  # batch position -> row of ``rest``
        for n_new in range(1, max_new_tokens + 1):
            chosen = logits.argmax(-1).tolist()
            keep = []
            for b, (row, token) in enumerate(zip(alive, chosen)):
                if token == eos:
                    continue
                generated[row].append(token)
                if not done(tokenizer.decode(generated[row], skip_special_tokens=True)):
                    keep.append(b)
            if not keep or n_new == max_new_tokens:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=device)
                cache.reorder_cache(index)
                mask, positions = mask.index_select(0, index), positions.index_select(0, index)
                chosen = [chosen[b] for b in keep]
                alive = [alive[b] for b in keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = step(torch.tensor(chosen, device=device)[:, None], mask, positions, cache)
            positions = positions + 1
        return [tokenizer.decode(g, skip_special_tokens=True) for g in generated]

    def generate(prompts: Sequence[str]) -> list[str]:
        if not prompts:
            return []
        device = next(model.parameters()).device
        ids = [tokenizer(p).input_ids for p in prompts]
        shared = min(_common_length(ids), min(len(s) for s in ids) - 1)  # every row keeps >= 1 token
        texts = [""] * len(ids)
        with torch.inference_mode():
            prefix = encode_prefix(model, torch.tensor([ids[0][:shared]], device=device)) if shared > 0 else None
            order = sorted(range(len(ids)), key=lambda r: (len(ids[r]), r))
            for lo in range(0, len(order), batch_size):
                rows = order[lo:lo + batch_size]
                for row, text in zip(rows, decode_batch([ids[r][shared:] for r in rows], prefix, device)):
                    texts[row] = text
        return texts

    return generate


# --------------------------------------------------------------------------------------------------
# Caching and the harness's entry


#: the fields of ``Backbone.info()`` a cached result is keyed by
BACKBONE_KEYS = ("id", "quant", "compute_dtype", "sha256", "weights_sha256")


def probe_key(backbone_info: Mapping[str, Any], dataset: str, dataset_sha256: Mapping[str, str],
              extra: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(sha256 of the canonical JSON of what a result depends on, that mapping)."""
    keyed_by = {"backbone": {k: backbone_info.get(k) for k in BACKBONE_KEYS}, "dataset": dataset,
                "dataset_sha256": dict(sorted(dataset_sha256.items())), **(extra or {})}
    text = json.dumps(keyed_by, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest(), keyed_by


def cached_probe(cache_dir: Path, backbone_info: Mapping[str, Any], dataset: str,
                 dataset_sha256: Mapping[str, str], compute: Callable[[], dict[str, Any]], *,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``compute()``'s result, computed once and stored as ``<cache_dir>/memorization/<key>.json``.

    The key (:func:`probe_key`) covers the backbone (id, quantization, compute dtype, source and
    weights sha256), the dataset and its raw files' sha256, and ``extra`` (the probe's settings and
    format, the catalog rows it reads). The stored result carries ``key`` and ``keyed_by``; the
    returned one also ``cached`` (whether it was read back). A backbone with neither hash cannot be
    told apart from another of its name, so its result is computed every time and not stored. An
    unreadable stored file is computed again (one warning line).
    """
    key, keyed_by = probe_key(backbone_info, dataset, dataset_sha256, extra)
    path = Path(cache_dir) / SUBFOLDER / f"{key}.json"
    hashed = backbone_info.get("sha256") or backbone_info.get("weights_sha256")
    if hashed and path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return {**stored, "cached": True}
            raise ValueError("its key does not match its name")
        except (OSError, ValueError) as err:
            _log.warning("[memorization] %s is unreadable (%s); probing again", path, err)
    result = {**compute(), "dataset": dataset, "backbone": backbone_info.get("id"), "key": key, "keyed_by": keyed_by}
    if hashed:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    return {**result, "cached": False}


def catalog_digest(catalog: Catalog) -> str:
    """sha256 of the catalog columns the probe reads (raw_id, title, year, genres), row by row."""
    cols = catalog.items[["raw_id", "title", "year", "genres"]].astype(str)
    return hashlib.sha256("\n".join("\t".join(r) for r in cols.itertuples(index=False)).encode()).hexdigest()


def probe_backbone(backbone, catalog: Catalog, dataset: str, dataset_sha256: Mapping[str, str], cache_dir: Path, *,
                   settings: ProbeSettings | None = None, generate: Generate | None = None,
                   config: ProbeConfig | None = None, info: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The memorization score of ``backbone`` on ``dataset`` (cached), or None when the dataset has no
    known line format.

    Args:
        backbone: a loaded ``methods.backbone.Backbone`` (its bare model: no adapters), or a function
            that loads one: with ``info``, it is called only when the cache has no result.
        info: the ``Backbone.info()`` the loaded backbone will have (the cache key); checked against
            the loaded one before probing.
        catalog: the dataset's catalog (the cell's).
        dataset: the card name (``memorization.yaml`` formats are keyed by it).
        dataset_sha256: sha256 of every raw file read (the record's ``dataset_sha256``).
        cache_dir: the cell's cache folder; results go under ``<cache_dir>/memorization/``.
        settings: override ``memorization.yaml``'s settings (tests, quick looks).
        generate: decode with this instead of :func:`backbone_generator` (tests).
    """
    config = config or load_config()
    fmt = line_format(dataset, config)
    if fmt is None:
        return None
    settings = settings or config.settings

    loaded = backbone if info is None or not callable(backbone) else None
    info = info or loaded.info()

    def compute() -> dict[str, Any]:
        model = loaded or backbone()
        found = {k: model.info().get(k) for k in BACKBONE_KEYS}
        if found != {k: info.get(k) for k in BACKBONE_KEYS}:
            raise ValueError(f"the probed backbone {found} is not the one expected {dict(info)}")
        decode = generate or backbone_generator(model, settings.batch_size, settings.max_new_tokens, fmt.complete)
        return run_probe(catalog, fmt, decode, settings, config.normalize_articles)

    extra = {"version": config.version, "settings": asdict(settings), "format": asdict(fmt),
             "normalize_articles": list(config.normalize_articles), "catalog": catalog_digest(catalog)}
    return cached_probe(cache_dir, info, dataset, dataset_sha256, compute, extra=extra)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.audits.memorization DATASET [--llm ID] [--quant nf4] [--n-items N]``."""
    import argparse

    from benchmarks.data import canonical
    from benchmarks.data.cache import method_cache
    from methods.backbone import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python -m benchmarks.audits.memorization movielens-100k")
    parser.add_argument("dataset")
    parser.add_argument("--llm", default="", help="hub id or local folder; default: the offline SmolLM2")
    parser.add_argument("--quant", default="nf4", choices=("nf4", "none"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-items", type=int, default=None)
    args = parser.parse_args(argv)
    config = load_config()
    settings = config.settings if args.n_items is None else replace(config.settings, n_items=args.n_items)
    data = canonical.load(args.dataset)
    cache = method_cache()
    backbone = load_backbone(args.llm, args.quant, args.device, cache=cache)
    result = probe_backbone(backbone, data.catalog, args.dataset, data.source_sha256, cache, settings=settings,
                            config=config)
    if result is None:
        print(f"{args.dataset}: no raw line format known; not probed", file=sys.stderr)
        return
    print(json.dumps({k: v for k, v in result.items() if k not in ("prompt_prefix", "keyed_by")}, indent=1))


if __name__ == "__main__":
    main()
