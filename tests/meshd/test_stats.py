"""/stats, typed: what meshd writes is what meshctl and ``meshd reload`` read back.

The round trip fails on a field written under one name and read under
another; the wire table fails on any rename at all (meshctl of another
version reads this payload too); the lenient-reading table pins what a
field from a newer meshd, or one missing from an older meshd, becomes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.stats import (
    UNREPORTED,
    CertificateSource,
    EventCounts,
    HandshakeCounts,
    HeapCounts,
    IssuerReport,
    LinkIn,
    LinkOut,
    ReloadReport,
    RenewalReport,
    SetAside,
    Stats,
)

TEXT = st.text(max_size=12)
COUNT = st.integers(0, 2**40)
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
VERSION = st.none() | COUNT
COUNTS = st.dictionaries(TEXT, COUNT, max_size=3)

STATS = st.builds(
    Stats,
    version=st.none() | TEXT,
    pid=st.none() | COUNT,
    host=TEXT,
    identities=st.lists(TEXT, max_size=3).map(tuple),
    certificate_not_after=TEXT,
    certificate=st.none()
    | st.builds(CertificateSource, st.sampled_from(["files", "pushed", "renewed"]), VERSION, TEXT),
    certificate_serial=TEXT,
    renewal=st.none() | st.builds(RenewalReport, TEXT, TEXT, TEXT, COUNT, TEXT, TEXT, COUNT),
    issuer=st.none() | st.builds(IssuerReport, TEXT, COUNT, COUNT, st.booleans()),
    uptime_seconds=st.none() | FLOAT,
    ready=st.booleans(),
    draining=st.booleans(),
    active_connections=COUNT,
    documents=COUNTS,
    documents_set_aside=st.dictionaries(
        TEXT, st.builds(SetAside, VERSION, TEXT, st.none() | TEXT, FLOAT), max_size=2
    ),
    reload=st.none() | st.builds(ReloadReport, COUNT, st.booleans(), TEXT, TEXT),
    registry_version=VERSION,
    synced_registry_version=st.just(UNREPORTED) | VERSION,
    mtls=TEXT,
    links_out=st.lists(st.builds(LinkOut, TEXT, COUNT), max_size=3).map(tuple),
    links_in=st.lists(st.builds(LinkIn, TEXT, TEXT, COUNT), max_size=3).map(tuple),
    events=st.builds(EventCounts, COUNT, COUNTS),
    listeners=st.dictionaries(TEXT, TEXT, max_size=3),
    handshakes=st.builds(HandshakeCounts, COUNT, COUNT, COUNT, COUNT),
    heap=st.builds(HeapCounts, COUNT, COUNT),
    ipv6=st.none() | TEXT,
)


@given(STATS)
def test_what_meshd_serves_reads_back_as_the_same_stats(stats: Stats) -> None:
    served = json.loads(json.dumps(stats.to_json()))  # as the admin API carries it
    assert Stats.from_json(served) == stats


FULL = Stats(
    version="0.1.0",
    pid=4242,
    host="web1",
    identities=("spiffe://t.mesh/host/web1", "spiffe://t.mesh/svc/web"),
    certificate_not_after="2026-11-28T12:00:00+00:00",
    certificate=CertificateSource("pushed", 3, "it expires no earlier"),
    certificate_serial="1F2E",
    renewal=RenewalReport(
        "failing",
        "2026-11-28T11:00:00+00:00",
        "2026-11-28T11:05:00+00:00",
        2,
        "no issuer answered",
        "h1",
        7,
    ),
    issuer=IssuerReport("2026-12-28T12:00:00+00:00", 5, 1, False),
    uptime_seconds=12.5,
    ready=True,
    draining=False,
    active_connections=2,
    documents={"registry": 7, "config": 2},
    documents_set_aside={
        "certs": SetAside(4, "expired", "/var/lib/meshd/certs.rejected.json", 1.5)
    },
    reload=ReloadReport(1, True, "reloaded", "2026-11-27T12:00:00.000+00:00"),
    registry_version=7,
    synced_registry_version=None,
    mtls="strict",
    links_out=(LinkOut("10.0.0.12:15443", 3),),
    links_in=(LinkIn("spiffe://t.mesh/host/db1", "10.0.0.12", 1),),
    events=EventCounts(10, {"metrics": 0}),
    listeners={"mesh": "0.0.0.0:15443"},
    handshakes=HandshakeCounts(1, 2, 3, 4),
    heap=HeapCounts(4096, 5),
    ipv6="served",
)
WIRE: dict[str, Any] = {  # the /stats payload as meshd 0.1 serves it: key names are a contract
    "version": "0.1.0",
    "pid": 4242,
    "host": "web1",
    "identities": ["spiffe://t.mesh/host/web1", "spiffe://t.mesh/svc/web"],
    "certificate_not_after": "2026-11-28T12:00:00+00:00",
    "certificate": {"layer": "pushed", "version": 3, "reason": "it expires no earlier"},
    "certificate_serial": "1F2E",
    "renewal": {
        "state": "failing",
        "last_renewed": "2026-11-28T11:00:00+00:00",
        "next_at": "2026-11-28T11:05:00+00:00",
        "failures": 2,
        "last_error": "no issuer answered",
        "issuer": "h1",
        "renewals": 7,
    },
    "issuer": {
        "not_after": "2026-12-28T12:00:00+00:00",
        "signed": 5,
        "refused": 1,
        "pending_key": False,
    },
    "uptime_seconds": 12.5,
    "ready": True,
    "draining": False,
    "active_connections": 2,
    "documents": {"registry": 7, "config": 2},
    "documents_set_aside": {
        "certs": {
            "version": 4,
            "reason": "expired",
            "kept": "/var/lib/meshd/certs.rejected.json",
            "at": 1.5,
        }
    },
    "reload": {
        "generation": 1,
        "ok": True,
        "message": "reloaded",
        "at": "2026-11-27T12:00:00.000+00:00",
    },
    "registry_version": 7,
    "synced_registry_version": None,
    "mtls": "strict",
    "links_out": [{"peer": "10.0.0.12:15443", "streams": 3}],
    "links_in": [{"peer": "spiffe://t.mesh/host/db1", "address": "10.0.0.12", "streams": 1}],
    "events": {"published": 10, "dropped": {"metrics": 0}},
    "listeners": {"mesh": "0.0.0.0:15443"},
    "handshakes": {"mesh": 1, "mesh_silent": 2, "mesh_evicted": 3, "mesh_turned_away": 4},
    "heap": {"free_bytes": 4096, "trims": 5},
    "ipv6": "served",
}


def test_the_wire_names_are_those_of_meshd_0_1() -> None:
    assert FULL.to_json() == WIRE
    assert Stats.from_json(WIRE) == FULL


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in WIRE.items() if k != key}


@pytest.mark.parametrize(
    ("doc", "field", "value"),
    [
        ({**WIRE, "from_a_newer_meshd": {"x": 1}}, "registry_version", 7),  # ignored
        (_without("version"), "version", None),
        (_without("pid"), "pid", None),
        (_without("uptime_seconds"), "uptime_seconds", None),
        (_without("registry_version"), "registry_version", None),
        (_without("ipv6"), "ipv6", None),
        (_without("reload"), "reload", None),
        (_without("certificate"), "certificate", None),
        (_without("ready"), "ready", False),
        (_without("documents"), "documents", {}),
        (_without("heap"), "heap", HeapCounts()),
        (_without("synced_registry_version"), "synced_registry_version", UNREPORTED),
        ({**WIRE, "synced_registry_version": 9}, "synced_registry_version", 9),
        ({**WIRE, "ready": "yes"}, "ready", False),  # another type: as if missing
        ({**WIRE, "registry_version": True}, "registry_version", None),
        ({**WIRE, "registry_version": "7"}, "registry_version", None),
        ({**WIRE, "uptime_seconds": 3}, "uptime_seconds", 3.0),
        ({**WIRE, "documents": {"config": 2, "policy": "x"}}, "documents", {"config": 2}),
        ({**WIRE, "reload": {"ok": True}}, "reload", None),  # no generation: no outcome
        ({**WIRE, "reload": {"generation": 2}}, "reload", ReloadReport(2, False, "")),
        ({**WIRE, "certificate": {"layer": "elsewhere"}}, "certificate", None),
        ({**WIRE, "links_out": [{"peer": "a:1"}, 7]}, "links_out", (LinkOut("a:1", 0),)),
    ],
)
def test_a_newer_or_older_meshds_stats_are_read_leniently(
    doc: dict[str, Any], field: str, value: object
) -> None:
    assert getattr(Stats.from_json(doc), field) == value


def test_a_meshd_that_does_not_report_the_sync_is_told_from_one_that_never_synced() -> None:
    assert Stats().to_json().get("synced_registry_version", "absent") == "absent"
    assert Stats(synced_registry_version=None).to_json()["synced_registry_version"] is None
