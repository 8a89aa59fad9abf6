"""meshctl join / leave / status on real hosts (systemd, sshd, iptables), end to end.

Three testbed hosts run the sample apps web -> api -> db as systemd units;
meshctl joins them over SSH exactly as an operator would (in-process CLI,
real paramiko, real host keys). Checks are made from outside: what the hosts'
systemd and iptables say, what the apps received, what crossed the bridge.
The tests run in file order and build on each other; the hosts are reset
afterwards.
"""

from __future__ import annotations

import functools
import io
import json
import re
import secrets
import shlex
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from meshctl import bundle as bundles
from meshctl import demo
from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.cli.app import run
from meshctl.cli.context import AppContext
from meshctl.provision.apply import APPLY_RULES, Applier
from meshctl.testbed import Testbed, TestbedHost
from meshctl.testbed.keys import known_hosts_entry
from meshctl.transport import SshTransport, Target
from meshctl.workspace import Workspace
from meshd.errors import ProvisionError
from tests import wire
from tests.meshd.onhost import ok, reset
from tests.poll import until

pytestmark = pytest.mark.testbed

PASSPHRASE = "an end-to-end passphrase"
MANAGED = "/opt/meshd/bin/meshd /etc/meshd/* /etc/systemd/system/meshd*"
SNAPSHOT = r"""
iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo @@ip6tables; ip6tables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo @@units; systemctl list-unit-files --no-legend --no-pager | sort
echo @@users; getent passwd; getent group
echo @@hosts; cat /etc/hosts
echo @@routes; ip route show table all
echo @@files; find /etc /opt /usr/local /var/lib /root /run -xdev \
  \( -path /var/lib/systemd -o -path /var/lib/private -o -path /run/systemd -o -path /run/user \
     -o -path /run/log -o -path /run/sshd -o -path /run/utmp -o -path /run/credentials \) -prune \
  -o -printf '%p %m %u\n' | sort
echo @@sums; find /etc /opt /usr/local -xdev -type f ! -name '*-' -exec sha256sum {} + | sort
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Fleet:
    tb: Testbed
    ws: Path
    web: TestbedHost
    api: TestbedHost
    db: TestbedHost
    pristine_api: str

    def meshctl(self, *argv: str, workspace: Path | None = None) -> Result:
        return in_process(list(argv), workspace or self.ws, {"MESHCTL_CA_PASSPHRASE": PASSPHRASE})

    def ssh(self, host: TestbedHost) -> SshTransport:
        target = Target(host.address)
        return SshTransport(target, self.tb.known_hosts, key_file=self.tb.client_key)

    @property
    def key(self) -> str:
        return str(self.tb.client_key)

    def admin(self, host: TestbedHost, name: str) -> AdminEndpoint:
        return AdminEndpoint(name, host.address, 15000)


def in_process(argv: list[str], workspace: Path, environ: dict[str, str]) -> Result:
    """meshctl in this process, as the operator runs it (real SSH, real clock)."""
    out = Console(record=True, width=200, force_terminal=False, emoji=False)
    err = Console(record=True, width=200, force_terminal=False, stderr=True, emoji=False)
    context = AppContext(
        out=out, err=err, environ=environ, interactive=False, workspace_path=workspace
    )
    code = run(argv, context)
    return Result(code, out.export_text(), err.export_text())


def snapshot(host: TestbedHost) -> str:
    return ok(host, SNAPSHOT)


def python(host: TestbedHost, code: str, timeout: float = 30) -> str:
    return ok(host, f"python3 -c {shlex.quote(code)}", timeout).strip()


def fetch(host: TestbedHost, url: str, body: str | None = None) -> str:
    data = f", data={body!r}.encode()" if body is not None else ""
    return python(
        host,
        "import urllib.request as u; "
        f"print(u.urlopen(u.Request({url!r}{data}), timeout=10).read().decode())",
    )


@pytest.fixture(scope="module")
def fleet(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    web, api, db = testbed.hosts[:3]
    root = tmp_path_factory.mktemp("join") / "ws"
    f = Fleet(testbed, root, web, api, db, "")
    try:
        assert f.meshctl("init", str(root), "--name", "e2e").code == 0
        for app, host in zip(demo.APPS, (web, api, db), strict=True):
            with_transport(f, host, functools.partial(demo.install_app, app=app))
        f.pristine_api = snapshot(api)
        yield f
    finally:
        reset((web, api, db))


def with_transport(f: Fleet, host: TestbedHost, fn: Callable[[SshTransport], None]) -> None:
    transport = f.ssh(host)
    try:
        fn(transport)
    finally:
        transport.close()


def nat(host: TestbedHost) -> list[str]:
    """Both nat tables, as iptables-save and ip6tables-save print them (without counters)."""
    saved = ok(host, "iptables-save -t nat; echo @@ip6; ip6tables-save -t nat").splitlines()
    return [
        re.sub(r"\[\d+:\d+\]", "", line) for line in saved if line.startswith(("-A", ":", "@@"))
    ]


def test_join_three_hosts_in_one_command(fleet: Fleet, tmp_path: Path) -> None:
    for name, host, service in (
        ("web1", fleet.web, "web:8080"),
        ("api1", fleet.api, "api:8081"),
        ("db1", fleet.db, "db:8082"),
    ):
        assert fleet.meshctl("hosts", "add", name, host.address, "--service", service).code == 0
    joined = fleet.meshctl("join", "web1", "api1", "db1", "-i", fleet.key, "--accept-new-host-key")
    assert joined.code == 0, joined.out + joined.err
    assert joined.out.count(" joined ") == 3, joined.out
    for host in (fleet.web, fleet.api, fleet.db):
        assert ok(host, "systemctl is-active meshd").strip() == "active"
        for table in ("iptables", "ip6tables"):
            rules = ok(host, f"{table}-save -t nat")
            assert '--comment "meshd:output" -j MESHD_OUTPUT' in rules
        assert "api.mesh" in ok(host, "cat /etc/hosts")
        assert ok(host, "ls /tmp | grep -c meshctl || true").strip() == "0"  # staging cleaned
    marker = f"MARKER-{secrets.token_hex(12)}"
    control = f"CONTROL-{secrets.token_hex(12)}"
    with wire.capture(fleet.tb.subnets, tmp_path / "bridge.pcap") as pcap:
        python(  # a plaintext control packet: proves the capture sees payload bytes
            fleet.web,
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
            f".sendto(b'{control}', ('{fleet.api.address}', 9999))",
        )
        products = json.loads(fetch(fleet.web, "http://api.mesh:8081/products"))
        order = json.loads(
            fetch(fleet.web, "http://localhost:8080/order", json.dumps({"name": marker}))
        )
        # an app's IPv6 connection to api1's real address: the api app listens on IPv4 only,
        # so an answer can only have come over the mesh (and the marker must not show)
        products6 = json.loads(
            fetch(fleet.web, f"http://[{fleet.api.address6}]:8081/products?{marker}")
        )
    assert products["served_by"] == fleet.api.name and products["peer"] == "127.0.0.1"
    assert products6["served_by"] == fleet.api.name and products6["peer"] == "127.0.0.1"
    page = fetch(fleet.web, "http://localhost:8080/")  # the web app calls api.mesh itself
    assert f"web@{fleet.web.name} -> api@{fleet.api.name} -> db@{fleet.db.name}" in page
    assert products["db"]["served_by"] == fleet.db.name
    assert order["served_by"] == fleet.api.name, order
    assert marker in fetch(fleet.db, "http://localhost:8082/items")  # it reached db
    captured = pcap.read_bytes()
    assert control.encode() in captured, "the capture saw no payload at all"
    assert marker.encode() not in captured
    assert b"api.mesh" not in captured  # not even the Host header


def test_a_second_join_changes_nothing(fleet: Fleet) -> None:
    def state(host: TestbedHost) -> str:
        return ok(host, f"sha256sum {MANAGED}; systemctl show meshd -p MainPID -p NRestarts")

    before = [state(h) for h in (fleet.web, fleet.api, fleet.db)]
    again = fleet.meshctl("join", "--all", "-i", fleet.key)
    assert again.code == 0, again.out + again.err
    assert again.out.count(" converged ") == 3 and " joined " not in again.out, again.out
    assert [state(h) for h in (fleet.web, fleet.api, fleet.db)] == before
    dry = fleet.meshctl("join", "api1", "-i", fleet.key, "--dry-run")
    assert dry.code == 0 and "api1: nothing to do" in dry.out, dry.out


def test_an_upgrade_replaces_meshd_in_place(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A new bundle: unpacked next to the old one, meshd restarted on it, the old one pruned."""
    real_build = bundles.build

    def newer(target: bundles.Target, cache: Path, offline: bool = False) -> bundles.Bundle:
        current = real_build(target, cache, offline)
        path = tmp_path / "meshd-next.tar.gz"
        with tarfile.open(current.path) as old, tarfile.open(path, "w:gz") as new:
            for member in old.getmembers():
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
            marker = tarfile.TarInfo("lib/meshd/NEXT")
            new.addfile(marker, io.BytesIO(b""))
        return bundles.Bundle(path, f"{current.version}-next", target)

    def installed() -> list[str]:
        return sorted(ok(fleet.web, "ls /opt/meshd").split())

    before = installed()
    old_pid = ok(fleet.web, "systemctl show -p MainPID --value meshd").strip()
    monkeypatch.setattr(bundles, "build", newer)
    upgraded = fleet.meshctl("join", "web1", "-i", fleet.key)
    assert upgraded.code == 0, upgraded.out + upgraded.err
    (version,) = [v for v in before if v != "bin"]
    assert installed() == sorted(["bin", f"{version}-next"])  # the old version is gone
    assert ok(fleet.web, "systemctl show -p MainPID --value meshd").strip() != old_pid
    assert ok(fleet.web, "ls /opt/meshd/*/lib/meshd/NEXT").strip()  # running the new files
    assert json.loads(fetch(fleet.web, "http://api.mesh:8081/products"))["peer"] == "127.0.0.1"
    monkeypatch.undo()
    back = fleet.meshctl("join", "web1", "-i", fleet.key)  # and back to this checkout's meshd
    assert back.code == 0 and installed() == before, back.out + back.err


