"""The runtime's policy state across swaps: the token buckets outlive unchanged limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from meshd.config import MeshdConfig
from meshd.policy.bundle import NO_POLICY, AppliedPolicy
from meshd.policy.lang import wire
from meshd.runtime import Runtime
from tests.meshd.tlsfixtures import TD, TestPki


def _applied(version: int, limit: int, name: str = "r") -> AppliedPolicy:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "p",
        "authz": {"default": "allow"},
        "rate_limit": [{"name": name, "to": "web", "limit": limit, "per": "1s"}],
    }
    pushed = wire.PolicyDocument.from_json({"version": version, "documents": [doc]})
    return AppliedPolicy(version, tuple(wire.load(pushed, TD, dt.datetime.now(dt.UTC))))


def test_buckets_survive_a_swap_unless_their_limit_changed(tmp_path: Path) -> None:
    ident = TestPki(tmp_path).issue("b", "host/b", "svc/web")
    files = {"cert": str(ident.cert), "key": str(ident.key), "bundle": str(ident.bundle)}
    config = MeshdConfig.from_dict(
        {
            "identity": {"host": "b", "trust_domain": TD, **files},
            "services": [{"name": "web", "port": 8080}],
        },
        "test",
    )
    rt = Runtime.load(config)
    rt.policy = _applied(1, 5)
    rt.recompile()
    buckets = rt.buckets
    rt.policy = _applied(2, 5)  # a new version, the same limit: the tokens taken still count
    rt.recompile()
    assert rt.buckets is buckets
    rt.policy = _applied(3, 7)  # the limit changed under its id: counted afresh
    rt.recompile()
    assert rt.buckets is not buckets
    rt.policy = NO_POLICY
    rt.recompile()
    assert rt.bundle.policy is None and rt.limits == {}
