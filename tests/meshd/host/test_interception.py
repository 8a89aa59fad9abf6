"""``meshd rules``: the rule set derived from config + registry, applied for real in a netns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.config import MeshdConfig
from meshd.host.interception import fallback_marker, filter_created
from meshd.host.registryfiles import effective_registry, synced_version
from meshd.registry import Registry
from meshd.rules import V4, V6, fingerprint, ruleset
from tests.meshd import configs

MESHD = str(Path(sys.executable).with_name("meshd"))
CONFIG = (
    configs.minimal("api1")
    + """[interception]
meshd_user = "65534"
ssh_ports = [22, 2222]
rules_record = "@RECORD@"
fallback_rules = "@FALLBACK@"
[[services]]
name = "api"
port = 8080
[[services]]
name = "reports"
port = 8081
outbound = "127.0.0.1:15101"
run_as = "65533"
"""
)
REGISTRY = {
    "version": 3,
    "services": {
        "api": {
            "vip": "10.255.0.1",
            "port": 8080,
            "endpoints": [
                {"host": "api1", "address": "10.0.0.11", "port": 8080},
                {"host": "api2", "address": "10.0.0.12", "port": 8080},
            ],
        },
        "db": {
            "vip": "10.255.0.2",
            "port": 5432,
            "endpoints": [{"host": "db1", "address": "10.0.0.20", "port": 5432}],
        },
    },
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    config = CONFIG.replace("@RECORD@", str(tmp_path / "rules.sha256"))
    (tmp_path / "meshd.toml").write_text(config.replace("@FALLBACK@", str(tmp_path / "fallback")))
    (tmp_path / "registry.json").write_text(json.dumps(REGISTRY))
    return tmp_path / "meshd.toml"


def test_ruleset_from_config_and_registry(config_path: Path) -> None:
    config = MeshdConfig.load(config_path)
    rules = ruleset(config, Registry.from_dict(REGISTRY, "registry"))
    assert sorted(rules.remote_endpoints) == [
        ("10.0.0.12", 8080),
        ("10.0.0.20", 5432),
    ]  # not our own
    assert rules.ssh_ports == (22, 2222) and rules.meshd_user == "65534"
    assert [(s.port, s.run_as, s.outbound_port) for s in rules.services] == [
        (8080, None, None),
        (8081, "65533", 15101),
    ]


def test_run_as_needs_an_outbound_listener(tmp_path: Path) -> None:
    from meshd.errors import ConfigError  # noqa: PLC0415

    broken = CONFIG.replace('outbound = "127.0.0.1:15101"\n', "")
    (tmp_path / "m.toml").write_text(broken)
    with pytest.raises(ConfigError, match=r"services\[1\]\.run_as: needs an outbound listener"):
        MeshdConfig.load(tmp_path / "m.toml")


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
        pytest.skip("needs root and iptables")
    name = f"mdint{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(ns: str, *argv: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _ours(saved: str) -> list[str]:
    return [line for line in saved.splitlines() if "MESHD" in line]


def test_meshd_rules_apply_remove_for_real(netns: str, config_path: Path) -> None:
    before = {t: _in(netns, f"{t}-save", "-t", "nat") for t in ("iptables", "ip6tables")}
    (config_path.parent / "registry.json").write_text(json.dumps(REGISTRY6))
    assert (
        _in(netns, MESHD, "rules", "apply", "--config", str(config_path)).strip()
        == "meshd rules applied"
    )
    once, once6 = (_in(netns, f"{t}-save", "-t", "nat") for t in ("iptables", "ip6tables"))
    config = MeshdConfig.load(config_path)
    record = config.interception.rules_record
    assert record.read_text().strip() == fingerprint(ruleset(config, effective_registry(config)))
    assert "-A MESHD_OUTPUT -d 10.0.0.20/32 -p tcp -m tcp --dport 5432 -j MESHD_REDIRECT" in once
    assert "--sport 2222 -m owner --uid-owner 0 -j RETURN" in once and "--uid-owner 65533" in once
    assert f"-A MESHD_OUTPUT -d {PEER6}/128 -p tcp -m tcp --dport 8080 -j MESHD_REDIRECT" in once6
    assert "--sport 2222 -m owner --uid-owner 0 -j RETURN" in once6 and "10.255" not in once6
    assert "-j REDIRECT --to-ports 15006" in once6
    assert "10.255.0.0/16" in _in(netns, "ip", "route", "show", "dev", "lo")
    fallback = config.interception.fallback_rules
    assert fallback is not None and fallback.stat().st_mode & 0o777 == 0o700
    assert f"{PEER6}/128" in fallback.read_text()
    _in(netns, MESHD, "rules", "apply", "--config", str(config_path))
    for table, saved in (("iptables", once), ("ip6tables", once6)):  # idempotent
        assert _ours(_in(netns, f"{table}-save", "-t", "nat")) == _ours(saved)
    assert (
        _in(netns, MESHD, "rules", "remove", "--config", str(config_path)).strip()
        == "meshd rules removed"
    )
    for table, saved in before.items():
        after = _in(netns, f"{table}-save", "-t", "nat")
        assert _ours(after) == [] and [x for x in after.splitlines() if x.startswith("-A")] == [
            x for x in saved.splitlines() if x.startswith("-A")
        ]
    assert "10.255.0.0/16" not in _in(netns, "ip", "route", "show", "dev", "lo")
    assert not record.exists()
    assert "no meshd rules" in _in(netns, MESHD, "rules", "remove", "--config", str(config_path))


def test_meshd_rules_show_needs_no_privileges(config_path: Path) -> None:
    shown = subprocess.run(
        [MESHD, "rules", "show", "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.startswith("*nat\n") and "REDIRECT --to-ports 15006" in shown


def test_meshd_sync_applies_rules_and_names_of_the_pushed_registry_then_notes_it(
    netns: str, config_path: Path
) -> None:
    """What meshd-sync.service runs after a push: rules and names of the newest registry."""
    state = config_path.parent / "state"
    state.mkdir(mode=0o700)
    text = config_path.read_text()
    mesh = '[mesh]\nregistry = "registry.json"\n'
    assert mesh in text
    config_path.write_text(text.replace(mesh, mesh + f'state_dir = "{state}"\n', 1))
    pushed = json.loads(json.dumps(REGISTRY))
    pushed["version"] = 5
    pushed["services"]["cache"] = {
        "vip": "10.255.0.9",
        "port": 6379,
        "endpoints": [{"host": "cache1", "address": "10.0.0.30", "port": 6379}],
    }
    (state / "registry.json").write_text(json.dumps(pushed))
    hosts = config_path.parent / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    config = MeshdConfig.load(config_path)
    assert synced_version(config) is None  # never synced
    try:
        out = _in(netns, MESHD, "sync", "--config", str(config_path), "--hosts-file", str(hosts))
        assert "registry version 5" in out
        saved = _in(netns, "iptables-save", "-t", "nat")
        assert "-A MESHD_OUTPUT -d 10.0.0.30/32 -p tcp -m tcp --dport 6379" in saved  # pushed one
        assert "10.255.0.9\tcache.mesh\n" in hosts.read_text()
        assert hosts.read_text().startswith("127.0.0.1 localhost\n")
        assert synced_version(config) == 5
        assert sorted(p.name for p in state.iterdir()) == [
            "registry.json"
        ]  # not in the watched dir
    finally:
        _in(netns, MESHD, "rules", "remove", "--config", str(config_path))
    assert synced_version(config) is None  # the rules are gone, so is the note


# --- the rules lock ---------------------------------------------------------------------------


def _fake_systemctl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A ``systemctl`` first on PATH whose ``is-active`` answers with the code in a file."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    answer = tmp_path / "is-active-code"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\n[ "$1" = is-active ] || exit 1\nexit "$(cat {answer})"\n')
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, answer


def _meshd_in(netns: str, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, MESHD, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_rules_apply_waits_for_the_rules_lock(netns: str, config_path: Path) -> None:
    """A rules command never works from an iptables-save or a config another writer changes."""
    from meshd.host.interception import rules_lock  # noqa: PLC0415

    config = MeshdConfig.load(config_path)
    try:
        with rules_lock(config):
            applying = _meshd_in(
                netns, dict(os.environ), "rules", "apply", "--config", str(config_path)
            )
            with pytest.raises(subprocess.TimeoutExpired):
                applying.wait(1.0)  # held off by the lock
            assert not _ours(_in(netns, "iptables-save", "-t", "nat"))
            # meanwhile the config changes (as meshctl's rollback restores it under the lock)
            config_path.write_text(config_path.read_text().replace("2222", "2022"))
        _, err = applying.communicate(timeout=30)
        assert applying.returncode == 0, err
        saved = _in(netns, "iptables-save", "-t", "nat")
        assert "--sport 2022" in saved and "2222" not in saved  # the config as it is now
        assert oct((config_path.parent / "meshd-rules.lock").stat().st_mode & 0o777) == "0o600"
    finally:
        _in(netns, MESHD, "rules", "remove", "--config", str(config_path))


def test_sync_checks_while_active_under_the_lock(
    netns: str, config_path: Path, tmp_path: Path
) -> None:
    """Open mode's race: meshd stops (its ExecStopPost removes the rules) while a sync starts.

    The sync found meshd active, then had to wait for the lock that the removal
    held; when it gets the lock meshd is no longer active, and it must not put
    the rules back. Checked before taking the lock (as an ExecCondition did), it would.
    """
    from meshd.host.interception import rules_lock  # noqa: PLC0415

    env, answer = _fake_systemctl(tmp_path)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    config = MeshdConfig.load(config_path)
    argv = ["sync", "--config", str(config_path), "--hosts-file", str(hosts)]
    answer.write_text("0")  # meshd is active when the sync starts
    try:
        with rules_lock(config):  # meshd's ExecStopPost removing the rules
            syncing = _meshd_in(netns, env, *argv, "--while-active", "meshd.service")
            with pytest.raises(subprocess.TimeoutExpired):
                syncing.wait(1.0)
            answer.write_text("3")  # ... and meshd is inactive once the removal is done
        out, err = syncing.communicate(timeout=30)
        assert syncing.returncode == 0, err
        assert "meshd.service is not active, so nothing was applied" in out
        assert not _ours(_in(netns, "iptables-save", "-t", "nat"))
        assert hosts.read_text() == "127.0.0.1 localhost\n"
        assert synced_version(config) is None

        # while meshd runs, the same command applies the rules and names and notes them
        answer.write_text("0")
        done = _meshd_in(netns, env, *argv, "--while-active", "meshd.service")
        out, err = done.communicate(timeout=30)
        assert done.returncode == 0, err
        assert "registry version 3" in out
        assert "MESHD_OUTPUT" in _in(netns, "iptables-save", "-t", "nat")
        assert "api.mesh" in hosts.read_text()
        assert synced_version(config) == 3
    finally:
        _in(netns, MESHD, "rules", "remove", "--config", str(config_path))


def test_rules_lock_gives_up_with_a_clear_error(config_path: Path) -> None:
    """A holder that never lets go is named, with what to run, instead of hanging the unit."""
    from meshd.errors import ProvisionError  # noqa: PLC0415
    from meshd.host.interception import lock_path, rules_lock  # noqa: PLC0415

    config = MeshdConfig.load(config_path)
    lock = lock_path(config)
    hold = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with (
            pytest.raises(ProvisionError, match="held the rules lock") as caught,
            rules_lock(config, wait=0.5),
        ):
            pass
        assert f"lslocks | grep {lock.name}" in (caught.value.hint or "")
    finally:
        holder.kill()
        holder.communicate()
    with rules_lock(config, wait=5):  # free again once the holder is gone
        pass


# --- what the rules catch, for real: two namespaces joined by a veth pair ----------------------

# a stand-in for meshd's listeners and the app: listens on each ADDRESS:PORT given, prints
# which one accepted the first connection and where that connection was headed
CATCH = """
import json, select, socket, sys
from meshd.netfacts import original_dst
socks = {}
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host.strip("[]"), int(port)))
    s.listen()
    socks[s] = spec
