"""The explorer and the page as a research instrument, in a real browser (Debian chromium via
playwright): a capture file opened with no model, the K·Q panel of a clicked cell (its numbers are
``cap.why``'s), colour scales that show a 490-token pattern, the all-heads overview's links, word
pooling, comparing two texts and two files; nothing leaves 127.0.0.1 and markup stays inert."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.explainer import explain
from attnkit.inspect.captured import Captured, Record
from attnkit.inspect.running import run_and_capture
from attnkit.viz.server import create_app
from attnkit.viz.views import pool_words, word_spans

pytestmark = [pytest.mark.browser]

TEXT = "a fluffy blue creature roamed the verdant forest"
OTHER = "a fluffy red creature roamed the verdant forest"
XSS = ['<script>window.__pwned = "script"</script>', '<img src=x onerror="window.__pwned=1">',
       '"double" \'single\'', "</script><script>window.__pwned=2</script>", "forest"]
GRID, MARGIN = 640, 110  # the explorer's canvas and its label margin (views of <= 48 tokens)


@pytest.fixture(scope="module")
def cap(minilm):
    return run_and_capture(*minilm, TEXT)


@pytest.fixture(scope="module")
def files(cap, minilm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("captures")
    blue = cap.save(folder / "blue.safetensors", model_name="minilm")
    red = run_and_capture(*minilm, OTHER).save(folder / "red.safetensors", model_name="minilm")
    return blue, red


@pytest.fixture(scope="module")
def live(minilm, serve):
    model, tokenizer = minilm
    with serve(create_app("minilm", model=model, tokenizer=tokenizer)) as url:
        yield url


def ready(w, action):
    """Run ``action`` and wait until the explorer has drawn the view it asked for."""
    w.page.evaluate("document.body.dataset.ready = ''")
    action()
    w.page.wait_for_selector("body[data-ready='1']")


def cell(w, query, key, n, click=False):
    """Hover (or click) the cell of ``query`` and ``key`` in an exact view of ``n`` positions."""
    box = w.page.locator("#grid").bounding_box()
    size = (GRID - MARGIN - 4) / n
    x = box["x"] + 1 + MARGIN + (query + 0.5) * size  # notes layout: queries across
    y = box["y"] + 1 + MARGIN + (key + 0.5) * size
    (w.page.mouse.click if click else w.page.mouse.move)(x, y)


def panel(w) -> dict:
    """The K·Q panel's numbers, as it stores them beside what it shows."""
    w.page.wait_for_selector("#kq:not([hidden])")
    data = w.page.eval_on_selector("#kq", "e => Object.assign({}, e.dataset)")
    data["products"] = w.page.eval_on_selector_all(
        "#kq ol.products li", "ls => ls.map(l => [+l.dataset.dim, +l.dataset.value])")
    data["competitors"] = w.page.eval_on_selector_all(
        "#kq ol.competitors li", "ls => ls.map(l => [+l.dataset.key, +l.dataset.weight, "
                                 "+l.dataset.score])")
    return data


def check_panel(got: dict, why, rel: float = 0.0) -> None:
    """The panel shows ``why``'s numbers: exactly (JSON from the server), or to ``rel`` (the
    page recomputes them in the browser from the same float32 q and k)."""
    near = (lambda a, b: a == b) if rel == 0 else (lambda a, b: a == pytest.approx(b, rel=rel))
    assert (int(got["query"]), int(got["key"])) == (why.query, why.key)
    assert (int(got["layer"]), int(got["head"])) == (why.layer, why.head)
    for name in ("dot", "scale", "score", "weight"):
        assert near(float(got[name]), getattr(why, name)), name
    assert int(got["rank"]) == why.rank
    order = torch.argsort(why.products.abs(), descending=True)[:12].tolist()
    assert [d for d, _ in got["products"]] == order
    assert all(near(v, float(why.products[d])) for d, v in got["products"])
    assert [k for k, _, _ in got["competitors"]] == [c.key for c in why.competitors]
    assert all(near(wt, c.weight) and near(s, c.score)
               for (_, wt, s), c in zip(got["competitors"], why.competitors, strict=True))


