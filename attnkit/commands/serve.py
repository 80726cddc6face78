"""``attnkit serve``: the local attention explorer (FastAPI on uvicorn), bound to 127.0.0.1.

``--open run.safetensors`` serves capture files (from ``attnkit capture``) with no model loaded,
unless ``--model`` asks for one too.

Other addresses are refused unless ``--allow-remote-access`` says so: the explorer has no
authentication. The server answers only requests whose Host header names the address it serves.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from attnkit.commands.common import port
from attnkit.viz.limits import MAX_TOKENS

LOOPBACK_NAMES = ("localhost",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="a local web explorer: type text, pick layer/head, zoom into long patterns",
        description="Start the attention explorer on http://HOST:PORT. It runs the model once per "
                    "text and computes every view on demand from the captured q, k and "
                    f"log-sum-exp, so inputs up to {MAX_TOKENS:,} tokens (or the model's limit) "
                    "can be explored without building their N x N pattern.")
    parser.add_argument("--model", default=None,
                        help="minilm (bundled, the default without --open), toy, a Hugging Face "
                             "id or a local path")
    parser.add_argument("--open", action="append", metavar="FILE", dest="files",
                        help="serve this capture file (from attnkit capture); repeat to compare "
                             "several. No model is loaded unless --model is given too")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port, default=8765, help="port (default 8765)")
    parser.add_argument("--allow-remote-access", action="store_true",
                        help="let --host be an address other machines can reach (the explorer "
                             "has no authentication: anyone who reaches it can use it)")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str]:
    """The Host header values the server accepts when listening on ``host``: the names of that
    address (so a DNS name rebound to 127.0.0.1 is turned away), every name for 0.0.0.0."""
    if host in ("", "0.0.0.0", "::"):
        return ["*"]
    if is_loopback(host):
        return ["127.0.0.1", "localhost", "[::1]", "::1", host]
    return [host, f"[{host}]"]


def check_port_free(host: str, number: int) -> None:
    """Refuse now, with the fix, if another program listens on ``host:number``."""
    from attnkit.errors import AttnkitError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, number))
        except OSError as err:
            raise AttnkitError(f"cannot listen on {host}:{number} ({err.strerror}); another "
                               "program (or another attnkit serve) may be using the port: "
                               "choose another with --port") from None


def run(args: argparse.Namespace) -> int:
    from attnkit.errors import AttnkitError

    host = args.host
    if not is_loopback(host) and not args.allow_remote_access:
        shown = repr(host) if not host else host
        raise AttnkitError(f"--host {shown} would let other machines reach the explorer, which "
                           "has no authentication; keep the default 127.0.0.1, or add "
                           "--allow-remote-access if that is what you want")
    check_port_free(host, args.port)

    import uvicorn

    from attnkit.inspect.capture_file import load_capture
    from attnkit.viz.server import create_app

    files = args.files or []
    captures = {}
    for path in files:  # every file read (and checked) before the server starts
        cap = load_capture(path)
        name = Path(path).name if Path(path).name not in captures else str(path)
        captures[name] = cap
    if files and args.model is None:
        app = create_app(None, captures=captures, allowed_hosts=allowed_hosts(host))
        what = f"{len(files)} capture file{'s' if len(files) > 1 else ''}, no model loaded"
    else:
        model_name = args.model or "minilm"
        model = tokenizer = None
        if files:
            from attnkit.models import load_model

            model, tokenizer = load_model(model_name)
        app = create_app(model_name, model=model, tokenizer=tokenizer,
                         captures=captures if files else None,
                         allowed_hosts=allowed_hosts(host))
        what = model_name + (f" and {len(files)} capture file{'s' if len(files) > 1 else ''}"
                             if files else "")
    if not is_loopback(host):
        print(f"attnkit serve: warning: listening on {host or 'every interface'}; anyone who "
              "reaches this machine can use the explorer", file=sys.stderr)
    print(f"attnkit explorer for {what} on http://{host}:{args.port}  (Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")
    return 0