print("ready", flush=True)
ready, _, _ = select.select(list(socks), [], [], float(sys.argv[1]))
if not ready:
    print(json.dumps(None))
else:
    conn, _ = ready[0].accept()
    print(json.dumps([socks[ready[0]], original_dst(conn)]), flush=True)
"""
# connects from SOURCE_PORT (0: any) to ADDRESS:PORT, as the user running it
DIAL = """
import socket, sys
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
s.settimeout(3)
try:
    s.connect((host, port))
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""
HOST6, PEER6 = "fd6d:6573:1::1", "fd6d:6573:1::2"
HOST4, PEER4 = "10.0.0.11", "10.0.0.12"  # the host is api1 of REGISTRY; the peer is api2
REGISTRY6 = json.loads(json.dumps(REGISTRY))
REGISTRY6["services"]["api"]["endpoints"][0]["ipv6"] = [HOST6]
REGISTRY6["services"]["api"]["endpoints"][1]["ipv6"] = [PEER6]


@pytest.fixture
def pair(netns: str) -> Iterator[tuple[str, str]]:
    """(host, peer): ``netns`` (where the rules go) and a second namespace, on one veth link."""
    peer = f"{netns}p"
    subprocess.run(["ip", "netns", "add", peer], check=True)
    try:
        _in(netns, "ip", "link", "add", "mdh", "type", "veth", "peer", "name", "mdp")
        _in(netns, "ip", "link", "set", "mdp", "netns", peer)
        for ns, dev, v4, v6 in ((netns, "mdh", HOST4, HOST6), (peer, "mdp", PEER4, PEER6)):
            _in(ns, "ip", "link", "set", "lo", "up")
            _in(ns, "ip", "addr", "add", f"{v4}/24", "dev", dev)
            _in(ns, "ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _in(ns, "ip", "link", "set", dev, "up")
        yield netns, peer
    finally:
        subprocess.run(["ip", "netns", "del", peer], check=False)


def _catch(ns: str, *listeners: str, wait: float = 5.0) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", CATCH, str(wait), *listeners]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
    return proc


def _caught(proc: subprocess.Popen[str]) -> object:
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return json.loads(out)


def _dial(ns: str, address: str, port: int, sport: int = 0, user: str | None = None) -> str:
    who = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return _in(ns, *who, sys.executable, "-c", DIAL, address, str(port), str(sport)).strip()


def _apply(ns: str, config_path: Path, registry: dict[str, object]) -> None:
    (config_path.parent / "registry.json").write_text(json.dumps(registry))
    _in(ns, MESHD, "rules", "apply", "--config", str(config_path))


def test_ipv6_plaintext_to_a_service_port_goes_to_the_inbound_listener(
    pair: tuple[str, str], config_path: Path
) -> None:
    """An app on [::]:8080 is not reached over IPv6 from outside: meshd's inbound twin gets it."""
    host, peer = pair
    _apply(host, config_path, REGISTRY)
    try:
        catch = _catch(host, "[::]:8080", "[::]:15006")  # the app, meshd's inbound listener
        assert _dial(peer, HOST6, 8080) == "connected"
        assert _caught(catch) == ["[::]:15006", [HOST6, 8080]]
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))
    assert "MESHD" not in _in(host, "ip6tables-save", "-t", "nat")