def test_a_capture_file_with_no_model_and_the_kq_of_a_cell(watched, serve, files, cap):
    blue, _ = files
    app = create_app(None, captures={"blue.safetensors": attnkit.load_capture(blue)})
    with serve(app) as url:
        w = watched()
        w.page.goto(url)
        w.page.wait_for_selector("body[data-ready='1']")  # the file opens by itself
        assert w.page.is_hidden("#runrow")
        assert w.page.inner_text("#model") == "capture files · no model loaded"
        assert "file blue.safetensors (13 tokens)" in w.page.inner_text("#open")
        assert w.page.inner_text("#about-capture") == "minilm · 6 layers × 12 heads · 13 tokens"
        ready(w, lambda: w.page.select_option("#layer", "2"))
        ready(w, lambda: w.page.select_option("#head", "3"))
        n, q, k = 13, cap.tokens.index("creature"), cap.tokens.index("fluffy")
        cell(w, q, k, n, click=True)
        why = cap.why(2, 3, q, k)
        check_panel(panel(w), why)
        heading = w.page.inner_text("#kq h2")
        assert heading == "K·Q: key “fluffy” (2) answering query “creature” (4)"
        summary = w.page.inner_text("#kq .sum")
        assert f"{why.dot:.4f}" in summary and "(1/√32)" in summary
        assert f"rank {why.rank} of the 13 keys this query sees" in summary
        assert w.page.locator("#kq li.me").count() == (1 if why.rank <= 8 else 0)
        assert w.non_local() == [] and w.errors == []


def test_the_pages_kq_panel_is_cap_why(watched, minilm, cap, tmp_path):
    model, tokenizer = minilm
    path = explain(TEXT, model, 2, 3, tokenizer=tokenizer, model_name="minilm").save_page(
        tmp_path / "page.html")
    w = watched()
    w.page.goto(path.as_uri())
    w.page.wait_for_selector("body[data-ready='1']")
    w.page.click("#grid td.cell[data-q='4'][data-k='2']")
    check_panel(panel(w), cap.why(2, 3, 4, 2), rel=1e-12)
    w.page.select_option("#layer", "4")
    w.page.select_option("#head", "9")
    w.page.click("#grid td.cell[data-q='11'][data-k='7']")
    check_panel(panel(w), cap.why(4, 9, 11, 7), rel=1e-12)
    # words: a cell of two words shows the K·Q of its pieces with the largest weight
    w.page.check("#words")
    spans = word_spans(cap.tokens)
    cols = w.page.eval_on_selector_all("#grid th.col", "ts => ts.map(t => t.textContent)")
    assert cols == ["[CLS]", "a", "fluffy", "blue", "creature", "roamed", "the", "verdant",
                    "forest", "[SEP]"]
    shown = w.page.eval_on_selector_all("#grid td.cell[data-q='7']",
                                        "cs => cs.map(c => c.textContent)")
    words = pool_words(cap.pattern(4, 9), spans)[7]  # the query word "verdant"
    assert shown == [f"{x:.2f}".lstrip("0") if x >= 0.005 else "" for x in words.tolist()]
    w.page.click("#grid td.cell[data-q='7'][data-k='5']")
    block = cap.pattern(4, 9)[8:11, 5:7]
    i, j = divmod(int(block.argmax()), 2)
    check_panel(panel(w), cap.why(4, 9, 8 + i, 5 + j), rel=1e-12)
    assert "words “verdant” → “roamed”" in w.page.inner_text("#kq .note")
    assert w.non_local() == [] and w.errors == []


def text_of(tokenizer, n: int) -> str:
    """A text of exactly ``n`` MiniLM tokens ([CLS] and [SEP] included)."""
    words = (TEXT + " while the old grey wolf watched from the dark hills .").split()
    text, i = "", 0
    while len(tokenizer(text)["input_ids"]) < n:
        text, i = (text + " " + words[i % len(words)]).strip(), i + 1
    assert len(tokenizer(text)["input_ids"]) == n
    return text


