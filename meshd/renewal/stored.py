"""The renewed certificate on disk: ``<state_dir>/identity/renewed.pem``, key then chain.

One file, so that a crash (kill -9) at any moment leaves either the old pair
or the new one, never a new certificate beside an old key: it is written
whole through ``meshd.files.write_private`` (0600, fsync, rename) and only
after the new certificate was proven to fit the key and the trust bundle.
Start and SIGHUP read it as a candidate beside the files and a pushed
certificate (``meshd.documents.choose_tls``). ``pending-key.pem`` is the key
``meshd keygen`` made for the CSR in flight; it is worth nothing on its own.
"""

from __future__ import annotations

from pathlib import Path

from meshd.errors import CertificateError
from meshd.files import write_private
from meshd.tls.context import Pem, TlsMaterial

IDENTITY = "identity"


def renewed_path(state_dir: Path) -> Path:
    return state_dir / IDENTITY / "renewed.pem"


def pending_key_path(state_dir: Path) -> Path:
    return state_dir / IDENTITY / "pending-key.pem"


def make_identity_dir(state_dir: Path) -> None:
    (state_dir / IDENTITY).mkdir(mode=0o700, parents=True, exist_ok=True)


def load_renewed(state_dir: Path, bundle: bytes) -> TlsMaterial | None:
    """The renewed certificate verified under ``bundle``; None when there is none.

    CertificateError (naming the file) when it is there but does not load.
    """
    path = renewed_path(state_dir)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CertificateError(f"{path}: {e.strerror}") from e
    try:
        return TlsMaterial.from_pem(Pem(text, text, bundle))
    except CertificateError as e:
        raise CertificateError(f"{path}: {e.message}", e.hint) from e


def write_renewed(state_dir: Path, tls: TlsMaterial) -> None:
    """Keep ``tls`` (key, then chain) as the renewed certificate: whole, 0600."""
    write_private(renewed_path(state_dir), tls.pem.key + tls.pem.chain)
    pending_key_path(state_dir).unlink(missing_ok=True)
