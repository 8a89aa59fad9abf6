"""``meshctl top --once --json`` against known traffic on real hosts (issue 14's first acceptance).

Three testbed hosts joined by the real CLI (tests/e2e/mesh3.py: web1, api1,
db1 serving web, api and db). loadgen.py runs on two of them, through their
iptables and meshd as an app's own calls would, against the apps' ``/work``
route (examples/apps/meshapp.py: a delay and a status asked in the query):

    web1 -> api.mesh:8081  100 req/s  85% /work/fast?delay_ms=60
                                      10% /work/fail?status=500&delay_ms=60
                                       5% /work/slow?delay_ms=380
    api1 -> db.mesh:8082    50 req/s  90% /work/items?delay_ms=35
                                      10% /work/report?delay_ms=220

Each connection takes the URLs in turn (``--rotate``), so the shares hold in
any window, and the generator logs every request (``--log-requests``: end
time, latency, status). While the load is steady, ``meshctl top --once
--json`` runs from here as the operator runs it, its one window (two polls an
interval apart) inside the load; the generator's own numbers over the same
seconds (the window ending at top's ``time``) are the truth:

- services api and db (server side) and edges web -> api, api -> db (client
  side): rps within 5%, success within 1 percentage point, p50 and p99 in the
  bucket of meshd's ladder (meshd.telemetry.metrics.REQUEST_BUCKETS) that
  holds the generator's value or a neighbour. The delays are chosen to
  dominate what each side adds (the generator sees the client's meshd, the
  mTLS hop and its own scheduling, meshd on the server side the app alone: a
  few ms, more on a busy machine, a whole bucket at 5-10 ms) and to lie inside
  buckets, and p50 and p99 lie buckets apart (~65 ms against ~390 ms, ~40
  against ~230 ms): a top that answered p50 for p99 fails.
- the busiest paths (top's ``paths``, from meshd's tap) are the five sent
  (method and path), in the shares sent to their service, /work/fail failing.
  Every joined mesh runs under a policy (join installs the "mesh" document,
  default allow), so these are requests of the policy's exchange, which notes
  them for the tap as the observer does.

One load and one top run serve every test of the module (about 60 s here,
bring-up and reset included); the hosts are reset afterwards whatever
happened, which also ends any load still running.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from meshctl.testbed import Testbed
from meshd.telemetry.metrics import REQUEST_BUCKETS
from tests.e2e.loadgen import percentile
from tests.e2e.mesh3 import LOADGEN, Load, Mesh, Node, joined_mesh
from tests.meshd.onhost import ok

pytestmark = pytest.mark.testbed

WARMUP = 3.0  # seconds of load before top's first poll: connections open, meshd warm
WINDOW = 8.0  # top's --window and --interval: its two polls are this far apart
LOAD_SECONDS = WARMUP + WINDOW + 3.0  # ends after top's second poll, with a margin


@dataclass(frozen=True)
class Mix:
    """One load: from a host to a service, paths (with their query) and how often each."""

    source: str  # inventory name of the host the generator runs on
    service: str
    port: int
    rate: float
    connections: int
    paths: tuple[tuple[str, int], ...]  # (path?query, its share in URLs of the rotation)

    def urls(self) -> list[str]:
        base = f"http://{self.service}.mesh:{self.port}"
        return [f"{base}{path}" for path, times in self.paths for _ in range(times)]

    def share(self, path: str) -> float:
        """The share of requests sent to ``path`` (without its query)."""
        total = sum(times for _, times in self.paths)
        return sum(t for p, t in self.paths if p.split("?")[0] == path) / total


TO_API = Mix(
    "web1",
    "api",
    8081,
    100.0,
    20,
    (
        ("/work/fast?delay_ms=60", 17),
        ("/work/fail?status=500&delay_ms=60", 2),
        ("/work/slow?delay_ms=380", 1),
    ),
)
TO_DB = Mix(
    "api1",
    "db",
    8082,
    50.0,
    10,
    (("/work/items?delay_ms=35", 9), ("/work/report?delay_ms=220", 1)),
)
MIXES = {"api": TO_API, "db": TO_DB}
CALLERS = {"api": "web", "db": "api"}  # the service of the host each load runs on


@dataclass(frozen=True)
class Truth:
    """What the generator measured over top's window."""

    rps: float
    success: float  # share of requests answered neither 5xx nor not at all
    p50_ms: float
    p99_ms: float
    requests: int