def test_ipv6_to_a_mesh_endpoint_goes_to_the_outbound_listener(
    pair: tuple[str, str], config_path: Path
) -> None:
    """An app's IPv6 connection to another host's endpoint reaches meshd's [::1] twin."""
    host, peer = pair
    _apply(host, config_path, REGISTRY6)
    try:
        far = _catch(peer, "[::]:8080")  # the endpoint itself: must not be reached
        catch = _catch(host, "[::1]:15001", "[::1]:15101")
        assert _dial(host, PEER6, 8080) == "connected"
        assert _caught(catch) == ["[::1]:15001", [PEER6, 8080]]
        catch = _catch(host, "[::1]:15001", "[::1]:15101")  # a run-as user: its own twin
        assert _dial(host, PEER6, 8080, user="65533") == "connected"
        assert _caught(catch) == ["[::1]:15101", [PEER6, 8080]]
        far.kill()
        assert far.communicate(timeout=5)[0] == ""  # it never accepted anything
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))


@pytest.mark.parametrize(
    ("sport", "user"),
    [(15000, None), (2222, "65532")],  # the admin port; an SSH port, from an unprivileged user
    ids=["admin-port", "ssh-port-unprivileged"],
)
def test_a_chosen_source_port_does_not_skip_interception(
    pair: tuple[str, str], config_path: Path, sport: int, user: str | None
) -> None:
    """Binding the admin port, or (without root) an SSH port, as source port changes nothing."""
    host, _ = pair
    _apply(host, config_path, REGISTRY)
    try:
        catch = _catch(host, "127.0.0.1:15001")
        assert _dial(host, PEER4, 8080, sport, user) == "connected"
        assert _caught(catch) == ["127.0.0.1:15001", [PEER4, 8080]]
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))


