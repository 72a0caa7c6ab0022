"""HTML building blocks of the report page: tables, notes, captions and pictures that are embedded
as base64 ``data:`` URIs or written beside the page.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..atomic import atomic_write_bytes
from .rundata import _readable


# ============================================================================================
# the page
# ============================================================================================
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
 background:#f4f5f7;line-height:1.45}
header{background:#1f2a44;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;color:#c9d1e3;font-size:14px}
nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;font-size:14px;
 position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#2a5bd7;text-decoration:none;white-space:nowrap}
main{max-width:1400px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:18px 0;
 padding:6px 22px 16px}
h2{font-size:19px;border-bottom:1px solid #eceef2;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{color:#7a5d00;background:#fff8e1;border-left:4px solid #f0c000;padding:6px 10px;
 font-size:14px}
.caption{color:#555;font-size:13.5px;margin:2px 0 10px}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0 12px}
th,td{border:1px solid #dde1e8;padding:3px 10px;text-align:right}
th{background:#f0f2f6} td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:10px;overflow:auto;font-size:12.5px;
 max-height:520px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.card{border:1px solid #dde1e8;border-radius:8px;padding:10px 16px;min-width:150px;
 background:#fafbfc}
.card .v{font-size:22px;font-weight:600} .card .k{font-size:12.5px;color:#555}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
            return f"{f:.4g}"
        return f"{f:.4f}".rstrip("0").rstrip(".") if abs(f) < 100 else f"{f:,.1f}"
    return html.escape(str(v))


def _seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(s, 60)
    return f"{int(m)} min {sec:04.1f} s"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _metrics_html(metrics: dict[str, Any]) -> str:
    """Scalars of a nested dict as one (name, value) table; lists of dicts as their own tables."""
    scalars: list[tuple[str, Any]] = []
    tables: list[str] = []

    def walk(prefix: str, obj: Any):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)) and obj and all(isinstance(x, dict) for x in obj):
            keys: list[str] = []
            for x in obj:
                keys += [k for k in x if k not in keys and not isinstance(x[k], (dict, list))]
            tables.append(f"<h3>{html.escape(prefix)}</h3>" +
                          _table(keys, ([x.get(k, "") for k in keys] for x in obj)))
        elif isinstance(obj, (list, tuple)):
            if len(obj) <= 12 and all(isinstance(x, (int, float)) for x in obj):
                scalars.append((prefix, ", ".join(_fmt(x) for x in obj)))
        else:
            scalars.append((prefix, obj))

    walk("", metrics)
    out = _table(["metric", "value"], scalars) if scalars else ""
    return out + "\n".join(tables)


class _Page:
    """Collects sections and images; images are embedded or written to ``files_dir``."""

    def __init__(self, embed: bool, files_dir: Path, rel: str):
        self.embed, self.files_dir, self.rel = embed, files_dir, rel
        self.parts: list[str] = []
        self.n_images = 0

    def img(self, png: bytes, alt: str, name: str) -> str:
        self.n_images += 1
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        else:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            fname = f"{self.n_images:02d}-{name}.png"
            atomic_write_bytes(self.files_dir / fname, png)
            _readable(self.files_dir / fname)
            src = f"{self.rel}/{fname}"
        return f'<img src="{src}" alt="{html.escape(alt)}">'

    def section(self, anchor: str, heading: str, body: str) -> None:
        self.parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{body}\n'
                          f"</section>")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _caption(text: str) -> str:
    return f'<p class="caption">{text}</p>'


def _picture(page: _Page, make, alt: str, name: str) -> str:
    """Run a picture function; a failure becomes a note instead of breaking the page."""
    try:
        return page.img(make(), alt, name)
    except Exception as e:  # noqa: BLE001 - one broken picture must not lose the report
        return _note(f"{alt}: could not draw ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
