"""SSH keys of a testbed: the client key and each host's pinned host key.

The harness makes every host key itself, so it is known (and pinned in a
throwaway known_hosts) before the host first boots.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_keypair(path: Path, comment: str) -> str:
    """Write a new ed25519 key (OpenSSH format, 0600) and ``path.pub``; return the pub line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}\n"
    _write_private(path, private)
    Path(f"{path}.pub").write_text(line)
    return line


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def load_private(path: Path) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def public_from_line(line: str) -> paramiko.PKey:
    """A paramiko public key from an OpenSSH ``TYPE BASE64 [comment]`` line."""
    key_type, b64 = line.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


def known_hosts_entry(address: str, pub_line: str) -> str:
    key_type, b64 = pub_line.split()[:2]
    return f"{address} {key_type} {b64}\n"