@pytest.mark.parametrize("table", ["absent", "in use"])
def test_a_failing_ipv6_restore_takes_the_ipv4_rules_out_again(
    netns: str, config_path: Path, tmp_path: Path, table: str
) -> None:
    """Nothing is half-applied: ip6tables-restore passes its --test, then fails for real.

    The IPv4 nat table goes back as it was saved (with someone else's rule in it), or,
    when there was none, loses what of ours went in.
    """
    if table == "in use":
        _in(
            netns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "9",
            "-j",
            "RETURN",
        )
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    real = shutil.which("ip6tables-restore")
    fake = bin_dir / "ip6tables-restore"
    fake.write_text(f'#!/bin/sh\nfor a; do [ "$a" = --test ] && exec {real} "$@"; done\nexit 4\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    before = _in(netns, "iptables-save", "-t", "nat")
    applying = _meshd_in(netns, env, "rules", "apply", "--config", str(config_path))
    _, err = applying.communicate(timeout=30)
    assert applying.returncode != 0 and "ip6tables-restore --noflush failed" in err, err
    assert "the IPv4 rules were taken out again" in err
    after = _in(netns, "iptables-save", "-t", "nat")
    assert _ours(after) == _ours(before) == []
    assert [x for x in after.splitlines() if x.startswith("-A")] == [
        x for x in before.splitlines() if x.startswith("-A")
    ]
    assert not MeshdConfig.load(config_path).interception.rules_record.exists()


# what a squatter binds while meshd is down or does not serve IPv6: meshd's redirect targets
# (ports >= 1024, so any local user may), and the apps' own service ports
SQUAT4 = ("127.0.0.1:15001", "127.0.0.1:15101", "0.0.0.0:15006")
SQUAT6 = ("[::1]:15001", "[::1]:15101", "[::]:15006")
REFUSED = "ConnectionRefusedError"


def _ipv6_off(config_path: Path) -> None:
    text = config_path.read_text()
    config_path.write_text(text.replace("[interception]", "[listen]\nipv6 = false\n[interception]"))


def test_the_fallback_script_rejects_without_meshd(
    pair: tuple[str, str], config_path: Path
) -> None:
    """What closed fail mode runs at boot when ``meshd rules apply`` fails: meshd is down, so
    what the rules catch is refused (TCP reset), never redirected to ports nobody owns now."""
    host, peer = pair
    _apply(host, config_path, REGISTRY6)
    config = MeshdConfig.load(config_path)
    script, marker = config.interception.fallback_rules, fallback_marker(config)
    assert script is not None and not marker.exists()
    _in(host, MESHD, "rules", "remove", "--config", str(config_path))
    config_path.write_text("broken")  # the config cannot be read any more: no matter
    try:
        _in(host, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "/bin/sh", str(script))
        assert marker.exists()  # meshctl status reports it
        assert "10.255.0.0/16" in _in(host, "ip", "route", "show", "dev", "lo")
        squatter = _catch(host, *SQUAT4, *SQUAT6, "0.0.0.0:8080", "[::]:8080", wait=4)
        far = _catch(peer, "0.0.0.0:8080", "[::]:8080", wait=4)  # the endpoint itself
        for address in ("10.255.0.1", PEER4, PEER6):  # a VIP, real endpoint addresses
            assert _dial(host, address, 8080) == REFUSED, address
            assert _dial(host, address, 8080, user="65533") == REFUSED, address
        assert _dial(peer, HOST4, 8080) == REFUSED  # a meshed service port, from outside
        assert _dial(peer, HOST6, 8080) == REFUSED
        assert _caught(squatter) is None and _caught(far) is None
        ssh = _catch(host, "0.0.0.0:22", "0.0.0.0:2222")
        assert _dial(peer, HOST4, 2222) == "connected"  # never SSH
        assert _caught(ssh) == ["0.0.0.0:2222", None]
        local = _catch(host, "127.0.0.1:8080")
        assert _dial(host, "127.0.0.1", 8080) == "connected"  # loopback is never caught
        assert _caught(local) == ["127.0.0.1:8080", None]
    finally:
        (config_path.parent / "meshd.toml").write_text(
            CONFIG.replace("@RECORD@", str(config.interception.rules_record)).replace(
                "@FALLBACK@", str(script)
            )
        )
        _in(host, MESHD, "rules", "apply", "--config", str(config_path))  # repaired
    try:
        assert not marker.exists()
        for table in ("iptables", "ip6tables"):  # meshd's redirects again, nothing rejected
            assert "MESHD" not in _in(host, f"{table}-save", "-t", "filter")
            assert "-j REDIRECT" in _in(host, f"{table}-save", "-t", "nat")
        _no_filter_table_of_ours(host, config_path)
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))


