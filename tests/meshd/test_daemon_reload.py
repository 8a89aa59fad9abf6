"""A reload as SIGHUP runs it (``Daemon.reload``), in process: the edited file, or nothing.

A Daemon is built from real files (its listeners are never bound); its file is
edited and reloaded. What binds a socket (listen addresses, upstreams, a
service's outbound listener), the host name and the state directory are
refused, and the running config stays the very same object; the live parts
and the identity files (the host's own, checked before they are used) are
taken. tests/meshd/test_config_table.py holds the full table of
``restart_needed``; test_reload.py reloads running processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from meshd.config import MeshdConfig
from meshd.daemon import Daemon
from meshd.runtime import ReloadOutcome
from tests.meshd.tlsfixtures import TestPki

FILE = """[identity]
host = "web1"
trust_domain = "t.mesh"
cert = "web1.pem"
key = "web1.key"
bundle = "{bundle}"
[listen]
outbound = "127.0.0.1:15001"
mesh = "0.0.0.0:15443"
admin_socket = "unused.sock"
[mesh]
registry = "registry.json"
state_dir = "{state}"
[limits]
max_connections = 20000
[[services]]
name = "api"
port = 8080
run_as = "api"
outbound = "127.0.0.1:15101"
[[upstreams]]
listen = "127.0.0.1:16001"
service = "db"
"""
LISTENERS = "listen addresses or upstream listeners changed"


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # no systemd to tell of the reload
    pki = TestPki(tmp_path)
    pki.reissue(pki.issue("web1", "host/web1", "svc/api"), "web1-renewed")
    (tmp_path / "registry.json").write_text(json.dumps({"version": 1, "services": {}}))
    (tmp_path / "state").mkdir(mode=0o700)
    path = tmp_path / "meshd.toml"
    path.write_text(FILE.format(bundle=pki.bundle.name, state=tmp_path / "state"))
    return Daemon(path, MeshdConfig.load(path))


def reload_edited(daemon: Daemon, old: str, new: str) -> ReloadOutcome:
    text = daemon.config_path.read_text()
    assert old in text, old
    daemon.config_path.write_text(text.replace(old, new))
    anyio.run(daemon.reload)
    return daemon.rt.last_reload


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('mesh = "0.0.0.0:15443"', 'mesh = "0.0.0.0:15444"', LISTENERS),
        ("[listen]\n", '[listen]\nadmin = "10.0.0.5:15000"\n', LISTENERS),
        ('outbound = "127.0.0.1:15001"', 'outbound = "127.0.0.2:15001"', LISTENERS),
        ("[listen]\n", "[listen]\nipv6 = false\n", LISTENERS),
        ('"127.0.0.1:16001"', '"127.0.0.1:16002"', LISTENERS),
        ('"127.0.0.1:15101"', '"127.0.0.1:15102"', "a service's outbound listener changed"),
        ('host = "web1"', 'host = "web2"', "the host name changed"),
    ],
    ids=["mesh", "admin", "outbound", "ipv6", "upstream", "service-outbound", "host"],
)
def test_a_reload_that_changes_what_is_bound_is_refused(
    daemon: Daemon, old: str, new: str, problem: str
) -> None:
    running = daemon.rt.config
    outcome = reload_edited(daemon, old, new)
    print(f"\n{outcome}")
    assert (outcome.generation, outcome.ok, outcome.message) == (1, False, problem)
    assert daemon.rt.config is running


def test_a_reload_of_a_file_that_does_not_validate_names_it(daemon: Daemon) -> None:
    running = daemon.rt.config
    outcome = reload_edited(
        daemon, "[[upstreams]]", '[[services]]\nname = "api"\nport = 9090\n[[upstreams]]'
    )
    print(f"\n{outcome}")
    message = f"{daemon.config_path}: services[1].name: duplicate service 'api'"
    assert (outcome.ok, outcome.message) == (False, message)
    assert daemon.rt.config is running


@pytest.mark.parametrize(
    ("old", "new", "connections", "cert"),
    [
        ("max_connections = 20000", "max_connections = 100", 100, "web1.pem"),
        ("web1.pem", "web1-renewed.pem", 20000, "web1-renewed.pem"),
    ],
    ids=["limits", "cert-path"],
)
def test_a_reload_takes_the_live_parts_and_the_identity_files(
    daemon: Daemon, old: str, new: str, connections: int, cert: str
) -> None:
    outcome = reload_edited(daemon, old, new)
    print(f"\n{outcome}")
    assert (outcome.generation, outcome.ok) == (1, True), outcome.message
    assert daemon.rt.config == MeshdConfig.load(daemon.config_path)
    assert daemon.rt.config.limits.max_connections == connections
    assert daemon.rt.config.identity.cert.name == cert
