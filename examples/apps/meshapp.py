"""What the three sample apps share: a JSON-over-HTTP/1.1 handler, an upstream, serving.

Each app (web.py, api.py, db.py) only says which routes it answers. Standard
library only, so it runs on a stock `python3` (3.11+); it sits next to the
apps and is imported by them (Python puts a script's directory on sys.path).

Every app also answers the shared route ``/work`` and ``/work/**`` (any method
it takes), made for load tests that need a known mix of latencies and
statuses, e.g. ``GET /work/slow?delay_ms=350`` or ``GET /work/fail?status=500``:

    delay_ms  wait this long before answering: 0 to MAX_DELAY_MS (5000), default 0
    status    answer with this status: 200 to 599, default 200

The answer is {"served_by": HOST, "method": M, "target": T, "delay_ms": D,
"status": S} (no body for 204 and 304); a value out of range or not a
number is a 400. The delay adds to the app's own time to answer (a few ms
behind meshd; more on a busy machine), so choose delays well above it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = socket.gethostname()
MAX_BODY = 1 << 20  # 1 MiB
TIMEOUT = 3.0  # seconds, for connecting to and for each read from an upstream
MAX_DELAY_MS = 5000  # /work's longest delay: a handler thread sleeps that long
NO_BODY = (204, 304)  # statuses whose answers never carry a body


class HTTPError(Exception):
    """An answer other than 2xx, sent to the client as {"error": ..., **extra}."""

    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.extra = status, extra


class InFlight:
    """Requests being answered, so that a stop waits for each one's log line."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    def __enter__(self) -> None:
        with self._changed:
            self._count += 1

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once no request is being answered; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)


IN_FLIGHT = InFlight()
STOPPING = threading.Event()  # set at SIGTERM: answers then close their connection
DRAIN = 5.0  # seconds a stop waits for requests being answered


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


def _bounded(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    """The query's integer ``name`` (its last value), ``default`` if absent; 400 unless it
    is a plain number from ``low`` to ``high``."""
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and low <= int(text) <= high):
        raise HTTPError(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)


class JsonHandler(BaseHTTPRequestHandler):
    """Answers GET, POST, PUT and DELETE through ``route``; logs one line per request (its
    method, the request target as received, the status) on stdout."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    # the head and the body leave in two writes: with Nagle on, the body would wait for
    # the client's delayed ACK of the head (40 ms on Linux) on every kept-alive request
    disable_nagle_algorithm = True

    def route(self, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request: (status, payload); a str payload is sent as text/plain.

        An app's own routes come first; what they leave comes here: ``/work``
        (see the module docstring) or a 404."""
        if path == "/work" or path.startswith("/work/"):
            return self.work()
        raise HTTPError(404, f"no route for {self.command} {path}")

    def work(self) -> tuple[int, Any]:
        """``/work``: wait ``delay_ms``, answer ``status`` (both from the query, bounded)."""
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        delay = _bounded(query, "delay_ms", 0, 0, MAX_DELAY_MS)
        status = _bounded(query, "status", 200, 200, 599)
        time.sleep(delay / 1000)
        return status, {
            "served_by": HOST,
            "method": self.command,
            "target": self.path,
            "delay_ms": delay,
            "status": status,
        }

    def do_GET(self) -> None:
        self.respond()

    def do_POST(self) -> None:
        self.respond()

    def do_PUT(self) -> None:
        self.respond()

    def do_DELETE(self) -> None:
        self.respond()

    def respond(self) -> None:
        with IN_FLIGHT:
            self._respond()

    def _respond(self) -> None:
        started = time.monotonic()
        try:
            status, payload = self.route(urlsplit(self.path).path, self.read_body())
        except HTTPError as exc:
            status, payload = exc.status, {"error": str(exc), **exc.extra, "served_by": HOST}
        except Exception as exc:  # never a traceback to the client
            self.log_error("internal error: %r", exc)
            status, payload = 500, {"error": "internal error", "served_by": HOST}
        if isinstance(payload, str):
            body, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = json.dumps(payload).encode() + b"\n", "application/json"
        try:
            self.send_response(status)
            if status in NO_BODY:  # /work may answer them: a body would break keep-alive
                body = b""
            else:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            if STOPPING.is_set():  # no next request on this connection: we are going away
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away
            self.close_connection = True
        elapsed = (time.monotonic() - started) * 1000
        # One write per line: a line printed in two parts (text, then end) could
        # be split by another thread's line.
        sys.stdout.write(f"{self.command} {self.path} {status} {elapsed:.1f}ms\n")
        sys.stdout.flush()

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


def options(doc: str | None, port: int, upstream: str | None = None) -> argparse.Namespace:
    """``--port`` (and ``--upstream`` when the app has one, parsed into an Upstream)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=port, help="port to listen on (%(default)s)")
    if upstream is not None:
        parser.add_argument("--upstream", default=upstream, help="next hop (%(default)s)")
    args = parser.parse_args()
    if upstream is not None:
        try:
            args.upstream = Upstream(args.upstream)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def serve(name: str, handler: type[JsonHandler], port: int, note: str = "") -> None:
    """Serve until SIGTERM (systemctl stop) or Ctrl-C, then exit cleanly."""
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 -- a mesh service
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{name} listening on 0.0.0.0:{port} as {HOST}{note}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        STOPPING.set()
        server.server_close()  # no new connections; answers under way still get logged
        if not IN_FLIGHT.wait_idle(DRAIN):
            sys.stdout.write(f"{name}: requests still being answered after {DRAIN:.0f}s\n")
        print(f"{name} stopped", flush=True)
