"""Views of the mesh CA: models built from certificates, and their renderings."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from meshd.pki import fingerprint, spiffe_ids


@dataclass(frozen=True)
class CertSummary:
    """What an operator wants to know about one certificate."""

    role: str
    subject: str
    spiffe_ids: tuple[str, ...]
    fingerprint_sha256: str
    not_before: str
    not_after: str
    expires_in_days: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spiffe_ids"] = list(self.spiffe_ids)
        return data


def summarize(role: str, cert: x509.Certificate, now: dt.datetime) -> CertSummary:
    """A CertSummary of ``cert`` as seen at ``now``."""
    return CertSummary(
        role=role,
        subject=cert.subject.rfc4514_string(),
        spiffe_ids=tuple(str(i) for i in spiffe_ids(cert)),
        fingerprint_sha256=fingerprint(cert),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        expires_in_days=(cert.not_valid_after_utc - now).days,
    )


def ca_table(name: str, trust_domain: str, certs: list[CertSummary]) -> RenderableType:
    """The ``meshctl ca show`` listing: one block per certificate."""
    # data goes in as Text: a fingerprint's ":CD:" is no emoji code, a subject's "[" no markup
    table = Table(
        title=Text(f"mesh {name}, trust domain {trust_domain}"),
        title_justify="left",
        show_header=False,
        box=None,
        padding=(0, 1),
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for c in certs:
        table.add_row(Text(c.role), Text(c.subject))
        if c.spiffe_ids:
            table.add_row("", Text("\n".join(c.spiffe_ids)))
        table.add_row("", Text.assemble("expires ", _expiry(c)))
        table.add_row("", Text(f"sha256 {c.fingerprint_sha256}"))
        table.add_row("", "")
    return table


def _expiry(c: CertSummary) -> Text:
    style = "red" if c.expires_in_days < 30 else ""
    return Text(f"{c.not_after[:10]} (in {c.expires_in_days} d)", style=style)


def init_summary(path: str, trust_domain: str, certs: list[CertSummary], encrypted: bool) -> Group:
    """What ``meshctl init`` reports, with what to run next."""
    lines: list[RenderableType] = [
        Text.assemble(("created mesh workspace ", "green"), (path, "bold")),
        Text(f"  trust domain  {trust_domain}"),
    ]
    for c in certs:
        label = f"  {c.role:<13} "
        lines.append(Text(label + (c.spiffe_ids[0] if c.spiffe_ids else c.fingerprint_sha256[:29])))
    lines.append(
        Text(
            f"  CA keys       {'encrypted with your passphrase' if encrypted else 'NOT ENCRYPTED'}",
            style="" if encrypted else "bold red",
        )
    )
    lines.append(Text("next: meshctl ca show    (keep secrets/ out of version control)"))
    return Group(*lines)
