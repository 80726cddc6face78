"""The standalone page and the explorer in a real browser (Debian chromium via playwright).

Checked: no request leaves the machine, hovering a query shows its weights, switching layer/head
changes the grid, text with ``<script>``/``<img onerror>``/quotes is shown and runs nothing,
over-long input gets a clear message, and the screenshots are not blank.
"""

import pytest
import torch

from attnkit.explainer import explain
from attnkit.inspect.running import run_and_capture
from attnkit.viz.page import page_data, render_page
from attnkit.viz.server import create_app

pytestmark = [pytest.mark.browser]

TEXT = "a fluffy blue creature roamed the verdant forest"
XSS = ['<script>window.__pwned = "script"</script>', '<img src=x onerror="window.__pwned=1">',
       '"double" \'single\'', "</script><script>window.__pwned=2</script>", "forest"]


@pytest.fixture(scope="module")
def explained(minilm):
    model, tokenizer = minilm
    return explain(TEXT, model, 2, 3, tokenizer=tokenizer, model_name="minilm")


def _cells(page):
    return page.eval_on_selector_all("#grid td.cell", "cs => cs.map(c => c.style.background)")


def test_page_offline_hover_and_switch(watched, explained, tmp_path):
    path = explained.save_page(tmp_path / "page.html")
    w = watched()
    w.page.goto(path.as_uri())
    w.page.wait_for_selector("body[data-ready='1']")
    assert w.non_local() == [] and w.errors == []
    assert w.page.inner_text("#which") == "minilm · layer 2 · head 3"
    # notes layout: the first header row holds the queries, one per column, in order
    cols = w.page.eval_on_selector_all("#grid th.col", "ts => ts.map(t => t.textContent)")
    assert cols == explained.tokens
    # hover the query "creature": its keys and weights, best first
    q = explained.tokens.index("creature")
    w.page.hover(f"#grid td.cell[data-q='{q}'][data-k='0']")
    assert w.page.inner_text("#weights h2") == "query: creature"
    shown = w.page.eval_on_selector_all(
        "#weights li", "ls => ls.map(l => [l.querySelector('.tok').textContent, "
                       "parseFloat(l.querySelector('.w').textContent)])")
    weights, keys = torch.sort(explained.pattern[q], descending=True)
    assert len(shown) == len(explained.tokens)
    assert shown[0][0] == explained.tokens[int(keys[0])]
    assert [s[1] for s in shown] == pytest.approx(weights.tolist(), abs=6e-4)
    highlighted = w.page.eval_on_selector_all("#grid td.cell.on", "cs => cs.map(c => c.dataset.q)")
    assert set(highlighted) == {str(q)} and len(highlighted) == len(explained.tokens)
    # switching the layer and head redraws the grid with that head's weights
    before = _cells(w.page)
    w.page.select_option("#layer", "4")
    w.page.select_option("#head", "9")
    assert w.page.get_attribute("#grid", "data-layer") == "4"
    assert w.page.get_attribute("#grid", "data-head") == "9"
    assert _cells(w.page) != before
    w.page.click("#flip")
    assert w.page.inner_text("#grid th.axis").startswith("queries")
    assert w.screenshot_spread() > 0.05
    assert w.non_local() == [] and w.errors == []


def test_page_shows_hostile_text_as_text(watched, tmp_path):
    n = len(XSS)
    patterns = torch.softmax(torch.randn(1, 2, n, n), dim=-1)  # (L, H, S, S)
    path = tmp_path / "xss.html"
    path.write_text(render_page(page_data(patterns, XSS, model_name='<b onmouseover="x">m</b>',
                                          layer=0, head=1, causal=True)))
    w = watched()
    w.page.goto(path.as_uri())
    w.page.wait_for_selector("body[data-ready='1']")
    for q in range(n):
        w.page.hover(f"#grid td.cell[data-q='{q}'][data-k='0']")
    cols = w.page.eval_on_selector_all("#grid th.col", "ts => ts.map(t => t.textContent)")
    assert cols == XSS  # shown verbatim
    assert w.page.locator("#grid img").count() == 0 and w.page.locator("b").count() == 0
    assert w.page.inner_text("#which").startswith('<b onmouseover="x">m</b>')
    assert w.pwned() is None and w.dialogs == [] and w.errors == []
    assert w.non_local() == []


