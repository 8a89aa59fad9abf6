"""The CA generations of a workspace during a rotation: the next CA, the bundle, the move.

ca/ and secrets/ hold the CA in use. ``meshctl ca rotate begin`` adds the
next one under ca/next/ and secrets/next/ (keys encrypted like the current
ones; the root certificate written last marks it whole) and puts both roots
in ca/bundle.pem, which later joins install. ``finish`` keeps the CA in use
under ca/retired/<date>/ (keys under secrets/retired/<date>/), copies the
next one into place and leaves the new root alone in the bundle. Every step
can run again after an interruption: a half-written next CA is made anew, a
half-done move is completed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshctl import files
from meshctl.ca import Authority, MeshCa, create_ca
from meshctl.workspace import CaFiles, Workspace, load_key, renew_operator
from meshd.errors import CertificateError
from meshd.pki import cert_pem, load_certs, private_pem

NEXT = "next"


def in_progress(ws: Workspace) -> bool:
    """Whether a rotation began (the next CA is whole) and did not finish."""
    return ws.ca_files(NEXT).root_cert.is_file()


def load(ws: Workspace, generation: str, passphrase: str | None) -> MeshCa:
    """The CA of ``generation`` with its keys ("" the one in use, "next")."""
    f = ws.ca_files(generation)
    secret = passphrase if ws.config.ca_key_encrypted else None
    return MeshCa(
        _authority(f.root_cert, f.root_key, secret),
        _authority(f.issuing_cert, f.issuing_key, secret),
    )


def _authority(cert_path: Path, key_path: Path, passphrase: str | None) -> Authority:
    cert, key = load_certs(cert_path)[0], load_key(key_path, passphrase)
    if key.public_key() != cert.public_key():
        raise CertificateError(f"{key_path} does not belong to {cert_path}")
    return Authority(cert, key)


def next_ca(ws: Workspace, passphrase: str | None, now: dt.datetime) -> tuple[MeshCa, bool]:
    """The CA a rotation moves to: the one it began with, or a new one (True)."""
    if in_progress(ws):
        return load(ws, NEXT, passphrase), False
    ca = create_ca(ws.config.name, ws.config.trust_domain, now)
    secret = passphrase.encode() if passphrase and ws.config.ca_key_encrypted else None
    f = ws.ca_files(NEXT)
    _write(f.root_key, private_pem(ca.root.key, secret))
    _write(f.issuing_key, private_pem(ca.issuing.key, secret))
    _write(f.issuing_cert, cert_pem(ca.issuing.cert))
    _write(f.root_cert, cert_pem(ca.root.cert))  # last: the generation is whole
    return ca, True


def root_of(ws: Workspace, generation: str = "") -> x509.Certificate:
    return load_certs(ws.ca_files(generation).root_cert)[0]


def write_bundle(ws: Workspace, certs: Iterable[x509.Certificate]) -> None:
    """The workspace's trust bundle (what joins install and meshctl verifies hosts with)."""
    _write(ws.trust_bundle, cert_pem(*certs))


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names and signature)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def operator_under(ws: Workspace, issuing: x509.Certificate) -> bool:
    """Whether the operator certificate is issued by ``issuing`` and its key fits it."""
    cert = load_certs(ws.operator_cert)[0]
    return signed_by(cert, issuing) and _pair_fits(ws, cert)


def _pair_fits(ws: Workspace, cert: x509.Certificate) -> bool:
    try:
        return load_key(ws.operator_key, None).public_key() == cert.public_key()
    except CertificateError:
        return False


def mend_operator(ws: Workspace, issuing: Authority, now: dt.datetime) -> bool:
    """A new operator pair under ``issuing`` when the key no longer fits the certificate
    (a switch interrupted between its two writes); True when one was made."""
    if _pair_fits(ws, load_certs(ws.operator_cert)[0]):
        return False
    renew_operator(ws, issuing, now)
    return True


def promote(ws: Workspace, now: dt.datetime) -> str:
    """The next CA in place, the one in use kept as retired/<name>; that name."""
    current, following = ws.ca_files(), ws.ca_files(NEXT)
    chosen = following.root_cert.parent / "retired-as"  # so that a rerun names the same
    if not chosen.exists():
        _write(chosen, retired_name(ws, now).encode())
    name = chosen.read_text()
    if current.root_cert.read_bytes() != following.root_cert.read_bytes():
        _copy(current, ws.ca_files(f"retired/{name}"))
    _copy(following, current)
    write_bundle(ws, [root_of(ws)])
    for path in following.all():  # the root certificate last, as it was written
        path.unlink(missing_ok=True)
    for directory in (following.root_cert.parent, following.root_key.parent):
        shutil.rmtree(directory, ignore_errors=True)
    return name


def retired_name(ws: Workspace, now: dt.datetime) -> str:
    """ca/retired/<date>, or <date>-N when that day already retired another root."""
    current = ws.ca_files().root_cert.read_bytes()
    for n in range(1, 100):
        name = now.date().isoformat() + (f"-{n}" if n > 1 else "")
        kept = ws.ca_files(f"retired/{name}").root_cert
        if not kept.exists() or kept.read_bytes() == current:
            return name
    raise CertificateError(f"{ws.root / 'ca' / 'retired'}: too many rotations in one day")


def _copy(source: CaFiles, target: CaFiles) -> None:
    for src, dst in zip(source.all(), target.all(), strict=True):
        _write(dst, src.read_bytes())


def _write(path: Path, data: bytes) -> None:
    """A workspace file: 0600, in directories made 0700."""
    for directory in reversed(path.parents):
        if not directory.exists():
            directory.mkdir(mode=0o700)
    files.write_atomic(path, data)


def load_issuing_cert(ws: Workspace, generation: str = "") -> x509.Certificate:
    return load_certs(ws.ca_files(generation).issuing_cert)[0]