def _no_filter_table_of_ours(ns: str, config_path: Path) -> None:
    """The filter tables our rejects made are gone with them (iptables-save as it was)."""
    config = MeshdConfig.load(config_path)
    assert not any(filter_created(config, f).exists() for f in (V4, V6))
    if shutil.which("nft") and "nf_tables" in _in(ns, "iptables", "-V"):
        assert "filter" not in _in(ns, "nft", "list", "tables")


def test_ipv6_that_meshd_does_not_serve_is_refused_not_redirected(
    pair: tuple[str, str], config_path: Path
) -> None:
    """``[listen] ipv6 = false``: meshd binds no IPv6 twin, so the ip6tables rules reject what
    they catch; a redirect would hand it to whoever binds the twins' ports (any user)."""
    host, peer = pair
    _ipv6_off(config_path)
    _apply(host, config_path, REGISTRY6)
    try:
        squatter = _catch(host, *SQUAT6, "[::]:8080", wait=4)
        far = _catch(peer, "[::]:8080", wait=4)
        assert _dial(host, PEER6, 8080) == REFUSED
        assert _dial(host, PEER6, 8080, user="65533") == REFUSED
        assert _dial(peer, HOST6, 8080) == REFUSED  # the app on [::]:8080 is not reached
        assert _caught(squatter) is None and _caught(far) is None
        catch = _catch(host, "127.0.0.1:15001")  # IPv4 is meshd's as before
        assert _dial(host, PEER4, 8080) == "connected"
        assert _caught(catch) == ["127.0.0.1:15001", [PEER4, 8080]]
        assert "MESHD" not in _in(host, "ip6tables-save", "-t", "nat")
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))
    for table in ("iptables", "ip6tables"):
        for name in ("nat", "filter"):
            assert "MESHD" not in _in(host, f"{table}-save", "-t", name), (table, name)
    _no_filter_table_of_ours(host, config_path)


