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
from meshd.schema import Fields, format_duration, parse_duration, read_toml

FAIL_MODES = ("open", "closed")
MTLS_MODES = ("strict", "permissive")
MINUTE, DAY = 60, 86400
MAX_LEAF = int(MAX_LEAF_LIFETIME.total_seconds())  # what the CA signs at most
MAX_LEAF_HOURS = MAX_LEAF // 3600
LEAF_BOUNDS = (MINUTE, MAX_LEAF)  # 1 minute: for tests that watch renewals happen
ISSUER_BOUNDS = (10 * MINUTE, 365 * DAY)  # the root caps it further when it signs
OLD_LEAF_KEY = "leaf_lifetime_hours"  # before durations: still read, never written


@dataclass(frozen=True)
class DefaultsConfig:
    """Defaults that every joined host gets unless its inventory entry says otherwise."""

    mesh_port: int = 15443
    admin_port: int = 15000
    outbound_port: int = 15001
    inbound_port: int = 15006
    fail_mode: str = "closed"
    mtls: str = "strict"
    leaf_lifetime: int = DAY  # seconds; mesh.toml says it as a duration ("24h")
    issuer_lifetime: int = 30 * DAY  # seconds of an issuer's intermediate CA ("30d")
    ssh_key: str = ""  # SSH private key for every host ("": ssh-agent and ~/.ssh)

    def to_toml_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("leaf_lifetime", "issuer_lifetime"):
            doc[key] = duration_text(doc[key])
        return doc

    @classmethod
    def from_fields(cls, f: Fields) -> DefaultsConfig:
        base = cls()
        f.unknown({*asdict(base), OLD_LEAF_KEY})
        return cls(
            mesh_port=f.port("mesh_port", base.mesh_port),
            admin_port=f.port("admin_port", base.admin_port),
            outbound_port=f.port("outbound_port", base.outbound_port),
            inbound_port=f.port("inbound_port", base.inbound_port),
            fail_mode=f.choice("fail_mode", FAIL_MODES, base.fail_mode),
            mtls=f.choice("mtls", MTLS_MODES, base.mtls),
            leaf_lifetime=_leaf_lifetime(f, base.leaf_lifetime),
            issuer_lifetime=duration(f, "issuer_lifetime", base.issuer_lifetime, ISSUER_BOUNDS),
            ssh_key=f.get("ssh_key", str, base.ssh_key),
        )


def duration_text(seconds: int) -> str:
    """How mesh.toml says a duration: whole days from 2 days on, else whole hours ("24h")."""
    if seconds % DAY == 0 and seconds >= 2 * DAY:
        return f"{seconds // DAY}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return format_duration(seconds)


def _leaf_lifetime(f: Fields, default: int) -> int:
    """``leaf_lifetime``, or an older workspace's ``leaf_lifetime_hours`` (never both)."""
    if OLD_LEAF_KEY not in f.data:
        return duration(f, "leaf_lifetime", default, LEAF_BOUNDS)
    if "leaf_lifetime" in f.data:
        raise f.fail(
            OLD_LEAF_KEY,
            "set leaf_lifetime or the older leaf_lifetime_hours, not both: "
            "remove leaf_lifetime_hours",
        )
    return f.bounded(OLD_LEAF_KEY, int, default // 3600, 1, MAX_LEAF_HOURS) * 3600


def duration(f: Fields, key: str, default: int, bounds: tuple[int, int]) -> int:
    """Seconds of the duration at ``key`` (``"24h"``), from ``bounds[0]`` to ``bounds[1]``."""
    text = f.get(key, str, format_duration(default))
    seconds = parse_duration_at(f, key, text)
    low, high = bounds
    if not low <= seconds <= high:
        raise f.fail(
            key, f"must be from {format_duration(low)} to {format_duration(high)}, got {text!r}"
        )
    return seconds


def parse_duration_at(f: Fields, key: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ConfigError as e:
        raise f.fail(key, f"{e.message} ({e.hint})") from None


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
        return {"mesh": mesh, "defaults": self.defaults.to_toml_dict()}

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