def test_colour_scales_show_structure_at_490_tokens(watched, live, minilm, tmp_path):
    model, tokenizer = minilm
    text = text_of(tokenizer, 490)
    w = watched()
    w.page.goto(live)
    w.page.wait_for_selector("body[data-loaded='1']")
    w.page.fill("#text", text)
    ready(w, lambda: w.page.click("#run"))
    assert w.page.input_value("#scale") == "log"  # long inputs open on a scale with structure
    spread = {}
    for scale in ("log", "auto", "linear"):
        w.page.select_option("#scale", scale)
        assert w.page.get_attribute("#legend", "data-scale") == scale
        spread[scale] = w.screenshot_spread("#grid")
    assert "1.0 = weight 1" in w.page.inner_text("#legend")
    w.page.select_option("#scale", "auto")
    one = float(w.page.get_attribute("#legend", "data-one"))
    assert f"1.0 = {one:.4f} (this view's 99th percentile" in w.page.inner_text("#legend")
    # linear draws a near-white square (pixel spread ~0.03); log and auto show its structure
    assert spread["log"] > 0.08 and spread["auto"] > 0.08, spread
    assert spread["linear"] < spread["log"] / 3, spread
    # the standalone page of the same text draws on a canvas and opens on the log scale too
    exp = explain(text, model, 0, 0, tokenizer=tokenizer, model_name="minilm")
    p = watched()
    p.page.goto(exp.save_page(tmp_path / "long.html").as_uri())
    p.page.wait_for_selector("body[data-ready='1']")
    assert p.page.input_value("#scale") == "log"
    page_spread = {}
    for scale in ("log", "linear"):
        p.page.select_option("#scale", scale)
        page_spread[scale] = p.screenshot_spread("#canvas")
    assert page_spread["log"] > 0.06 and page_spread["linear"] < page_spread["log"] / 3
    assert w.non_local() == [] == p.non_local() and w.errors == [] == p.errors


def test_the_overview_links_every_head(watched, live):
    w = watched(height=1400)
    w.page.goto(live)
    w.page.wait_for_selector("body[data-loaded='1']")
    ready(w, lambda: w.page.click("#run"))
    w.page.click("#heads")
    w.page.wait_for_selector("#overview[data-ready='1']")
    links = w.page.eval_on_selector_all("#thumbs a.thumb", "as => as.map(a => a.getAttribute("
                                                           "'href'))")
    assert links == [f"#layer={layer}&head={head}" for layer in range(6) for head in range(12)]
    assert w.page.inner_text("#overview-note").startswith("every weight")
    assert w.screenshot_spread("#thumbs") > 0.05
    ready(w, lambda: w.page.click("#thumbs a[href='#layer=3&head=7']"))
    assert (w.page.input_value("#layer"), w.page.input_value("#head")) == ("3", "7")
    assert (w.page.get_attribute("#grid", "data-layer"),
            w.page.get_attribute("#grid", "data-head")) == ("3", "7")
    assert w.page.get_attribute("#thumbs a.on", "href") == "#layer=3&head=7"
    assert w.non_local() == [] and w.errors == []


def test_word_pooling_in_the_explorer(watched, live, cap):
    w = watched()
    w.page.goto(live)
    w.page.wait_for_selector("body[data-loaded='1']")
    ready(w, lambda: w.page.click("#run"))
    ready(w, lambda: w.page.select_option("#layer", "1"))
    ready(w, lambda: w.page.select_option("#head", "4"))
    ready(w, lambda: w.page.check("#words"))
    assert w.page.get_attribute("#grid", "data-words") == "1"
    assert w.page.inner_text("#status").startswith("10 words · layer 1 · head 4")
    words = pool_words(cap.pattern(1, 4), word_spans(cap.tokens))  # (10, 10)
    cell(w, 7, 5, 10)
    hover = w.page.inner_text("#hover")
    assert hover.startswith("query “verdant” (7) · key “roamed” (5) · weight ")
    assert float(hover.rsplit(" ", 1)[1]) == pytest.approx(float(words[7, 5]), abs=1e-4)
    cell(w, 7, 5, 10, click=True)
    block = cap.pattern(1, 4)[8:11, 5:7]
    i, j = divmod(int(block.argmax()), 2)
    check_panel(panel(w), cap.why(1, 4, 8 + i, 5 + j))
    assert "the word pair's pieces with the largest weight" in w.page.inner_text("#kq .note")
    assert w.non_local() == [] and w.errors == []


