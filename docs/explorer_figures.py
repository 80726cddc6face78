"""The screenshots of docs/explorer.md, remade in Debian's chromium (playwright).

    python docs/explorer_figures.py [OUT_DIR]

writes into OUT_DIR (default ``docs/img``):

- ``kq-minilm-creature-fluffy.png``: the standalone page of MiniLM (layer 0, head 1) with the
  cell of query "creature" and key "fluffy" clicked: its K·Q panel;
- ``explorer-long-log.png``: the explorer on a capture file of a 490-token text, log colour scale,
  with every head's thumbnail below.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import attnkit
from attnkit.explainer import explain
from attnkit.inspect.running import run_and_capture
from attnkit.viz.server import create_app

TEXT = "a fluffy blue creature roamed the verdant forest"
LONG = (TEXT + " while the old grey wolf watched from the dark hills .").split()
CHROMIUM = "/usr/bin/chromium"


def shrink(path: Path) -> None:
    """Screenshots in 256 colours: a fraction of the bytes, no visible change."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main(out: str = "docs/img") -> int:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viz"))
    from conftest import serving  # the tests' uvicorn-in-a-thread helper

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = attnkit.load_model("minilm")
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox",
                                                                    "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1180, "height": 900})
        exp = explain(TEXT, model, 0, 1, tokenizer=tokenizer, model_name="minilm")
        page.goto(exp.save_page(Path(scratch) / "page.html").as_uri())
        page.wait_for_selector("body[data-ready='1']")
        q, k = exp.tokens.index("creature"), exp.tokens.index("fluffy")
        page.click(f"#grid td.cell[data-q='{q}'][data-k='{k}']")
        page.wait_for_selector("#kq:not([hidden])")
        page.locator(".main").screenshot(path=str(out_dir / "kq-minilm-creature-fluffy.png"))
        shrink(out_dir / "kq-minilm-creature-fluffy.png")

        words, text = 0, ""
        while len(tokenizer(text)["input_ids"]) < 490:
            text, words = (text + " " + LONG[words % len(LONG)]).strip(), words + 1
        path = run_and_capture(model, tokenizer, text).save(Path(scratch) / "long.safetensors",
                                                            model_name="minilm")
        app = create_app(None, captures={"long.safetensors": attnkit.load_capture(path)})
        with serving(app) as url:
            page = browser.new_page(viewport={"width": 1180, "height": 1500})
            page.goto(url + "#layer=2&head=3")
            page.wait_for_selector("body[data-ready='1']")
            page.click("#heads")
            page.wait_for_selector("#overview[data-ready='1']")
            page.screenshot(path=str(out_dir / "explorer-long-log.png"),
                            clip={"x": 0, "y": 0, "width": 1180, "height": 1280})
            shrink(out_dir / "explorer-long-log.png")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
