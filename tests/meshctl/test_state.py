"""The workspace's record of what was applied where: registry versions, joined hosts, inventory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshctl import state
from meshctl.config import MeshConfig
from meshctl.inventory import HostSpec, Inventory, ServiceSpec
from meshctl.workspace import HOSTS_HEADER, Workspace, init_workspace
from meshd.errors import ConfigError
from meshd.registry import IssuerRef, Registry, Revocation, Service
from tests.meshctl.helpers import NOW, TD

CONFIG = MeshConfig("t", TD, "alice", ca_key_encrypted=False)
WEB = (Service("web", "10.255.0.1", 8080),)
DB = (Service("db", "10.255.0.2", 5432),)


def workspace(tmp_path: Path) -> Workspace:
    return init_workspace(tmp_path / "ws", CONFIG, None, NOW)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_registry_version_moves_only_when_content_changes(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    first = state.versioned_registry(ws, WEB)
    assert first == Registry(1, WEB)
    state.record_registry(ws, first)
    assert state.versioned_registry(ws, tuple(WEB)) == first
    second = state.versioned_registry(ws, WEB + DB)
    assert second == Registry(2, DB + WEB)  # in name order
    state.record_registry(ws, second)
    assert state.versioned_registry(ws, WEB).version == 3  # back to old content: still new
    assert mode(ws.root / "applied" / "registry.json") == 0o600


def test_registry_version_moves_when_its_issuers_change(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    state.record_registry(ws, state.versioned_registry(ws, WEB))
    issuer = IssuerRef("web1", "10.0.0.11", 15000)
    with_issuer = state.versioned_registry(ws, WEB, [issuer])
    assert with_issuer == Registry(2, WEB, (issuer,))
    state.record_registry(ws, with_issuer)
    assert state.versioned_registry(ws, WEB, [issuer]).version == 2
    assert state.versioned_registry(ws, WEB).version == 3  # none left: a change too


def test_unrecorded_registry_keeps_its_version(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert state.versioned_registry(ws, WEB).version == 1
    assert state.versioned_registry(ws, WEB + DB).version == 1  # nothing recorded yet


def test_join_records_round_trip(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert state.joined(ws) == {}
    record = {"address": "10.0.0.11", "bundle_version": "v1", "registry_version": 2}
    state.record_join(ws, "web1", record)
    state.record_join(ws, "db1", {"address": "10.0.0.12"})
    assert state.joined(ws) == {"db1": {"address": "10.0.0.12"}, "web1": record}
    assert mode(ws.root / "applied" / "hosts" / "web1.json") == 0o600
    state.forget_host(ws, "web1")
    state.forget_host(ws, "never-joined")
    assert list(state.joined(ws)) == ["db1"]


def test_inventory_round_trip(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert state.load_inventory(ws) == Inventory()
    inventory = (
        Inventory()
        .with_host(
            HostSpec(
                "web1",
                "10.0.0.11",
                user="admin",
                port=2222,
                fail_mode="open",
                labels=(("zone", "a"),),
                services=(ServiceSpec("web", 8080, "www-data"), ServiceSpec("metrics", 9100)),
            )
        )
        .with_host(HostSpec("db1", "10.0.0.12"))
    )
    state.save_inventory(ws, inventory)
    assert state.load_inventory(ws) == inventory
    path = state.inventory_path(ws)
    assert path.read_text().startswith(HOSTS_HEADER)
    assert mode(path) == 0o600
    assert [p.name for p in ws.root.iterdir() if p.name.startswith(".hosts.toml.")] == []


def test_record_directories_are_private(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    state.record_join(ws, "web1", {})
    assert mode(ws.root / "applied") == 0o700
    assert mode(ws.root / "applied" / "hosts") == 0o700


def test_an_inventory_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    state.inventory_path(ws).write_text("[hosts.a]\nlabels = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"hosts\.toml: nested too deeply to read"):
        state.load_inventory(ws)


def test_revocations_round_trip_and_merge(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert state.revocations(ws) == {}
    first = Revocation("web1", (f"spiffe://{TD}/host/web1",), ("AB",), 100)
    assert state.record_revocation(ws, first) == first
    again = Revocation("web1", (f"spiffe://{TD}/host/web1",), ("CD",), 50)
    kept = state.record_revocation(ws, again)
    assert kept == Revocation("web1", first.ids, ("AB", "CD"), 100)
    assert state.revocations(ws) == {"web1": kept}
    assert mode(ws.root / "applied" / "revoked.json") == 0o600
    state.record_join(ws, "web1", {"address": "10.0.0.11"})  # the name joins again
    assert state.revocations(ws) == {"web1": kept}  # its ID stays revoked (join sets before)
    rejoined = Revocation("web1", kept.ids, kept.serials, 100, before=60)
    state.save_revocations(ws, [rejoined])
    assert state.revocations(ws) == {"web1": rejoined}


def test_a_document_version_moves_only_when_its_content_changes(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    first = state.versioned_document(ws, "trust", {"bundle_pem": "A"})
    assert first == {"bundle_pem": "A", "version": 1}
    state.record_document(ws, "trust", first)
    assert state.versioned_document(ws, "trust", {"bundle_pem": "A"})["version"] == 1
    assert state.versioned_document(ws, "trust", {"bundle_pem": "A+B"})["version"] == 2


def test_registry_version_moves_with_its_revocations(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    state.record_registry(ws, state.versioned_registry(ws, WEB))
    gone = Revocation("db1", (f"spiffe://{TD}/host/db1",), (), 100)
    assert state.versioned_registry(ws, WEB, revoked=[gone]) == Registry(2, WEB, (), (gone,))
