"""An HTTP app for the exchange's socket tests: it records what each request arrived with."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class RecordingApp:
    """A keep-alive HTTP/1.1 app that records each request's path and headers."""

    def __init__(self) -> None:
        seen: list[tuple[str, list[tuple[str, str]]]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.items()))
                body = f"hello {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def tags(self) -> list[list[str]]:
        """Per request, the values of X-Mesh-Test it arrived with."""
        return [[v for n, v in headers if n.lower() == "x-mesh-test"] for _, headers in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
