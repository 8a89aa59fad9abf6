"""``mesh.toml``: the workspace's settings, parsed once into frozen values.

Every problem is reported with the file and the field path, and nothing is
half-read: either the whole file is valid or a ConfigError is raised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshctl.ca import MAX_LEAF_LIFETIME
from meshd.errors import ConfigError
from meshd.identity import check_name, trust_domain_problem
from meshd.schema import Fields, read_toml

FAIL_MODES = ("open", "closed")
MAX_LEAF_HOURS = int(MAX_LEAF_LIFETIME.total_seconds()) // 3600  # what the CA signs at most
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
    ssh_key: str = ""  # SSH private key for every host ("": ssh-agent and ~/.ssh)

    @classmethod
    def from_fields(cls, f: Fields) -> DefaultsConfig:
        base = cls()
        f.unknown(set(asdict(base)))
        return cls(
            mesh_port=f.port("mesh_port", base.mesh_port),
            admin_port=f.port("admin_port", base.admin_port),
            outbound_port=f.port("outbound_port", base.outbound_port),
            inbound_port=f.port("inbound_port", base.inbound_port),
            fail_mode=f.choice("fail_mode", FAIL_MODES, base.fail_mode),
            mtls=f.choice("mtls", MTLS_MODES, base.mtls),
            leaf_lifetime_hours=f.bounded(
                "leaf_lifetime_hours", int, base.leaf_lifetime_hours, 1, MAX_LEAF_HOURS
            ),
            ssh_key=f.get("ssh_key", str, base.ssh_key),
        )


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
            text = path.read_text()
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path}: no such file", hint="run meshctl init to create a workspace"
            ) from e
        return cls.from_dict(read_toml(text, str(path)), str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str) -> MeshConfig:
        """Validate a parsed document; ``source`` names it in errors."""
        top = Fields(doc, source)
        mesh = top.table("mesh")
        config = cls(
            name=check_name("mesh", mesh.get("name", str)),
            trust_domain=mesh.get("trust_domain", str),
            operator=mesh.get("operator", str),
            ca_key_encrypted=mesh.get("ca_key_encrypted", bool),
            defaults=DefaultsConfig.from_fields(top.table("defaults", required=False)),
        )
        problem = trust_domain_problem(config.trust_domain)
        if problem:
            raise mesh.fail("trust_domain", problem)
        return config
