"""mesh.toml parsing: every problem names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import toml

from meshctl.config import DefaultsConfig, MeshConfig
from meshd.errors import ConfigError

GOOD: dict[str, Any] = {
    "mesh": {
        "name": "prod",
        "trust_domain": "prod.mesh",
        "operator": "alice",
        "ca_key_encrypted": True,
    }
}


def _with(section: str, key: str, value: Any) -> dict[str, Any]:
    doc = {k: dict(v) for k, v in GOOD.items()}
    doc.setdefault(section, {})[key] = value
    return doc


def test_roundtrip() -> None:
    config = MeshConfig("prod", "prod.mesh", "alice", True, DefaultsConfig(mesh_port=1443))
    assert MeshConfig.from_dict(toml.loads(toml.dumps(config.to_toml_dict())), "m") == config


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, r"mesh.toml: \[mesh\]: missing table"),
        ({"mesh": {"name": "prod"}}, "mesh.toml: mesh.trust_domain: missing field"),
        (_with("mesh", "trust_domain", "Prod"), "mesh.trust_domain: trust domain 'Prod'"),
        (_with("mesh", "ca_key_encrypted", "yes"), "mesh.ca_key_encrypted: expected bool"),
        (_with("defaults", "mesh_port", True), "defaults.mesh_port: expected int"),
        (
            _with("defaults", "admin_port", 70000),
            r"defaults.admin_port: 70000 is not a port number",
        ),
        (
            _with("defaults", "fail_mode", "ajar"),
            "defaults.fail_mode: 'ajar' is not one of open, closed",
        ),
        (_with("defaults", "mtls", "off"), "defaults.mtls"),
        (_with("defaults", "leaf_lifetime_hours", 0), "defaults.leaf_lifetime_hours"),
        (  # signing would refuse it at the first join, or overflow
            _with("defaults", "leaf_lifetime_hours", 10**30),
            "defaults.leaf_lifetime_hours: must be an integer from 1 to 2160",
        ),
        (_with("defaults", "leaf_lifetime_hours", 2161), "from 1 to 2160, got 2161"),
        (_with("defaults", "colour", "blue"), "defaults.colour: unknown field"),
    ],
)
def test_invalid(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MeshConfig.from_dict(doc, "mesh.toml")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[mesh]\nname = \n")
    with pytest.raises(ConfigError, match=r"mesh.toml: .*line 2"):
        MeshConfig.from_toml(path)


def test_a_file_nested_too_deeply_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[mesh]\nname = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"mesh.toml: nested too deeply to read"):
        MeshConfig.from_toml(path)
