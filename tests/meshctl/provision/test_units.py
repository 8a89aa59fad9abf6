"""Rendered systemd units are golden files, reviewed like code."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshctl.provision.units import (
    UnitOptions,
    meshd_service,
    rules_service,
    sync_path,
    sync_service,
)

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("mode", ["closed", "open"])
@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("meshd.service", meshd_service),
        ("meshd-rules.service", rules_service),
        ("meshd-sync.service", sync_service),
    ],
)
def test_units_match_golden(mode: str, name: str, render: Callable[[UnitOptions], str]) -> None:
    text = render(UnitOptions(fail_mode=mode))
    golden = GOLDEN / f"{mode}-{name}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_sync_path_matches_golden() -> None:
    text = sync_path()
    golden = GOLDEN / "meshd-sync.path"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_closed_mode_never_removes_rules() -> None:
    for render in (meshd_service, rules_service):
        assert "rules remove" not in render(UnitOptions(fail_mode="closed"))
    assert "ExecStopPost=+/opt/meshd/bin/meshd rules remove" in meshd_service(
        UnitOptions(fail_mode="open")
    )


@pytest.mark.parametrize(
    ("mode", "gate"), [("closed", ""), ("open", " --while-active meshd.service")]
)
def test_sync_reinstalls_rules_only_while_meshd_runs_in_open_mode(mode: str, gate: str) -> None:
    text = sync_service(UnitOptions(fail_mode=mode))
    assert "ExecCondition" not in text  # checked by meshd sync under the rules lock instead
    starts = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert starts == [f"ExecStart=/opt/meshd/bin/meshd sync --config /etc/meshd/meshd.toml{gate}"]
    assert "User=" not in text  # root: iptables and /etc/hosts


def test_sync_path_watches_the_pushed_registry() -> None:
    lines = sync_path().splitlines()
    assert "PathChanged=/var/lib/meshd/registry.json" in lines
    assert "Unit=meshd-sync.service" in lines and "WantedBy=paths.target" in lines