@dataclass(frozen=True)
class Measured:
    """One ``top --once --json`` line and the generators' logs of the same seconds."""

    top: dict[str, Any]
    window: tuple[float, float]  # epoch seconds: the generator's side of top's window
    logs: dict[str, list[list[float]]]  # by destination service: [end, latency_ms, status, url]
    summaries: dict[str, dict[str, Any]]

    def truth(self, service: str) -> Truth:
        start, end = self.window
        inside = [r for r in self.logs[service] if start < r[0] <= end]
        answered = sorted(r[1] for r in inside if r[2])
        failed = sum(1 for r in inside if not r[2] or r[2] >= 500)
        return Truth(
            len(inside) / (end - start),
            (len(inside) - failed) / len(inside),
            percentile(answered, 50),
            percentile(answered, 99),
            len(inside),
        )

    def service(self, name: str) -> dict[str, Any]:
        (row,) = [s for s in self.top["services"] if s["service"] == name]
        return dict(row)

    def edge(self, source: str, destination: str) -> dict[str, Any]:
        rows = [
            e for e in self.top["edges"] if (e["source"], e["destination"]) == (source, destination)
        ]
        assert len(rows) == 1, self.top["edges"]
        return dict(rows[0])


def start(mesh: Mesh, mix: Mix) -> Load:
    """loadgen.py on the mix's host in a transient unit (gone when the host is reset)."""
    node = mesh.node(mix.source)
    unit = f"meshctl-top-load-{mix.service}-{time.monotonic_ns()}"
    urls = " ".join(shlex.quote(f"--url={u}") for u in mix.urls())
    command = (
        f"python3 {LOADGEN} {urls} --rotate --log-requests --connections={mix.connections} "
        f"--rate={mix.rate:g} --duration={LOAD_SECONDS:g} --output=/run/{unit}.json"
    )
    ok(node.host, f"systemd-run --quiet --unit={unit} --collect {command}")
    return Load(node, unit, LOAD_SECONDS)


def run_top(mesh: Mesh) -> dict[str, Any]:
    """``meshctl top --once --json`` with one window of WINDOW seconds; its JSON line."""
    found = mesh.meshctl(
        "top", "--once", "--json", "--window", f"{WINDOW:g}", "--interval", f"{WINDOW:g}"
    )
    assert found.code == 0, f"meshctl top: exit {found.code}\n{found.out}\n{found.err}"
    (line,) = [x for x in found.out.splitlines() if x.startswith("{")]
    doc: dict[str, Any] = json.loads(line)
    return doc


@pytest.fixture(scope="module")
def measured(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Measured]:
    root = tmp_path_factory.mktemp("top")
    with joined_mesh(testbed, root) as mesh:
        loads = {name: start(mesh, mix) for name, mix in MIXES.items()}
        time.sleep(WARMUP)
        top = run_top(mesh)
        # top's time is taken after its second poll: the window is the interval before it
        end = dt.datetime.fromisoformat(top["time"]).timestamp()
        summaries: dict[str, dict[str, Any]] = {n: dict(x.result()) for n, x in loads.items()}
        for name, summary in summaries.items():
            _check_load(loads[name].node, summary)
        logs = {name: list(s["log"]) for name, s in summaries.items()}
        found = Measured(top, (end - WINDOW, end), logs, summaries)
        for kind, service in ROWS:  # in the output of a failed run (and with -rP)
            print(f"{kind} {service}: {_show(row(found, kind, service), found.truth(service))}")
        yield found


