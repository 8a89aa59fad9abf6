"""The registry's one writer and one reader agree: ``from_dict(r.to_dict()) == r``.

meshctl builds typed ``Registry`` values and writes them with ``to_dict`` and
``to_json``; meshd reads them with ``from_dict``. Any field written under a
name the reader does not take (or read under a name the writer does not
write) fails these round trips.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from meshd.registry import Endpoint, Registry, Service

LOWER, DIGITS = "abcdefghijklmnopqrstuvwxyz", "0123456789"
NAMES = st.builds(  # DNS labels: a letter, then letters, digits and inner dashes
    lambda first, rest: first + rest.strip("-"),
    st.sampled_from(LOWER),
    st.text(LOWER + DIGITS + "-", max_size=8),
)
PORTS = st.integers(1, 65535)
LABELS = st.dictionaries(
    st.text(LOWER + LOWER.upper() + DIGITS, min_size=1, max_size=8),
    st.text(LOWER + DIGITS + "._:/=+@-", max_size=8),
    max_size=3,
).map(lambda labels: tuple(sorted(labels.items())))


@st.composite
def endpoints(draw: st.DrawFn, service: int) -> Endpoint:
    """An endpoint whose addresses no other service's endpoints use (10.<service>.x.y)."""
    octets = draw(st.tuples(st.integers(0, 255), st.integers(1, 254)))
    ipv6 = draw(st.lists(st.integers(1, 0xFFFF), max_size=3, unique=True))
    return Endpoint(
        host=draw(NAMES),
        address=f"10.{service}.{octets[0]}.{octets[1]}",
        port=draw(PORTS),
        mesh_port=draw(PORTS),
        labels=draw(LABELS),
        ipv6=tuple(f"fd00:{service:x}::{low:x}" for low in ipv6),
    )


@st.composite
def registries(draw: st.DrawFn) -> Registry:
    names = draw(st.lists(NAMES, max_size=5, unique=True))
    services = [
        Service(
            name,
            f"10.255.0.{i + 1}",
            draw(PORTS),
            tuple(draw(st.lists(endpoints(i + 1), max_size=3))),
        )
        for i, name in enumerate(names)
    ]
    return Registry.of(draw(st.integers(0, 2**53 - 1)), services)


@given(registries())
def test_what_is_written_reads_back_as_the_same_registry(registry: Registry) -> None:
    assert Registry.from_dict(registry.to_dict(), "registry") == registry


@given(registries())
def test_the_file_reads_back_as_the_same_registry(registry: Registry) -> None:
    assert Registry.from_dict(json.loads(registry.to_json()), "registry.json") == registry
    assert registry.checked("registry") == registry


def test_services_are_kept_in_name_order_as_the_reader_keeps_them() -> None:
    built = Registry.of(1, [Service("web", "10.255.0.2", 80), Service("api", "10.255.0.1", 80)])
    assert [s.name for s in built.services] == ["api", "web"]
    assert Registry.from_dict(built.to_dict(), "registry") == built
