"""Rendering of a CA rotation's per-host table."""

from __future__ import annotations

import pytest
from rich.console import Console

from meshctl.rotation import NEW, OLD, HostRotation
from meshctl.views.rotation import notes_view, rotation_table, rotation_title


def render(rows: list[HostRotation]) -> str:
    console = Console(record=True, width=140)
    console.print(rotation_table(rows, rotation_title(rows)))
    return console.export_text()


@pytest.mark.parametrize(
    ("row", "cells"),
    [
        (
            HostRotation("web1", "10.0.0.11", NEW, "ABCDEF0123456789FF", 2, "ok"),
            ["web1", "new root", "ABCDEF0123456789", "version 2", "ok", "ready"],
        ),
        (
            HostRotation("db1", "10.0.0.13", OLD, "01", None, "failing", "timed out", OLD),
            ["db1", "old root", "failing: timed out", "waiting"],
        ),
        (HostRotation("api1", "10.0.0.12", error="no answer within 5s"), ["no answer within 5s"]),
    ],
    ids=["ready", "waiting", "unreachable"],
)
def test_each_host_shows_its_roots_and_renewal(row: HostRotation, cells: list[str]) -> None:
    text = render([row])
    line = next(line for line in text.splitlines() if row.host in line)
    for cell in cells[1:]:
        assert cell in text, cell
    assert line.startswith(f"│ {row.host}")


@pytest.mark.parametrize(
    ("rows", "title"),
    [
        ([HostRotation("a", "1", NEW)], "1 of 1 host(s) on the new root, ready to finish"),
        (
            [HostRotation("a", "1", NEW), HostRotation("b", "2", OLD)],
            "1 of 2 host(s) on the new root, not ready to finish",
        ),
    ],
    ids=["ready", "not-ready"],
)
def test_the_title_counts_the_hosts_on_the_new_root(rows: list[HostRotation], title: str) -> None:
    assert rotation_title(rows) == f"CA rotation: {title}"


def test_notes_are_one_line_each() -> None:
    console = Console(record=True, width=100)
    console.print(notes_view(["a [b]", "c"]))
    assert console.export_text() == "note: a [b]\nnote: c\n"
