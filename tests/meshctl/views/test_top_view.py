"""Rendering of ``meshctl top``: the screen and the JSON line, from a fixed ``Top``."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from meshctl.traffic import EdgeRow, HostRow, PathRow, ServiceRow, Signals, Top
from meshctl.views.top import NO_REQUESTS, NO_TAP, host_errors, top_json, top_view
from tests.meshctl.helpers import NOW

API = ServiceRow("api", Signals(100.0, 0.9, 0.0155, 0.035, 0.047), 3072.0, 7, ("api1", "api2"))
IDLE = ServiceRow("db\x1b[2J", Signals(), 0.0, 0, ("db1",))  # a name with a control sequence
EDGE = EdgeRow("web", "api", Signals(50.5, 1.0, 0.001, 0.002, 0.0031))
HOSTS = (HostRow("api1", True, None), HostRow("db1", False, "meshd on db1: refused"))
TOP = Top((API, IDLE), (EDGE,), HOSTS)


def render(top: Top, live: bool = True) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(top_view(top, NOW, 10.0, 1.0, live))
    return console.export_text()


def row(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{text}")


def test_screen_shows_services_edges_and_hosts() -> None:
    text = render(TOP)
    assert text.splitlines()[0] == (
        "meshctl top  12:00:00 UTC  window 10s, every 1s  1/2 hosts answering  (Ctrl-C quits)"
    )
    assert row(text, "api") == [
        "api", "100.0", "90.00%", "15.5", "35.0", "47.0", "3.0 KiB/s", "7", "api1, api2",
    ]  # fmt: skip
    assert row(text, "db\\x1b[2J") == ["db\\x1b[2J", "0.0", "-", "-", "-", "-", "0 B/s", "0", "db1"]
    assert row(text, "web") == ["web", "api", "50.5", "100.00%", "1.0", "2.0", "3.1"]
    assert NO_TAP in text  # a Top that read no tap
    assert "hosts: api1  db1 unreachable" in text
    assert "db1: meshd on db1: refused" in text
    assert "\x1b" not in text
    # a full screen cuts off the bottom: the hosts and their errors come first
    assert text.index("db1: meshd on db1: refused") < text.index("services (server side)")


@pytest.mark.parametrize("count", [0, 1, 5, 6, 30])
def test_at_most_five_reasons(count: int) -> None:
    hosts = tuple(HostRow(f"h{i}", False, "refused") for i in range(count))
    shown = [f"h{i}: refused" for i in range(min(count, 5))]
    more = [f"... and {count - 5} more unreachable"] if count > 5 else []
    assert host_errors(hosts) == shown + more


def test_ctrl_c_hint_only_live() -> None:
    first = render(TOP, live=False).splitlines()[0]
    assert first == "meshctl top  12:00:00 UTC  window 10s, every 1s  1/2 hosts answering"


def test_paths_table_when_the_source_has_paths() -> None:
    path = PathRow("GET", "/users", 120, 0.99, 0.001, 0.25, 0.004)
    text = render(Top((), (), (), (path,)))
    assert "busiest paths (server side, from the tap)" in text
    assert row(text, "GET") == ["GET", "/users", "120", "99.00%", "1.0", "250.0", "4.0"]
    assert NO_TAP not in text and NO_REQUESTS not in text and "missing" not in text


@pytest.mark.parametrize(
    ("paths", "missing", "shown"),
    [
        ((), (), [NO_REQUESTS]),
        ((), (("a", "tap busy"),), [NO_REQUESTS, "paths missing from a (tap busy)"]),
        (
            (PathRow("GET", "/\x1b[2J", 1, 1.0, 0.0, 0.0, 0.0),),
            (("a", "no /tap"), ("b\x1b", "x\ny")),
            ["GET    │ /\\x1b[2J", "paths missing from a (no /tap), b\\x1b (x\\ny)"],
        ),
        (
            (),
            tuple((f"h{i}", "connecting") for i in range(7)),
            ["paths missing from h0 (connecting), h1 (connecting), h2 (connecting), "
             "h3 (connecting), h4 (connecting) and 2 more"],
        ),
    ],
)  # fmt: skip
def test_paths_empty_and_missing(
    paths: tuple[PathRow, ...], missing: tuple[tuple[str, str], ...], shown: list[str]
) -> None:
    text = render(Top((), (), (), paths, missing))
    assert all(line in text for line in shown), text
    assert "\x1b" not in text


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        (HostRow("a", True, None), "hosts: a"),
        (HostRow("a", False, None), "hosts: a (waiting)"),
        (HostRow("a", False, "x"), "hosts: a unreachable"),
    ],
)
def test_hosts_line(host: HostRow, shown: str) -> None:
    assert shown in render(Top((), (), (host,)))


def test_json_line() -> None:
    assert top_json(TOP, NOW) == {
        "time": "2026-11-27T12:00:00+00:00",
        "services": [
            {
                "service": "api",
                "rps": 100.0,
                "success": 0.9,
                "p50_ms": 15.5,
                "p95_ms": 35.0,
                "p99_ms": 47.0,
                "bytes_per_s": 3072.0,
                "open": 7,
                "hosts": ["api1", "api2"],
            },
            {
                "service": "db\x1b[2J",
                "rps": 0.0,
                "success": None,
                "p50_ms": None,
                "p95_ms": None,
                "p99_ms": None,
                "bytes_per_s": 0.0,
                "open": 0,
                "hosts": ["db1"],
            },
        ],
        "edges": [
            {
                "source": "web",
                "destination": "api",
                "rps": 50.5,
                "success": 1.0,
                "p50_ms": 1.0,
                "p95_ms": 2.0,
                "p99_ms": 3.1,
            }
        ],
        "paths": [],
        "paths_missing": [],
        "hosts": [
            {"host": "api1", "reachable": True, "error": None},
            {"host": "db1", "reachable": False, "error": "meshd on db1: refused"},
        ],
    }


def test_json_paths() -> None:
    path = PathRow("GET", "/users", 120, 0.99, 0.001, 0.25, 0.0041234)
    doc = top_json(Top((), (), (), (path,), (("db1", "tap busy"),)), NOW)
    assert doc["paths"] == [
        {"method": "GET", "path": "/users", "count": 120, "success": 0.99, "best_ms": 1.0,
         "worst_ms": 250.0, "last_ms": 4.123},
    ]  # fmt: skip
    assert doc["paths_missing"] == [{"host": "db1", "error": "tap busy"}]
