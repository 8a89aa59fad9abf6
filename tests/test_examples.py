"""The examples parse with the code's own parsers, so they cannot drift from it."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from meshd.config import MeshdConfig
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import explain
from meshd.policy.lang.validate import check_set, check_text
from meshd.registry import Registry
from meshd.telemetry.events import EventBus
from meshd.telemetry.metrics import Metrics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_meshd_toml() -> None:
    config = MeshdConfig.load(EXAMPLES / "meshd.toml")
    assert config.identity.host == "api1" and config.mtls == "strict"
    assert [s.name for s in config.services] == ["api", "reports"]
    assert config.services[1].outbound == ("127.0.0.1", 15101)


def test_registry_json() -> None:
    registry = Registry.from_dict(
        json.loads((EXAMPLES / "registry.json").read_text()), "registry.json"
    )
    api = registry.service("api")
    assert api is not None and len(api.endpoints) == 2
    web = registry.service("web")
    assert web is not None and (web.vip, web.port) == ("10.255.0.2", 80)


POLICIES = [EXAMPLES / "policies" / "mesh.toml", EXAMPLES / "policies" / "web-api-db.toml"]
NOW = dt.datetime(2026, 8, 1, tzinfo=dt.UTC)


def _zero_trust() -> CompiledPolicy:
    checked = [check_text(p.read_text(), p.name, "demo.mesh", NOW) for p in POLICIES]
    assert [problems for _, problems in checked] == [[], []]  # no error, no warning
    documents = [(d, p.name) for (d, _), p in zip(checked, POLICIES, strict=True) if d]
    assert check_set(documents) == []
    return CompiledPolicy.compile([d for d, _ in documents], "demo.mesh")


@pytest.mark.parametrize(
    ("source", "service", "port", "method", "target", "decision", "rule"),
    [
        ("web", "api", 8081, "GET", "/products", "allow", "web-api-db/allow/web-to-api"),
        ("web", "api", 8081, "POST", "/orders", "allow", "web-api-db/allow/web-to-api"),
        ("api", "db", 8082, "GET", "/items", "allow", "web-api-db/allow/api-to-db"),
        ("api", "db", 8082, "POST", "/items", "allow", "web-api-db/allow/api-to-db"),
        ("web", "db", 8082, "GET", "/items", "deny", "mesh/authz/default"),  # the demo's 403
        ("web", "db", 8082, "POST", "/items", "deny", "web-api-db/deny/no-writes-from-web"),
        ("db", "api", 8081, "GET", "/products", "deny", "mesh/authz/default"),
        ("web", "api", 8081, "DELETE", "/orders", "deny", "mesh/authz/default"),
        ("host/web1", "api", 8081, "GET", "/products", "deny", "mesh/authz/default"),
        (None, "api", 8081, "GET", "/products", "reset", "mesh/mtls/mode"),  # plaintext
    ],
)
def test_the_demo_zero_trust_policy_decides(
    source: str | None,
    service: str,
    port: int,
    method: str,
    target: str,
    decision: str,
    rule: str,
) -> None:
    """What `meshctl demo up` applies at its end (examples/policies): web -> api -> db only."""
    peer = None
    if source is not None:
        kind, _, name = source.rpartition("/")
        peer = f"spiffe://demo.mesh/{kind or 'svc'}/{name}"
    got = explain(_zero_trust(), service, port, peer, method, target, ())
    assert (got.decision, got.rule) == (decision, rule)


# --- examples/grafana/meshctl.json: every query names only what meshd exports ----------------
TARGET_LABELS = {"host", "instance", "job"}  # what Prometheus adds (host: prometheus-config)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported() -> dict[str, set[str]]:
    """Each series name meshd's /metrics can hold, with its labels (histograms' parts too)."""
    metrics = Metrics(EventBus(), process_metrics=True)
    families: dict[str, set[str]] = {"up": set()}  # Prometheus' own, per target
    for family in metrics._families.values():
        if family.kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                extra = {"le"} if suffix == "_bucket" else set()
                families[family.name + suffix] = set(family.labels) | extra
        else:
            families[family.name] = set(family.labels)
    return families


def _queries(dashboard: dict[str, object]) -> list[str]:
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_grafana_dashboard_queries_only_metrics_meshd_exports() -> None:
    dashboard = json.loads((EXAMPLES / "grafana" / "meshctl.json").read_text())
    exported = _exported()
    queries = _queries(dashboard)
    assert len(queries) >= 10
    used: set[str] = set()
    for expr in queries:
        selectors = re.findall(r"\b([a-z_:]+)\{([^}]*)\}|\b(meshd_[a-z_]+|up)\b", expr)
        names = {s[0] or s[2] for s in selectors}
        assert names, expr
        assert names <= set(exported), (expr, names - set(exported))
        for name, matchers, _ in selectors:
            if not name:
                continue  # a bare series name: no matchers
            labels = set(re.findall(r"([a-z_]+)\s*[!=]~?", matchers))
            assert labels <= exported[name] | TARGET_LABELS, (expr, name, labels)
        known = set().union(*(exported[n] for n in names)) | TARGET_LABELS
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {g.strip() for g in grouping.split(",")} <= known, (expr, grouping)
        used |= names
    golden = {"meshd_requests_total", "meshd_request_duration_seconds_bucket",
              "meshd_connection_bytes_total", "meshd_connections_total", "meshd_active_connections"}  # fmt: skip
    assert golden <= used


def test_grafana_dashboard_shows_services_and_edges() -> None:
    dashboard = json.loads((EXAMPLES / "grafana" / "meshctl.json").read_text())
    queries = _queries(dashboard)
    assert any('direction="inbound"' in q and "by (destination" in q for q in queries)
    assert any('direction="outbound"' in q and "by (source, destination" in q for q in queries)
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}," in q for q in queries), quantile
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
