"""The documents meshctl pushes over the admin API: how each is validated and applied.

    registry  {"version": N, "services": {...}}                 (meshd.registry)
    config    {"version": N, "toml": "<meshd.toml text>"}
    certs     {"version": N, "cert_pem": "...", "bundle_pem": "..."}  (the key stays on the host)
    certs     {"version": N, "cert_pem": "...", "bundle_pem": "..."}   (the key stays here)

Validation builds everything the swap needs (parsed config, loaded TLS
contexts) so that applying is swapping references. Pushed documents are kept
by the store in the state directory, not written over the files in /etc:
those are the host's bootstrap, and at start (and on SIGHUP, after the files
are re-read) the pushed documents are applied on top of them.
"""

from __future__ import annotations

import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.config import MeshdConfig
from meshd.errors import CertificateError, ConfigError
from meshd.registry import Registry
from meshd.runtime import Runtime, check_identity, restart_needed
from meshd.schema import Fields
from meshd.store import DocumentStore
from meshd.tls import TlsMaterial


@dataclass(frozen=True)
class ConfigUpdate:
    config: MeshdConfig
    tls: TlsMaterial


class Documents:
    """Validators and apply hooks for one daemon, registered on its DocumentStore."""

    def __init__(self, rt: Runtime, config_path: Path, store: DocumentStore) -> None:
        self.rt = rt
        self.config_path = config_path
        self.store = store
        store.register("registry", self.validate_registry, self.apply_registry)
        store.register("config", self.validate_config, self.apply_config)
        store.register("certs", self.validate_certs, self.apply_certs)
        store.register("policy", self.validate_policy, self.apply_policy)

    # registry
    def validate_registry(self, doc: dict[str, Any]) -> Registry:
        return Registry.from_dict(doc, "registry")

    def apply_registry(self, registry: Registry) -> None:
        self.rt.registry = registry

    # config
    def validate_config(self, doc: dict[str, Any]) -> ConfigUpdate:
        fields = Fields(doc, "config")
        fields.unknown({"version", "toml"})
        text = fields.get("toml", str)
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: toml: {e}") from e
        config = MeshdConfig.from_dict(parsed, "config.toml", self.config_path.parent)
        problem = restart_needed(self.rt.config, config)
        if problem is None and config.identity != self.rt.config.identity:
            problem = "identity files changed"  # a push must not point meshd at other files
        if problem:
            raise ConfigError(f"config: {problem}", hint="change it on the host and restart meshd")
        tls = TlsMaterial.load(config.identity.cert, config.identity.key, config.identity.bundle)
        check_identity(config, tls)
        return ConfigUpdate(config, tls)

    def apply_config(self, update: ConfigUpdate) -> None:
        self.rt.config, self.rt.tls = update.config, update.tls

    # certs
    def validate_certs(self, doc: dict[str, Any]) -> TlsMaterial:
        fields = Fields(doc, "certs")
        fields.unknown({"version", "cert_pem", "bundle_pem"})
        cert, bundle = fields.get("cert_pem", str).encode(), fields.get("bundle_pem", str).encode()
        ident = self.rt.config.identity
        with tempfile.TemporaryDirectory(prefix="meshd-certs-") as tmp:
            cert_path, bundle_path = Path(tmp) / "cert.pem", Path(tmp) / "bundle.pem"
            cert_path.write_bytes(cert)
            bundle_path.write_bytes(bundle)
            try:
                tls = TlsMaterial.load(cert_path, ident.key, bundle_path)
            except CertificateError as e:
                raise CertificateError(f"certs: {e.message}", hint=e.hint) from e
        check_identity(self.rt.config, tls)
        return tls

    def apply_certs(self, tls: TlsMaterial) -> None:
        self.rt.tls = tls

    # policy
    def validate_policy(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Only ``{"version": N}`` until the policy engine exists: nothing enforces the rest."""
        extra = sorted(set(doc) - {"version"})
        if extra:
            raise ConfigError(
                f"policy: {extra[0]}: policy enforcement is not in this meshd yet",
                hint='push {"version": N} only, or upgrade meshd to one that enforces policy',
            )
        return dict(doc)

    def apply_policy(self, policy: dict[str, Any]) -> None:
        self.rt.policy = policy

    def seed_registry(self, from_file: Registry) -> None:
        """Offer the registry file to the store at start: when none was pushed, or when the
        file is newer than what was (meshctl rewrote it), the file's version is the one."""
        pushed = self.store.get("registry")
        newer = pushed is None or from_file.version > int(pushed.get("version", 0))
        if newer and from_file.version > 0:
            self.store.put("registry", from_file.to_dict())
