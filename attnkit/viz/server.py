"""The local attention explorer behind ``attnkit serve``: a FastAPI app over one loaded model.

The text is run once and only ``q``, ``k`` and ``lse`` are kept (``attnkit.capture``); every view
— a pooled overview of the whole pattern, a zoomed region, one query's top keys — is recomputed
on demand from them, so an input of 16,384 tokens never has its N x N pattern built.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from attnkit.errors import AttnkitError
from attnkit.inspect.families import describe
from attnkit.inspect.patterns import HeadPattern, from_capture, pooled, top_keys
from attnkit.inspect.running import CHARS_PER_TOKEN, check_text, count_tokens, run_and_capture
from attnkit.models import load_model
from attnkit.viz.limits import MAX_TOKENS
from attnkit.viz.page import escape_json, static_text

__all__ = ["create_app", "MAX_TOKENS", "LOOPBACK_HOSTS"]

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]
"""Host headers the explorer answers by default: a page on another name (DNS rebinding) is not."""
KEEP = 4  # captures kept in memory (most recent first out)
VIEW = 256  # a view is at most VIEW x VIEW cells
VIEWS_KEPT = 32  # views cached per text: switching back to a head or zooming out is instant


class CaptureRequest(BaseModel):
    text: str


class Problem(BaseModel):
    """Every error the explorer sends: a status code and ``{"detail": message}``."""

    detail: str


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error responses an endpoint really sends."""
    meaning = {
        400: "a layer, head, position or region outside what the capture holds",
        404: "an unknown capture id (the explorer keeps the last few texts)",
        413: "a text longer than the explorer takes",
        422: "a missing or malformed parameter or body, an empty text, or text that is not "
             "valid Unicode",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}


@dataclass
class Session:
    capture: Any
    tokens: list[str]
    n: int
    views: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    def view(self, key: tuple, make: Any) -> dict[str, Any]:
        """A view from the cache (the last ``VIEWS_KEPT``), or made now and kept."""
        if key in self.views:
            self.views.move_to_end(key)
            return self.views[key]
        made = self.views[key] = make()
        while len(self.views) > VIEWS_KEPT:
            self.views.popitem(last=False)
        return made


def _fail(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def create_app(model_name: str = "minilm", *, model: Any = None, tokenizer: Any = None,
               max_tokens: int = MAX_TOKENS,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The explorer app for one model: ``model_name`` is loaded with ``attnkit.load_model`` unless
    a loaded ``model`` and its ``tokenizer`` are given. Requests whose Host header is not one of
    ``allowed_hosts`` (default: the loopback names) get 400.

    Endpoints: ``GET /`` the page; ``GET /api/info``; ``POST /api/capture {"text"}`` →
    ``{"id", "tokens", "n"}``; ``GET /api/view?id&layer&head[&r0&r1&c0&c1&size&reduce]`` → a
    region of the ``[query, key]`` pattern pooled to at most ``size`` x ``size`` (exact when it
    fits); ``GET /api/top?id&layer&head&query[&k]`` → that query's best keys. Errors are 4xx with a
    JSON ``{"detail": message}``; ``GET /openapi.json`` documents them all.
    """
    if model is None:
        model, tokenizer = load_model(model_name)
    elif tokenizer is None:
        raise AttnkitError("create_app(model=...) needs the model's tokenizer too")
    info = describe(model)
    n_layers, n_heads = info.n_layers, info.n_heads
    limit = min(max_tokens, info.max_len or max_tokens)
    sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
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
    about = {"model": model_name, "n_layers": n_layers, "n_heads": n_heads,
             "max_tokens": limit, "causal": info.causal, "view": VIEW}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return _page(about)

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return about

    @app.post("/api/capture", responses=_responses(413, 422))
    def api_capture(request: CaptureRequest) -> dict[str, Any]:
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
                             f"{limit:,} tokens with {model_name}; shorten it")
        with lock, torch.no_grad():
            cap = run_and_capture(model, tokenizer, text)
        session = Session(cap, list(cap.tokens), cap.seq_len(0))
        key = uuid.uuid4().hex
        sessions[key] = session
        while len(sessions) > KEEP:
            sessions.popitem(last=False)
        return {"id": key, "tokens": session.tokens, "n": session.n}

    def head_of(key: str, layer: int, head: int) -> tuple[Session, HeadPattern]:
        if key not in sessions:
            raise _fail(404, "unknown capture id (the explorer keeps the last few texts); "
                             "send the text again")
        if not 0 <= layer < n_layers:
            raise _fail(400, f"layer {layer} is out of range: {model_name} has {n_layers} layers "
                             f"(0..{n_layers - 1})")
        if not 0 <= head < n_heads:
            raise _fail(400, f"head {head} is out of range: {model_name} has {n_heads} heads per "
                             f"layer (0..{n_heads - 1})")
        session = sessions[key]
        return session, from_capture(session.capture, layer, head)

    @app.get("/api/view", responses=_responses(400, 404, 422))
    def api_view(id: str, layer: int, head: int, r0: int = 0, r1: int | None = None,
                 c0: int = 0, c1: int | None = None,
                 size: int = Query(VIEW, ge=1, le=VIEW),
                 reduce: str = Query("max", pattern="^(max|mean)$")) -> dict[str, Any]:
        session, source = head_of(id, layer, head)
        rows = (r0, session.n if r1 is None else r1)
        cols = (c0, session.n if c1 is None else c1)
        try:
            return session.view((layer, head, rows, cols, size, reduce), lambda: pooled(
                source, rows=rows, cols=cols, size=size, reduce=reduce).to_dict())
        except AttnkitError as err:
            raise _fail(400, str(err)) from None

    @app.get("/api/top", responses=_responses(400, 404, 422))
    def api_top(id: str, layer: int, head: int, query: int,
                k: int = Query(8, ge=1, le=64)) -> dict[str, Any]:
        session, source = head_of(id, layer, head)
        try:
            best = top_keys(source, query, k)
        except AttnkitError as err:
            raise _fail(400, str(err)) from None
        return {"query": query, "token": session.tokens[query],
                "keys": [{"key": j, "token": session.tokens[j], "weight": w} for j, w in best]}

    return app


def _page(about: dict[str, Any]) -> HTMLResponse:
    script = static_text("explorer.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
              "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")
    body = static_text("explorer.html")
    body = body.replace("/*STYLE*/", static_text("explorer.css"))
    body = body.replace("/*ABOUT*/", escape_json(about)).replace("/*SCRIPT*/", script)
    return HTMLResponse(body, headers={"Content-Security-Policy": policy,
                                       "X-Content-Type-Options": "nosniff"})