def hover_difference(w, i, j, m):
    box = w.page.locator("#cmp-d").bounding_box()
    size = 300 / m
    w.page.mouse.move(box["x"] + 1 + (i + 0.5) * size, box["y"] + 1 + (j + 0.5) * size)
    return float(w.page.get_attribute("#compare-status", "data-value"))


def test_compare_two_texts_and_two_files(watched, live, serve, files, cap, minilm):
    theirs = run_and_capture(*minilm, OTHER)
    w = watched(height=1400)
    w.page.goto(live)
    w.page.wait_for_selector("body[data-loaded='1']")
    ready(w, lambda: w.page.click("#run"))
    ready(w, lambda: w.page.select_option("#head", "5"))
    w.page.fill("#text2", OTHER)
    w.page.click("#compare-run")
    w.page.wait_for_selector("#cmp-d[data-ready='1']")
    assert w.page.get_attribute("#cmp-d", "data-aligned") == "12"
    assert w.page.inner_text("#cap-d").startswith("A − B on the 12 tokens that line up (exact)")
    # "blue"/"red" (position 3) do not line up, so "creature" (4 in both) is aligned token 3
    got = hover_difference(w, 3, 2, 12)  # query "creature", key "fluffy"
    want = float(cap.pattern(0, 5)[4, 2] - theirs.pattern(0, 5)[4, 2])
    assert got == pytest.approx(want, abs=1e-6) and abs(want) > 1e-4
    assert "query “creature” (A 4, B 4) · key “fluffy” (A 2, B 2)" in \
        w.page.inner_text("#compare-status")
    for canvas in ("#cmp-a", "#cmp-b", "#cmp-d"):
        assert w.screenshot_spread(canvas) > 0.02, canvas
    # two capture files, no model
    blue, red = files
    app = create_app(None, captures={"blue.safetensors": attnkit.load_capture(blue),
                                     "red.safetensors": attnkit.load_capture(red)})
    with serve(app) as url:
        f = watched(height=1400)
        f.page.goto(url)
        f.page.wait_for_selector("body[data-ready='1']")
        assert f.page.is_hidden("#compare-run")
        other = f.page.eval_on_selector_all("#other option", "os => os.map(o => o.textContent)")
        assert other[-1] == "file red.safetensors (13 tokens)"
        f.page.select_option("#other", index=2)
        f.page.wait_for_selector("#cmp-d[data-ready='1']")
        assert f.page.get_attribute("#cmp-d", "data-aligned") == "12"
        want = float(cap.pattern(0, 0)[4, 2] - theirs.pattern(0, 0)[4, 2])
        assert hover_difference(f, 3, 2, 12) == pytest.approx(want, abs=1e-6)
        assert f.non_local() == [] and f.errors == []
    assert w.non_local() == [] and w.errors == []


def test_a_hostile_capture_file_stays_inert(watched, serve, tmp_path):
    n = len(XSS)
    q, k = torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4)
    _, lse = attnkit.attention(q, k, torch.randn(1, 2, n, 4), return_lse=True)
    hostile = Captured('<img src=x onerror="window.__pwned=3">')
    hostile._records[0] = Record(q, k, lse, {"causal": False, "scale": None}, (0, 1), 2)
    hostile._token_lists = [list(XSS)]
    path = hostile.save(tmp_path / "x.safetensors")
    name = "<script>window.__pwned=4</script>/*SCRIPT*/.safetensors"  # markers stay text
    with serve(create_app(None, captures={name: attnkit.load_capture(path)})) as url:
        w = watched()
        w.page.goto(url)
        w.page.wait_for_selector("body[data-ready='1']")
        assert name in w.page.inner_text("#open")
        assert w.page.inner_text("#about-capture").startswith('<img src=x onerror=')
        cell(w, 1, 3, n, click=True)
        heading = f"K·Q: key “{XSS[3]}” (3) answering query “{XSS[1]}” (1)"
        assert w.page.inner_text("#kq h2") == heading
        w.page.check("#words")
        w.page.click("#heads")
        w.page.wait_for_selector("#overview[data-ready='1']")
        assert w.page.locator("img").count() == 0 and w.page.locator("b").count() == 0
        assert w.pwned() is None and w.dialogs == [] and w.errors == []
        assert w.non_local() == []
