"""mesh.toml parsing: every problem names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import toml

from meshctl.config import DefaultsConfig, MeshConfig, duration_text
from meshd.errors import ConfigError
from meshd.schema import parse_duration

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
        (
            _with("defaults", "leaf_lifetime", "59s"),
            "mesh.toml: defaults.leaf_lifetime: must be from 1m to 90d, got '59s'",
        ),
        (_with("defaults", "leaf_lifetime", "91d"), "from 1m to 90d, got '91d'"),
        (
            _with("defaults", "leaf_lifetime", "soon"),
            "defaults.leaf_lifetime: 'soon' is not a duration",
        ),
        (_with("defaults", "leaf_lifetime", 24), "defaults.leaf_lifetime: expected str"),
        (
            _with("defaults", "issuer_lifetime", "9m"),
            "defaults.issuer_lifetime: must be from 10m to 365d, got '9m'",
        ),
        (_with("defaults", "issuer_lifetime", "366d"), "from 10m to 365d, got '366d'"),
        (
            {**GOOD, "defaults": {"leaf_lifetime": "1h", "leaf_lifetime_hours": 2}},
            "mesh.toml: defaults.leaf_lifetime_hours: set leaf_lifetime or the older "
            "leaf_lifetime_hours, not both",
        ),
    ],
)
def test_invalid(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MeshConfig.from_dict(doc, "mesh.toml")


@pytest.mark.parametrize(
    ("defaults", "leaf", "issuer"),
    [
        ({}, 86400, 30 * 86400),
        ({"leaf_lifetime": "1m"}, 60, 30 * 86400),
        ({"leaf_lifetime": "1h30m", "issuer_lifetime": "10m"}, 5400, 600),
        ({"leaf_lifetime": "90d", "issuer_lifetime": "365d"}, 90 * 86400, 365 * 86400),
        ({"leaf_lifetime_hours": 48}, 48 * 3600, 30 * 86400),  # an older workspace still reads
        ({"leaf_lifetime_hours": 1, "issuer_lifetime": "7d"}, 3600, 7 * 86400),
    ],
)
def test_lifetimes(defaults: dict[str, Any], leaf: int, issuer: int) -> None:
    config = MeshConfig.from_dict({**GOOD, "defaults": defaults}, "mesh.toml")
    assert (config.defaults.leaf_lifetime, config.defaults.issuer_lifetime) == (leaf, issuer)


def test_written_as_durations_and_never_the_old_key() -> None:
    old = MeshConfig.from_dict({**GOOD, "defaults": {"leaf_lifetime_hours": 36}}, "m")
    written = old.to_toml_dict()["defaults"]
    assert (written["leaf_lifetime"], written["issuer_lifetime"]) == ("36h", "30d")
    assert "leaf_lifetime_hours" not in written


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "24h"), (3600, "1h"), (60, "1m"), (5400, "1h30m"), (2 * 86400, "2d"), (90, "1m30s")],
)
def test_duration_text_reads_back(seconds: int, text: str) -> None:
    assert duration_text(seconds) == text
    assert parse_duration(text) == seconds


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
