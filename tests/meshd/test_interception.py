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
