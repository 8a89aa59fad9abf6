"""``mesh.toml``: the workspace's settings, parsed once into frozen values.

Every problem is reported with the file and the field path, and nothing is
half-read: either the whole file is valid or a ConfigError is raised.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshd.errors import ConfigError
from meshd.identity import check_name, trust_domain_problem

FAIL_MODES = ("open", "closed")
MTLS_MODES = ("strict", "permissive")


@dataclass(frozen=True)
class DefaultsConfig:
    """Defaults that every joined host gets unless its inventory entry says otherwise."""

    mesh_port: int = 15443
    admin_port: int = 15000
    outbound_port: int = 15001
    inbound_port: int = 15006
    fail_mode: str = "closed"
    mtls: str = "strict"
    leaf_lifetime_hours: int = 24


@dataclass(frozen=True)
class MeshConfig:
    """The ``[mesh]`` table plus ``[defaults]``."""

    name: str
    trust_domain: str
    operator: str
    ca_key_encrypted: bool
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)

    def to_toml_dict(self) -> dict[str, Any]:
        """The document written to mesh.toml."""
        mesh = {k: v for k, v in asdict(self).items() if k != "defaults"}
        return {"mesh": mesh, "defaults": asdict(self.defaults)}

    @classmethod
    def from_toml(cls, path: Path) -> MeshConfig:
        """Read and validate ``path``."""
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path}: no such file", hint="run meshctl init to create a workspace"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> MeshConfig:
        """Validate a parsed document; ``source`` names it in errors."""
        fields = _Fields(doc, source)
        mesh = fields.table("mesh")
        defaults = fields.table("defaults", required=False)
        config = cls(
            name=check_name("mesh", fields.get(mesh, "mesh.name", str)),
            trust_domain=fields.get(mesh, "mesh.trust_domain", str),
            operator=fields.get(mesh, "mesh.operator", str),
            ca_key_encrypted=fields.get(mesh, "mesh.ca_key_encrypted", bool),
            defaults=_defaults(fields, defaults),
        )
        problem = trust_domain_problem(config.trust_domain)
        if problem:
            raise ConfigError(f"{source}: mesh.trust_domain: {problem}")
        return config


def _defaults(fields: _Fields, table: dict[str, Any]) -> DefaultsConfig:
    base = DefaultsConfig()
    values: dict[str, Any] = {}
    for name, default in asdict(base).items():
        if name in table:
            values[name] = fields.get(table, f"defaults.{name}", type(default))
    unknown = sorted(set(table) - set(values))
    if unknown:
        raise ConfigError(f"{fields.source}: defaults.{unknown[0]}: unknown field")
    result = DefaultsConfig(**values)
    for port in ("mesh_port", "admin_port", "outbound_port", "inbound_port"):
        if not 1 <= getattr(result, port) <= 65535:
            raise ConfigError(f"{fields.source}: defaults.{port}: must be a port number 1-65535")
    fields.choice(result.fail_mode, "defaults.fail_mode", FAIL_MODES)
    fields.choice(result.mtls, "defaults.mtls", MTLS_MODES)
    if result.leaf_lifetime_hours < 1:
        raise ConfigError(f"{fields.source}: defaults.leaf_lifetime_hours: must be at least 1")
    return result


@dataclass(frozen=True)
class _Fields:
    doc: dict[str, Any]
    source: str

    def table(self, name: str, required: bool = True) -> dict[str, Any]:
        value = self.doc.get(name)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: [{name}]: missing table")
        return value

    def get(self, table: dict[str, Any], path: str, kind: type) -> Any:
        key = path.rsplit(".", 1)[-1]
        if key not in table:
            raise ConfigError(f"{self.source}: {path}: missing field")
        value = table[key]
        # bool is a subclass of int: a port of `true` must not pass as 1
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.source}: {path}: expected {kind.__name__}, got {value!r}")
        return value

    def choice(self, value: str, path: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ConfigError(
                f"{self.source}: {path}: {value!r} is not one of {', '.join(allowed)}"
            )
