"""Build checked policy values by hand (the validator is not needed to test the evaluator),
and policy files as TOML text (``policytoml``) for the tests that hand meshctl files."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshd.policy.lang.model import (
    Bucket,
    Document,
    HeaderMatch,
    RateLimit,
    Rule,
    Selector,
    Setting,
    Source,
)

# the TOML builder lives in bench/, whose modules import each other by name, so that the
# bench's policy files use it too (bench imports no tests module); tests/bench does the same
sys.path.append(str(Path(__file__).resolve().parents[4] / "bench"))
import policytoml as policytoml  # noqa: PLC0414 - re-exported: build.policytoml

TD = "prod.example"


def spiffe(service: str, td: str = TD) -> str:
    return f"spiffe://{td}/svc/{service}"


def source(text: str, td: str = TD) -> Source:
    """A ``from`` entry resolved as the validator would."""
    if text == "*":
        return Source(text, "any")
    if text == "unauthenticated":
        return Source(text, "unauthenticated")
    value = text if text.startswith("spiffe://") else spiffe(text, td)
    if value.endswith("/*"):
        return Source(text, "prefix", value[:-1])
    return Source(text, "exact", value)


def ports(*spec: int | str) -> tuple[tuple[int, int], ...]:
    out = []
    for p in spec:
        lo, _, hi = str(p).partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


def selector(
    to: str,
    sources: Sequence[str] | None = None,
    port: Sequence[int | str] | None = None,
    methods: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    headers: Mapping[str, str | bool | tuple[str, str]] | None = None,
    td: str = TD,
) -> Selector:
    """``headers``: name -> "exact", True/False (present) or ("prefix", "qa-")."""
    return Selector(
        to=to,
        sources=None if sources is None else tuple(source(s, td) for s in sources),
        ports=None if port is None else ports(*port),
        methods=None if methods is None else frozenset(methods),
        paths=None if paths is None else tuple(paths),
        headers=None if headers is None else tuple(_header(n, v) for n, v in headers.items()),
    )


def _header(name: str, value: str | bool | tuple[str, str]) -> HeaderMatch:
    if isinstance(value, bool):
        return HeaderMatch(name, present=value)
    if isinstance(value, tuple):
        return HeaderMatch(name, prefix=value[1])
    return HeaderMatch(name, exact=value)


Port = Sequence[int | str] | None
HeaderSpec = Mapping[str, str | bool | tuple[str, str]] | None


def allow(
    doc: str,
    name: str,
    to: str,
    sources: Sequence[str],
    port: Port = None,
    methods: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    headers: HeaderSpec = None,
) -> Rule:
    sel = selector(to, sources, port, methods, paths, headers)
    return Rule(f"{doc}/allow/{name}", "allow", name, sel)


def deny(
    doc: str,
    name: str,
    to: str,
    sources: Sequence[str] | None = None,
    port: Port = None,
    methods: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    headers: HeaderSpec = None,
    audit: bool = False,
) -> Rule:
    sel = selector(to, sources, port, methods, paths, headers)
    return Rule(f"{doc}/deny/{name}", "deny", name, sel, audit=audit)


def limit(
    doc: str,
    name: str,
    to: str,
    n: int,
    per_ms: int = 1000,
    burst: int | None = None,
    bucket: Bucket = "shared",
    sources: Sequence[str] | None = None,
    port: Port = None,
    methods: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
) -> RateLimit:
    sel = selector(to, sources, port, methods, paths)
    cap = n if burst is None else burst
    return RateLimit(f"{doc}/rate_limit/{name}", name, sel, n, per_ms, cap, bucket)


def document(
    name: str,
    rules: Sequence[Rule] = (),
    mode: str | None = None,
    default: str | None = None,
    mtls_services: Mapping[str, str] | None = None,
    authz_services: Mapping[str, str] | None = None,
    rate_limits: Sequence[RateLimit] = (),
    td: str = TD,
) -> Document:
    return Document(
        name=name,
        trust_domain=td,
        mtls_mode=None if mode is None else Setting(mode, f"{name}/mtls/mode"),
        mtls_services={
            s: Setting(v, f"{name}/mtls/services/{s}") for s, v in (mtls_services or {}).items()
        },
        authz_default=None if default is None else Setting(default, f"{name}/authz/default"),
        authz_services={
            s: Setting(v, f"{name}/authz/services/{s}") for s, v in (authz_services or {}).items()
        },
        rules=tuple(rules),
        rate_limits=tuple(rate_limits),
    )


ZT = "zero-trust"
ZERO_TRUST = document(
    ZT,
    mode="strict",
    default="deny",
    rules=[
        allow(
            ZT,
            "web-to-api",
            "api",
            ["web"],
            port=[8080],
            methods=["GET", "POST", "PUT", "DELETE"],
            paths=["/v1/**"],
        ),
        allow(ZT, "api-to-db", "db", ["api"], port=[5432]),
        allow(
            ZT,
            "metrics-scrape",
            "*",
            ["prometheus"],
            port=[9102],
            methods=["GET"],
            paths=["/metrics"],
        ),
        deny(ZT, "no-admin-from-web", "api", ["web"], paths=["/v1/admin/**"]),
        deny(ZT, "retire-web-deletes", "api", ["web"], methods=["DELETE"], audit=True),
    ],
)
