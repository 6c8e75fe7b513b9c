"""Find a card's raw files, fetch them if allowed, and verify their sha256 before anything reads them.

Locations in cards:

* ``package:<pkg>/<sub/folder>``: a folder inside an installed package (MovieLens-100K in ``recbole``).
* ``raw:<file>``: ``<cache>/raw/<file>``; when absent and the source has a ``url``, it is downloaded
  (standard library, resumable into a ``.part`` file) unless ``LLMREC_BENCH_OFFLINE=1``. A source of
  several files gives ``url`` as a mapping from each file name to its URL.
"""
from __future__ import annotations

import importlib.util
import os
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.data.cache import cache_root, sha256_file
from benchmarks.data.cards import Card, Source


class SourceUnavailable(FileNotFoundError):
    """None of a card's sources is present; the message says what to place where."""


class ChecksumMismatch(ValueError):
    """A raw file's sha256 differs from the card's."""


@dataclass(frozen=True)
class ResolvedSource:
    source: Source
    paths: dict[str, Path]
    sha256: dict[str, str]  # of what was actually read


def source_folder(location: str) -> Path:
    """The folder a card's ``location`` names: ``package:<pkg>/<sub>`` inside an installed package,
    ``raw:<path>`` under the cache's ``raw/`` (the folder of the named file)."""
    kind, _, rest = location.partition(":")
    if kind == "package":
        package, _, sub = rest.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return Path("/nonexistent") / package
        return Path(list(spec.submodule_search_locations)[0]) / sub
    if kind == "raw":
        return cache_root() / "raw" / Path(rest).parent
    raise ValueError(f"unknown location kind '{kind}' in '{location}' (use package: or raw:)")


def _download(url: str, dest: Path) -> None:
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    print(f"downloading {url} -> {dest}", flush=True)
    with urllib.request.urlopen(request, timeout=60) as response, open(part, "ab" if start else "wb") as fh:
        if start and response.status != 206:  # server ignored the range: restart cleanly
            fh.truncate(0)
        while block := response.read(1 << 20):
            fh.write(block)
    os.replace(part, dest)


def _urls(source: Source) -> dict[str, str]:
    """File name -> URL: ``url`` is one URL for a one-file source, or a mapping."""
    if isinstance(source.url, Mapping):
        return dict(source.url)
    return {name: source.url for name in source.files} if source.url and len(source.files) == 1 else {}


def _verify(path: Path, expected: str | None, card: Card) -> str:
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ChecksumMismatch(f"{path}: sha256 {actual} does not match {expected} from {card.path}; "
                               f"delete the file and fetch it again")
    return actual


def resolve(card: Card, allow_download: bool | None = None) -> ResolvedSource:
    """The first source of ``card`` whose files are all present (downloading where allowed), verified.

    Raises:
        SourceUnavailable: nothing present; the message names each file and the folder it belongs in.
        ChecksumMismatch: a present file has the wrong sha256.
    """
    if allow_download is None:
        allow_download = os.environ.get("LLMREC_BENCH_OFFLINE", "") not in ("1", "true")
    wanted = []
    for source in card.sources:
        folder = source_folder(source.location)
        paths = {name: folder / name for name in source.files}
        urls = _urls(source)
        missing = [name for name, path in paths.items() if not path.exists()]
        failed: dict[str, str] = {}
        if missing and allow_download and all(name in urls for name in missing):
            for name in missing:
                try:
                    _download(urls[name], paths[name])
                except OSError as err:
                    failed[name] = f"; the download failed: {' '.join(str(err).split())}"
            missing = [name for name in missing if not paths[name].exists()]
        if missing:
            wanted.append(" and ".join(str(paths[n]) + (f" (from {urls[n]}{failed.get(n, '')})" if n in urls else "")
                                       for n in missing))
            continue
        sums = {name: _verify(path, source.files[name], card) for name, path in paths.items()}
        unpinned = [f"{name} {sums[name][:12]}…" for name in paths if source.files[name] is None]
        if unpinned:
            warnings.warn(f"{card.name}: the source publishes no checksums; recording the sha256 of the "
                          f"files read: {', '.join(unpinned)}", stacklevel=2)
        return ResolvedSource(source, paths, sums)
    raise SourceUnavailable(f"dataset '{card.name}': no source is present; place "
                            + "; or ".join(wanted) + f" (card: {card.path})")