def test_dry_run_shows_the_unit_and_the_rules(fleet: Fleet) -> None:
    assert fleet.meshctl("hosts", "add", "db1", fleet.db.address, "--service", "db:8082").code == 0
    dry = fleet.meshctl("join", "db1", "-i", fleet.key, "--dry-run", "--fail-mode", "open")
    assert dry.code == 0, dry.out + dry.err
    assert "ExecStopPost=+/opt/meshd/bin/meshd rules remove" in dry.out  # the rendered unit
    assert "rules apply" in dry.out and " planned " in dry.out
    assert 'fail_mode = "closed"' in (fleet.ws / "hosts.toml").read_text()  # nothing saved
    scripted = fleet.meshctl("join", "db1", "-i", fleet.key, "--dry-run", "--json", "-s", "db:9")
    assert scripted.code == 0, scripted.err
    (host,) = json.loads(scripted.out)["hosts"]  # stdout is JSON and nothing else
    assert host["status"] == "planned" and host["facts"]["iptables"] in ("nft", "legacy")
    assert "ApplyRules" in [step["step"] for step in host["plan"]]  # a new port: new rules
    nouser = fleet.meshctl("join", "db1", "-i", fleet.key, "--dry-run", "-s", "db:8082:nobodyx")
    assert nouser.code == 5 and "db1: no user nobodyx on the host" in nouser.err, nouser.err


