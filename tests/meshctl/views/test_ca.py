"""Rendering of the CA views."""

from __future__ import annotations

import datetime as dt

from rich.console import Console

from meshctl.views.ca import CertSummary, ca_table, summarize
from tests.meshctl.helpers import NOW, make_ca


def _render(renderable: object) -> str:
    console = Console(record=True, width=100)
    console.print(renderable)
    return console.export_text()


def test_summary_and_table() -> None:
    ca = make_ca()
    certs = [summarize("root CA", ca.root.cert, NOW), summarize("issuing CA", ca.issuing.cert, NOW)]
    assert certs[1].expires_in_days == 365
    assert certs[0].spiffe_ids == ()
    text = _render(ca_table("t", "t.mesh", certs))
    assert "mesh t, trust domain t.mesh" in text
    assert "CN=t issuing CA,O=mesh t" in text
    assert "in 365 d" in text and "in 3650 d" in text


def test_expiry_seen_from_later() -> None:
    ca = make_ca()
    later = summarize("issuing CA", ca.issuing.cert, NOW + dt.timedelta(days=340))
    assert later.expires_in_days == 25


def test_values_are_not_read_as_emoji_codes_or_markup() -> None:
    summary = CertSummary("root CA", "CN=[bold]x[/bold]", (), "AA:CD:EF", "2026", "2036", 1)
    console = Console(record=True, width=100)  # emoji and markup on, as by default
    console.print(ca_table("t", "t.mesh", [summary]))
    text = console.export_text()
    assert "sha256 AA:CD:EF" in text
    assert "CN=[bold]x[/bold]" in text
