"""``attnkit serve``: the local attention explorer (FastAPI on uvicorn), bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import sys

from attnkit.viz.server import MAX_TOKENS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="a local web explorer: type text, pick layer/head, zoom into long patterns",
        description="Start the attention explorer on http://HOST:PORT. It runs the model once per "
                    "text and computes every view on demand from the captured q, k and "
                    f"log-sum-exp, so inputs up to {MAX_TOKENS:,} tokens (or the model's limit) "
                    "can be explored without building their N x N pattern.")
    parser.add_argument("--model", default="minilm",
                        help="minilm (bundled, default), toy, a Hugging Face id or a local path")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from attnkit.cli import UserError
    from attnkit.viz.server import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number; use 1..65535, e.g. 8765")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"attnkit serve: warning: listening on {args.host} lets other machines reach the "
              "explorer; it has no authentication", file=sys.stderr)
    app = create_app(args.model)
    print(f"attnkit explorer for {args.model} on http://{args.host}:{args.port}  (Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
