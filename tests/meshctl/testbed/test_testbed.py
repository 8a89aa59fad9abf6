"""End to end: the session testbed's hosts are real, separate machines."""

from __future__ import annotations

import socket

import paramiko
import pytest

from meshctl.testbed import Testbed, TestbedHost

pytestmark = pytest.mark.testbed

UNIT = "tb-probe.service"
UNIT_TEXT = """\
[Unit]
Description=testbed probe

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def ok(host: TestbedHost, cmd: str) -> str:
    status, out, err = host.run(cmd)
    assert status == 0, f"{host.name}: {cmd}: {err}"
    return out.strip()


def test_every_host_runs_its_own_systemd(testbed: Testbed) -> None:
    assert len(testbed.hosts) >= 3
    init_pids = set()
    for host in testbed.hosts:
        assert host.exec(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
        assert ok(host, "cat /proc/1/comm") == "systemd"
        assert ok(host, "systemctl is-system-running") == "running"
        assert ok(host, "hostname") == host.name
        init_pids.add(host.init_pid())
    assert len(init_pids) == len(testbed.hosts)


def test_enabled_unit_survives_reboot_but_iptables_rules_do_not(testbed: Testbed) -> None:
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    try:
        ok(h1, f"cat > /etc/systemd/system/{UNIT} <<'EOF'\n{UNIT_TEXT}EOF")
        ok(h1, f"systemctl enable --now {UNIT}")
        ok(h1, "iptables -A INPUT -p tcp --dport 5555 -m comment --comment tbprobe -j ACCEPT")
        assert ok(h1, f"systemctl is-active {UNIT}") == "active"
        assert h2.run(f"systemctl is-active {UNIT}")[1].strip() != "active"
        assert h2.exec(["test", "-e", f"/etc/systemd/system/{UNIT}"], check=False).returncode == 1
        before = h1.init_pid()

        h1.reboot()

        assert h1.init_pid() != before
        assert ok(h1, f"systemctl is-active {UNIT}") == "active"
        assert "tbprobe" not in ok(h1, "iptables -S INPUT")
    finally:
        h1.exec(f"systemctl disable --now {UNIT}; rm -f /etc/systemd/system/{UNIT}", check=False)
        h1.exec("systemctl daemon-reload; iptables -F INPUT", check=False)


def test_ssh_reaches_every_host_with_its_pinned_key(testbed: Testbed) -> None:
    for host in testbed.hosts:
        with host.ssh() as client:
            transport = client.get_transport()
            assert transport is not None
            assert transport.get_remote_server_key() == host.host_key


def test_ssh_refuses_a_host_whose_key_does_not_match_the_pin(testbed: Testbed) -> None:
    target, other = testbed.hosts[0], testbed.hosts[1]
    client = paramiko.SSHClient()
    client.get_host_keys().add(target.address, "ssh-ed25519", other.host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException), client:
        client.connect(
            target.address,
            username="root",
            key_filename=str(testbed.client_key),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )


def test_hosts_reach_each_other_over_the_bridge(testbed: Testbed) -> None:
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    ok(h1, f"ping -c 1 -W 2 {h2.address}")
    banner = ok(
        h1,
        "python3 -c 'import socket; s = socket.create_connection"
        f'(("{h2.name}", 22), timeout=5); print(s.recv(64).decode())\'',
    )
    assert banner.startswith("SSH-2.0-OpenSSH")


def test_hosts_reach_each_other_and_the_controller_over_ipv6(testbed: Testbed) -> None:
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    assert h1.address6 in ok(h1, "ip -6 -o addr show host0 scope global")
    banner = ok(
        h1,
        "python3 -c 'import socket; s = socket.create_connection"
        f'(("{h2.address6}", 22), timeout=5); print(s.recv(64).decode())\'',
    )
    assert banner.startswith("SSH-2.0-OpenSSH")
    with socket.create_connection((h2.address6, 22), timeout=5) as s:  # from the root namespace
        assert s.recv(64).startswith(b"SSH-2.0-OpenSSH")


def test_reset_wipes_what_changed_on_the_host(testbed: Testbed) -> None:
    host = testbed.hosts[-1]
    ok(host, "echo hello > /root/tb-marker")
    assert (host.upper_dir / "root/tb-marker").read_text() == "hello\n"
    key_before, pid_before = host.host_key, host.init_pid()

    host.reset()

    assert host.init_pid() != pid_before
    assert not (host.upper_dir / "root/tb-marker").exists()
    assert host.exec(["test", "-e", "/root/tb-marker"], check=False).returncode == 1
    assert host.host_key == key_before
    assert ok(host, "systemctl is-system-running") == "running"
    assert host.address in ok(host, "ip -4 -o addr show host0")
