"""What the browser tests share: Debian's chromium driven by playwright, a page that records
every request, dialog and error, and apps served for real by uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium; "
                    "`make browser` does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


class Watched:
    """A page with every request, dialog and console error recorded."""

    def __init__(self, browser, width: int = 1280, height: int = 900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.requests, self.dialogs, self.errors = [], [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def non_local(self):
        local = {"127.0.0.1", "localhost", "", None}
        return [u for u in self.requests if not u.startswith(("file:", "data:"))
                and urlparse(u).hostname not in local]

    def pwned(self):
        return self.page.evaluate("window.__pwned")

    def screenshot_spread(self, selector=None):
        import matplotlib.image

        shot = (self.page.locator(selector) if selector else self.page).screenshot()
        return float(matplotlib.image.imread(io.BytesIO(shot), format="png").std())


@pytest.fixture
def watched(browser):
    """``watched()`` opens a new recorded page; every one is closed after the test."""
    pages = []

    def make(**size):
        w = Watched(browser, **size)
        pages.append(w)
        return w

    yield make
    for w in pages:
        w.page.close()


@contextlib.contextmanager
def serving(app):
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a thread: yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve():
    """``with serve(app) as url:`` runs ``app`` on 127.0.0.1 for the block."""
    return serving
