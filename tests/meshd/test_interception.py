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
from meshd.registry import Registry
from meshd.rules import fingerprint, ruleset
from meshd.runtime import effective_registry, synced_version
from tests.meshd import configs

MESHD = str(Path(sys.executable).with_name("meshd"))
CONFIG = (
    configs.minimal("api1")
    + """[interception]
meshd_user = "65534"
ssh_ports = [22, 2222]
rules_record = "@RECORD@"
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
    (tmp_path / "meshd.toml").write_text(CONFIG.replace("@RECORD@", str(tmp_path / "rules.sha256")))
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
    before = _in(netns, "iptables-save", "-t", "nat")
    assert (
        _in(netns, MESHD, "rules", "apply", "--config", str(config_path)).strip()
        == "meshd rules applied"
    )
    once = _in(netns, "iptables-save", "-t", "nat")
    config = MeshdConfig.load(config_path)
    record = config.interception.rules_record
    assert record.read_text().strip() == fingerprint(ruleset(config, effective_registry(config)))
    assert "-A MESHD_OUTPUT -d 10.0.0.20/32 -p tcp -m tcp --dport 5432 -j MESHD_REDIRECT" in once
    assert "--sport 2222 -j RETURN" in once and "--uid-owner 65533" in once
    assert "10.255.0.0/16" in _in(netns, "ip", "route", "show", "dev", "lo")
    _in(netns, MESHD, "rules", "apply", "--config", str(config_path))
    assert _ours(_in(netns, "iptables-save", "-t", "nat")) == _ours(once)  # idempotent
    assert (
        _in(netns, MESHD, "rules", "remove", "--config", str(config_path)).strip()
        == "meshd rules removed"
    )
    after = _in(netns, "iptables-save", "-t", "nat")
    assert _ours(after) == [] and [x for x in after.splitlines() if x.startswith("-A")] == [
        x for x in before.splitlines() if x.startswith("-A")
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
    from meshd.interception import rules_lock  # noqa: PLC0415

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
    from meshd.interception import rules_lock  # noqa: PLC0415

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
    from meshd.interception import lock_path, rules_lock  # noqa: PLC0415

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
