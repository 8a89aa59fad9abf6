"""The mesh workspace on disk: layout, creation (``meshctl init``) and loading.

A workspace is made whole in a temporary sibling directory and renamed into
place in one step, so a failed ``init`` leaves nothing behind. Directories are
0700 and files 0600; private keys live in ``secrets/`` (keep it out of git),
the CA keys encrypted with the operator's passphrase.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import toml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshctl import files
from meshctl.ca import OPERATOR_CERT_LIFETIME, Authority, MeshCa, create_ca, issue_identity
from meshctl.config import MeshConfig
from meshd.errors import CertificateError, ConfigError
from meshd.files import write_private
from meshd.identity import make_id
from meshd.pki import cert_pem, load_certs, private_pem

DIR_MODE = 0o700
FILE_MODE = 0o600
MIN_PASSPHRASE = 8

HEADER = "# meshctl workspace settings: keep this directory in git, except secrets/.\n"
HOSTS_HEADER = "# Inventory of meshed hosts; written by meshctl join/leave.\n"
# policies/mesh.toml of a fresh workspace: a new mesh keeps working until its operator
# tightens it (POLICY.md, "Identity on hosts")
MESH_POLICY = """\
# policies/mesh.toml: the mesh-wide policy document, as meshctl init wrote it.
#
# default = "allow" admits every authenticated peer that no [[deny]] rule stops,
# so that a new mesh keeps working. To go zero-trust:
#   1. write [[allow]] rules for the calls your services make (a file per team
#      or app), check them with meshctl policy explain, apply them with
#      meshctl policy apply -f FILE;
#   2. set default = "audit" here and apply this file: everything still passes,
#      and what "deny" would refuse is logged and counted as would-deny;
#   3. once nothing shows up as would-deny, set default = "deny" and apply it.
version = 1
name = "mesh"

[authz]
default = "allow"
"""


@dataclass(frozen=True)
class CaFiles:
    """One generation of the mesh CA: certificates under ca/, keys under secrets/."""

    root_cert: Path
    issuing_cert: Path
    root_key: Path
    issuing_key: Path

    def all(self) -> tuple[Path, ...]:
        return (self.root_key, self.issuing_key, self.issuing_cert, self.root_cert)


@dataclass(frozen=True)
class Workspace:
    """A loaded workspace: its root directory and its settings."""

    root: Path
    config: MeshConfig

    @property
    def mesh_toml(self) -> Path:
        return self.root / "mesh.toml"

    @property
    def root_ca_cert(self) -> Path:
        return self.root / "ca" / "root-ca.pem"

    @property
    def issuing_ca_cert(self) -> Path:
        return self.root / "ca" / "issuing-ca.pem"

    @property
    def trust_bundle(self) -> Path:
        return self.root / "ca" / "bundle.pem"

    @property
    def root_ca_key(self) -> Path:
        return self.root / "secrets" / "root-ca.key"

    @property
    def issuing_ca_key(self) -> Path:
        return self.root / "secrets" / "issuing-ca.key"

    def ca_files(self, generation: str = "") -> CaFiles:
        """The CA in use (""), the next one of a rotation ("next") or a retired one
        ("retired/<date>"): its keys under secrets/ too, so that ca/ can go into git."""
        ca, secrets = self.root / "ca" / generation, self.root / "secrets" / generation
        return CaFiles(
            ca / "root-ca.pem",
            ca / "issuing-ca.pem",
            secrets / "root-ca.key",
            secrets / "issuing-ca.key",
        )

    @property
    def operator_cert(self) -> Path:
        return self.root / "operator" / f"{self.config.operator}.pem"

    @property
    def operator_key(self) -> Path:
        return self.root / "secrets" / f"operator-{self.config.operator}.key"

    @classmethod
    def load(cls, root: Path) -> Workspace:
        """Load the workspace at ``root``; a clear error if there is none."""
        if not (root / "mesh.toml").is_file():
            raise ConfigError(
                f"no mesh workspace at {root} (mesh.toml not found)",
                hint="run meshctl init, or point --workspace / MESHCTL_WORKSPACE at one",
            )
        return cls(root, MeshConfig.from_toml(root / "mesh.toml"))

    def issuer(self, passphrase: str | None) -> Authority:
        """The issuing CA with its key decrypted by ``passphrase``."""
        return self._authority(self.issuing_ca_cert, self.issuing_ca_key, passphrase)

    def root_authority(self, passphrase: str | None) -> Authority:
        """The root CA with its key: it signs the issuers' CAs."""
        return self._authority(self.root_ca_cert, self.root_ca_key, passphrase)

    def _authority(self, cert_path: Path, key_path: Path, passphrase: str | None) -> Authority:
        cert = load_certs(cert_path)[0]
        key = load_key(key_path, passphrase if self.config.ca_key_encrypted else None)
        if key.public_key() != cert.public_key():
            raise CertificateError(f"{key_path} does not belong to {cert_path}")
        return Authority(cert, key)


