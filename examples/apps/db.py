"""db: the last hop of the demo chain web -> api -> db.

A tiny key/value store of products, kept in memory, served over HTTP/1.1.
Every answer names the host that served it (`served_by`), so when the mesh
balances between several db hosts you can see which one answered, and an
item POSTed through web and api shows a request body crossing every hop.

    GET  /healthz      {"status": "ok", "served_by": HOST}
    GET  /items        {"served_by": HOST, "items": [...]}
    GET  /items/<id>   {"served_by": HOST, "item": {...}}   (404 if unknown)
    POST /items        stores the JSON object in the body, answers 201 with its id

Standard library only: runs on a stock `python3` (3.11+).
    python3 db.py --port 8082
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOST = socket.gethostname()
MAX_BODY = 1 << 20  # 1 MiB

_lock = threading.Lock()
_items: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "espresso", "price": 2.5},
    2: {"id": 2, "name": "croissant", "price": 1.8},
    3: {"id": 3, "name": "orange juice", "price": 3.2},
}


class HTTPError(Exception):
    """An answer other than 2xx, sent to the client as {"error": ...}."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status


def route(method: str, path: str, body: bytes) -> tuple[int, Any]:
    """Answer one request: (status, JSON payload)."""
    if method == "GET" and path == "/healthz":
        return 200, {"status": "ok", "served_by": HOST}
    if method == "GET" and path == "/items":
        with _lock:
            return 200, {"served_by": HOST, "items": list(_items.values())}
    if method == "GET" and path.startswith("/items/"):
        with _lock:
            item = _items.get(int(path[7:])) if path[7:].isdigit() else None
        if item is None:
            raise HTTPError(404, f"no item {path[7:]!r}")
        return 200, {"served_by": HOST, "item": item}
    if method == "POST" and path == "/items":
        try:
            item = json.loads(body)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            raise HTTPError(400, "the body must be a JSON object")
        with _lock:
            item["id"] = max(_items, default=0) + 1
            _items[item["id"]] = item
        return 201, {"served_by": HOST, "item": item}
    raise HTTPError(404, f"no route for {method} {path}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length

    def do_GET(self) -> None:
        self.respond()

    def do_POST(self) -> None:
        self.respond()

    def respond(self) -> None:
        started = time.monotonic()
        try:
            status, payload = route(self.command, urlsplit(self.path).path, self.read_body())
        except HTTPError as exc:
            status, payload = exc.status, {"error": str(exc), "served_by": HOST}
        except Exception as exc:  # never a traceback to the client
            self.log_error("internal error: %r", exc)
            status, payload = 500, {"error": "internal error", "served_by": HOST}
        body = json.dumps(payload).encode() + b"\n"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away
            self.close_connection = True
        elapsed = (time.monotonic() - started) * 1000
        print(f"{self.command} {self.path} {status} {elapsed:.1f}ms", flush=True)

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # we cannot tell where the next request starts
            raise HTTPError(411, "send the body with a Content-Length")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default access log: respond() prints its own line."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8082, help="port to listen on (8082)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)  # noqa: S104 -- a mesh service
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemctl stop: exit cleanly
    print(f"db listening on 0.0.0.0:{args.port} as {HOST}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("db stopped", flush=True)


if __name__ == "__main__":
    main()
