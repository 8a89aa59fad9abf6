"""The user's own Prometheus scrapes real meshd processes with a monitor identity.

Everything is real: a workspace made by ``init_workspace``, two ``meshd run``
processes with certificates from its CA (their admin APIs on 127.0.0.2 and
127.0.0.3, one port, as ``admin_port`` in mesh.toml has it), the monitor's
files from ``meshctl ca issue-monitor``, the configuration from ``meshctl
monitor prometheus-config``, and the Debian package's ``prometheus`` (loopback,
a temporary directory, stopped by PID) and ``promtool``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl import castore, state
from meshctl.config import DefaultsConfig, MeshConfig
from meshctl.inventory import HostSpec, Inventory
from meshctl.traffic import short_name
from meshctl.workspace import Workspace, init_workspace
from tests.meshd.harness import (
    HttpApp,
    Meshd,
    MeshNet,
    admin_call,
    client_context,
    free_port,
    free_port_on,
)
from tests.meshd.paced import Paced
from tests.meshd.pairs import get_web
from tests.meshd.tlsfixtures import Identity, TestPki

MESHCTL = str(Path(sys.executable).with_name("meshctl"))
HOSTS = {"a": "127.0.0.2", "b": "127.0.0.3"}  # one admin port, as on real hosts
TD = "t.mesh"
RATE = 20.0  # requests per second a -> b, the known load of the rate comparison
WINDOW = 8  # seconds: top's --window and --interval, PromQL's range


@dataclasses.dataclass
class Scraped:
    ws: Workspace
    net: MeshNet
    meshds: dict[str, Meshd]
    monitor: Identity
    config: Path


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """The pair a -> b, a serving ``front`` (so its calls come from a service's ID, as an
    app's do) and calling ``web`` on b; one for the module (each start costs seconds)."""
    tmp_path = tmp_path_factory.mktemp("scraped")
    port = free_port_on(list(HOSTS.values()))
    defaults = dataclasses.replace(DefaultsConfig(), admin_port=port)
    config = MeshConfig("t", TD, "alice", False, defaults)
    ws = init_workspace(tmp_path / "ws", config, None, dt.datetime.now(dt.UTC))
    net = MeshNet(tmp_path, TestPki(tmp_path / "pki", TD, castore.load(ws, "", None)))
    web, front = HttpApp("web"), HttpApp("front")
    try:
        b = net.start("b", services={"web": web.port}, admin=f"{HOSTS['b']}:{port}")
        net.add_service("web", web.port, "b", b.ports["mesh"])
        a = net.start(
            "a",
            services={"front": front.port},
            upstreams={"web": 0},
            admin=f"{HOSTS['a']}:{port}",
        )
        for _ in range(5):
            get_web(a)  # traffic, so that the families have samples
        state.save_inventory(ws, Inventory(tuple(HostSpec(n, h) for n, h in HOSTS.items())))
        for name, address in HOSTS.items():
            state.record_join(ws, name, {"address": address})
        issued = _meshctl(ws, "ca", "issue-monitor", "prom", "--json")
        monitor = Identity(Path(issued["certificate"]), Path(issued["key"]), Path(issued["ca"]), ())
        out = tmp_path / "prometheus.yml"
        _meshctl(ws, "monitor", "prometheus-config", "--identity", "prom", "--interval", "1s",
                 "-o", str(out))  # fmt: skip
        yield Scraped(ws, net, {"a": a, "b": b}, monitor, out)
    finally:
        net.stop_all()
        web.close()
        front.close()


def _meshctl(ws: Workspace, *argv: str) -> Any:
    done = subprocess.run(
        [MESHCTL, "--workspace", str(ws.root), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in argv else done.stdout


@pytest.fixture(scope="module")
def prometheus(scraped: Scraped, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the generated configuration; its base URL."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    binary = shutil.which("prometheus")
    assert binary, "prometheus not installed: run ./install.sh --dev as root"
    check = subprocess.run(
        ["promtool", "check", "config", str(scraped.config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={scraped.config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]


def _eventually(what: str, probe: Any, timeout: float = 60.0) -> Any:
    """``probe()`` returns (done, value): the value once done within ``timeout``, else a
    failure showing the last value."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            done, last = probe()
        except OSError as e:  # Prometheus still starting
            done, last = False, e
        if done:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:g}s; last: {last!r}")


def _all_up(base: str) -> tuple[bool, Any]:
    targets = _api(base, "targets", state="active")["activeTargets"]
    if len(targets) == len(HOSTS) and all(t["health"] == "up" for t in targets):
        return True, targets
    return False, [(t["labels"].get("host"), t["health"], t["lastError"]) for t in targets]


def _per_host(base: str, query: str) -> dict[str, float]:
    result = _api(base, "query", query=query)["result"]
    return {r["metric"]["host"]: float(r["value"][1]) for r in result}


def _on_every_host(base: str, query: str) -> tuple[bool, Any]:
    found = _per_host(base, query)
    return sorted(found) == sorted(HOSTS), found


def test_prometheus_scrapes_every_meshd_over_mtls(scraped: Scraped, prometheus: str) -> None:
    targets = _eventually("every target up", lambda: _all_up(prometheus))
    port = scraped.ws.config.defaults.admin_port
    assert sorted((t["labels"]["host"], t["scrapeUrl"]) for t in targets) == [
        (name, f"https://{address}:{port}/metrics") for name, address in sorted(HOSTS.items())
    ]
    for query in ("meshd_info", "process_resident_memory_bytes"):
        _eventually(query, lambda q=query: _on_every_host(prometheus, q))
    relayed = _per_host(prometheus, 'meshd_connections_total{direction="inbound"}')
    assert relayed.get("b", 0) >= 1, relayed  # what b relayed for a's calls reached Prometheus


def test_promtool_passes_every_meshd_metrics(scraped: Scraped) -> None:
    ctx = client_context(scraped.monitor)
    port = scraped.ws.config.defaults.admin_port
    for name, address in HOSTS.items():
        status, text = admin_call((address, port), ctx, "GET", "/metrics")
        assert status == 200, text
        assert "meshd_request_duration_seconds_bucket" in text or name == "b"
        check = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
        status, text = admin_call((address, port), ctx, "GET", "/stats")
        assert status == 403 and "a monitor identity may only GET /metrics" in text, text


def test_meshd_certificates_name_the_admin_server_for_prometheus(scraped: Scraped) -> None:
    """What tls_config.server_name checks: a certificate without it fails the scrape."""
    status, text = admin_call(
        (HOSTS["a"], scraped.ws.config.defaults.admin_port),
        _verifying(scraped.monitor, f"meshd.{TD}"),
        "GET",
        "/metrics",
    )
    assert status == 200, text


def _verifying(identity: Identity, server_name: str) -> Any:
    ctx = client_context(identity)
    ctx.check_hostname = True
    return _NamedContext(ctx, server_name)


class _NamedContext:
    """An SSLContext whose connections verify ``server_name`` whatever host they dial."""

    def __init__(self, ctx: Any, server_name: str) -> None:
        self._ctx, self._name = ctx, server_name

    def wrap_socket(self, sock: socket.socket, server_hostname: str | None = None) -> Any:
        return self._ctx.wrap_socket(sock, server_hostname=self._name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def test_promql_rate_agrees_with_top_over_the_same_window(
    scraped: Scraped, prometheus: str
) -> None:
    """Steady load a -> web on b; Prometheus scrapes every second. At the time ``top
    --once`` shows its snapshot (its two polls WINDOW seconds apart, so its rates cover
    the window), rate() over the same window, per service (inbound) and edge (outbound)."""
    _eventually("every target up", lambda: _all_up(prometheus))
    with Paced(scraped.meshds["a"].ports["upstream:web"], RATE) as load:
        time.sleep(2.0)  # steady, and scraped since
        since = time.monotonic()
        span = ("--window", str(WINDOW), "--interval", str(WINDOW))
        top = _meshctl(scraped.ws, "top", "--once", "--json", *span)
        sent = load.between(since, time.monotonic()) / (time.monotonic() - since)
        at = str(dt.datetime.fromisoformat(top["time"]).timestamp())
        time.sleep(1.5)  # the scrapes up to ``at`` are in Prometheus
    assert load.failed == 0
    promql = {
        **{("service", row): rps for row, rps in _rates(prometheus, at, "inbound").items()},
        **{("edge", row): rps for row, rps in _rates(prometheus, at, "outbound").items()},
    }
    shown = {
        **{("service", s["service"]): s["rps"] for s in top["services"]},
        **{("edge", f"{e['source']} -> {e['destination']}"): e["rps"] for e in top["edges"]},
    }
    print(f"load {sent:.1f} rps; top {shown}; PromQL {promql}")
    assert sorted(shown) == sorted(promql) == [("edge", "front -> web"), ("service", "web")]
    assert shown[("service", "web")] == pytest.approx(sent, rel=0.25)  # not nothing
    for row, rps in shown.items():
        assert rps == pytest.approx(promql[row], rel=0.1), f"{row}: top {rps}, PromQL {promql[row]}"


def _rates(base: str, at: str, direction: str) -> dict[str, float]:
    """rate() of ``direction``'s requests over WINDOW at time ``at``: inbound by
    destination (a service, as top's services), outbound by "source -> destination" with
    the source as top names it (its edges)."""
    by = "destination" if direction == "inbound" else "source, destination"
    query = f'sum by ({by}) (rate(meshd_requests_total{{direction="{direction}"}}[{WINDOW}s]))'
    result = _api(base, "query", query=query, time=at)["result"]
    return {_row(r["metric"]): float(r["value"][1]) for r in result}


def _row(labels: dict[str, str]) -> str:
    """A result's row as top names it: the service, or "source -> destination"."""
    if "source" not in labels:
        return labels["destination"]
    return f"{short_name(labels['source'])} -> {labels['destination']}"


DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana" / "meshctl.json"
RATE_INTERVAL = "5s"  # what Grafana makes of $__rate_interval at a 1 s scrape interval
ALL = ".*"  # the dashboard's allValue for $service


def test_the_grafana_dashboard_answers_in_prometheus(scraped: Scraped, prometheus: str) -> None:
    """Every panel query of examples/grafana/meshctl.json, as Grafana sends it to this
    Prometheus (variables filled in: every service, then one chosen from the variable's
    own query), is valid PromQL and shows the traffic going on: all of it with every
    service, and exactly that service's rows with one (its calls as well as its
    requests). Grafana itself is not packaged for Debian; the queries are what it runs."""
    dashboard = json.loads(DASHBOARD.read_text())
    _eventually("every target up", lambda: _all_up(prometheus))
    with Paced(scraped.meshds["a"].ports["upstream:web"], RATE) as load:
        time.sleep(6.0)  # a few scrapes with traffic in the rate interval
        offered = _api(
            prometheus, "label/destination/values", **{"match[]": "meshd_requests_total"}
        )
        shown = {value: _panels(prometheus, dashboard, value) for value in (ALL, "web", "front")}
    assert load.failed == 0
    assert "web" in offered, offered  # the variable offers the service that is called
    for (title, expr), rows in shown[ALL].items():
        if "4xx|5xx|none" not in expr:  # no errors go on: that panel is rightly empty
            assert rows, f"{title}: nothing with every service: {expr}"
    for value, expected in (("web", "web"), ("front", "front")):
        for (title, expr), rows in shown[value].items():
            named = {r.get("destination") if "inbound" in expr else r.get("source") for r in rows}
            named.discard(None)
            if 'direction="inbound"' in expr and "4xx" not in expr:
                wanted = {"web"} if expected == "web" else set()  # front is not called here
                assert {str(n) for n in named} == wanted, (value, title, rows)
            if 'direction="outbound"' in expr:
                sources = {short_name(str(n)) for n in named}
                wanted = {"front"} if expected == "front" else set()  # web calls nobody
                assert sources == wanted, (value, title, rows)


def _panels(base: str, dashboard: dict[str, Any], service: str) -> dict[tuple[str, str], list[Any]]:
    """Each panel query's result labels with $service = ``service``."""
    shown = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            query = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$service", service)
            result = _api(base, "query", query=query)["result"]  # an error fails in _api
            shown[(panel["title"], expr)] = [r["metric"] for r in result]
    return shown
