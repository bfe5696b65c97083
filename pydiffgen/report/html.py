"""A self-contained HTML report: figures embedded as base64 PNGs, also saved beside it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..io import atomic_path

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
  color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
figure { margin: 1.2em 0 2.4em; } figcaption { color: #555; font-size: .9em; margin-top: .4em; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .9em; display: block; overflow-x: auto; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.headline { font-size: 1.15em; font-weight: 600; background: #fdf6e3;
  border-left: 4px solid #b58900; padding: .6em 1em; }
.note { color: #555; font-size: .9em; }
.verdict { background: #f7f7fb; border-left: 4px solid #557; padding: .6em 1em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
"""


class Report:
    """Collects sections in order; ``save`` writes report.html and every figure's PNG."""

    def __init__(self, title: str, out_dir):
        self.title = title
        self.out_dir = Path(out_dir)
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str | None = None) -> None:
        cls = f' class="{css_class}"' if css_class else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def figure(self, fig, name: str, caption: str = "") -> None:
        """Embed a matplotlib figure and save it as ``<out_dir>/<name>.png``."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        png = buf.getvalue()
        with atomic_path(self.out_dir / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        b64 = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">{cap}'
            "</figure>"
        )

    def table(self, header: list[str], rows: list[list]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def code(self, text: str) -> None:
        self._parts.append(f"<pre>{html.escape(text)}</pre>")

    def save(self, name: str = "report.html") -> Path:
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self._parts) + "</body></html>"
        )
        path = self.out_dir / name
        with atomic_path(path) as tmp:
            tmp.write_text(doc, encoding="utf-8")
        return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)