def test_status_shows_healthy_hosts(fleet: Fleet) -> None:
    status = fleet.meshctl("status", "--json", "-i", fleet.key)
    assert status.code == 0, status.out + status.err
    hosts = json.loads(status.out)["hosts"]
    assert [(h["host"], h["healthy"], h["meshd"], h["rules"]) for h in hosts] == [
        ("api1", True, "active", True),
        ("db1", True, "active", True),
        ("web1", True, "active", True),
    ]
    assert all(h["registry_version"] == json.loads(status.out)["registry_version"] for h in hosts)


def test_kill_9_restarts_meshd_and_closed_mode_leaks_nothing(fleet: Fleet, tmp_path: Path) -> None:
    def main_pid() -> str:
        return ok(fleet.web, "systemctl show -p MainPID --value meshd").strip()

    old = main_pid()
    marker = f"MARKER-{secrets.token_hex(12)}"
    attempt = (
        f"import socket\nfor address in ('api.mesh', '{fleet.api.address}'):\n"
        "    try:\n"
        "        s = socket.create_connection((address, 8081), timeout=2)\n"
        f"        s.sendall(b'{marker}'); print('sent')\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    with wire.capture(fleet.tb.subnets, tmp_path / "down.pcap") as pcap:
        # the attempts must fall while meshd is down: systemd restarts it after 1 s, which a
        # loaded machine may reach before they are done; then kill the new one and try again
        for _ in range(3):
            tried = ok(
                fleet.web,
                f"kill -9 {old}; python3 -c {shlex.quote(attempt)}; "
                "systemctl show -p MainPID --value meshd",
            )
            if tried.split("\n")[2] == "0":
                break

            def restarted(gone: str = old) -> bool:
                return main_pid() not in ("0", gone)

            until(restarted, 15, "meshd restarted")
            old = main_pid()
        else:
            pytest.fail(f"meshd restarted before the attempts were done, three times: {tried}")
    assert tried.split("\n")[:2] == ["refused ConnectionRefusedError"] * 2, tried
    assert marker.encode() not in pcap.read_bytes()
    took = until(
        lambda: (
            main_pid() not in ("0", old)
            and ok(fleet.web, "systemctl is-active meshd || true").strip() == "active"
        ),
        15,
        "meshd restarted",
    )
    assert took < 10
    assert json.loads(fetch(fleet.web, "http://api.mesh:8081/products"))["peer"] == "127.0.0.1"


def test_reboot_brings_meshd_and_rules_back_without_meshctl(fleet: Fleet) -> None:
    fleet.api.reboot()
    until(
        lambda: ok(fleet.api, "systemctl is-active meshd || true").strip() == "active",
        30,
        "meshd active after reboot",
    )
    assert "MESHD_INBOUND" in ok(fleet.api, "iptables-save -t nat")
    assert "10.255.0.0/16" in ok(fleet.api, "ip route show dev lo")

    def monotonic(unit: str, prop: str) -> int:
        return int(ok(fleet.api, f"systemctl show -p {prop} --value {unit}").strip())

    rules_done = monotonic("meshd-rules", "ActiveEnterTimestampMonotonic")
    network_up = monotonic("systemd-networkd", "InactiveExitTimestampMonotonic")
    assert 0 < rules_done <= network_up  # the rules were in before the network came up

    def flows() -> bool:
        status, out, _ = fleet.web.run(
            'python3 -c "import urllib.request as u; '
            "print(u.urlopen('http://api.mesh:8081/products', timeout=3).read().decode())\""
        )
        return status == 0 and fleet.api.name in out

    until(flows, 30, "traffic web -> api after the reboot")


def test_closed_mode_holds_from_boot_when_the_rules_cannot_be_made(
    fleet: Fleet, tmp_path: Path
) -> None:
    """api1's config breaks and api1 reboots: meshd-rules.service (and meshd) fail, and the
    rules the last apply wrote as a fallback hold the host closed: api1's connections to
    db1's real addresses are refused (not redirected to meshd's ports, which an unprivileged
    user holds meanwhile), nothing leaves in plaintext, SSH works, status says so.
    """
    ok(fleet.api, "echo 'broken = [' >> /etc/meshd/meshd.toml")
    fleet.api.reboot(degraded_ok=True)
    until(
        lambda: ok(fleet.api, "systemctl is-failed meshd-rules || true").strip() == "failed",
        30,
        "meshd-rules.service failed at boot",
    )
    marker = f"MARKER-{secrets.token_hex(12)}"
    attempt = (
        f"import socket\nfor address in ('{fleet.db.address}', '{fleet.db.address6}'):\n"
        "    try:\n"
        "        s = socket.create_connection((address, 8082), timeout=2)\n"
        f"        s.sendall(b'{marker}'); print('sent')\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    squat = (  # meshd is down: anyone may bind its redirect targets (ports >= 1024)
        "import select, socket\nsocks = []\n"
        "for family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "    s = socket.socket(family); s.bind((host, 15001)); s.listen(); socks.append(s)\n"
        "print('ready', flush=True)\n"
        "ready, _, _ = select.select(socks, [], [], 8)\n"
        "print('got' if ready else 'nothing', flush=True)\n"
    )
    squatter = (
        f"setpriv --reuid=65534 --regid=65534 --clear-groups python3 -c {shlex.quote(squat)} "
        "> /tmp/squatter.out 2>&1 &\n"
        "for _ in $(seq 50); do grep -q ready /tmp/squatter.out && break; sleep 0.1; done"
    )
    ok(fleet.api, squatter)
    with wire.capture(fleet.tb.subnets, tmp_path / "boot.pcap") as pcap:
        tried = python(fleet.api, attempt)
    assert tried.splitlines() == ["refused ConnectionRefusedError"] * 2, tried
    until(lambda: ok(fleet.api, "cat /tmp/squatter.out") != "ready\n", 15, "the squatter done")
    assert ok(fleet.api, "cat /tmp/squatter.out; rm /tmp/squatter.out") == "ready\nnothing\n"
    assert marker.encode() not in pcap.read_bytes()
    with_transport(fleet, fleet.api, lambda t: None)  # a new SSH connection still gets in
    status = fleet.meshctl("status", "--json", "-i", fleet.key)
    api1 = {h["host"]: h for h in json.loads(status.out)["hosts"]}["api1"]
    assert api1["rules_fallback"] and not api1["healthy"], api1
    shown = fleet.meshctl("status", "-i", fleet.key)
    assert "meshd-rules.service failed at boot" in shown.out, shown.out

    repaired = fleet.meshctl("join", "api1", "-i", fleet.key)  # rewrites the config
    assert repaired.code == 0, repaired.out + repaired.err
    again = fleet.meshctl("status", "--json", "-i", fleet.key)
    api1 = {h["host"]: h for h in json.loads(again.out)["hosts"]}["api1"]
    assert api1["healthy"] and not api1["rules_fallback"], api1
    assert json.loads(fetch(fleet.api, "http://db.mesh:8082/items"))["served_by"] == fleet.db.name


def test_a_broken_rule_set_is_rolled_back(fleet: Fleet) -> None:
    before = nat(fleet.db)
    transport = fleet.ssh(fleet.db)
    applier = Applier(transport, reconnect=lambda: fleet.ssh(fleet.db))
    try:
        applier.apply_rules_guarded(APPLY_RULES)  # the real rules: confirmed, kept
        assert transport.run("echo still here").stdout == "still here\n"  # session survived
        assert (
            ok(fleet.db, "systemctl list-timers --all --no-legend | grep -c rollback || true")[0]
            == "0"
        )
        # new SSH connections to port 22 go nowhere: the confirmation must fail
        broken = "iptables -t nat -I PREROUTING -p tcp --dport 22 -j REDIRECT --to-ports 1"
        applier.rollback_deadline = 4  # short, so the test does not wait 20 s for the timer
        with pytest.raises(ProvisionError, match="rolled back with the previous configuration"):
            applier.apply_rules_guarded(broken)
    finally:
        transport.close()
    assert nat(fleet.db) == before
    assert ok(fleet.db, "systemctl is-enabled meshd-rules").strip() == "enabled"  # not a 1st join
    assert ok(fleet.db, "ls /run | grep -c meshd-rules.prev || true").strip() == "0"
    with_transport(fleet, fleet.db, lambda t: None)  # reachable over a new connection


def test_open_fail_mode_takes_the_rules_away_while_meshd_is_down(fleet: Fleet) -> None:
    def rules() -> bool:
        return "MESHD_OUTPUT" in ok(fleet.db, "iptables-save -t nat")

    opened = fleet.meshctl("join", "db1", "-i", fleet.key, "--fail-mode", "open")
    assert opened.code == 0, opened.out + opened.err
    assert rules()
    ok(fleet.db, "systemctl stop meshd")
    assert not rules()  # open: traffic goes around a stopped meshd
    # a registry sync while meshd is down (as after a push that raced the stop) leaves them out
    synced = ok(fleet.db, "systemctl start meshd-sync.service; journalctl -u meshd-sync -o cat")
    assert "meshd.service is not active, so nothing was applied" in synced
    assert not rules()
    ok(fleet.db, "systemctl start meshd")
    assert rules()
    closed = fleet.meshctl("join", "db1", "-i", fleet.key, "--fail-mode", "closed")
    assert closed.code == 0, closed.out + closed.err
    ok(fleet.db, "systemctl stop meshd")
    assert rules()  # closed: the rules stay, intercepted traffic fails instead of leaking
    ok(fleet.db, "systemctl start meshd")


def test_leave_restores_the_host_and_updates_the_others(fleet: Fleet) -> None:
    ok(fleet.api, "rm -rf /opt/meshd/*; systemctl kill -s KILL meshd")  # meshd broken for good
    until(
        lambda: ok(fleet.api, "systemctl is-active meshd || true").strip() != "active",
        10,
        "meshd failing",
    )
    left = fleet.meshctl("leave", "api1", "-i", fleet.key, "--json")
    assert left.code == 0, left.out + left.err
    others = {h["host"]: h for h in json.loads(left.out)["hosts"] if h["host"] != "api1"}
    assert sorted(others) == ["db1", "web1"]
    for other in others.values():
        assert other["status"] == "registry", other
        assert any(d.endswith("applied, rules and names follow") for d in other["done"]), other
    after = snapshot(fleet.api)
    assert after == fleet.pristine_api, _diff(fleet.pristine_api, after)
    again = fleet.meshctl("leave", fleet.api.address, "-i", fleet.key)  # harmless twice
    assert again.code == 0 and "nothing of meshd was left" in again.out, again.out + again.err
    assert snapshot(fleet.api) == fleet.pristine_api
    client = AdminClient.for_workspace(Workspace.load(fleet.ws))
    for host, name in ((fleet.web, "web1"), (fleet.db, "db1")):
        registry = client.get_document(fleet.admin(host, name), "registry")
        assert registry is not None and "api" not in registry["services"]
        # meshctl waited for the others' rules and names to follow: no polling here
        assert "api.mesh" not in ok(host, "cat /etc/hosts")
        assert fleet.api.address not in ok(host, "iptables-save -t nat")
    assert "[hosts.api1]" not in (fleet.ws / "hosts.toml").read_text()


def test_an_unreachable_host_fails_alone_and_sudo_works(fleet: Fleet) -> None:
    """api1 joins again, this time as a non-root user through sudo, next to a dead host."""
    ok(
        fleet.api,
        "useradd -m -s /bin/sh ops && install -d -m 700 -o ops -g ops ~ops/.ssh && "
        "install -m 600 -o ops -g ops /root/.ssh/authorized_keys ~ops/.ssh/ && "
        "echo 'ops ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/ops",
    )
    ghost = fleet.tb.subnet.rsplit(".", 1)[0] + ".250"
    assert fleet.meshctl("hosts", "add", "ghost", ghost, "--service", "ghost:9999").code == 0
    add = fleet.meshctl("hosts", "add", "api1", f"ops@{fleet.api.address}", "-s", "api:8081")
    assert add.code == 0
    no_sudo = fleet.meshctl("join", "api1", "-i", fleet.key)
    assert no_sudo.code == 5 and "pass --sudo" in no_sudo.err, no_sudo.err
    both = fleet.meshctl(
        "join", "api1", "ghost", "-i", fleet.key, "--sudo", "--connect-timeout", "2"
    )
    assert both.code == 8, both.out + both.err  # partial
    assert " joined " in both.out and " failed " in both.out
    assert f"{ghost}:22" in both.err
    assert ok(fleet.api, "systemctl is-active meshd").strip() == "active"
    assert "api.mesh" in ok(fleet.web, "cat /etc/hosts")  # meshctl waited for web to follow
    assert (
        fleet.api.name in json.loads(fetch(fleet.web, "http://api.mesh:8081/products"))["served_by"]
    )
    forgot = fleet.meshctl("leave", "ghost", "--forget-unreachable", "--connect-timeout", "2")
    assert forgot.code == 0, forgot.out + forgot.err
    assert "[hosts.ghost]" not in (fleet.ws / "hosts.toml").read_text()


def test_unknown_and_changed_host_keys_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    ws = tmp_path / "other"
    assert fleet.meshctl("init", str(ws), "--name", "other").code == 0
    assert fleet.meshctl("hosts", "add", "x", fleet.db.address, workspace=ws).code == 0
    unknown = fleet.meshctl("join", "x", "-i", fleet.key, workspace=ws)
    assert unknown.code == 4, unknown.out + unknown.err
    assert f"unknown host key for {fleet.db.address}: ssh-ed25519 SHA256:" in unknown.err
    assert "--accept-new-host-key" in unknown.err
    impostor = (fleet.web.dir / "ssh_host_ed25519_key.pub").read_text()
    (ws / "known_hosts").write_text(known_hosts_entry(fleet.db.address, impostor))
    changed = fleet.meshctl("join", "x", "-i", fleet.key, "--accept-new-host-key", workspace=ws)
    assert changed.code == 4, changed.out + changed.err
    assert f"host key of {fleet.db.address} changed" in changed.err
    assert f"meshctl hosts forget {fleet.db.address}" in changed.err


def test_a_host_whose_names_lag_a_push_is_a_failure_until_its_sync_runs(fleet: Fleet) -> None:
    """web1's registry watcher is stopped: the push it takes is a failure naming what to do, and
    so is every later run of meshctl until web1's rules and names follow. (Last: it leaves
    db1 with one more service.)"""
    ok(fleet.web, "systemctl stop meshd-sync.path")  # pushes no longer start meshd-sync
    try:
        bumped = fleet.meshctl(
            "join", "db1", "-i", fleet.key, "-s", "db:8082", "-s", "cache:6379", "--json"
        )
        assert bumped.code == 8, bumped.out + bumped.err  # partial: web1's push failed
        hosts = {h["host"]: h for h in json.loads(bumped.out)["hosts"]}
        assert hosts["db1"]["status"] == "joined" and "error" not in hosts["db1"]
        assert "error" not in hosts["api1"]
        error = hosts["web1"]["error"]
        assert "names did not follow within 15s" in error["message"], error
        assert "systemctl start meshd-sync.service" in error["hint"], error
        assert "cache.mesh" in ok(fleet.api, "cat /etc/hosts")  # the others did follow
        assert "cache.mesh" not in ok(fleet.web, "cat /etc/hosts")
        again = fleet.meshctl("join", "db1", "-i", fleet.key)  # nothing new to push
        assert again.code == 8 and "did not follow since it was pushed" in again.err, again.err
    finally:
        ok(fleet.web, "systemctl start meshd-sync.path")
    ok(fleet.web, "systemctl start meshd-sync.service")  # what the hint says
    assert "cache.mesh" in ok(fleet.web, "cat /etc/hosts")
    fixed = fleet.meshctl("join", "db1", "-i", fleet.key)
    assert fixed.code == 0, fixed.out + fixed.err


def _diff(a: str, b: str) -> str:
    import difflib  # noqa: PLC0415

    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm=""))
