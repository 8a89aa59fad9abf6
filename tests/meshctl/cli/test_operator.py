"""The operator certificate: ``meshctl ca operator renew`` and the warning every command gives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from meshd.pki import load_certs
from tests.meshctl.cli.fakes import FakeMesh
from tests.meshctl.helpers import NOW

DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("age", "warned"),
    [
        (DAY, False),
        (59 * DAY, False),
        (61 * DAY, True),  # past 2/3 of 90 days
        (91 * DAY, True),  # expired: still the same one line
    ],
)
def test_every_command_warns_past_two_thirds(
    tmp_path: Path, age: dt.timedelta, warned: bool
) -> None:
    mesh = FakeMesh(tmp_path)
    mesh.clock = lambda: NOW + age
    shown = mesh.meshctl("ca", "show")
    assert shown.code == 0, shown.out + shown.err
    lines = [line for line in shown.err.splitlines() if "operator certificate" in line]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert lines[0].startswith("warning: the operator certificate ")
        assert lines[0].endswith("(past 2/3 of its life): run meshctl ca operator renew")


def test_renew_makes_a_new_key_and_certificate(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path)
    ws = mesh.ws
    old_key, old_cert = ws.operator_key.read_bytes(), load_certs(ws.operator_cert)[0]
    later = NOW + 61 * DAY
    mesh.clock = lambda: later
    done = mesh.meshctl("ca", "operator", "renew", "--json")
    assert done.code == 0, done.out + done.err
    cert = load_certs(ws.operator_cert)[0]
    assert cert.not_valid_after_utc == later + 90 * DAY
    assert cert.subject == old_cert.subject and cert.serial_number != old_cert.serial_number
    assert ws.operator_key.read_bytes() != old_key
    assert ws.operator_key.stat().st_mode & 0o777 == 0o600
    assert ws.operator_cert.stat().st_mode & 0o777 == 0o600
    assert done.json()["not_after"].startswith(f"{later + 90 * DAY:%Y-%m-%d}")
    after = mesh.meshctl("ca", "show")
    assert "operator certificate" not in after.err


def test_a_command_without_a_workspace_gives_no_operator_warning(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path)
    mesh.ws.operator_cert.unlink()
    done = mesh.meshctl("ca", "show")
    assert "operator certificate" not in done.err
