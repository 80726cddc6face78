"""A standalone HTML page of a sentence's attention: one file, inline JS/CSS, opens from disk.

The data travels as JSON in a ``<script type="application/json">`` tag with ``<``, ``>`` and ``&``
escaped; the script inserts tokens with ``textContent``; a Content-Security-Policy allows only the
page's own script (by hash) and no network at all — so text like ``<script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from importlib import resources
from typing import Any

import torch

__all__ = ["render_page", "page_data", "escape_json", "MAX_CELLS"]

# patterns stored as integers in units of 1/SCALE, to keep the file small
SCALE = 10_000
# above this many numbers in total, the page holds only the chosen head
MAX_CELLS = 2_000_000


def static_text(name: str) -> str:
    """A file from ``attnkit/viz/static``."""
    return resources.files("attnkit.viz").joinpath("static", name).read_text(encoding="utf-8")


def escape_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` survive literally."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_data(patterns: torch.Tensor, tokens: list[str], *, model_name: str, layer: int,
              head: int, causal: bool, orientation: str = "notes",
              layers: list[int] | None = None, heads: list[int] | None = None,
              n_layers: int | None = None, n_heads: int | None = None) -> dict[str, Any]:
    """The page's JSON: every head's pattern when they fit in ``MAX_CELLS``, else the chosen one.

    Args:
        patterns: ``(L, H, S, S)`` ``[query, key]`` probabilities, one per captured layer x head;
            ``layers``/``heads`` name them (default ``0..L-1`` / ``0..H-1``).
        layer, head: the head shown first (model numbering).
        n_layers, n_heads: the model's (for the menus; default: enough for ``layers``/``heads``).
    """
    layers = list(range(patterns.shape[0])) if layers is None else list(layers)
    heads = list(range(patterns.shape[1])) if heads is None else list(heads)
    everything = patterns.numel() <= MAX_CELLS
    stored = {}
    for a, lay in enumerate(layers):
        for b, hd in enumerate(heads):
            if everything or (lay, hd) == (layer, head):
                cells = torch.round(patterns[a, b].float() * SCALE).to(torch.int32)  # (S, S)
                stored[f"{lay},{hd}"] = cells.tolist()
    return {
        "title": f"{model_name}: which keys answer which queries",
        "model": model_name, "tokens": list(tokens),
        "n_layers": n_layers or max(layers) + 1, "n_heads": n_heads or max(heads) + 1,
        "layer": layer, "head": head, "causal": bool(causal),
        "orientation": orientation, "scale": SCALE, "patterns": stored,
    }


def render_page(data: dict[str, Any]) -> str:
    """The complete HTML document for ``page_data(...)``."""
    script = static_text("page.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
              "img-src data:; base-uri 'none'; form-action 'none'")
    title = html.escape(f"attnkit · {data['model']}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
{static_text("page.css")}
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="sub" id="which"></div>
<div class="controls">
  <span><label for="layer">layer</label> <select id="layer"></select></span>
  <span><label for="head">head</label> <select id="head"></select></span>
  <button id="flip" type="button">flip orientation</button>
  <span class="sub" id="orient"></span>
</div>
<div class="note" id="note"></div>
<div class="main">
  <table class="grid" id="grid"></table>
  <canvas id="canvas" width="720" height="720" style="display:none"></canvas>
  <div class="panel" id="weights">
    <div class="sub">Hover a query to see its keys and weights.</div>
  </div>
</div>
<script type="application/json" id="attnkit-data">{escape_json(data)}</script>
<script>{script}</script>
</body>
</html>
"""


def iframe(document: str, height: int = 640) -> str:
    """``document`` inside a sandboxed ``<iframe srcdoc>``: how Jupyter shows a page inline."""
    return (f'<iframe srcdoc="{html.escape(document, quote=True)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{height}px;border:1px solid #ddd"></iframe>')
