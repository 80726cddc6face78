"""A standalone HTML page of a sentence's attention: one file, inline JS/CSS, opens from disk.

The data travels as JSON in a ``<script type="application/json">`` tag with ``<``, ``>`` and ``&``
escaped; the script inserts tokens with ``textContent``; a Content-Security-Policy allows only the
page's own script (by hash) and no network at all — so text like ``<script>`` is shown, never run.

Besides the patterns the page can carry each head's queries, keys and log-sum-exp (``kq_data``,
float32 as base64), so clicking a cell shows its K·Q computed in the browser exactly as
``Captured.why`` computes it; and the words of the text, so pieces can be merged into words.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch

from attnkit.inspect.captured import Captured
from attnkit.viz.views import word_spans, word_tokens

__all__ = ["render_page", "page_data", "kq_data", "escape_json", "MAX_CELLS", "MAX_VECTORS"]

# patterns stored as integers in units of 1/SCALE, to keep the file small
SCALE = 10_000
# above this many numbers in total, the page holds only the chosen head
MAX_CELLS = 2_000_000
# above this many query/key numbers, the page holds the K·Q data of the chosen head only
MAX_VECTORS = 1_000_000


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
              n_layers: int | None = None, n_heads: int | None = None,
              kq: dict[str, Any] | None = None, words: bool = False,
              colour: str | None = None) -> dict[str, Any]:
    """The page's JSON: every head's pattern when they fit in ``MAX_CELLS``, else the chosen one.

    Args:
        patterns: ``(L, H, S, S)`` ``[query, key]`` probabilities, one per captured layer x head;
            ``layers``/``heads`` name them (default ``0..L-1`` / ``0..H-1``).
        layer, head: the head shown first (model numbering).
        n_layers, n_heads: the model's (for the menus; default: enough for ``layers``/``heads``).
        kq: ``kq_data(...)``: what clicking a cell needs to show its K·Q (None: no K·Q panel).
        words: open with word pieces merged into words.
        colour: the colour scale it opens with ("linear", "log", "auto"; default: by length).
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
    spans = word_spans(tokens)
    return {
        "title": f"{model_name}: which keys answer which queries",
        "model": model_name, "tokens": list(tokens),
        "n_layers": n_layers or max(layers) + 1, "n_heads": n_heads or max(heads) + 1,
        "layer": layer, "head": head, "causal": bool(causal),
        "orientation": orientation, "scale": SCALE, "patterns": stored,
        "words": {"tokens": word_tokens(tokens, spans), "spans": [list(x) for x in spans],
                  "on": bool(words)},
        "colour": colour, "kq": kq,
    }


def _floats(t: torch.Tensor) -> str:
    """A tensor's numbers as little-endian float32, base64: how the page carries q, k, lse."""
    return base64.b64encode(t.detach().float().cpu().contiguous().numpy().astype("<f4")
                            .tobytes()).decode("ascii")


def kq_data(cap: Captured, kept: Sequence[tuple[int, int]], *, batch: int = 0,
            positions: Sequence[int] | None = None,
            budget: int = MAX_VECTORS) -> dict[str, Any] | None:
    """What the page needs to show any cell's K·Q for the heads ``kept`` (``(layer, head)``,
    the chosen one first): per head the queries, keys and log-sum-exp of sequence ``batch``, per
    layer its scale and masking; the model's tokens, and ``positions`` (the model position of
    each token shown, when some were left out). Heads beyond ``budget`` numbers are left out
    (the chosen one never); so are layers with a bias, a general mask or soft-capped logits,
    which the page does not recompute. None when no head qualifies."""
    n = cap.seq_len(batch)
    tokens = (cap.tokens_of(batch) or [str(i) for i in range(n)])[:n]
    layers: dict[str, Any] = {}
    heads: dict[str, Any] = {}
    used = 0
    d = None
    for layer, head in kept:
        options = cap.options(layer)
        mask = options.get("mask")
        padding_only = mask is None or (mask.shape[1] == 1 and mask.shape[2] == 1)
        if options.get("bias") is not None or not padding_only or options.get("softcap"):
            continue
        q_all, k_all = cap.queries(layer), cap.keys(layer)  # (B, H, Sq, D), (B, Hk, Sk, D)
        slot = cap.heads.index(head)
        kv = slot // (q_all.shape[1] // k_all.shape[1])
        d = q_all.shape[-1]
        cost = n * (2 * d + 1)
        if heads and used + cost > budget:
            continue
        used += cost
        scale = options.get("scale")
        layers[str(layer)] = {"scale": float(d ** -0.5 if scale is None else scale),
                              "causal": bool(options.get("causal")),
                              "window": options.get("window"),
                              "offset": int(k_all.shape[2] - q_all.shape[2])}
        heads[f"{layer},{head}"] = {"q": _floats(q_all[batch, slot, :n]),
                                    "k": _floats(k_all[batch, kv, :n]),
                                    "lse": _floats(cap.lse(layer)[batch, slot, :n])}
    if not heads:
        return None
    rotary = cap.rotary
    if rotary is not None and rotary.head_dim == d:
        rotary_data = {"pairs": [list(p) for p in rotary.pairs()],
                       "frequencies": None if rotary.frequencies is None
                       else list(rotary.frequencies),
                       "layers": None if rotary.layers is None else list(rotary.layers),
                       "rotary_dim": rotary.rotary_dim, "describe": rotary.describe()}
    else:
        rotary_data = None
    return {"d": d, "tokens": tokens, "heads": heads, "layers": layers, "rotary": rotary_data,
            "positions": None if positions is None else [int(p) for p in positions]}


def render_page(data: dict[str, Any]) -> str:
    """The complete HTML document for ``page_data(...)``."""
    script = static_text("common.js") + static_text("page.js")
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
{static_text("common.css")}
{static_text("page.css")}
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="sub" id="which"></div>
<div class="controls">
  <span><label for="layer">layer</label> <select id="layer"></select></span>
  <span><label for="head">head</label> <select id="head"></select></span>
  <span><label for="scale">colour</label> <select id="scale"><option value="linear">linear</option>
    <option value="log">log</option><option value="auto">auto</option></select></span>
  <span id="words-box"><input type="checkbox" id="words"> <label for="words">words</label></span>
  <button id="flip" type="button">flip orientation</button>
  <span class="sub" id="orient"></span>
</div>
<div class="note" id="note"></div>
<div class="legend" id="legend"></div>
<div class="main">
  <div>
    <table class="grid" id="grid"></table>
    <canvas id="canvas" width="720" height="720" style="display:none"></canvas>
  </div>
  <div class="panel">
    <div id="weights"><div class="sub">Hover a query to see its keys and weights; click a cell
      for its K·Q.</div></div>
    <div id="kq" class="kq" hidden></div>
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
