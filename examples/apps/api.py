"""api: the middle hop of the demo chain web -> api -> db.

Answers web's calls by calling db, over plain HTTP/1.1 to a mesh name
(`http://db.mesh:8082` by default): the application knows nothing about
TLS or identities, meshd on each host adds them. Every answer names the host
that served it and nests what db said, so one request shows the whole path.

    GET  /healthz    {"status": "ok", "served_by": HOST}
    GET  /products   {"served_by": HOST, "peer": CLIENT_IP, "db": <db's answer to GET /items>}
                     (on a meshed host the peer is 127.0.0.1: the local meshd)
    POST /orders     forwards the JSON body to db's POST /items:
                     {"served_by": HOST, "db": <db's answer>}

When db cannot be reached (or answers garbage within 3 s) the answer is a 502
{"error": ..., "upstream": URL}, never a traceback.

Standard library only: runs on a stock `python3` (3.11+).
    python3 api.py --port 8081 --upstream http://db.mesh:8082
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOST = socket.gethostname()
MAX_BODY = 1 << 20  # 1 MiB
TIMEOUT = 3.0  # seconds, for connecting to and for each read from the upstream


class HTTPError(Exception):
    """An answer other than 2xx, sent to the client as {"error": ..., **extra}."""

    def __init__(self, status: int, error: str, **extra: str) -> None:
        super().__init__(error)
        self.status, self.extra = status, extra


class Upstream:
    """The next hop, e.g. http://db.mesh:8082 (a fresh connection per call)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must look like http://host:port, not {url!r}")
        self.url, self.host, self.port = url.rstrip("/"), parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """Return the upstream's (status, JSON answer), or raise a 502 naming it."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{method} {self.url}{path} failed: {str(exc) or type(exc).__name__}"
            raise HTTPError(502, error, upstream=self.url) from exc
        finally:
            conn.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    db: Upstream  # set by main()

    def route(self, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request: (status, JSON payload)."""
        if self.command == "GET" and path == "/healthz":
            return 200, {"status": "ok", "served_by": HOST}
        if self.command == "GET" and path == "/products":
            status, answer = self.db.call("GET", "/items")
            return status, {"served_by": HOST, "peer": self.client_address[0], "db": answer}
        if self.command == "POST" and path == "/orders":
            status, answer = self.db.call("POST", "/items", body)
            return status, {"served_by": HOST, "db": answer}
        raise HTTPError(404, f"no route for {self.command} {path}")

    def do_GET(self) -> None:
        self.respond()

    def do_POST(self) -> None:
        self.respond()

    def respond(self) -> None:
        started = time.monotonic()
        try:
            status, payload = self.route(urlsplit(self.path).path, self.read_body())
        except HTTPError as exc:
            status, payload = exc.status, {"error": str(exc), **exc.extra, "served_by": HOST}
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
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (8081)")
    parser.add_argument("--upstream", default="http://db.mesh:8082", help="db's URL (%(default)s)")
    args = parser.parse_args()
    try:
        Handler.db = Upstream(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)  # noqa: S104 -- a mesh service
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemctl stop: exit cleanly
    print(f"api listening on 0.0.0.0:{args.port} as {HOST}, db at {args.upstream}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("api stopped", flush=True)


if __name__ == "__main__":
    main()
