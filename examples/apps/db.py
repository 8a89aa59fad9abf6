"""db: the last hop of the demo chain web -> api -> db.

A tiny key/value store of products, kept in memory, served over HTTP/1.1.
Every answer names the host that served it (`served_by`), so when the mesh
balances between several db hosts you can see which one answered, and an
item POSTed through web and api shows a request body crossing every hop.

    GET  /healthz      {"status": "ok", "served_by": HOST}
    GET  /items        {"served_by": HOST, "items": [...]}
    GET  /items/<id>   {"served_by": HOST, "item": {...}}   (404 if unknown)
    POST /items        stores the JSON object in the body, answers 201 with its id
    ANY  /work/**      waits ?delay_ms=N (0-5000), answers ?status=S (200-599): a
                       known latency and status for load tests (meshapp.py, shared)

Standard library only: runs on a stock `python3` (3.11+).
    python3 db.py --port 8082
"""

from __future__ import annotations

import json
import threading
from typing import Any

from meshapp import HOST, HTTPError, JsonHandler, options, serve

_lock = threading.Lock()
_items: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "espresso", "price": 2.5},
    2: {"id": 2, "name": "croissant", "price": 1.8},
    3: {"id": 3, "name": "orange juice", "price": 3.2},
}


class Handler(JsonHandler):
    def route(self, path: str, body: bytes) -> tuple[int, Any]:
        if self.command == "GET" and path == "/healthz":
            return 200, {"status": "ok", "served_by": HOST}
        if self.command == "GET" and path == "/items":
            with _lock:
                return 200, {"served_by": HOST, "items": list(_items.values())}
        if self.command == "GET" and path.startswith("/items/"):
            with _lock:
                item = _items.get(int(path[7:])) if path[7:].isdigit() else None
            if item is None:
                raise HTTPError(404, f"no item {path[7:]!r}")
            return 200, {"served_by": HOST, "item": item}
        if self.command == "POST" and path == "/items":
            return 201, {"served_by": HOST, "item": store(body)}
        return super().route(path, body)


def store(body: bytes) -> dict[str, Any]:
    """Keep the JSON object in ``body`` under a new id."""
    try:
        item = json.loads(body)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        raise HTTPError(400, "the body must be a JSON object")
    with _lock:
        item["id"] = max(_items, default=0) + 1
        _items[item["id"]] = item
    return item


def main() -> None:
    serve("db", Handler, options(__doc__, 8082).port)


if __name__ == "__main__":
    main()