def _check_load(node: Node, summary: dict[str, Any]) -> None:
    """The load went as planned: no failure but the 500s asked for, the whole time."""
    kinds = {k: v for k, v in summary["failures"].items() if v and k != "non_2xx"}
    brief = {k: v for k, v in summary.items() if k not in ("log", "timeline")}
    assert not kinds, f"{node.name}: {brief}"
    assert set(summary["statuses"]) <= {"200", "500"}, f"{node.name}: {brief}"


def bucket(ms: float) -> int:
    """The index of the bucket of meshd's ladder holding ``ms`` (len: the overflow)."""
    return bisect.bisect_left(REQUEST_BUCKETS, ms / 1000)


def near(found: float, truth: float) -> bool:
    """``found`` is in the bucket holding ``truth`` or in a neighbour of it."""
    return abs(bucket(found) - bucket(truth)) <= 1


ROWS = [("service", "api"), ("service", "db"), ("edge", "api"), ("edge", "db")]


def row(measured: Measured, kind: str, service: str) -> dict[str, Any]:
    """top's row: the service's server side, or the edge into it from its caller's host."""
    if kind == "service":
        return measured.service(service)
    return measured.edge(CALLERS[service], service)


def _show(found: dict[str, Any], truth: Truth) -> str:
    shown = {k: found.get(k) for k in ("rps", "success", "p50_ms", "p99_ms")}
    return f"top {shown} generator {truth}"


@pytest.mark.parametrize(("kind", "service"), ROWS)
def test_rate_is_within_five_percent_of_the_generators(
    measured: Measured, kind: str, service: str
) -> None:
    truth, found = measured.truth(service), row(measured, kind, service)
    assert abs(truth.rps - MIXES[service].rate) <= 0.1 * MIXES[service].rate, truth  # the plan
    assert abs(found["rps"] - truth.rps) <= 0.05 * truth.rps, _show(found, truth)


@pytest.mark.parametrize(("kind", "service"), ROWS)
def test_success_is_within_one_point_of_the_generators(
    measured: Measured, kind: str, service: str
) -> None:
    truth, found = measured.truth(service), row(measured, kind, service)
    assert found["success"] is not None, _show(found, truth)
    assert abs(found["success"] - truth.success) <= 0.01, _show(found, truth)


@pytest.mark.parametrize(("kind", "service"), ROWS)
def test_p50_and_p99_are_within_one_bucket_of_the_generators(
    measured: Measured, kind: str, service: str
) -> None:
    truth, found = measured.truth(service), row(measured, kind, service)
    # the mix is made so: a p99 read where p50 is (or the reverse) must fail
    assert bucket(truth.p99_ms) - bucket(truth.p50_ms) >= 3, truth
    assert near(found["p50_ms"], truth.p50_ms), _show(found, truth)
    assert near(found["p99_ms"], truth.p99_ms), _show(found, truth)


def sent_paths() -> dict[str, tuple[str, float]]:
    """Every path sent (no query): the service it went to and its share of that service's."""
    return {
        p.split("?")[0]: (name, mix.share(p.split("?")[0]))
        for name, mix in MIXES.items()
        for p, _ in mix.paths
    }


def check_paths(rows: Sequence[dict[str, Any]]) -> None:
    """top's busiest paths are the paths sent, in the shares sent, failing where sent to."""
    sent = sent_paths()
    busiest = rows[: len(sent)]
    assert {(r["method"], r["path"]) for r in busiest} == {("GET", p) for p in sent}, rows
    for name in MIXES:
        mine = [r for r in busiest if sent[r["path"]][0] == name]
        counted = sum(r["count"] for r in mine)
        for r in mine:
            expected = sent[r["path"]][1]
            assert abs(r["count"] / counted - expected) <= 0.05, (r, expected, mine)
            success = 0.0 if r["path"] == "/work/fail" else 1.0
            assert r["success"] is not None and abs(r["success"] - success) <= 0.01, r


def test_the_busiest_paths_are_the_paths_sent(measured: Measured) -> None:
    check_paths(measured.top["paths"])
