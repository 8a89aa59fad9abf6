"""meshd's IPv6 twins: every listener the rules redirect to has one (real meshd on loopback).

ip6tables redirects what it catches to [::1]:PORT (locally made connections)
or [::]:PORT (arriving ones); meshd must be there, or be seen not to be.
The redirection itself is tested with real ip6tables in test_interception.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess

import pytest

from tests.meshd.harness import MESHD, Meshd, MeshNet


def _stats(net: MeshNet, meshd: Meshd) -> dict[str, object]:
    status, text = net.admin(meshd, "GET", "/stats")
    assert status == 200, text
    stats: dict[str, object] = json.loads(text)
    return stats


def test_each_redirect_target_has_an_ipv6_twin_that_refuses_plaintext(net: MeshNet) -> None:
    cli = '[[services]]\nname = "cli"\nport = 7000\noutbound = "127.0.0.1:0"\n'
    identity = net.pki.issue("b", "host/b", "svc/web", "svc/cli")
    b = net.start("b", services={"web": 9}, identity=identity, extra=cli)
    assert {"outbound/v6", "outbound:cli/v6", "inbound/v6"} <= set(b.ports)
    assert "upstream" not in " ".join(b.ports) and "mesh/v6" not in b.ports  # not redirected to
    stats = _stats(net, b)
    assert stats["ipv6"] == "served"
    listeners = stats["listeners"]
    assert isinstance(listeners, dict)
    assert listeners["inbound/v6"] == f"[::]:{b.ports['inbound/v6']}"
    assert listeners["outbound/v6"] == f"[::1]:{b.ports['outbound/v6']}"
    with socket.create_connection(("::1", b.ports["inbound/v6"]), timeout=5) as s:
        with contextlib.suppress(BrokenPipeError):
            s.sendall(b"hello")
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
    b.wait_log(r"refused plaintext connection from \[::1\]:\d+")


def test_ipv6_off_binds_no_twin_and_says_so(net: MeshNet) -> None:
    b = net.start("b", services={"web": 9})
    b.stop()
    net.procs.remove(b)
    config = b.config.read_text().replace("[listen]\n", "[listen]\nipv6 = false\n", 1)
    b.config.write_text(config)
    log = b.log.with_name("b-off.log")
    with log.open("wb") as out:
        proc = subprocess.Popen([MESHD, "run", "--config", str(b.config)], stdout=out, stderr=out)
    off = Meshd("b", b.config, log, proc)
    net.procs.append(off)
    ready = off.wait_log(r"meshd ready: .*", timeout=10)
    assert "/v6" not in ready
    off.wait_log(r"IPv6 is not served: off \(listen\.ipv6 = false\)")
    off.ports["admin"] = int(ready.split("admin=127.0.0.1:")[1].split(",")[0].split()[0])
    assert _stats(net, off)["ipv6"] == (  # what `meshd rules apply` makes of the same config
        "off (listen.ipv6 = false): the rules reject IPv6 connections to the mesh instead of "
        "redirecting them"
    )


@pytest.mark.parametrize(
    ("family", "host", "listener"),
    [(socket.AF_INET, "127.0.0.1", "outbound"), (socket.AF_INET6, "::1", "outbound/v6")],
    ids=["ipv4", "ipv6-twin"],
)
def test_a_taken_port_stops_meshd_with_one_clean_error(
    net: MeshNet, family: socket.AddressFamily, host: str, listener: str
) -> None:
    """A twin's port that someone else holds is no reason to run without it (the ip6tables
    rules would hand that someone the apps' IPv6 connections): meshd does not start, and
    says so in one line with a hint, as for an IPv4 port that is taken."""
    b = net.start("b")
    b.stop()
    with socket.socket(family) as squatter:
        if family == socket.AF_INET6:
            squatter.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        squatter.bind((host, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = b.config.read_text().replace(
            'outbound = "127.0.0.1:0"', f'outbound = "127.0.0.1:{port}"'
        )
        b.config.write_text(config)
        done = subprocess.run(
            [MESHD, "run", "--config", str(b.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-2:] == [
        f"meshd: error: cannot listen on {shown} ({listener}): Address already in use",
        "hint: is another meshd running, or the port taken?",
    ], done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr


def test_a_kernel_with_ipv6_but_no_usable_loopback_stops_meshd(net: MeshNet) -> None:
    """Only a kernel without IPv6 leaves the twins unbound (then there are no ip6tables rules);
    anywhere else the rules redirect IPv6 to them, so meshd refuses to run without them and
    says how to turn IPv6 off (the rules then reject it)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (a network namespace)")
    b = net.start("b")
    b.stop()
    ns = f"mdv6{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inside = ["ip", "netns", "exec", ns]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*inside, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"], check=True
        )
        done = subprocess.run(
            [*inside, MESHD, "run", "--config", str(b.config)],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert done.returncode == 1, done.stderr
    error, hint = done.stderr.splitlines()[-2:]
    assert error.startswith("meshd: error: cannot listen on [::1]:"), done.stderr
    assert error.endswith("(outbound/v6): Cannot assign requested address"), done.stderr
    assert "set [listen] ipv6 = false" in hint and "Traceback" not in done.stderr
