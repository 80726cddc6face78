"""The local attention explorer behind ``attnkit serve``: a FastAPI app over a model, over capture
files, or both.

A text is run once and only ``q``, ``k`` and ``lse`` are kept (``attnkit.capture``); a capture file
(``attnkit.load_capture``) holds the same. Every view — a pooled overview of a pattern, a zoomed
region, one query's top keys, the K·Q of one cell, all heads as thumbnails, words instead of
pieces, the difference of two captures — is recomputed on demand from them, so an input of 16,384
tokens never has its N x N pattern built.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from attnkit.errors import AttnkitError
from attnkit.inspect.captured import Captured
from attnkit.inspect.families import describe
from attnkit.inspect.patterns import HeadPattern, from_capture, pooled, top_keys
from attnkit.inspect.running import CHARS_PER_TOKEN, check_text, count_tokens, run_and_capture
from attnkit.models import load_model
from attnkit.viz.limits import MAX_TOKENS
from attnkit.viz.page import escape_json, static_text
from attnkit.viz.views import align, difference_head, overview, word_head, word_spans, word_tokens

__all__ = ["create_app", "MAX_TOKENS", "LOOPBACK_HOSTS"]

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]
"""Host headers the explorer answers by default: a page on another name (DNS rebinding) is not."""
KEEP = 4  # texts kept in memory (most recent first out); capture files stay open
VIEW = 256  # a view is at most VIEW x VIEW cells
VIEWS_KEPT = 32  # views cached per capture: switching back to a head or zooming out is instant
THUMB = 32  # cells a side of each head's thumbnail in the all-heads overview


class CaptureRequest(BaseModel):
    text: str


class Problem(BaseModel):
    """Every error the explorer sends: a status code and ``{"detail": message}``."""

    detail: str


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error responses an endpoint really sends."""
    meaning = {
        400: "a layer, head, position or region outside what the capture holds, or two "
             "captures that cannot be compared",
        404: "an unknown capture id (the explorer keeps the last few texts)",
        409: "the explorer serves capture files and has no model to run a text with",
        413: "a text longer than the explorer takes",
        422: "a missing or malformed parameter or body, an empty text, or text that is not "
             "valid Unicode",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}


@dataclass
class Session:
    """One capture the explorer holds: a text it ran, or a capture file."""

    capture: Captured
    name: str
    kind: str  # "text" or "file"
    model: str
    tokens: list[str]
    n: int
    spans: list[tuple[int, int]]
    views: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    def view(self, key: tuple, make: Callable[[], Any]) -> Any:
        """A view from the cache (the last ``VIEWS_KEPT``), or made now and kept."""
        if key in self.views:
            self.views.move_to_end(key)
            return self.views[key]
        made = self.views[key] = make()
        while len(self.views) > VIEWS_KEPT:
            self.views.popitem(last=False)
        return made

    def summary(self, key: str) -> dict[str, Any]:
        cap = self.capture
        return {"id": key, "name": self.name, "kind": self.kind, "model": self.model,
                "tokens": self.tokens, "n": self.n, "layers": cap.layers, "heads": cap.heads,
                "causal": bool(cap.options(cap.layers[0]).get("causal", False)),
                "rotary": None if cap.rotary is None else cap.rotary.describe(),
                "words": {"tokens": word_tokens(self.tokens, self.spans),
                          "spans": [list(s) for s in self.spans]}}


