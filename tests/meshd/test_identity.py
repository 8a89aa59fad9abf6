"""SPIFFE ID parsing and the mesh's naming scheme."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.errors import ConfigError
from meshd.identity import SpiffeId, check_name, make_id


@pytest.mark.parametrize(
    ("text", "domain", "path", "kind", "name"),
    [
        ("spiffe://prod.example/svc/api", "prod.example", "/svc/api", "svc", "api"),
        ("spiffe://d/host/web-1", "d", "/host/web-1", "host", "web-1"),
        ("spiffe://d/operator/alice", "d", "/operator/alice", "operator", "alice"),
        ("spiffe://d/ns/x/sa/y", "d", "/ns/x/sa/y", None, "y"),
    ],
)
def test_parse_valid(text: str, domain: str, path: str, kind: str | None, name: str) -> None:
    sid = SpiffeId.parse(text)
    assert (sid.trust_domain, sid.path, sid.kind, sid.name) == (domain, path, kind, name)
    assert str(sid) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://d/svc/a", "must start with spiffe://"),
        ("spiffe:///svc/a", "trust domain is empty"),
        ("spiffe://Prod/svc/a", "lowercase"),
        ("spiffe://d", "needs a path"),
        ("spiffe://d/", "needs a path"),
        ("spiffe://d/svc//a", "empty segment"),
        ("spiffe://d/svc/../a", "'.' or '..'"),
        ("spiffe://d/svc/a b", "may hold only"),
        ("spiffe://d:443/svc/a", "lowercase"),
        ("spiffe://d/" + "a" * 2048, "longer than"),
    ],
)
def test_parse_invalid(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="invalid SPIFFE ID") as info:
        SpiffeId.parse(text)
    assert problem in info.value.message
    assert info.value.hint


@pytest.mark.parametrize("name", ["-a", "a-", "A", "a_b", "", "a" * 64])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid service name"):
        check_name("service", name)


def test_make_id() -> None:
    assert str(make_id("prod.mesh", "svc", "api")) == "spiffe://prod.mesh/svc/api"
    with pytest.raises(ValueError, match="unknown identity kind"):
        make_id("prod.mesh", "user", "x")
    with pytest.raises(ConfigError):
        make_id("Prod", "svc", "api")


segment = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(
    domain=st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True),
    segments=st.lists(segment, min_size=1, max_size=4),
)
def test_roundtrip(domain: str, segments: list[str]) -> None:
    sid = SpiffeId(domain, "/" + "/".join(segments))
    assert SpiffeId.parse(str(sid)) == sid
