"""The bundle: indexed by destination, versioned, and compiled again at every swap of state."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import pytest

from meshd.config import ServiceConfig
from meshd.daemon import Daemon
from meshd.documents import Documents, Layered
from meshd.policy import decide
from meshd.policy.bundle import NO_POLICY, AppliedPolicy, Bundle
from meshd.policy.decisions import MTLS_STRICT, Deliver, Forward, Refuse
from meshd.proxy.http.actions import RequestAction
from meshd.proxy.http.plan import OBSERVE, HttpPlan, HttpRules, RequestHead
from meshd.registry import Registry
from meshd.runtime import Files, Runtime
from meshd.stats import CertificateSource
from meshd.store import DocumentStore
from meshd.tls.context import TlsMaterial
from tests.meshd.policy.sample import API, B1, B2, LONELY, REGISTRY, config

NO_TLS = cast(TlsMaterial, None)  # the bundle is made of config, registry and policy alone


def test_routes_index_every_address_an_app_may_use() -> None:
    bundle = Bundle.compile(config(), REGISTRY, NO_POLICY)
    to_api = bundle.services["api"]
    assert to_api == Forward(API, (B1, B2), "registry/services", OBSERVE)  # [mesh] http
    assert bundle.routes == {
        ("10.255.0.2", 80): to_api,  # the VIP: any endpoint, the same value as by name
        ("10.77.0.11", 8080): Forward(API, (B1,), "registry/services", OBSERVE),
        ("fd00:77::11", 8080): Forward(API, (B1,), "registry/services", OBSERVE),
        ("10.77.0.12", 8080): Forward(API, (B2,), "registry/services", OBSERVE),
        ("10.255.0.3", 80): Forward(LONELY, (), "registry/services", OBSERVE),
    }
    assert bundle.routes[("10.255.0.2", 80)] is to_api


@pytest.mark.parametrize(
    ("mtls", "on_8080"),
    [
        pytest.param("strict", MTLS_STRICT, id="strict"),
        pytest.param("permissive", Deliver("api", 8080, "config/mesh.mtls"), id="permissive"),
    ],
)
def test_plaintext_is_decided_per_port_the_first_service_on_it_wins(
    mtls: str, on_8080: object
) -> None:
    services = (ServiceConfig("api", 8080), ServiceConfig("shadow", 8080))
    bundle = Bundle.compile(
        dataclasses.replace(config(mtls), services=services), REGISTRY, NO_POLICY
    )
    assert bundle.plaintext == {8080: on_8080}
    assert bundle.local == {
        "api": Deliver("api", 8080, "config/services"),
        "shadow": Deliver("shadow", 8080, "config/services"),
    }


@pytest.mark.parametrize(
    ("policy", "version"),
    [(NO_POLICY, 0), (AppliedPolicy(3), 3)],
    ids=["no-policy", "pushed"],
)
def test_versions(policy: AppliedPolicy, version: int) -> None:
    bundle = Bundle.compile(config(), REGISTRY, policy)
    assert (bundle.registry_version, bundle.policy_version) == (7, version)


def _runtime() -> tuple[Runtime, DocumentStore]:
    rt = Runtime(config(), NO_TLS, Registry())
    store = DocumentStore()
    Documents(lambda: rt, Path("meshd.toml"), store)  # relative: files named as config() does
    return rt, store


def test_a_pushed_registry_is_what_the_next_connection_is_decided_on() -> None:
    rt, store = _runtime()
    vip = ("10.255.0.4", 80)
    assert isinstance(decide.outbound(rt.bundle, 0, None, vip), Refuse)
    endpoint = {"host": "b", "address": "10.77.0.5", "port": 80}
    store.put(
        "registry",
        {"version": 8, "services": {"db": {"vip": vip[0], "port": 80, "endpoints": [endpoint]}}},
    )
    decision = decide.outbound(rt.bundle, 0, None, vip)
    assert isinstance(decision, Forward) and decision.service.name == "db"
    assert rt.bundle.registry_version == 8


def test_a_pushed_config_and_policy_are_compiled_in() -> None:
    rt, store = _runtime()
    pushed = (
        "[identity]\nhost = 'b'\ntrust_domain = 't.mesh'\ncert = 'c'\nkey = 'k'\nbundle = 'b'\n"
    )
    services = "[[services]]\nname = 'api'\nport = 8080\n[[services]]\nname = 'echo'\nport = 7000\n"
    store.put(
        "config", {"version": 2, "toml": pushed + services + "[limits]\nmax_connections = 9\n"}
    )
    store.put("policy", {"version": 5})
    assert (rt.bundle.max_connections, rt.bundle.policy_version) == (9, 5)


def test_a_reload_swaps_in_a_bundle_of_what_it_read() -> None:
    rt, _ = _runtime()
    permissive = dataclasses.replace(config(), mtls="permissive")
    files = Files(permissive, NO_TLS, REGISTRY)
    layered = Layered(
        files, permissive, NO_TLS, CertificateSource("files", None, ""), REGISTRY, AppliedPolicy(4)
    )
    Daemon._swap(layered, rt)
    assert rt.bundle.routes[("10.255.0.2", 80)].service is API
    assert isinstance(rt.bundle.plaintext[8080], Deliver)
    assert rt.bundle.policy_version == 4


def _hook(head: RequestHead) -> tuple[RequestAction, ...]:
    return ()


HOOKED = HttpPlan(hooks=(_hook,))


@pytest.mark.parametrize(
    ("http", "rules", "outbound", "inbound"),
    [
        pytest.param(True, HttpRules(), OBSERVE, None, id="observed-out-l4-in"),
        pytest.param(False, HttpRules(), None, None, id="all-l4"),
        pytest.param(
            False, HttpRules(outbound={"api": HOOKED}), HOOKED, None, id="a-rule-needs-l7-out"
        ),
        pytest.param(True, HttpRules(inbound={"api": HOOKED}), OBSERVE, HOOKED, id="rule-in"),
    ],
)
def test_each_decision_carries_the_http_plan_its_connection_needs(
    http: bool, rules: HttpRules, outbound: HttpPlan | None, inbound: HttpPlan | None
) -> None:
    """L4 or L7 is decided once, at admission: the plan rides on the stored decision."""
    cfg = dataclasses.replace(config(), http=http)
    bundle = Bundle.compile(cfg, REGISTRY, NO_POLICY, rules)
    assert bundle.services["api"].http == outbound
    assert bundle.routes[("10.77.0.11", 8080)].http == outbound  # an endpoint addressed directly
    assert bundle.local["api"].http == inbound
