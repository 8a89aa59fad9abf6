"""``meshctl top`` against real meshd processes: a pair a -> b on loopback with real traffic.

b serves ``web`` (the harness's HttpApp), a has an upstream listener for it;
a load thread sends GET requests through a (to /orders/1, /orders/1 and
/health in turn) and counts what it got; top reads both meshd's real taps. The
workspace's CA signs the meshd certificates, and each meshd's admin API
listens on its own loopback address at the workspace's admin port (a
launcher rewrites the harness's admin line), so ``meshctl top`` reaches them
exactly as it reaches joined hosts.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from tests.meshctl.cli.test_top import meshctl
from tests.meshctl.topmesh import top_mesh
from tests.meshd.harness import MESHD, HttpApp, MeshNet

ADDRESSES = {"a": "127.0.0.81", "b": "127.0.0.82"}


class Load:
    """GET / through a's upstream for web, one request after another, until stopped."""

    PATHS = ("/orders/1", "/orders/1", "/health")

    def __init__(self, port: int) -> None:
        self.port, self.done, self.failed = port, 0, 0
        self.sent: dict[str, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stopping.is_set():
            path = self.PATHS[(self.done + self.failed) % len(self.PATHS)]
            self.sent[path] = self.sent.get(path, 0) + 1
            conn.request("GET", path + "?q=1")  # the tap shows paths without their query
            response = conn.getresponse()
            response.read()
            self.done += response.status == 200
            self.failed += response.status != 200
        conn.close()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def launcher(address: str, port: int) -> list[str]:
    """meshd, with the harness's admin listener moved to ``address``:``port``."""
    script = f'sed -i "s/^admin = .*/admin = \\"{address}:{port}\\"/" "$3" && exec "$0" "$@"'
    return ["sh", "-c", script, MESHD]


def test_once_json_against_real_meshd(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, ADDRESSES)
    (tmp_path / "net").mkdir()
    net = MeshNet(tmp_path / "net", pki=mesh.pki)
    web = HttpApp("web")
    try:
        b = net.start("b", services={"web": web.port}, command=launcher(ADDRESSES["b"], mesh.port))
        net.add_service("web", web.port, "b", b.ports["mesh"])
        a = net.start("a", upstreams={"web": 0}, command=launcher(ADDRESSES["a"], mesh.port))
        with Load(a.ports["upstream:web"]) as load:
            time.sleep(1.0)  # the link is up, the load steady
            before, started = load.done, time.monotonic()
            code, out, err = meshctl(mesh, "top", "--once", "--json")
            rate = (load.done - before) / (time.monotonic() - started)
    finally:
        net.stop_all()
        web.close()
    assert code == 0, out + err
    assert load.failed == 0 and load.done > 10
    doc = json.loads(out)
    print(f"load: {rate:.1f} rps; top: {out}")
    assert doc["hosts"] == [
        {"host": "a", "reachable": True, "error": None},
        {"host": "b", "reachable": True, "error": None},
    ]
    (edge,) = doc["edges"]
    assert (edge["source"], edge["destination"]) == ("host/a", "web")  # a runs no service
    assert edge["rps"] == pytest.approx(rate, rel=0.25)  # top's window is not the load's
    assert edge["success"] == 1.0
    assert 0 < edge["p50_ms"] <= edge["p95_ms"] <= edge["p99_ms"] < 1000
    (service,) = doc["services"]
    assert (service["service"], service["hosts"]) == ("web", ["b"])
    assert service["open"] == 1  # the load's one kept-alive connection
    orders, health = doc["paths"]  # counted once (on b), though a's tap saw them too
    assert (orders["method"], orders["path"], health["path"]) == ("GET", "/orders/1", "/health")
    assert 0 < health["count"] < orders["count"] <= load.sent["/orders/1"]
    assert orders["count"] == pytest.approx(2 * health["count"], abs=2)
    assert orders["success"] == health["success"] == 1.0
    assert 0 < orders["best_ms"] <= orders["last_ms"] <= orders["worst_ms"] < 1000
    assert doc["paths_missing"] == []
