"""What a joined host should look like: files, identities, rules, names. Pure.

Built from the workspace (mesh settings, inventory, registry, trust bundle)
and the bundle version; the planner compares it with the host's facts. The
redirect rules are derived exactly as the host derives them (``meshd rules
apply`` runs ``meshd.rules.ruleset`` over the same config and
registry), so what ``--dry-run`` shows is what the host installs.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from meshctl import bundle as bundles
from meshctl.config import MeshConfig
from meshctl.inventory import VIP_RANGE, HostSpec
from meshctl.provision import layout
from meshctl.provision.units import (
    UnitOptions,
    meshd_service,
    rules_service,
    sync_path,
    sync_service,
)
from meshd.config import MeshdConfig
from meshd.identity import SpiffeId
from meshd.registry import Registry
from meshd.rules import V6, RuleSet, apply_document, fingerprint, ruleset

SERVICE_OUTBOUND_BASE = 15100  # a run-as service gets its own outbound listener: 15100 + i


@dataclass(frozen=True)
class FileSpec:
    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class DesiredHost:
    name: str
    address: str
    identities: tuple[SpiffeId, ...]
    bundle_version: str
    files: tuple[FileSpec, ...]
    rules: RuleSet
    rules_document: str  # as it would apply to an empty nat table (shown by --dry-run)
    rules_document6: str  # ... and to an empty ip6 nat table, on hosts with IPv6
    rules_fingerprint: str
    registry: Registry  # as pushed, and written to the registry file
    vips: dict[str, str]  # service -> virtual IP, for the /etc/hosts block
    fail_mode: str
    leaf_lifetime: int  # seconds

    def file(self, path: str) -> FileSpec:
        return next(f for f in self.files if f.path == path)


def meshd_config(mesh: MeshConfig, host: HostSpec, ssh_ports: tuple[int, ...]) -> str:
    """The host's ``meshd.toml``."""
    d = mesh.defaults
    lines = [
        "# Managed by meshctl: changes are overwritten by the next join.",
        "[identity]",
        f'host = "{host.name}"',
        f'trust_domain = "{mesh.trust_domain}"',
        f'cert = "{layout.CERT}"',
        f'key = "{layout.KEY}"',
        f'bundle = "{layout.TRUST_BUNDLE}"',
        "",
        "[listen]",
        f'outbound = "127.0.0.1:{d.outbound_port}"',
        f'inbound = "0.0.0.0:{d.inbound_port}"',
        f'mesh = "0.0.0.0:{d.mesh_port}"',
        f'admin = "{host.address}:{d.admin_port}"',
        f'admin_socket = "{layout.ADMIN_SOCKET}"',
        "",
        "[mesh]",
        f'mtls = "{d.mtls}"',
        f'registry = "{layout.REGISTRY}"',
        f'state_dir = "{layout.STATE}"',
        "",
        "[interception]",
        f'vip_range = "{VIP_RANGE}"',
        f'meshd_user = "{layout.USER}"',
        f"ssh_ports = [{', '.join(str(p) for p in ssh_ports)}]",
        f'fallback_rules = "{layout.RULES_FALLBACK}"',
    ]
    for i, service in enumerate(host.services):
        lines += ["", "[[services]]", f'name = "{service.name}"', f"port = {service.port}"]
        if service.run_as:
            lines += [
                f'run_as = "{service.run_as}"',
                f'outbound = "127.0.0.1:{SERVICE_OUTBOUND_BASE + i}"',
            ]
    return "\n".join(lines) + "\n"


def desired_host(
    mesh: MeshConfig,
    host: HostSpec,
    registry: Registry,
    bundle_version: str,
    trust_bundle: bytes,
    ssh_port: int,
) -> DesiredHost:
    """Everything ``host`` should have once joined."""
    ssh_ports = tuple(sorted({ssh_port, 22}))
    config_text = meshd_config(mesh, host, ssh_ports)
    config = MeshdConfig.from_dict(tomllib.loads(config_text), layout.CONFIG, Path(layout.ETC))
    rules = ruleset(config, registry.checked(layout.REGISTRY))  # as the host will read it
    options = UnitOptions(fail_mode=host.fail_mode)
    files = (
        FileSpec(
            layout.LAUNCHER, bundles.launcher(f"{layout.OPT}/{bundle_version}/lib").encode(), 0o755
        ),
        FileSpec(layout.CONFIG, config_text.encode()),
        FileSpec(layout.REGISTRY, registry.to_json()),
        FileSpec(layout.TRUST_BUNDLE, trust_bundle),
        FileSpec(layout.UNIT_FILES["meshd.service"], meshd_service(options).encode()),
        FileSpec(layout.UNIT_FILES["meshd-rules.service"], rules_service(options).encode()),
        FileSpec(layout.UNIT_FILES["meshd-sync.service"], sync_service(options).encode()),
        FileSpec(layout.UNIT_FILES["meshd-sync.path"], sync_path().encode()),
    )
    return DesiredHost(
        name=host.name,
        address=host.address,
        identities=tuple(host.identities(mesh.trust_domain)),
        bundle_version=bundle_version,
        files=files,
        rules=rules,
        rules_document=apply_document(rules, saved=""),
        rules_document6=apply_document(rules, "", V6),
        rules_fingerprint=fingerprint(rules),
        registry=registry,
        vips={s.name: s.vip for s in registry.services},
        fail_mode=host.fail_mode,
        leaf_lifetime=mesh.defaults.leaf_lifetime,
    )
