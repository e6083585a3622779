"""Standalone, escaped HTML for CircuitsVis components (works offline, displays in Jupyter)."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import numpy as np
from matplotlib.figure import Figure

_JS_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _plain(value):
    """JSON fallback for tensors, arrays and numpy scalars, at any depth (floats rounded to 4
    decimals to keep the HTML small)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return np.round(value.astype(float), 4).tolist() if value.dtype.kind == "f" else value.tolist()
    raise TypeError(f"cannot put a {type(value).__name__} into the figure's JSON")


def script_json(props: dict) -> str:
    """JSON safe to inline in a <script>: <, >, & and line separators are \\u-escaped, so a token
    such as ``</script>`` is shown as text and can never end the script or inject markup."""
    text = json.dumps(props, separators=(",", ":"), default=_plain)
    for raw, escaped in _JS_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _circuitsvis_bundle() -> str:
    import circuitsvis

    bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return bundle.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


class InteractiveFigure:
    """A CircuitsVis component with its props: shows inline in Jupyter, ``save("x.html")``
    writes one self-contained file (the JavaScript bundle inlined, no network needed)."""

    def __init__(self, component: str, title: str = "", **props) -> None:
        self.component, self.title, self.props = component, title, props

    def html(self) -> str:
        """The element: a div and the script that renders into it."""
        uid = "hooked-video-" + uuid4().hex[:12]
        return (
            f'<div id="{uid}" style="margin: 15px 0;"></div>\n<script crossorigin type="module">\n'
            f"{_circuitsvis_bundle()}\nCircuitsVis.render({json.dumps(uid)}, CircuitsVis.{self.component}, "
            f"{script_json(self.props)});\n</script>"
        )

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page."""
        import html as html_lib

        path = Path(path)
        title = html_lib.escape(self.title or self.component)
        path.write_text(
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body><h3>{title}</h3>\n{self.html()}\n</body></html>\n",
            encoding="utf-8",
        )
        return path

    def __repr__(self) -> str:
        return f"InteractiveFigure({self.component}, title={self.title!r})"


class StaticFigure(Figure):
    """A matplotlib Figure that also shows itself in Jupyter without pyplot's inline backend."""

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()
