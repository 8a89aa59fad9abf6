"""SSH transport against real sshd on testbed hosts: pinning, refusals, run/put/get."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import paramiko
import pytest

from meshctl.testbed import Testbed, keys
from meshctl.transport import (
    FakeTransport,
    LocalTransport,
    Result,
    SshTransport,
    Target,
    check,
    fingerprint,
    pin,
    save_known_hosts,
)
from meshd.errors import ConnectError, ProvisionError


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("h1", Target("h1")),
        ("ops@h1", Target("h1", "ops")),
        ("ops@h1:2222", Target("h1", "ops", 2222)),
        ("10.0.0.1:22", Target("10.0.0.1")),
    ],
)
def test_target_parse(text: str, target: Target) -> None:
    assert Target.parse(text) == target


@pytest.mark.parametrize("text", ["", "h1:ssh", "ops@"])
def test_target_parse_refuses(text: str) -> None:
    with pytest.raises(ConnectError):
        Target.parse(text)


def test_check_names_host_and_step() -> None:
    with pytest.raises(ProvisionError, match="h1: install failed: progress / no space left"):
        check(Result(1, "", "progress\nno space left\n"), "install", "h1")
    restore = "iptables-restore: line 7 failed\nTry `iptables-restore -h' for more information.\n"
    with pytest.raises(ProvisionError, match=r"rules failed: iptables-restore: line 7 failed$"):
        check(Result(2, "", restore), "rules", "h1")  # the useless last line is dropped


def test_local_and_fake_transports(tmp_path: Path) -> None:
    local = LocalTransport()
    local.put(str(tmp_path / "f"), b"data", 0o600)
    assert local.get(str(tmp_path / "f")) == b"data" and local.get(str(tmp_path / "none")) is None
    assert local.run("echo hi").stdout == "hi\n"
    fake = FakeTransport(responses={"uname -m": Result(0, "x86_64\n", "")})
    assert fake.run("uname -m").stdout == "x86_64\n"
    assert fake.run("other").status == 127 and fake.commands == ["uname -m", "other"]


@pytest.mark.testbed
def test_unknown_key_refused_then_accepted_and_pinned(testbed: Testbed, tmp_path: Path) -> None:
    host = testbed.hosts[0]
    known = tmp_path / "known_hosts"
    with pytest.raises(ConnectError, match=r"unknown host key for .*SHA256:") as info:
        SshTransport(Target(host.address), known, key_file=testbed.client_key)
    assert fingerprint(host.host_key) in info.value.message
    assert "--accept-new-host-key" in (info.value.hint or "")
    assert not known.exists()
    ssh = SshTransport(Target(host.address), known, key_file=testbed.client_key, accept_new=True)
    try:
        assert ssh.run("hostname").stdout.strip() == host.name
        ssh.put("/root/meshctl-probe", b"probe", 0o600)
        assert ssh.get("/root/meshctl-probe") == b"probe"
        assert ssh.get("/root/none") is None
        assert host.exec(["stat", "-c", "%a", "/root/meshctl-probe"]).stdout.strip() == "600"
        ssh.run("rm /root/meshctl-probe")
    finally:
        ssh.close()
    assert host.address in known.read_text()
    SshTransport(Target(host.address), known, key_file=testbed.client_key).close()  # pinned now


@pytest.mark.testbed
def test_changed_key_refused_with_forget_hint(testbed: Testbed, tmp_path: Path) -> None:
    host, other = testbed.hosts[0], testbed.hosts[1]
    known = tmp_path / "known_hosts"
    keys = paramiko.HostKeys()
    keys.add(host.address, "ssh-ed25519", other.host_key)  # what we pinned is not what it offers
    keys.save(str(known))
    with pytest.raises(ConnectError, match=f"host key of {host.address} changed") as info:
        SshTransport(Target(host.address), known, key_file=testbed.client_key, accept_new=True)
    assert (
        info.value.hint
        == f"if that is expected (the host was reinstalled), run: meshctl hosts forget {host.address}"
    )


@pytest.mark.testbed
def test_auth_failure_and_unreachable_host(testbed: Testbed, tmp_path: Path) -> None:
    host = testbed.hosts[0]
    known = tmp_path / "known_hosts"
    stranger = tmp_path / "stranger"
    keys.write_keypair(stranger, "a key no host knows")
    with pytest.raises(ConnectError, match=f"root@{host.address}: authentication failed"):
        SshTransport(Target(host.address), known, key_file=stranger, accept_new=True)
    nobody = str(ipaddress.ip_network(testbed.subnet)[200])  # on our bridge, but no host there
    with pytest.raises(ConnectError, match=f"{nobody}:22: (no answer|cannot connect)"):
        SshTransport(Target(nobody), known, key_file=testbed.client_key, timeout=2)


def planted(directory: Path, name: str) -> Path:
    """A file of the operator's, and a link to it where meshctl might write: what it points at."""
    victim = directory / "victim.txt"
    victim.write_text("operator's file\n")
    victim.chmod(0o644)
    (directory / name).symlink_to(victim)
    return victim


def test_pin_never_writes_through_a_link_planted_beside_known_hosts(tmp_path: Path) -> None:
    victim = planted(tmp_path, ".known_hosts.tmp")
    known = tmp_path / "known_hosts"
    old, new = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    pin(known, "10.0.0.1", old)
    pin(known, "[10.0.0.2]:2222", new)
    assert victim.read_text() == "operator's file\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert not known.is_symlink() and known.stat().st_mode & 0o777 == 0o600
    pinned = paramiko.HostKeys(str(known))
    assert pinned.lookup("10.0.0.1")[old.get_name()] == old  # type: ignore[index]
    assert pinned.lookup("[10.0.0.2]:2222")[new.get_name()] == new  # type: ignore[index]
    leftovers = {p.name for p in tmp_path.iterdir()} - {"known_hosts", "victim.txt"}
    assert leftovers == {".known_hosts.tmp"}  # the planted link, untouched: no temporary left


def test_save_known_hosts_keeps_every_entry_as_paramiko_writes_it(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    key = paramiko.ECDSAKey.generate()
    original = (
        f"a.example,10.0.0.3 {key.get_name()} {key.get_base64()}\n"
        f"|1|c2FsdHNhbHRzYWx0c2FsdHNhbHQ=|aGFzaGhhc2hoYXNoaGFzaGhhc2g= "
        f"{key.get_name()} {key.get_base64()}\n"
    )
    known.write_text(original)
    save_known_hosts(known, paramiko.HostKeys(str(known)))
    assert known.read_text() == original