def test_long_page_draws_on_a_canvas(watched, tmp_path):
    n = 300
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    patterns = torch.softmax((3 * torch.randn(1, 2, n, n)).masked_fill(future, float("-inf")), -1)
    path = tmp_path / "long.html"
    path.write_text(render_page(page_data(patterns, [f"w{i}" for i in range(n)], model_name="m",
                                          layer=0, head=1, causal=True)))
    w = watched()
    w.page.goto(path.as_uri())
    w.page.wait_for_selector("body[data-ready='1']")
    assert w.page.locator("#grid td").count() == 0  # no 90,000-cell table
    box = w.page.locator("#canvas").bounding_box()
    w.page.mouse.move(box["x"] + box["width"] * 150.5 / n, box["y"] + 50)  # column of query 150
    assert w.page.inner_text("#weights h2") == "query 150: w150"
    shown = w.page.eval_on_selector_all("#weights li .w",
                                        "ws => ws.map(x => parseFloat(x.textContent))")
    assert shown == pytest.approx(torch.topk(patterns[0, 1, 150], 20).values.tolist(), abs=6e-4)
    before = w.page.evaluate("document.getElementById('canvas').toDataURL()")
    w.page.select_option("#head", "0")
    assert w.page.evaluate("document.getElementById('canvas').toDataURL()") != before
    assert w.screenshot_spread("#canvas") > 0.05
    assert w.errors == [] and w.non_local() == []


@pytest.fixture(scope="module")
def explorer(minilm, serve):
    """The explorer app served for real by uvicorn on 127.0.0.1, in a thread."""
    model, tokenizer = minilm
    with serve(create_app("minilm", model=model, tokenizer=tokenizer)) as url:
        yield url


def _run(w, text):
    w.page.evaluate("document.body.dataset.ready = ''")
    w.page.fill("#text", text)
    w.page.click("#run")


def test_explorer(watched, explorer, explained, minilm):
    w = watched()
    w.page.goto(explorer)
    w.page.wait_for_selector("body[data-loaded='1']")
    _run(w, TEXT)
    w.page.wait_for_selector("body[data-ready='1']")
    assert w.page.get_attribute("#grid", "data-exact") == "1"
    # hover the cell of query "creature" and key "fluffy" (notes layout: queries across)
    n, q, k = len(explained.tokens), explained.tokens.index("creature"), 2
    margin, size = 110, (640 - 114) / n
    box = w.page.locator("#grid").bounding_box()
    w.page.mouse.move(box["x"] + 1 + margin + (q + 0.5) * size,
                      box["y"] + 1 + margin + (k + 0.5) * size)
    w.page.wait_for_selector("#top li")
    hover = w.page.inner_text("#hover")
    assert hover.startswith("query “creature” (4) · key “fluffy” (2) · weight ")
    weight = float(hover.rsplit(" ", 1)[1])
    # layer 0 head 0 is what the explorer opens on
    want = run_and_capture(*minilm, TEXT).pattern(0, 0)
    assert weight == pytest.approx(float(want[q, k]), abs=1e-4)
    assert w.page.inner_text("#top h2") == "query 4: creature"
    # switching head redraws
    before = w.page.evaluate("document.getElementById('grid').toDataURL()")
    w.page.evaluate("document.body.dataset.ready = ''")
    w.page.select_option("#head", "5")
    w.page.wait_for_selector("body[data-ready='1']")
    assert w.page.get_attribute("#grid", "data-head") == "5"
    assert w.page.evaluate("document.getElementById('grid').toDataURL()") != before
    assert w.screenshot_spread("#grid") > 0.05
    # hostile text is shown, not run
    _run(w, " ".join(XSS))
    w.page.wait_for_selector("body[data-ready='1']")
    assert "window.__pwned" in w.page.input_value("#text")
    # over-long input: the server's message, shown to the user
    _run(w, "word " * 600)
    w.page.wait_for_selector("#error:not(:empty)")  # (the CSP forbids wait_for_function's eval)
    assert w.page.inner_text("#error") == ("the text is 602 tokens but this explorer takes at "
                                           "most 512 tokens with minilm; shorten it")
    assert w.pwned() is None and w.dialogs == []
    assert w.errors == [] or all("413" in e for e in w.errors)  # the failed request is logged
    assert w.non_local() == []
