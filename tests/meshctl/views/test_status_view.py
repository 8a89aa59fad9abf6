"""Rendering of the ``meshctl status`` fleet table."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from rich.console import Console

from meshctl.provision.status import HostStatus
from meshctl.views.status import fleet_warnings, status_table
from meshd.stats import RenewalReport
from tests.meshctl.helpers import NOW

DAY = dt.timedelta(days=1)

HEALTHY = HostStatus(
    "web1",
    "10.0.0.11",
    joined=True,
    reachable=True,
    meshd="active",
    ready=True,
    version="0.3.0",
    uptime_seconds=7200,
    registry_version=4,
    expected_registry=4,
    cert_not_after=NOW + dt.timedelta(hours=20),
    cert_life_left=0.8,
    rules=True,
)


def render(*statuses: HostStatus) -> str:
    console = Console(record=True, width=120)
    console.print(status_table(list(statuses), registry_version=4))
    return console.export_text()


def rows(text: str) -> list[dict[str, str]]:
    """The table's cells by column, with text wrapped inside a cell joined again."""
    header = next(line for line in text.splitlines() if line.startswith("┃"))
    columns = [c.strip() for c in header.split("┃")[1:-1]]
    found: list[dict[str, str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:  # a host name starts a row
            found.append(dict.fromkeys(columns, ""))
        for column, cell in zip(columns, cells, strict=True):
            found[-1][column] = f"{found[-1][column]} {cell}".strip()
    return found


def test_healthy_host() -> None:
    assert HEALTHY.healthy
    text = render(HEALTHY)
    assert text.startswith("mesh status (workspace registry version 4)")
    assert rows(text) == [
        {
            "host": "web1",
            "address": "10.0.0.11",
            "meshd": "active, ready 0.3.0, up 2h",
            "registry": "4",
            "policy": "-",
            "cert until": "2026-11-28 08:00",
            "rules": "yes",
            "notes": "healthy",
        }
    ]


@pytest.mark.parametrize(
    ("changes", "column", "shown"),
    [
        (
            {"drift": ["write a", "apply b"]},
            "notes",
            "drift: 2 change(s) pending; see meshctl join web1 --dry-run",
        ),
        ({"cert_life_left": 0.2}, "cert until", "2026-11-28 08:00 (renew)"),
        ({"cert_not_after": None, "cert_life_left": None}, "cert until", "none"),
        ({"joined": False}, "notes", "not joined: run meshctl join web1"),
        (
            {"meshd": "failed", "ready": False, "restarts": 3},
            "meshd",
            "failed 0.3.0, up 2h 3 restart(s)",
        ),
        ({"ready": False}, "meshd", "active, not ready 0.3.0, up 2h"),
        ({"rules": False}, "rules", "no"),
        ({"registry_version": 3}, "registry", "3"),
        (
            {"registry_version": 3},
            "notes",
            "registry version 3, the workspace's is 4: run meshctl join web1",
        ),
        ({"policy_version": 2, "expected_policy": 2}, "policy", "2"),
        ({"policy_version": 2, "expected_policy": 2}, "notes", "healthy"),
        (
            {"policy_version": 1, "expected_policy": 2},
            "notes",
            "policy version 1, the workspace's is 2: run meshctl policy apply again",
        ),
        (
            {"expected_policy": 2},
            "notes",
            "no policy, the workspace's is 2: run meshctl policy apply again",
        ),
        ({"admin_error": "connection refused"}, "notes", "admin API: connection refused"),
        (
            {"reachable": False, "error": "web1:22: no answer", "admin_error": "timed out"},
            "meshd",
            "unreachable",
        ),
        (
            {"reachable": False, "error": "web1:22: no answer", "admin_error": "timed out"},
            "notes",
            "web1:22: no answer",  # the admin API's error says nothing more then
        ),
    ],
)
def test_problems_are_shown(changes: dict[str, object], column: str, shown: str) -> None:
    (row,) = rows(render(replace(HEALTHY, **changes)))  # type: ignore[arg-type]
    assert row[column] == shown


@pytest.mark.parametrize(
    "changes",
    [
        {"ready": False},
        {"rules": False},
        {"cert_life_left": 0.2},
        {"registry_version": 3},
        {"policy_version": 1, "expected_policy": 2},
    ],
)
def test_only_healthy_hosts_are_called_healthy(changes: dict[str, object]) -> None:
    status = replace(HEALTHY, **changes)  # type: ignore[arg-type]
    assert not status.healthy
    (row,) = rows(render(status))
    assert row["notes"] != "healthy"


def test_a_host_held_by_the_boot_fallback_says_so() -> None:
    held = replace(HEALTHY, rules=False, rules_fallback=True, meshd="activating", ready=False)
    assert not held.healthy
    (row,) = rows(render(held))
    assert row["rules"] == "fallback"
    assert (
        "meshd-rules.service failed at boot: the last applied rules hold the host" in row["notes"]
    )
    assert "redirect rules missing" not in row["notes"]


OFF = "off (listen.ipv6 = false): the rules reject IPv6 connections to the mesh instead of ..."


@pytest.mark.parametrize(
    ("ipv6", "rules6", "healthy", "note"),
    [
        ("served", "redirect", True, None),
        ("absent: the kernel has no IPv6", "", True, None),
        (OFF, "reject", True, None),  # chosen, and what the rules do
        # meshd does not listen there, yet the rules send IPv6 to its ports: whoever binds them
        (OFF, "redirect", False, "but the ip6tables rules redirect IPv6 to meshd's ports"),
        ("unserved: cannot listen on [::1]:15001", "redirect", False, "the ip6tables rules"),
    ],
)
def test_ipv6_that_meshd_does_not_serve_is_shown_as_the_rules_treat_it(
    ipv6: str, rules6: str, healthy: bool, note: str | None
) -> None:
    status = replace(HEALTHY, ipv6=ipv6)
    status.ipv6_rules = rules6  # set apart: a field the status had no notion of before
    assert status.healthy == healthy
    (row,) = rows(render(status))
    assert (note in row["notes"]) if note else row["notes"] == "healthy"


FAILING = RenewalReport(state="failing", failures=4, last_error="no issuer answered")


@pytest.mark.parametrize(
    ("statuses", "issuers", "leaf", "expected"),
    [
        ([HEALTHY], [], 86400, ["no issuer, and leaves live 1d: no host renews its certificate"]),
        ([HEALTHY], [], 30 * 86400, []),  # long leaves: re-joining them is the plan
        ([], [], 86400, []),  # no hosts yet: nothing to renew
        ([replace(HEALTHY, issuer_not_after=(NOW + 16 * DAY).isoformat())], ["web1"], 86400, []),
        (
            [replace(HEALTHY, issuer_not_after=(NOW + 14 * DAY).isoformat())],
            ["web1"],
            86400,
            [
                "issuer web1: its CA is past half its life (until 2026-12-11 12:00 UTC): run "
                "meshctl ca renew-issuers"
            ],
        ),
        (
            [replace(HEALTHY, renewal=FAILING)],
            ["db1"],
            86400,
            ["web1: certificate renewal failing (4 attempt(s)): no issuer answered"],
        ),
        ([replace(HEALTHY, renewal=RenewalReport(state="ok"))], ["db1"], 86400, []),
        (
            [HEALTHY],
            ["web1"],
            86400,
            ["issuer web1 holds no issuer CA: run meshctl issuer add web1"],
        ),
        ([replace(HEALTHY, admin_error="refused")], ["web1"], 86400, []),  # said in its row
        (  # meshd's words, one printable line
            [replace(HEALTHY, renewal=replace(FAILING, last_error="a\nb\x1b[31m"))],
            ["db1"],
            86400,
            ["web1: certificate renewal failing (4 attempt(s)): a\\nb\\x1b[31m;"],
        ),
    ],
)
def test_fleet_warnings(
    statuses: list[HostStatus], issuers: list[str], leaf: int, expected: list[str]
) -> None:
    found = fleet_warnings(statuses, issuers, (leaf, 30 * 86400), NOW)
    assert len(found) == len(expected)
    assert all(line.startswith(start) for line, start in zip(found, expected, strict=True))
