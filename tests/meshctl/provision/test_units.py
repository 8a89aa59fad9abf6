"""Rendered systemd units are golden files, reviewed like code."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshctl.provision import layout
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


def _exec_start(unit: str) -> str:
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


@pytest.mark.parametrize("applies", [True, False], ids=["apply-works", "apply-fails"])
def test_closed_mode_falls_back_to_the_last_applied_rules_at_boot(
    tmp_path: Path, applies: bool
) -> None:
    """meshd-rules.service, run for real with stand-ins for meshd and the fallback script.

    When ``meshd rules apply`` fails (a broken config, registry or bundle), the
    script that the last successful apply wrote puts those rules back with
    nothing of meshd, and the unit still fails, for status to show.
    """
    import shlex  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    meshd, fallback, ran = tmp_path / "meshd", tmp_path / "rules-fallback", tmp_path / "ran"
    meshd.write_text(f'#!/bin/sh\necho meshd "$@" >> {ran}\nexit {0 if applies else 1}\n')
    meshd.chmod(0o755)
    fallback.write_text(f"echo fallback >> {ran}\n")
    command = _exec_start(rules_service(UnitOptions(fail_mode="closed")))
    command = command.replace(layout.LAUNCHER, str(meshd)).replace(
        "/etc/meshd/rules-fallback", str(fallback)
    )
    done = subprocess.run(shlex.split(command), check=False)
    expected = ["meshd rules apply --config /etc/meshd/meshd.toml"] + (
        [] if applies else ["fallback"]
    )
    assert ran.read_text().splitlines() == expected
    assert done.returncode == (0 if applies else 1)


def test_open_mode_has_no_boot_fallback() -> None:
    command = _exec_start(rules_service(UnitOptions(fail_mode="open")))
    assert command == "/opt/meshd/bin/meshd rules apply --config /etc/meshd/meshd.toml"


@pytest.mark.parametrize("mode", ["closed", "open"])
@pytest.mark.parametrize(
    "line",
    [
        "UMask=0077",  # the renewed key and everything else meshd writes: its own alone
        "ProtectProc=invisible",
        "RemoveIPC=yes",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",  # a refused call fails and is logged, never a SIGSYS
        "StateDirectory=meshd",  # where renewal keeps its key: writable
        "ReadOnlyPaths=/etc/meshd",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    ],
)
def test_meshd_service_is_sandboxed(mode: str, line: str) -> None:
    """Each line lowers systemd-analyze's exposure (<= 2.0, test_units_testbed.py checks)."""
    assert line in meshd_service(UnitOptions(fail_mode=mode)).splitlines()


@pytest.mark.parametrize("setting", ["ProcSubset=", "PrivateNetwork=", "PrivateUsers="])
def test_meshd_service_keeps_what_a_proxy_needs(setting: str) -> None:
    """/proc/net/if_inet6 (IPv6 or not), the host's network, capabilities that work there."""
    assert setting not in meshd_service(UnitOptions(fail_mode="closed"))
