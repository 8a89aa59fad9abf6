"""The table of ``meshctl issuer list``: one row per issuer, problems in colour."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from meshctl.issuers import IssuerState

STATE_STYLES = {"ok": "green", "renew": "yellow", "expired": "red", "no CA": "red"}


def issuer_table(issuers: list[IssuerState]) -> Table:
    """Host, address, CA expiry, signed/refused since meshd started, state."""
    table = Table(title="issuers", title_justify="left")
    for column in ("host", "address", "CA until", "signed/refused", "state"):
        table.add_column(column, no_wrap=column != "state")
    for i in issuers:
        until = f"{i.not_after:%Y-%m-%d %H:%M}" if i.not_after else "-"
        style = STATE_STYLES.get(i.state, "red")
        state = f"[{style}]{escape(i.state)}[/]"
        if i.detail:
            state += f"\n{escape(i.detail)}"
        table.add_row(escape(i.host), escape(i.address), until, f"{i.signed}/{i.refused}", state)
    return table
