"""meshd's IPv6 twins: every listener the rules redirect to has one (real meshd on loopback).

ip6tables redirects what it catches to [::1]:PORT (locally made connections)
or [::]:PORT (arriving ones); meshd must be there, or be seen not to be.
The redirection itself is tested with real ip6tables in test_interception.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess

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
    assert str(_stats(net, off)["ipv6"]).startswith("off (listen.ipv6 = false): IPv6 connections")
