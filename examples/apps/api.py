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
    ANY  /v1/**      {"served_by": HOST, "method": M, "target": T}: echoes the request
                     target as it arrived (path and query), e.g. to see what meshd
                     forwards after normalising it; GET, POST, PUT and DELETE
    ANY  /work/**    waits ?delay_ms=N (0-5000), answers ?status=S (200-599): a known
                     latency and status for load tests (meshapp.py, shared by the apps)

When db cannot be reached (or answers garbage within 3 s) the answer is a 502
{"error": ..., "upstream": URL}, never a traceback.

Standard library only: runs on a stock `python3` (3.11+).
    python3 api.py --port 8081 --upstream http://db.mesh:8082
"""

from __future__ import annotations

from typing import Any

from meshapp import HOST, JsonHandler, Upstream, options, serve


class Handler(JsonHandler):
    db: Upstream  # set by main()

    def route(self, path: str, body: bytes) -> tuple[int, Any]:
        if self.command == "GET" and path == "/healthz":
            return 200, {"status": "ok", "served_by": HOST}
        if self.command == "GET" and path == "/products":
            status, answer = self.db.call("GET", "/items")
            return status, {"served_by": HOST, "peer": self.client_address[0], "db": answer}
        if self.command == "POST" and path == "/orders":
            status, answer = self.db.call("POST", "/items", body)
            return status, {"served_by": HOST, "db": answer}
        if path == "/v1" or path.startswith("/v1/"):
            return 200, {"served_by": HOST, "method": self.command, "target": self.path}
        return super().route(path, body)


def main() -> None:
    args = options(__doc__, 8081, upstream="http://db.mesh:8082")
    Handler.db = args.upstream
    serve("api", Handler, args.port, f", db at {args.upstream.url}")


if __name__ == "__main__":
    main()
