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


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.float32)


def test_kq_data_carries_the_heads_queries_keys_and_lse_exactly():
    import attnkit
    from attnkit.inspect.captured import Captured, Record
    from attnkit.viz.page import kq_data

    b, h, hk, s, d = 1, 4, 2, 6, 8
    q, k = torch.randn(b, h, s, d), torch.randn(b, hk, s, d)
    _, lse = attnkit.attention(q, k, torch.randn(b, hk, s, 2), causal=True, return_lse=True)
    cap = Captured("m")
    cap._records[0] = Record(q, k, lse, {"causal": True, "scale": 0.25}, (0, 1, 2, 3), 4)
    cap._records[1] = Record(q, k, lse, {"causal": True, "bias": torch.zeros(1, 1, s, s)},
                             (0, 1, 2, 3), 4)
    data = kq_data(cap, [(0, 3), (0, 1), (1, 0)])
    assert sorted(data["heads"]) == ["0,1", "0,3"]  # layer 1 has a bias: left to the explorer
    assert data["layers"]["0"] == {"scale": 0.25, "causal": True, "window": None, "offset": 0}
    head = data["heads"]["0,3"]
    assert torch.equal(_decode(head["q"]).view(s, d), q[0, 3])
    assert torch.equal(_decode(head["k"]).view(s, d), k[0, 1])  # query head 3 reads key head 1
    assert torch.equal(_decode(head["lse"]), lse[0, 3])
    small = kq_data(cap, [(0, 3), (0, 1)], budget=10)
    assert list(small["heads"]) == ["0,3"]  # over budget: the chosen head only
    assert kq_data(cap, [(1, 0)]) is None


def test_words_travel_with_the_page():
    tokens = ["[CLS]", "roam", "##ed", "far", "[SEP]"]
    patterns = torch.softmax(torch.randn(1, 1, 5, 5), dim=-1)
    data = page_data(patterns, tokens, model_name="m", layer=0, head=0, causal=False,
                     words=True)
    assert data["words"] == {"tokens": ["[CLS]", "roamed", "far", "[SEP]"],
                             "spans": [[0, 1], [1, 3], [3, 4], [4, 5]], "on": True}
    assert data["kq"] is None and data["colour"] is None
