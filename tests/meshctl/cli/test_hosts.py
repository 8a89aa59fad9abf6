"""``meshctl hosts forget``: the command the changed-host-key error points to."""

from __future__ import annotations

from pathlib import Path

import paramiko

from meshctl.cli.errors import ExitCode
from meshctl.transport import fingerprint
from tests.meshctl.cli.helpers import meshctl

PASS = {"MESHCTL_CA_PASSPHRASE": "correct horse battery"}


def test_forget_removes_only_that_host(tmp_path: Path) -> None:
    ws = tmp_path / "mesh"
    assert meshctl("init", str(ws), env=PASS).code == 0
    keys = paramiko.HostKeys()
    key_a = paramiko.ECDSAKey.generate()
    key_b = paramiko.ECDSAKey.generate()
    keys.add("10.0.0.11", key_a.get_name(), key_a)
    keys.add("[10.0.0.12]:2222", key_b.get_name(), key_b)
    keys.save(str(ws / "known_hosts"))

    result = meshctl("-w", str(ws), "hosts", "forget", "10.0.0.11")
    assert result.code == 0, result.err
    assert fingerprint(key_a) in result.out
    left = paramiko.HostKeys(str(ws / "known_hosts"))
    assert left.lookup("10.0.0.11") is None
    assert left.lookup("[10.0.0.12]:2222") is not None
    assert (ws / "known_hosts").stat().st_mode & 0o777 == 0o600

    again = meshctl("-w", str(ws), "hosts", "forget", "10.0.0.11")
    assert again.code == ExitCode.CONFIG
    assert "no host key pinned for 10.0.0.11" in again.err and "[HOST]:PORT" in again.err


def test_forget_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    ws = tmp_path / "mesh"
    assert meshctl("init", str(ws), env=PASS).code == 0
    key = paramiko.ECDSAKey.generate()
    keys = paramiko.HostKeys()
    keys.add("10.0.0.11", key.get_name(), key)
    keys.save(str(ws / "known_hosts"))
    victim = ws / "victim.txt"
    victim.write_text("operator's file\n")
    (ws / ".known_hosts.tmp").symlink_to(victim)
    result = meshctl("-w", str(ws), "hosts", "forget", "10.0.0.11")
    assert result.code == 0, result.err
    assert victim.read_text() == "operator's file\n"
    assert paramiko.HostKeys(str(ws / "known_hosts")).lookup("10.0.0.11") is None
