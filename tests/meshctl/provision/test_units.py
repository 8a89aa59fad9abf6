"""Rendered systemd units are golden files, reviewed like code."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshctl.provision.units import UnitOptions, meshd_service, rules_service

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("mode", ["closed", "open"])
@pytest.mark.parametrize(
    ("name", "render"), [("meshd.service", meshd_service), ("meshd-rules.service", rules_service)]
)
def test_units_match_golden(mode: str, name: str, render: Callable[[UnitOptions], str]) -> None:
    text = render(UnitOptions(fail_mode=mode))
    golden = GOLDEN / f"{mode}-{name}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_closed_mode_never_removes_rules() -> None:
    for render in (meshd_service, rules_service):
        assert "rules remove" not in render(UnitOptions(fail_mode="closed"))
    assert "ExecStopPost=+/opt/meshd/bin/meshd rules remove" in meshd_service(
        UnitOptions(fail_mode="open")
    )
