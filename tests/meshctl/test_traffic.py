"""``meshctl.traffic``: snapshots read, windows kept, signals computed, rows chosen; by tables."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from meshctl.traffic import (
    EdgeRow,
    HostRow,
    HttpCounters,
    Key,
    ServiceRow,
    Signals,
    Snapshot,
    SortKey,
    TcpCounters,
    Top,
    Watch,
    advance,
    quantile,
    restarted,
    select,
    short_name,
    sort_key,
    summarize,
)

BUCKETS = (0.01, 0.02, 0.05, 0.1)  # latency slots: <=10ms, <=20, <=50, <=100, more
WEB_API: Key = ("outbound", "web", "api")
TO_API: Key = ("inbound", "web", "api")


def http(key: Key, latency: tuple[int, ...], **classes: int) -> HttpCounters:
    """Counters with classes by keyword: c2xx=5 is "2xx", none=1 is "none"."""
    named = {k.removeprefix("c"): n for k, n in classes.items()}
    return HttpCounters(key, tuple(sorted(named.items())), latency)


def tcp(key: Key, opened: int, open_: int, bytes_in: int, bytes_out: int) -> TcpCounters:
    return TcpCounters(key, opened, open_, bytes_in, bytes_out)


def snap(
    host: str,
    taken: float,
    http_: tuple[HttpCounters, ...] = (),
    tcp_: tuple[TcpCounters, ...] = (),
    started: float = 1.0,
) -> Snapshot:
    return Snapshot(host, taken, started, BUCKETS, http_, tcp_)


def watch(*windows: tuple[Snapshot, ...]) -> Watch:
    w = Watch.of([ws[0].host for ws in windows], 10.0)
    for step in range(max(len(ws) for ws in windows)):
        w = w.observe({ws[step].host: ws[step] for ws in windows if step < len(ws)})
    return w


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {}, None),
        (0.5, {0.01: 0, math.inf: 0}, None),
        (0.5, {0.01: 10}, 0.005),  # the first bucket starts at 0
        (0.5, {0.01: 0, 0.02: 10, math.inf: 0}, 0.015),
        (0.99, {0.01: 50, 0.02: 50}, 0.0198),
        (0.95, {0.01: 90, 0.05: 10}, 0.03),
        (0.5, {0.01: 1, 0.02: 1, 0.05: 1}, 0.015),  # rank 1.5: half into the second
        (0.5, {0.1: 0, math.inf: 10}, 0.1),  # beyond the last bound: the last bound
        (0.99, {0.01: 99, math.inf: 1}, 0.01),
        (1.0, {0.01: 5, 0.02: 5}, 0.02),
    ],
)
def test_quantile(q: float, buckets: dict[float, int], expected: float | None) -> None:
    assert quantile(q, buckets) == (None if expected is None else pytest.approx(expected))


# web1 calls api at 100 rps (10% 5xx) for 10 s; api1 and api2 each serve half of it
WEB1 = (
    snap("web1", 100.0, (http(WEB_API, (0, 0, 0, 0, 0), c2xx=100),)),
    snap("web1", 110.0, (http(WEB_API, (0, 900, 100, 0, 0), c2xx=1000, c5xx=100),)),
)
API1 = (
    snap("api1", 100.2, (http(TO_API, (5, 0, 0, 0, 0), c2xx=5),), (tcp(TO_API, 2, 1, 10, 0),)),
    snap(
        "api1",
        110.2,
        (http(TO_API, (505, 0, 0, 0, 0), c2xx=455, c5xx=50),),
        (tcp(TO_API, 4, 3, 1034, 2048),),
    ),
)
API2 = (  # a shorter window (it answered late once): its own time counts
    snap("api2", 105.0, (http(TO_API, (0, 0, 0, 0, 0)),)),
    snap(
        "api2",
        110.0,
        (http(TO_API, (0, 0, 0, 250, 0), c2xx=200, c4xx=50),),
        (tcp(TO_API, 1, 4, 0, 0),),
    ),
)


@pytest.mark.parametrize(
    ("windows", "services", "edges"),
    [
        pytest.param(
            (WEB1,),
            [],
            [
                EdgeRow(
                    "web",
                    "api",
                    Signals(100.0, 0.9, 0.01 + 0.01 * 500 / 900, 0.02 + 0.03 * 50 / 100, 0.047),
                )
            ],
            id="edge-client-side",
        ),
        pytest.param(
            (API1,),
            [ServiceRow("api", Signals(50.0, 0.9, 0.005, 0.0095, 0.0099), 307.2, 3, ("api1",))],
            [],
            id="service-server-side",
        ),
        pytest.param(
            (API1, API2),  # 50 rps over 10 s plus 50 rps over 5 s; 4xx is a success
            [
                ServiceRow(
                    "api",
                    Signals(
                        100.0,
                        700 / 750,
                        0.01 * 375 / 500,
                        0.05 + 0.05 * 212.5 / 250,
                        0.05 + 0.05 * 242.5 / 250,
                    ),
                    307.2,
                    7,
                    ("api1", "api2"),
                )
            ],
            [],
            id="service-summed-over-hosts",
        ),
        pytest.param(
            (WEB1[:1],),  # one snapshot: nothing measured yet
            [],
            [EdgeRow("web", "api", Signals())],
            id="one-snapshot",
        ),
    ],
)
def test_summarize(
    windows: tuple[tuple[Snapshot, ...], ...], services: list[ServiceRow], edges: list[EdgeRow]
) -> None:
    top = summarize(watch(*windows))
    assert _rows(top.services) == _rows(tuple(services))
    assert _rows(top.edges) == _rows(tuple(edges))
    assert top.paths is None


def _rows(rows: tuple[Any, ...]) -> list[Any]:
    """Rows with floats rounded to 9 places: exact numbers, without binary noise."""
    return [_rounded(r) for r in rows]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, tuple):
        return tuple(_rounded(v) for v in value)
    if hasattr(value, "__slots__"):
        return (type(value).__name__, *(_rounded(getattr(value, s)) for s in value.__slots__))
    return value


def test_no_answer_is_a_failure() -> None:
    window = (
        snap("web1", 0.0, (http(WEB_API, (0,) * 5),)),
        snap("web1", 2.0, (http(WEB_API, (8, 0, 0, 0, 0), c2xx=6, none=2),)),
    )
    (edge,) = summarize(watch(window)).edges
    assert (edge.signals.rps, edge.signals.success) == (4.0, 0.75)


A = http(WEB_API, (1, 0, 0, 0, 0), c2xx=1)
A_MORE = http(WEB_API, (1, 1, 0, 0, 0), c2xx=2)
A_LESS_LATENCY = http(WEB_API, (0, 1, 0, 0, 0), c2xx=1)
A_LESS_5XX = http(WEB_API, (1, 0, 0, 0, 0), c2xx=1, c5xx=0)
T = tcp(TO_API, 5, 1, 100, 100)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (snap("h", 1.0, (A,), (T,)), snap("h", 2.0, (A_MORE,), (T,)), False),
        (snap("h", 1.0, (A,)), snap("h", 2.0, (A, http(TO_API, (1,) * 5, c2xx=5))), False),  # new
        (snap("h", 1.0, (A,)), snap("h", 2.0, (A,), started=2.0), True),  # restarted
        (snap("h", 1.0, (A,)), snap("h", 2.0, (A,), started=0.5), True),
        (snap("h", 2.0, (A,)), snap("h", 2.0, (A,)), True),  # not newer
        (snap("h", 1.0, (A_MORE,)), snap("h", 2.0, (A,)), True),  # a class went down
        (snap("h", 1.0, (A,)), snap("h", 2.0, (A_LESS_LATENCY,)), True),  # a bucket went down
        (snap("h", 1.0, (A,)), snap("h", 2.0, ()), True),  # a series vanished
        (snap("h", 1.0, (A_LESS_5XX,)), snap("h", 2.0, (A,)), False),  # 0 and absent agree
        (snap("h", 1.0, (), (T,)), snap("h", 2.0, (), (tcp(TO_API, 5, 0, 100, 100),)), False),
        (snap("h", 1.0, (), (T,)), snap("h", 2.0, (), (tcp(TO_API, 4, 1, 100, 100),)), True),
        (snap("h", 1.0, (), (T,)), snap("h", 2.0, (), (tcp(TO_API, 5, 1, 99, 100),)), True),
        (snap("h", 1.0, (), (T,)), snap("h", 2.0, (), (tcp(TO_API, 5, 1, 100, 99),)), True),
        (snap("h", 1.0, (), (T,)), snap("h", 2.0, ()), True),
    ],
)
def test_restarted(old: Snapshot, new: Snapshot, expected: bool) -> None:
    assert restarted(old, new) is expected


@pytest.mark.parametrize(
    ("times", "span", "kept"),
    [
        ((1.0,), 10.0, (1.0,)),
        ((1.0, 2.0, 3.0), 10.0, (1.0, 2.0, 3.0)),
        ((1.0, 2.0, 3.0, 11.5), 10.0, (1.0, 2.0, 3.0, 11.5)),  # 2.0 is not 10 s old
        ((1.0, 2.0, 3.0, 12.0), 10.0, (2.0, 3.0, 12.0)),  # 2.0 is: 1.0 goes
        ((1.0, 2.0, 3.0, 30.0), 10.0, (3.0, 30.0)),  # a gap: the newest old one stays
        ((1.0, 2.0, 3.0, 4.0), 1.0, (3.0, 4.0)),
    ],
)
def test_advance_keeps_the_window(
    times: tuple[float, ...], span: float, kept: tuple[float, ...]
) -> None:
    window: tuple[Snapshot, ...] = ()
    for t in times:
        window = advance(window, snap("h", t, (A,)), span)
    assert tuple(s.taken for s in window) == kept


def test_advance_starts_over_after_a_restart() -> None:
    window = advance(
        (snap("h", 1.0, (A_MORE,)), snap("h", 2.0, (A_MORE,))), snap("h", 3.0, (A,)), 10.0
    )
    assert [s.taken for s in window] == [3.0]


def test_watch_marks_a_failed_host_and_drops_its_window() -> None:
    w = Watch.of(["a", "b"], 10.0)
    assert [(h.host, h.reachable, h.error) for h in summarize(w).hosts] == [
        ("a", False, None),
        ("b", False, None),
    ]
    w = w.observe({"a": snap("a", 1.0, (A,)), "b": snap("b", 1.0, (A,))})
    w = w.observe({"a": "meshd on a: connection refused", "b": snap("b", 2.0, (A_MORE,))})
    assert summarize(w).hosts == (
        HostRow("a", False, "meshd on a: connection refused"),
        HostRow("b", True, None),
    )
    assert [len(h.window) for h in w.hosts] == [0, 2]
    w = w.observe({"b": snap("b", 3.0, (A_MORE,))})  # a still owes an answer: unchanged
    assert [(h.error, len(h.window)) for h in w.hosts] == [
        ("meshd on a: connection refused", 0),
        (None, 3),
    ]
    w = w.observe({"a": snap("a", 4.0, (A,))})
    assert [h.reachable for h in w.hosts] == [True, True]


def _signals(rps: float, success: float | None, p99: float | None) -> Signals:
    return Signals(rps, success, None, None, p99)


TOP = Top(
    (
        ServiceRow("api", _signals(10.0, 0.5, 0.2), 0.0, 0, ()),
        ServiceRow("db", _signals(30.0, 1.0, 0.1), 0.0, 0, ()),
        ServiceRow("idle", _signals(0.0, None, None), 0.0, 0, ()),
        ServiceRow("web", _signals(20.0, 0.9, 0.3), 0.0, 0, ()),
    ),
    (
        EdgeRow("api", "db", _signals(30.0, 1.0, 0.1)),
        EdgeRow("web", "api", _signals(10.0, 0.5, 0.2)),
        EdgeRow("lb", "web", _signals(20.0, 0.9, 0.3)),
    ),
    (),
)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("rps", "rps"),
        ("success", "success"),
        ("p99", "p99"),
        ("name", "name"),
        ("RPS", None),
        ("", None),
    ],
)
def test_sort_key(text: str, key: str | None) -> None:
    assert sort_key(text) == key


@pytest.mark.parametrize(
    ("service", "by", "services", "edges"),
    [
        (None, "rps", ["db", "web", "api", "idle"], ["api>db", "lb>web", "web>api"]),
        (None, "success", ["api", "web", "db", "idle"], ["web>api", "lb>web", "api>db"]),
        (None, "p99", ["web", "api", "db", "idle"], ["lb>web", "web>api", "api>db"]),
        (None, "name", ["api", "db", "idle", "web"], ["api>db", "lb>web", "web>api"]),
        ("api", "rps", ["api"], ["api>db", "web>api"]),
        ("nosuch", "rps", [], []),
    ],
)
def test_select(service: str | None, by: SortKey, services: list[str], edges: list[str]) -> None:
    chosen = select(TOP, service, by)
    assert [s.service for s in chosen.services] == services
    assert [f"{e.source}>{e.destination}" for e in chosen.edges] == edges


GOOD: dict[str, Any] = {
    "version": 1,
    "host": "web1",
    "taken": 1765000000.5,
    "started": 1764990000,
    "buckets": [0.01, 0.02],
    "http": [
        {
            "direction": "inbound",
            "source": "web",
            "destination": "api",
            "classes": {"2xx": 120, "5xx": 12},
            "latency": [3, 10, 119],
            "latency_sum": 1.25,
        }
    ],
    "tcp": [
        {
            "direction": "outbound",
            "source": "web",
            "destination": "api",
            "opened": 10,
            "open": 1,
            "bytes_in": 12345,
            "bytes_out": 678,
        }
    ],
}


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("spiffe://t.mesh/svc/web", "web"),
        ("spiffe://t.mesh/host/web1", "host/web1"),
        ("spiffe://t.mesh/operator/alice", "operator/alice"),
        ("spiffe://t.mesh/other/path/x", "spiffe://t.mesh/other/path/x"),  # not a mesh kind
        ("spiffe://bad domain/svc/x", "spiffe://bad domain/svc/x"),
        ("api", "api"),
    ],
)
def test_short_name(text: str, name: str) -> None:
    assert short_name(text) == name


def test_snapshot_from_json_reads_the_contract() -> None:
    assert Snapshot.from_json(GOOD, "web1") == Snapshot(
        "web1",
        1765000000.5,
        1764990000.0,
        (0.01, 0.02),
        (HttpCounters(TO_API, (("2xx", 120), ("5xx", 12)), (3, 10, 119)),),
        (TcpCounters(WEB_API, 10, 1, 12345, 678),),
    )


def _bad(path: str, value: Any) -> dict[str, Any]:
    """GOOD with ``path`` (``http.0.latency``) set to ``value``."""
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "the snapshot is not a JSON object"),
        (_bad("version", 2), "unknown snapshot version 2"),
        (_bad("buckets", []), "buckets must be a non-empty increasing list"),
        (_bad("buckets", [0.02, 0.01]), "buckets must be a non-empty increasing list"),
        (_bad("buckets", [0.01] * 201), "buckets has 201 entries, more than 200"),
        (_bad("taken", "soon"), "taken is missing or not a time: 0.0"),
        (_bad("started", float("nan")), "started is missing or not a time: nan"),
        (_bad("http.0.latency", [1, 2]), "latency must have 3 entries (one more than buckets)"),
        (
            _bad("http.0.latency", [1, 2, "x"]),
            "latency must have 3 entries (one more than buckets)",
        ),
        (_bad("http.0.latency", [1, 2, -1]), "latency[] is negative: -1"),
        (_bad("http.0.classes", {"2xx": -5}), "classes[2xx] is negative: -5"),
        (_bad("http.0.direction", "sideways"), "direction is 'sideways', not inbound or outbound"),
        (_bad("http.0.source", 5), "source and destination must be names"),
        (_bad("tcp.0.destination", "x" * 257), "source and destination must be names"),
        (_bad("tcp.0.open", -1), "open is negative: -1"),
        (_bad("tcp", [GOOD["tcp"][0]] * 10_001), "tcp has 10001 entries, more than 10000"),
    ],
)
def test_snapshot_from_json_refuses(doc: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Snapshot.from_json(doc, "web1")
    assert str(info.value) == message


def test_snapshot_from_json_is_lenient_as_the_contract() -> None:
    """What meshd.traffic skips (an entry that is no object, an unknown class), top skips."""
    assert Snapshot.from_json(_bad("http", {}), "web1").http == ()
    assert Snapshot.from_json(_bad("tcp.0", "x"), "web1").tcp == ()
    odd = Snapshot.from_json(_bad("http.0.classes", {"2xx": 1, "7xx": 5}), "web1")
    assert odd.http[0].classes == (("2xx", 1),)


def test_snapshot_names_callers_by_service() -> None:
    doc = _bad("http.0.source", "spiffe://t.mesh/svc/web")
    assert Snapshot.from_json(doc, "web1").http[0].key == ("inbound", "web", "api")