def test_an_endpoint_on_an_ssh_admin_or_mesh_port_is_left_out_and_reported(
    pair: tuple[str, str], config_path: Path
) -> None:
    """A registry cannot know this host's SSH ports: the rules leave such endpoints out (and
    never redirect connections to the SSH, admin and mesh ports), and say so."""
    host, peer = pair
    registry = json.loads(json.dumps(REGISTRY6))
    registry["services"]["ssh"] = {
        "vip": "10.255.0.3",
        "port": 2222,
        "endpoints": [
            {"host": "api2", "address": PEER4, "port": 2222, "ipv6": [PEER6]},
            {"host": "api3", "address": "10.0.0.13", "port": 15000},
        ],
    }
    (config_path.parent / "registry.json").write_text(json.dumps(registry))
    applied = subprocess.run(
        ["ip", "netns", "exec", host, MESHD, "rules", "apply", "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    try:
        for endpoint, why in (
            (f"{PEER4}:2222", "an SSH port of this host"),
            (f"[{PEER6}]:2222", "an SSH port of this host"),
            ("10.0.0.13:15000", "meshd's admin port on this host"),
        ):
            assert f"meshd rules: left out endpoint {endpoint}: {why}" in applied.stderr
        for table in ("iptables", "ip6tables"):
            saved = _in(host, f"{table}-save", "-t", "nat")
            assert "--dport 2222 -j MESHD_REDIRECT" not in saved
            assert "--dport 15000 -j MESHD_REDIRECT" not in saved
        for address in (PEER4, PEER6):
            catch = _catch(host, "127.0.0.1:15001", "[::1]:15001", wait=4)
            far = _catch(peer, "0.0.0.0:2222", "[::]:2222")
            assert _dial(host, address, 2222) == "connected"  # straight to the peer's SSH
            assert _caught(far) is not None and _caught(catch) is None
    finally:
        _in(host, MESHD, "rules", "remove", "--config", str(config_path))