def load_key(path: Path, passphrase: str | None) -> ec.EllipticCurvePrivateKey:
    """Load an EC private key; name the file and the cause when that fails."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise CertificateError(f"{path}: no such file") from e
    password = passphrase.encode() if passphrase else None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as e:
        raise CertificateError(
            f"{path} is encrypted and no passphrase was given",
            hint="set MESHCTL_CA_PASSPHRASE or run meshctl in a terminal to be asked for it",
        ) from e
    except ValueError as e:
        raise CertificateError(
            f"cannot decrypt {path}: wrong passphrase",
            hint="check MESHCTL_CA_PASSPHRASE (the passphrase given to meshctl init)",
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: not an ECDSA key")
    return key


def check_passphrase(passphrase: str) -> str:
    """Refuse passphrases too short to protect a CA key."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(
            f"CA passphrase is too short ({len(passphrase)} characters)",
            hint=f"use at least {MIN_PASSPHRASE} characters",
        )
    return passphrase


def init_workspace(
    root: Path, config: MeshConfig, passphrase: str | None, now: dt.datetime
) -> Workspace:
    """Create a whole workspace at ``root``; refuse an existing one."""
    _refuse_existing(root)
    if config.ca_key_encrypted and passphrase is None:
        raise ConfigError("a CA passphrase is required", hint="set MESHCTL_CA_PASSPHRASE")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
    try:
        _populate(Workspace(staging, config), passphrase, now)
        for directory in sorted(staging.rglob("*"), reverse=True):
            if directory.is_dir():
                files.sync_directory(directory)
        files.sync_directory(staging)
        staging.rename(root)  # atomic; replaces only an empty directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files.sync_directory(root.parent)
    return Workspace(root, config)


def _refuse_existing(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = "a mesh workspace" if (root / "mesh.toml").exists() else "a non-empty path"
        raise ConfigError(
            f"{root} is already {what}; refusing to overwrite it",
            hint="pick another directory, or remove it yourself if you really mean to start over",
        )


def _populate(ws: Workspace, passphrase: str | None, now: dt.datetime) -> None:
    ws.root.chmod(DIR_MODE)
    for sub in ("ca", "secrets", "operator", "policies"):
        (ws.root / sub).mkdir(mode=DIR_MODE)
    config = ws.config
    ca = create_ca(config.name, config.trust_domain, now)
    secret = passphrase.encode() if passphrase and config.ca_key_encrypted else None
    _write_ca(ws, ca, secret)
    operator = make_id(config.trust_domain, "operator", config.operator)
    key, cert = issue_identity([operator], ca.issuing, now, OPERATOR_CERT_LIFETIME)
    _write(ws.operator_cert, cert_pem(cert, ca.issuing.cert))
    _write(ws.operator_key, private_pem(key))
    _write(ws.mesh_toml, (HEADER + toml.dumps(config.to_toml_dict())).encode())
    _write(ws.root / "hosts.toml", HOSTS_HEADER.encode())
    _write(ws.root / "policies" / "mesh.toml", MESH_POLICY.encode())
    _write(ws.root / "known_hosts", b"")
    _write(ws.root / ".gitignore", b"secrets/\n.lock\n")


def _write_ca(ws: Workspace, ca: MeshCa, secret: bytes | None) -> None:
    _write(ws.root_ca_cert, cert_pem(ca.root.cert))
    _write(ws.issuing_ca_cert, cert_pem(ca.issuing.cert))
    _write(ws.trust_bundle, cert_pem(ca.root.cert))
    _write(ws.root_ca_key, private_pem(ca.root.key, secret))
    _write(ws.issuing_ca_key, private_pem(ca.issuing.key, secret))


def _write(path: Path, data: bytes) -> None:
    files.write_new(path, data, FILE_MODE)


OPERATOR_RENEW_AT = 2 / 3  # every command warns past this share of the certificate's life


def operator_warning(ws: Workspace, now: dt.datetime) -> str | None:
    """A one-line warning when the operator certificate is past 2/3 of its life."""
    cert = load_certs(ws.operator_cert)[0]
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if (now - start) < (end - start) * OPERATOR_RENEW_AT:
        return None
    when = "expired" if end <= now else "expires"
    return (
        f"the operator certificate {ws.operator_cert} {when} {end:%Y-%m-%d %H:%M} UTC "
        "(past 2/3 of its life): run meshctl ca operator renew"
    )


def renew_operator(ws: Workspace, issuing: Authority, now: dt.datetime) -> x509.Certificate:
    """A new operator key and certificate (90 days) from the issuing CA, in place of the old.

    The key goes first: were meshctl stopped between the two writes, the
    next renew (which reads neither) mends the pair.
    """
    operator = make_id(ws.config.trust_domain, "operator", ws.config.operator)
    key, cert = issue_identity([operator], issuing, now, OPERATOR_CERT_LIFETIME)
    write_private(ws.operator_key, private_pem(key))
    files.write_atomic(ws.operator_cert, cert_pem(cert, issuing.cert), FILE_MODE)
    return cert


def ca_certificates(ws: Workspace) -> list[tuple[str, x509.Certificate]]:
    """The workspace's certificates by role, for ``meshctl ca show``."""
    return [
        ("root CA", load_certs(ws.root_ca_cert)[0]),
        ("issuing CA", load_certs(ws.issuing_ca_cert)[0]),
        ("operator", load_certs(ws.operator_cert)[0]),
    ]
