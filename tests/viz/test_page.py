"""The standalone page's HTML: self-contained, data escaped, only its own script allowed."""

import base64
import hashlib
import json
import re

import torch

from attnkit.viz.page import MAX_CELLS, escape_json, page_data, render_page

NASTY = ["a", "<script>window.pwned=1</script>", "<img src=x onerror=window.pwned=2>",
         "\"quo'ted\"", "</script><script>window.pwned=3</script>", "&amp;"]


def _page(tokens=NASTY, layers=2, heads=3):
    n = len(tokens)
    patterns = torch.softmax(torch.randn(layers, heads, n, n), dim=-1)  # (L, H, S, S)
    return patterns, render_page(page_data(patterns, tokens, model_name="m<b>", layer=1, head=2,
                                           causal=True))


def test_data_is_escaped_and_round_trips():
    patterns, html = _page()
    # the only script elements are the JSON data and our own code
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "window.pwned" in html  # present as data ...
    assert "<img" not in html and "onerror=window" in html  # ... but never as markup
    raw = re.search(r'<script type="application/json" id="attnkit-data">(.*?)</script>', html,
                    re.S).group(1)
    assert "<" not in raw and ">" not in raw and "&" not in raw
    data = json.loads(raw)
    assert data["tokens"] == NASTY
    assert data["model"] == "m<b>"
    stored = torch.tensor(data["patterns"]["1,2"], dtype=torch.float32) / data["scale"]
    torch.testing.assert_close(stored, patterns[1, 2], atol=1e-4, rtol=0)
    assert len(data["patterns"]) == 6


def test_no_network_and_csp_allows_only_our_script():
    _, html = _page()
    assert not re.search(r"https?://", html)
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == ["data:,"]
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html).group(1)
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy


def test_long_inputs_keep_only_the_chosen_head():
    n = 300
    patterns = torch.full((6, 12, n, n), 1.0 / n)
    assert patterns.numel() > MAX_CELLS
    data = page_data(patterns, [f"t{i}" for i in range(n)], model_name="m", layer=3, head=7,
                     causal=False)
    assert list(data["patterns"]) == ["3,7"]


def test_escape_json():
    assert escape_json("</script>&") == '"\\u003c/script\\u003e\\u0026"'
    assert json.loads(escape_json({"a": "<&>"})) == {"a": "<&>"}
