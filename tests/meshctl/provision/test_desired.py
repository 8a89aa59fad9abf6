"""The desired state of a joined host: meshd.toml (a golden file), files, rules."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from meshctl.provision import layout
from meshctl.provision.desired import desired_host, meshd_config
from meshd.config import MeshdConfig
from meshd.registry import Registry
from meshd.rules import fingerprint
from tests.meshctl.helpers import DB1, INVENTORY, MESH, WEB1

GOLDEN = Path(__file__).parent / "golden"


def parsed(text: str) -> MeshdConfig:
    return MeshdConfig.from_dict(tomllib.loads(text), layout.CONFIG, Path(layout.ETC))


def desired(ssh_port: int) -> str:
    registry = INVENTORY.registry(1, 15443)
    host = desired_host(MESH, WEB1, registry, "v1", b"", ssh_port)
    return host.file(layout.CONFIG).content.decode()


def test_meshd_config_matches_golden() -> None:
    text = meshd_config(MESH, WEB1, (22, 2222))
    golden = GOLDEN / "meshd.toml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_registry_file_matches_golden() -> None:
    """The registry file as hosts read it (meshd 0.1 on): a change here is a wire change."""
    inventory = INVENTORY.with_host(replace(DB1, labels=(("zone", "a"),)))
    registry = inventory.registry(3, 15443, {"web1": ("fd00::11",)})
    text = desired_host(MESH, WEB1, registry, "v1", b"", 22).file(layout.REGISTRY).content
    golden = GOLDEN / "registry.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_bytes(text)
    assert text == golden.read_bytes()
    assert Registry.from_dict(json.loads(text), layout.REGISTRY) == registry


def test_meshd_config_is_what_meshd_reads() -> None:
    config = parsed(meshd_config(MESH, WEB1, (22, 2222)))
    assert (config.identity.host, config.identity.trust_domain) == ("web1", "t.mesh")
    assert config.identity.key == Path(layout.KEY)
    assert config.listen.admin == ("10.0.0.11", MESH.defaults.admin_port)
    assert [(s.name, s.port, s.run_as, s.outbound) for s in config.services] == [
        ("web", 8080, None, None),
        ("admin", 9000, "www-data", ("127.0.0.1", 15101)),
    ]
    assert config.registry == Path(layout.REGISTRY)


def test_meshd_on_a_joined_host_takes_the_rules_lock_the_rollback_takes() -> None:
    """meshd derives its lock from its rules record; meshctl's scripts name it: the same file."""
    from meshd.host.interception import lock_path  # noqa: PLC0415

    config = parsed(meshd_config(MESH, WEB1, (22, 2222)))
    assert config.interception.rules_record == Path(layout.RULES_RECORD)
    assert lock_path(config) == Path(layout.RULES_LOCK)


@pytest.mark.parametrize(
    ("ssh_port", "ports"), [(2222, (22, 2222)), (22, (22,)), (8022, (22, 8022))]
)
def test_ssh_ports_keep_the_one_in_use_and_22(ssh_port: int, ports: tuple[int, ...]) -> None:
    assert parsed(desired(ssh_port)).interception.ssh_ports == ports


def test_desired_files_are_the_managed_files_but_key_and_cert() -> None:
    host = desired_host(MESH, WEB1, INVENTORY.registry(1, 15443), "v1", b"pem", 22)
    assert {f.path for f in host.files} | {layout.KEY, layout.CERT} == set(layout.MANAGED_FILES)
    assert host.file(layout.LAUNCHER).mode == 0o755
    assert f"{layout.OPT}/v1/lib" in host.file(layout.LAUNCHER).content.decode()
    assert host.file(layout.TRUST_BUNDLE).content == b"pem"


def test_rules_send_to_other_hosts_only() -> None:
    host = desired_host(MESH, WEB1, INVENTORY.registry(1, 15443), "v1", b"", 22)
    assert host.rules.remote_endpoints == (("10.0.0.12", 5432),)
    assert host.rules_fingerprint == fingerprint(host.rules)
    assert "--uid-owner www-data -j REDIRECT --to-ports 15101" in host.rules_document
