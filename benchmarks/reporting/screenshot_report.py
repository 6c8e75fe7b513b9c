"""Render a run's ``report.html`` in headless chromium and save a PNG, to check that the tables and the
plot show in a real browser::

    python -m benchmarks.reporting.screenshot_report RUN_DIR [--out report.png] [--chromium PATH]

Needs a chromium binary (Debian: ``apt-get install -y chromium``); the test suite does not. The page is
opened from disk with networking disabled, in a throw-away profile.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1400


def page_height(html: str) -> int:
    """A window height that fits the whole page (headless chromium captures the window only): room for
    headings and notes, about 24 px per table row and 1,000 px per embedded image, at most 16,000."""
    return min(16000, 1200 + 24 * html.count("<tr") + 1000 * html.count("<img"))


def find_chromium(explicit: str | None = None) -> str:
    """The browser binary to use.

    Raises:
        FileNotFoundError: naming the binaries looked for and how to install one.
    """
    for name in ([explicit] if explicit else CANDIDATES):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"no chromium found (looked for {', '.join([explicit] if explicit else CANDIDATES)}); "
                            "on Debian: apt-get install -y chromium")


def chromium_command(binary: str, page: Path, png: Path, profile: Path, window: str) -> list[str]:
    """The headless screenshot command line (no sandbox, GPU, network services or first-run UI)."""
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={window}",
            page.resolve().as_uri()]


def screenshot(run_dir: Path, png: Path | None = None, binary: str | None = None, timeout: int = 120) -> Path:
    """Screenshot ``run_dir/report.html`` into ``png`` (default ``run_dir/report.png``); return its path.

    Raises:
        FileNotFoundError: no report.html in ``run_dir``, or no chromium.
        RuntimeError: chromium exited without writing the PNG (its output tail in the message).
    """
    page = run_dir / "report.html"
    if not page.exists():
        raise FileNotFoundError(f"{page}: no report.html (run python -m benchmarks.reporting.report {run_dir} first)")
    png = (png or run_dir / "report.png").resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        window = f"{WIDTH},{page_height(page.read_text())}"
        proc = subprocess.run(chromium_command(find_chromium(binary), page, png, Path(profile), window),
                              capture_output=True, text=True, timeout=timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium exited {proc.returncode} without writing {png}: {proc.stderr[-1500:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reporting.screenshot_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/report.png)")
    parser.add_argument("--chromium", help=f"browser binary (default: the first of {', '.join(CANDIDATES)} on PATH)")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.run_dir, args.out, args.chromium))
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
