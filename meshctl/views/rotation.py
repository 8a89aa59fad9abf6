"""Views of a CA rotation: where each host is (``meshctl ca rotate status`` and a refused
``finish``), and the notes ``begin`` and ``finish`` leave on the workspace."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from meshctl.rotation import NEW, HostRotation


def _root(text: str) -> str:
    if not text:
        return "-"
    return f"[green]{text}[/]" if text == NEW else f"[yellow]{escape(text)}[/]"


def _renewal(r: HostRotation) -> str:
    if r.renewal == "failing":
        return (
            f"[red]failing: {escape(r.renewal_error)}[/]" if r.renewal_error else "[red]failing[/]"
        )
    return escape(r.renewal) or "-"


def _state(r: HostRotation) -> str:
    if r.error:
        return f"[red]{escape(r.error)}[/]"
    return "[green]ready[/]" if r.ready else "[yellow]waiting[/]"


def rotation_table(rows: list[HostRotation], title: str) -> Table:
    """One row per joined host: the root of its leaf and of its issuer CA, its renewal."""
    table = Table(title=Text(title), title_justify="left")
    for column in ("host", "address", "leaf", "serial", "trust", "issuer CA", "renewal"):
        table.add_column(column, no_wrap=column in ("host", "address"))
    table.add_column("state", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(
            escape(r.host),
            escape(r.address),
            _root(r.leaf),
            escape(r.serial[:16]) or "-",
            "-" if r.trust_version is None else f"version {r.trust_version}",
            _root(r.issuer),
            _renewal(r),
            _state(r),
        )
    return table


def rotation_title(rows: list[HostRotation]) -> str:
    ready = sum(r.ready for r in rows)
    done = "ready to finish" if ready == len(rows) else "not ready to finish"
    return f"CA rotation: {ready} of {len(rows)} host(s) on the new root, {done}"


def notes_view(notes: list[str]) -> RenderableType:
    return Group(*(Text(f"note: {n}") for n in notes))
