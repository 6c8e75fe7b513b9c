"""``report.html``: one self-contained page per run (tables, the accuracy/cost plot as an embedded base64
PNG, the environment), readable offline: no scripts, no external files, no network.

Built by :func:`benchmarks.reporting.report.write_reports`; check that it renders with
``python -m benchmarks.reporting.screenshot_report RUN_DIR`` (headless chromium).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 15px; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 6px 0 14px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
td { font-variant-numeric: tabular-nums; }
th { background: #f1f3f5; }
tr:nth-child(even) td { background: #fafafa; }
.note { color: #555; font-size: 13px; max-width: 1100px; }
img.plot { max-width: 100%; border: 1px solid #ddd; }
"""


def _env_table(env: dict) -> str:
    rows = []
    for key, value in sorted(env.items()):
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in sorted(value.items()) if v is not None)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def render_page(title: str, intro: str, sections: list[tuple[str, str]], figure: Path | None, env: dict) -> str:
    """The page. ``sections`` are (heading, HTML body) pairs; ``intro`` is plain text."""
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(intro)}</p>']
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    if figure is not None and figure.exists():
        encoded = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append('<h2>Accuracy against cost</h2>\n<p class="note">Primary metric per task against inference '
                     'latency and training time; error bars: bootstrap 95% interval over test samples (vertical), '
                     '± std over seeds (horizontal); dashed: Pareto front.</p>\n'
                     f'<img class="plot" alt="accuracy against cost" src="data:image/png;base64,{encoded}">')
    parts.append(f"<h2>Environment</h2>\n{_env_table(env)}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_html(run_dir: Path, title: str, intro: str, sections: list[tuple[str, str]], figure: Path | None) -> Path:
    """Write ``run_dir/report.html`` with the run's ``env.json`` (if any) and return its path."""
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    path = run_dir / "report.html"
    path.write_text(render_page(title, intro, sections, figure, env), encoding="utf-8")
    return path
