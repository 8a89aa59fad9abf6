"""``meshctl top`` in-process, against real HTTPS admin endpoints with the operator's mTLS.

The endpoints are ``tests.meshctl.trafficserver`` hosts on 127.0.0.x (meshd
does not serve /traffic yet on this branch), with steady known traffic:
web -> api at 1000 rps (10% 5xx, 90% of latencies in (5, 10] ms, 10% in
(20, 50] ms), served half by api1, half by api2; api -> db at 500 rps.
(High rates: the stand-in's whole-request counters round by one request per
series and poll, which must stay well under the 1 point of success checked.)
Their taps send 20 lines a second per inbound series: api1's and api2's
GET /orders, /orders, /users in turn (every 10th a 500, 7.5 ms), db1's
GET /items (0.5 ms).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from meshctl.cli.app import run
from meshctl.cli.context import AppContext
from tests.meshctl.topmesh import TopMesh, hung, model, top_mesh
from tests.meshctl.trafficserver import HostModel, Series, TrafficServer

HOSTS = {"web1": "127.0.0.21", "api1": "127.0.0.22", "api2": "127.0.0.23", "db1": "127.0.0.24"}
MIX = {3: 0.9, 5: 0.1}  # bucket (5, 10] ms and (20, 50] ms
API = ("/orders", "/orders", "/users")
DB = ("/items",)


def traffic(mesh: TopMesh) -> list[HostModel]:
    return [
        model(mesh, "web1", HOSTS["web1"], Series("outbound", "web", "api", 1000, 0.1, MIX)),
        model(
            mesh,
            "api1",
            HOSTS["api1"],
            Series("inbound", "web", "api", 500, 0.1, MIX, 2, 10_000, API),
            Series("outbound", "api", "db", 500, 0.0, {0: 1.0}),
        ),
        model(
            mesh, "api2", HOSTS["api2"], Series("inbound", "web", "api", 500, 0.1, MIX, 3, 0, API)
        ),
        model(
            mesh, "db1", HOSTS["db1"], Series("inbound", "api", "db", 500, 0.0, {0: 1.0}, paths=DB)
        ),
    ]


@contextmanager
def serving(mesh: TopMesh, hosts: list[HostModel]) -> Iterator[TrafficServer]:
    server = TrafficServer(hosts, mesh.port, mesh.pki.bundle).start()
    try:
        yield server
    finally:
        server.stop()


def meshctl(mesh: TopMesh, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    context = AppContext(
        out=Console(file=out, width=200, emoji=False),
        err=Console(file=err, width=200, emoji=False),
        environ={},
        interactive=False,
        workspace_path=mesh.ws.root,
    )
    code = run(list(argv), context)
    return code, out.getvalue(), err.getvalue()


def by(rows: list[dict[str, Any]], *keys: str) -> dict[str, dict[str, Any]]:
    return {"->".join(r[k] for k in keys): r for r in rows}


def test_once_json_reports_known_traffic(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, HOSTS)
    with serving(mesh, traffic(mesh)):
        code, out, err = meshctl(mesh, "top", "--once", "--json")
    assert code == 0, out + err
    (line,) = out.splitlines()
    doc = json.loads(line)
    api, db = by(doc["services"], "service")["api"], by(doc["services"], "service")["db"]
    assert api["rps"] == pytest.approx(1000, rel=0.05)
    assert api["success"] == pytest.approx(0.9, abs=0.01)
    assert 5 <= api["p50_ms"] <= 10 and 20 <= api["p99_ms"] <= 50
    assert (api["open"], api["hosts"]) == (5, ["api1", "api2"])
    assert api["bytes_per_s"] == pytest.approx(10_000, rel=0.05)
    assert db["rps"] == pytest.approx(500, rel=0.05) and db["success"] == 1.0
    assert db["p99_ms"] <= 1 and db["hosts"] == ["db1"]
    edges = by(doc["edges"], "source", "destination")
    assert sorted(edges) == ["api->db", "web->api"]
    assert edges["web->api"]["rps"] == pytest.approx(1000, rel=0.05)
    assert edges["web->api"]["success"] == pytest.approx(0.9, abs=0.01)
    assert edges["api->db"]["rps"] == pytest.approx(500, rel=0.05)
    paths = by(doc["paths"], "method", "path")
    assert next(iter(paths)) == "GET->/orders"  # busiest first: 2 hosts x 2/3 of 20 a second
    assert sorted(paths) == ["GET->/items", "GET->/orders", "GET->/users"]
    orders, items, users = paths["GET->/orders"], paths["GET->/items"], paths["GET->/users"]
    assert orders["count"] / users["count"] == pytest.approx(2, abs=0.5)  # two in three
    assert 0.75 <= orders["success"] < 1 and items["success"] == 1.0
    assert (users["best_ms"], users["worst_ms"], users["last_ms"]) == (7.5, 7.5, 7.5)
    assert (items["best_ms"], items["worst_ms"], items["last_ms"]) == (0.5, 0.5, 0.5)
    assert doc["paths_missing"] == []
    assert doc["hosts"] == [
        {"host": h, "reachable": True, "error": None} for h in ("api1", "api2", "db1", "web1")
    ]


def test_once_table_with_filter_and_sort(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, HOSTS)
    with serving(mesh, traffic(mesh)):
        code, out, err = meshctl(mesh, "top", "--once", "--service", "db", "--sort", "p99")
    assert code == 0, out + err
    rows = [[c.strip() for c in line.split("│")] for line in out.splitlines() if "│" in line]
    assert [r[:2] for r in rows[:4]] == [  # the service, its edge
        ["service", "rps"],
        ["db", rows[1][1]],
        ["source", "destination"],
        ["api", "db"],
    ]
    assert float(rows[1][1]) == pytest.approx(500, rel=0.05)
    assert rows[1][-1] == "db1"
    assert rows[4][:3] == ["method", "path", "count"]  # the tap asked for db only
    assert [r[:2] for r in rows[5:]] == [["GET", "/items"]]
    assert "paths missing" not in out
    assert "hosts: api1  api2  db1  web1" in out


def test_unreachable_and_stuck_hosts_are_marked_without_stalling(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, {**HOSTS, "gone1": "127.0.0.25"})  # nothing listens for gone1
    hosts = traffic(mesh)
    hosts[3] = hung(hosts[3])  # db1 accepts and never answers
    with serving(mesh, hosts):
        started = time.monotonic()
        code, out, err = meshctl(mesh, "top", "--once", "--json", "--interval", "0.5")
        took = time.monotonic() - started
    assert code == 8, out + err
    assert took < 2.0  # two polls, each bounded by 0.4 s, 0.5 s apart
    doc = json.loads(out)
    hosts_seen = by(doc["hosts"], "host")
    assert [h for h, r in hosts_seen.items() if r["reachable"]] == ["api1", "api2", "web1"]
    port = mesh.port
    assert hosts_seen["db1"]["error"] == f"meshd on db1 (127.0.0.24:{port}): no answer within 0.4s"
    assert hosts_seen["gone1"]["error"] == f"meshd on gone1 (127.0.0.25:{port}): connection refused"
    assert by(doc["services"], "service")["api"]["rps"] == pytest.approx(1000, rel=0.1)
    assert doc["paths_missing"] == [  # db1's tap is still in its handshake
        {"host": "db1", "error": "connecting"},
        {"host": "gone1", "error": "connection refused"},
    ]
    assert [p["path"] for p in doc["paths"]] == ["/orders", "/users"]


def test_a_host_without_a_tap_is_named_and_the_others_still_show_paths(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, HOSTS)
    hosts = traffic(mesh)
    hosts[1] = replace(hosts[1], no_tap=True)  # api1: a meshd older than the tap
    with serving(mesh, hosts) as server:
        code, out, err = meshctl(mesh, "top", "--once")
    assert code == 0, out + err
    assert server.taps == 3
    assert "paths missing from api1 (no /tap (meshd older than meshctl))" in out
    rows = [[c.strip() for c in line.split("│")] for line in out.splitlines() if "│" in line]
    assert [r[1] for r in rows if r[0] == "GET"] == ["/items", "/orders", "/users"]


def test_host_chooses_the_hosts_polled(tmp_path: Path) -> None:
    mesh = top_mesh(tmp_path, HOSTS)
    with serving(mesh, traffic(mesh)) as server:
        code, out, err = meshctl(mesh, "top", "--once", "--json", "--host", "db1", "--host", "web1")
    assert code == 0, out + err
    doc = json.loads(out)
    assert [h["host"] for h in doc["hosts"]] == ["db1", "web1"]  # inventory order
    assert [s["service"] for s in doc["services"]] == ["db"]
    assert server.requests == 4  # two polls of two hosts


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--host", "nosuch"], 3, "error: not a joined host: nosuch"),
        (["--sort", "fastest"], 3, "error: --sort 'fastest' is not one of rps, success, p99, name"),
        (["--interval", "0"], 2, "Invalid value for '--interval'"),
    ],
)
def test_refuses_bad_options(tmp_path: Path, argv: list[str], code: int, message: str) -> None:
    mesh = top_mesh(tmp_path, {"web1": "127.0.0.21"})
    got, out, err = meshctl(mesh, "top", "--once", *argv)
    assert (got, message in err) == (code, True), out + err