def _fail(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _session_of(cap: Captured, name: str, kind: str, model: str) -> Session:
    n = cap.seq_len(0)
    tokens = (cap.tokens_of(0) or [str(i) for i in range(n)])[:n]
    return Session(cap, name, kind, model, tokens, n, word_spans(tokens))


def create_app(model_name: str | None = "minilm", *, model: Any = None, tokenizer: Any = None,
               captures: Sequence[Captured] | Mapping[str, Captured] | None = None,
               max_tokens: int = MAX_TOKENS,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The explorer app. It runs texts on a model — ``model_name`` loaded with
    ``attnkit.load_model``, or a loaded ``model`` and its ``tokenizer`` — and/or shows
    ``captures`` (e.g. from ``attnkit.load_capture``; a mapping names them): given captures and
    no ``model``, no model is loaded and texts cannot be run. Requests whose Host header is not
    one of ``allowed_hosts`` (default: the loopback names) get 400.

    Endpoints: ``GET /`` the page; ``GET /api/info`` (the open captures); ``POST /api/capture
    {"text"}`` and ``GET /api/session?id`` → ``{"id", "tokens", "n", "layers", "heads",
    "words", ...}``; ``GET /api/view?id&layer&head[&r0&r1&c0&c1&size&reduce&words]`` → a region
    of the ``[query, key]`` pattern pooled to at most ``size`` x ``size`` (exact when it fits);
    ``GET /api/top?id&layer&head&query[&k&words]`` → that query's best keys; ``GET
    /api/why?id&layer&head&query&key[&words]`` → ``Captured.why`` of the cell; ``GET
    /api/overview?id&layer`` → every head of the layer as a thumbnail; ``GET
    /api/compare?a&b&layer&head[...]`` → ``A - B`` where the two captures' tokens line up.
    Errors are 4xx with a JSON ``{"detail": message}``; ``GET /openapi.json`` documents them.
    """
    if model is None and captures is None:
        model, tokenizer = load_model(model_name or "minilm")
    elif model is not None and tokenizer is None:
        raise AttnkitError("create_app(model=...) needs the model's tokenizer too")
    if model is not None:
        info = describe(model)
        limit = min(max_tokens, info.max_len or max_tokens)
        model_label = model_name or info.name
    else:
        limit, model_label = 0, None
    sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
    named = (captures.items() if isinstance(captures, Mapping)
             else ((getattr(c, "path", None) or c.model_name, c) for c in captures or ()))
    for name, cap in named:
        if not isinstance(cap, Captured) or not cap.layers:
            raise AttnkitError(f"captures must hold attnkit captures with layers; {name!s} "
                               "does not")
        sessions[uuid.uuid4().hex] = _session_of(cap, str(name), "file", cap.model_name)
    lock = threading.Lock()  # one forward pass at a time; the CPU is the bottleneck anyway

    # the interactive docs pages load scripts from a CDN, which the explorer never does
    app = FastAPI(title="attnkit explorer", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.add_middleware(TrustedHostMiddleware,
                       allowed_hosts=LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "the request"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    def about() -> dict[str, Any]:
        files = [{"id": key, "name": s.name, "model": s.model, "n": s.n}
                 for key, s in sessions.items() if s.kind == "file"]
        n_layers = n_heads = None
        if model is not None:
            n_layers, n_heads = info.n_layers, info.n_heads
        return {"model": model_label, "can_run": model is not None, "n_layers": n_layers,
                "n_heads": n_heads, "max_tokens": limit, "view": VIEW, "files": files}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return _page(about())

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return about()

    @app.post("/api/capture", responses=_responses(409, 413, 422))
    def api_capture(request: CaptureRequest) -> dict[str, Any]:
        if model is None:
            raise _fail(409, "this explorer serves capture files and has no model loaded to run "
                             "a text; start it with attnkit serve --model NAME to run texts")
        text = request.text
        if not text.strip():
            raise _fail(422, "the text is empty; type a sentence first")
        try:
            check_text(text)
        except AttnkitError as err:
            raise _fail(422, str(err)) from None
        if len(text) > CHARS_PER_TOKEN * limit:  # longer than any tokenizer's tokens could be
            raise _fail(413, f"the text is {len(text):,} characters, far over the limit of "
                             f"{limit:,} tokens; shorten it")
        n_tokens = count_tokens(tokenizer, text)
        if n_tokens > limit:
            raise _fail(413, f"the text is {n_tokens:,} tokens but this explorer takes at most "
                             f"{limit:,} tokens with {model_label}; shorten it")
        with lock, torch.no_grad():
            cap = run_and_capture(model, tokenizer, text)
        first = text.strip().splitlines()[0]
        session = _session_of(cap, first[:40] + ("…" if len(first) > 40 else ""), "text",
                              model_label)
        key = uuid.uuid4().hex
        sessions[key] = session
        texts = [k for k, s in sessions.items() if s.kind == "text"]
        for old in texts[:-KEEP]:
            del sessions[old]
        return session.summary(key)

    def session_of(key: str) -> Session:
        if key not in sessions:
            raise _fail(404, "unknown capture id (the explorer keeps the last few texts); "
                             "send the text again")
        return sessions[key]

    def check_head(session: Session, layer: int, head: int) -> None:
        cap = session.capture
        who = f"{session.model} has" if session.kind == "text" else f"{session.name} holds"
        if layer not in cap.layers:
            raise _fail(400, f"layer {layer} is out of range: {who} "
                             f"{_listed(cap.layers, 'layers')}")
        if head not in cap.heads:
            raise _fail(400, f"head {head} is out of range: {who} "
                             f"{_listed(cap.heads, 'heads per layer')}")

    def head_of(key: str, layer: int, head: int, words: bool) -> tuple[Session, HeadPattern]:
        session = session_of(key)
        check_head(session, layer, head)
        if words:
            return session, word_head(session.capture, layer, head, session.spans)
        return session, from_capture(session.capture, layer, head)

    def labels(session: Session, words: bool) -> list[str]:
        return word_tokens(session.tokens, session.spans) if words else session.tokens

    @app.get("/api/session", responses=_responses(404, 422))
    def api_session(id: str) -> dict[str, Any]:
        return session_of(id).summary(id)

    @app.get("/api/view", responses=_responses(400, 404, 422))
    def api_view(id: str, layer: int, head: int, r0: int = 0, r1: int | None = None,
                 c0: int = 0, c1: int | None = None,
                 size: int = Query(VIEW, ge=1, le=VIEW),
                 reduce: str = Query("max", pattern="^(max|mean)$"),
                 words: bool = False) -> dict[str, Any]:
        session, source = head_of(id, layer, head, words)
        rows = (r0, source.n_queries if r1 is None else r1)
        cols = (c0, source.n_keys if c1 is None else c1)
        try:
            return session.view(("view", layer, head, rows, cols, size, reduce, words),
                                lambda: pooled(source, rows=rows, cols=cols, size=size,
                                               reduce=reduce).to_dict())
        except AttnkitError as err:
            raise _fail(400, str(err)) from None

    @app.get("/api/top", responses=_responses(400, 404, 422))
    def api_top(id: str, layer: int, head: int, query: int,
                k: int = Query(8, ge=1, le=64), words: bool = False) -> dict[str, Any]:
        session, source = head_of(id, layer, head, words)
        try:
            best = top_keys(source, query, k)
        except AttnkitError as err:
            raise _fail(400, str(err)) from None
        names = labels(session, words)
        return {"query": query, "token": names[query],
                "keys": [{"key": j, "token": names[j], "weight": w} for j, w in best]}

    @app.get("/api/why", responses=_responses(400, 404, 422))
    def api_why(id: str, layer: int, head: int, query: int, key: int,
                words: bool = False) -> dict[str, Any]:
        session = session_of(id)
        check_head(session, layer, head)
        cap, note = session.capture, None
        try:
            if words:
                query, key, note = _pieces_of(session, layer, head, query, key)
            return {**cap.why(layer, head, query, key).to_dict(), "words": note}
        except AttnkitError as err:
            raise _fail(400, str(err)) from None

    @app.get("/api/overview", responses=_responses(400, 404, 422))
    def api_overview(id: str, layer: int,
                     size: int = Query(THUMB, ge=4, le=64)) -> dict[str, Any]:
        session = session_of(id)
        check_head(session, layer, session.capture.heads[0])

        def make() -> dict[str, Any]:
            found = overview(session.capture, layer, size=size)
            values = [[[float(f"{v:.4g}") for v in row] for row in thumb]
                      for thumb in found.pop("values").tolist()]
            return {**found, "values": values}

        return session.view(("overview", layer, size), make)

    @app.get("/api/compare", responses=_responses(400, 404, 422))
    def api_compare(a: str, b: str, layer: int, head: int, r0: int = 0, r1: int | None = None,
                    c0: int = 0, c1: int | None = None,
                    size: int = Query(VIEW, ge=1, le=VIEW)) -> dict[str, Any]:
        first, second = session_of(a), session_of(b)
        check_head(first, layer, head)
        check_head(second, layer, head)
        pairs = first.view(("align", b), lambda: align(first.tokens, second.tokens))
        try:
            diff = difference_head(first.capture, second.capture, layer, head, pairs)
            m = len(pairs)
            rows, cols = (r0, m if r1 is None else r1), (c0, m if c1 is None else c1)
            view = pooled(diff, rows=rows, cols=cols, size=size, reduce="mean").to_dict()
        except AttnkitError as err:
            raise _fail(400, str(err)) from None
        return {"a": a, "b": b, "layer": layer, "head": head, "aligned": m,
                "n_a": first.n, "n_b": second.n, "pairs": [list(p) for p in pairs],
                "tokens": [first.tokens[i] for i, _ in pairs], "view": view}

    return app


def _listed(values: list[int], what: str) -> str:
    if values == list(range(values[0], values[-1] + 1)):
        return f"{len(values)} {what} ({values[0]}..{values[-1]})"
    return f"{what} {', '.join(map(str, values))}"


def _pieces_of(session: Session, layer: int, head: int, query: int,
               key: int) -> tuple[int, int, dict[str, Any]]:
    """For a cell of the word view: the pair of pieces with the largest weight."""
    spans, n_words = session.spans, len(session.spans)
    for name, value in (("query", query), ("key", key)):
        if not 0 <= value < n_words:
            raise AttnkitError(f"{name} word {value} is out of range: the text has {n_words} "
                               f"words (0..{n_words - 1})")
    (q0, q1), (k0, k1) = spans[query], spans[key]
    block = session.capture.pattern(layer, head, rows=slice(q0, q1), cols=slice(k0, k1))
    flat = int(torch.argmax(block))
    i, j = q0 + flat // (k1 - k0), k0 + flat % (k1 - k0)
    names = word_tokens(session.tokens, spans)
    note = {"query_word": names[query], "key_word": names[key], "query_index": query,
            "key_index": key, "pieces": [i, j],
            "note": f"the word pair's pieces with the largest weight: {session.tokens[i]!r} "
                    f"→ {session.tokens[j]!r}"}
    return i, j, note


def _page(about: dict[str, Any]) -> HTMLResponse:
    script = static_text("common.js") + static_text("explorer.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
              "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")
    body = static_text("explorer.html")
    body = body.replace("/*STYLE*/", static_text("common.css") + static_text("explorer.css"), 1)
    # the data goes in last: a file name holding a marker must not pull anything into it
    body = body.replace("/*SCRIPT*/", script, 1).replace("/*ABOUT*/", escape_json(about), 1)
    return HTMLResponse(body, headers={"Content-Security-Policy": policy,
                                       "X-Content-Type-Options": "nosniff"})
