"""web: the front hop of the demo chain web -> api -> db.

The page a user opens. It calls api over plain HTTP/1.1 to a mesh name
(`http://api.mesh:8081` by default), and api calls db; meshd on each host
adds mutual TLS and identities without the apps knowing.
The page shows which host served each hop, e.g. `web@web1 -> api@api2 ->
db@db1`, and POST /order carries a request body through all three hops.

    GET  /              text/plain page: the chain of hosts, then db's items
    GET  /api/products  api's answer to GET /products, as JSON
    POST /order         forwards the JSON body to api's POST /orders (which
                        stores it in db) and returns api's answer
    GET  /healthz       {"status": "ok", "served_by": HOST}
    ANY  /work/**       waits ?delay_ms=N (0-5000), answers ?status=S (200-599):
                        a known latency and status for load tests (meshapp.py)

When api cannot be reached (or answers garbage within 3 s) the answer is a 502
{"error": ..., "upstream": URL}, never a traceback.

Standard library only: runs on a stock `python3` (3.11+).
    python3 web.py --port 8080 --upstream http://api.mesh:8081
"""

from __future__ import annotations

from typing import Any

from meshapp import HOST, HTTPError, JsonHandler, Upstream, options, serve


def render(answer: Any) -> str:
    """The page: which host served each hop, then db's items."""
    db = answer["db"]
    lines = [f"web@{HOST} -> api@{answer['served_by']} -> db@{db['served_by']}", ""]
    lines += ["  " + ", ".join(f"{k}={v}" for k, v in item.items()) for item in db["items"]]
    return "\n".join(lines) + "\n"


class Handler(JsonHandler):
    api: Upstream  # set by main()

    def route(self, path: str, body: bytes) -> tuple[int, Any]:
        if self.command == "GET" and path == "/healthz":
            return 200, {"status": "ok", "served_by": HOST}
        if self.command == "GET" and path == "/":
            status, answer = self.api.call("GET", "/products")
            try:
                return 200, render(answer)
            except (KeyError, TypeError, AttributeError):
                error = f"api answered {status}, not the list of products"
                raise HTTPError(502, error, upstream=self.api.url, answer=answer) from None
        if self.command == "GET" and path == "/api/products":
            return self.api.call("GET", "/products")
        if self.command == "POST" and path == "/order":
            return self.api.call("POST", "/orders", body)
        return super().route(path, body)


def main() -> None:
    args = options(__doc__, 8080, upstream="http://api.mesh:8081")
    Handler.api = args.upstream
    serve("web", Handler, args.port, f", api at {args.upstream.url}")


if __name__ == "__main__":
    main()
