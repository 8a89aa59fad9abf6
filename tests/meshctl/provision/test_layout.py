"""meshctl's host layout and meshd agree on every path both use: one source, ``meshd.paths``."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.provision import layout
from meshd import cli, paths
from meshd.config import MeshdConfig
from meshd.host import hostnames
from meshd.host.interception import fallback_marker, filter_created, lock_path
from meshd.host.registryfiles import pushed_registry_path, synced_path
from meshd.rules import V4, V6
from meshd.store import DocumentStore

GOLDEN = Path(__file__).parent / "golden"
IDENTITY = {
    "host": "web1",
    "trust_domain": "t.mesh",
    "cert": "/c.pem",
    "key": "/k.pem",
    "bundle": "/b.pem",
}
SHARED = sorted(n for n, v in vars(paths).items() if n.isupper() and isinstance(v, str))


@pytest.mark.parametrize("name", SHARED)
def test_layout_names_meshds_paths_by_the_same_object(name: str) -> None:
    assert getattr(layout, name) is getattr(paths, name)


def test_meshd_derives_from_the_joined_config_what_meshctl_removes_and_reads() -> None:
    """What meshd computes from the meshd.toml join writes is where meshctl looks."""
    config = MeshdConfig.load(GOLDEN / "meshd.toml")
    derived = {
        layout.RULES_RECORD: config.interception.rules_record,
        layout.RULES_LOCK: lock_path(config),
        layout.SYNCED: synced_path(config),
        layout.FALLBACK_RAN: fallback_marker(config),
        layout.FILTER_CREATED: filter_created(config, V4),
        layout.FILTER6_CREATED: filter_created(config, V6),
        layout.PUSHED_REGISTRY: pushed_registry_path(config),
        layout.REGISTRY: config.registry,
        layout.STATE: config.state_dir,
        layout.ADMIN_SOCKET: config.listen.admin_socket,
        layout.CERT: config.identity.cert,
        layout.KEY: config.identity.key,
        layout.TRUST_BUNDLE: config.identity.bundle,
    }
    assert {k: str(v) for k, v in derived.items()} == {k: k for k in derived}
    assert config.interception.meshd_user == layout.USER
    removed = {layout.RULES_LOCK, layout.SYNCED, layout.FALLBACK_RAN, layout.FILTER_CREATED}
    assert removed <= set(layout.REMOVED_PATHS)


def test_meshds_own_defaults_are_the_layout() -> None:
    config = MeshdConfig.from_dict({"identity": IDENTITY}, "meshd.toml")
    assert str(config.interception.rules_record) == layout.RULES_RECORD
    assert str(config.listen.admin_socket) == layout.ADMIN_SOCKET
    assert str(cli.HOSTS_FILE) == str(hostnames.HOSTS) == layout.HOSTS_FILE


def test_the_store_keeps_a_pushed_registry_where_meshctl_watches(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path)
    store.register("registry", dict, lambda doc: None)
    store.put("registry", {"version": 3})
    written = tmp_path / Path(layout.PUSHED_REGISTRY).relative_to(layout.STATE)
    assert written.is_file()
