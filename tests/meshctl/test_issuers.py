"""The pure part of issuers: when a CA is due, and what ``issuer list`` makes of /stats."""

from __future__ import annotations

import datetime as dt

import pytest

from meshctl.ca import sign_issuer
from meshctl.inventory import HostSpec
from meshctl.issuers import IssuerDocument, due, issuer_state, parse_time
from meshd.errors import ConnectError, MeshError
from meshd.identity import make_id
from meshd.pki import build_csr, generate_key
from meshd.stats import IssuerReport, Stats
from tests.meshctl.helpers import NOW, TD, make_ca

DAY = dt.timedelta(days=1)
MONTH = 30 * 86400
WEB1 = HostSpec("web1", "10.0.0.11")
CSR = build_csr(generate_key(), [make_id(TD, "issuer", "web1")])
CERT = sign_issuer(CSR, "web1", make_ca().root, NOW, 30 * DAY, TD)


@pytest.mark.parametrize(
    ("doc", "at", "force", "expected"),
    [
        (IssuerDocument(), NOW, False, True),  # no CA yet
        (IssuerDocument(1, CERT), NOW + 19 * DAY, False, False),
        (IssuerDocument(1, CERT), NOW + 20 * DAY, False, True),  # 2/3 of 30 days (backdated)
        (IssuerDocument(1, CERT), NOW + DAY, True, True),
        (IssuerDocument(1, CERT), NOW + 31 * DAY, False, True),  # expired
    ],
)
def test_due(doc: IssuerDocument, at: dt.datetime, force: bool, expected: bool) -> None:
    assert due(doc, at, force) is expected


def _stats(not_after: str) -> Stats:
    return Stats(issuer=IssuerReport(not_after=not_after, signed=5, refused=2))


@pytest.mark.parametrize(
    ("stats", "at", "state", "detail"),
    [
        (_stats((NOW + 30 * DAY).isoformat()), NOW, "ok", ""),
        (
            _stats((NOW + 30 * DAY).isoformat()),
            NOW + 16 * DAY,
            "renew",
            "past half its life: run meshctl ca renew-issuers",
        ),
        (
            _stats((NOW + 30 * DAY).isoformat()),
            NOW + 30 * DAY,
            "expired",
            "run meshctl issuer add web1",
        ),
        (Stats(), NOW, "no CA", "run meshctl issuer add web1"),
        (_stats(""), NOW, "no CA", "run meshctl issuer add web1"),
        (_stats("soon"), NOW, "no CA", "run meshctl issuer add web1"),
        (
            ConnectError("meshd on web1: connection refused"),
            NOW,
            "unreachable",
            "meshd on web1: connection refused",
        ),
    ],
)
def test_issuer_state(stats: Stats | MeshError, at: dt.datetime, state: str, detail: str) -> None:
    found = issuer_state(WEB1, stats, at, MONTH)
    assert (found.state, found.detail) == (state, detail)
    if state in ("ok", "renew"):
        assert (found.signed, found.refused) == (5, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T12:00:00+00:00", NOW),
        ("2026-11-27T12:00:00", NOW),  # no zone: UTC
        ("", None),
        ("tomorrow", None),
    ],
)
def test_parse_time(text: str, expected: dt.datetime | None) -> None:
    assert parse_time(text) == expected
