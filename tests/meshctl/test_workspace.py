"""Workspace creation and loading on a real filesystem."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from meshctl import workspace as workspace_module
from meshctl.config import MeshConfig
from meshctl.workspace import Workspace, init_workspace, load_key
from meshd.errors import CertificateError, ConfigError
from tests.meshctl.helpers import NOW

PASS = "correct horse battery"
CONFIG = MeshConfig("t", "t.mesh", "alice", ca_key_encrypted=True)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return init_workspace(tmp_path / "mesh", CONFIG, PASS, NOW)


def test_modes(ws: Workspace) -> None:
    for path in [ws.root, *ws.root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_layout_and_reload(ws: Workspace) -> None:
    names = {p.relative_to(ws.root).as_posix() for p in ws.root.rglob("*")}
    assert {
        "mesh.toml",
        "hosts.toml",
        "known_hosts",
        ".gitignore",
        "ca/root-ca.pem",
        "ca/issuing-ca.pem",
        "ca/bundle.pem",
        "secrets/root-ca.key",
        "secrets/issuing-ca.key",
        "operator/alice.pem",
        "secrets/operator-alice.key",
        "policies",
    } <= names
    assert Workspace.load(ws.root).config == CONFIG
    assert (ws.root / ".gitignore").read_text() == "secrets/\n.lock\n"


def test_keys_need_the_passphrase(ws: Workspace) -> None:
    assert ws.issuer(PASS).cert.subject.rfc4514_string() == "CN=t issuing CA,O=mesh t"
    with pytest.raises(CertificateError, match="wrong passphrase") as info:
        ws.issuer("not the passphrase")
    assert "MESHCTL_CA_PASSPHRASE" in (info.value.hint or "")
    with pytest.raises(CertificateError, match="no passphrase was given"):
        load_key(ws.issuing_ca_key, None)
    for key in (ws.root_ca_key, ws.issuing_ca_key):
        assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
        no_pass = subprocess.run(
            ["openssl", "pkey", "-in", str(key), "-passin", "pass:", "-noout"],
            capture_output=True,
            check=False,
        )
        assert no_pass.returncode != 0
        with_pass = subprocess.run(
            ["openssl", "pkey", "-in", str(key), "-passin", f"pass:{PASS}", "-noout"],
            capture_output=True,
            check=False,
        )
        assert with_pass.returncode == 0


def test_root_authority_needs_the_passphrase(ws: Workspace) -> None:
    root = ws.root_authority(PASS)
    assert root.cert.subject.rfc4514_string() == "CN=t root CA,O=mesh t"
    assert root.key.public_key() == root.cert.public_key()
    with pytest.raises(CertificateError, match=f"cannot decrypt {ws.root_ca_key}"):
        ws.root_authority("not the passphrase")


def test_openssl_verifies_chain(ws: Workspace) -> None:
    for leaf in (ws.issuing_ca_cert, ws.operator_cert):
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(ws.trust_bundle),
                "-untrusted",
                str(ws.issuing_ca_cert),
                str(leaf),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_second_init_refuses_and_changes_nothing(ws: Workspace) -> None:
    before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already a mesh workspace"):
        init_workspace(ws.root, CONFIG, PASS, NOW)
    assert {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file()} == before


def test_refuses_non_empty_dir_but_fills_empty_one(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="non-empty"):
        init_workspace(tmp_path / "full", CONFIG, PASS, NOW)
    (tmp_path / "empty").mkdir()
    assert Workspace.load(init_workspace(tmp_path / "empty", CONFIG, PASS, NOW).root)


def test_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(workspace_module, "_write_ca", broken)
    with pytest.raises(OSError, match="disk full"):
        init_workspace(tmp_path / "mesh", CONFIG, PASS, NOW)
    assert list(tmp_path.iterdir()) == []


def test_unencrypted_workspace(tmp_path: Path) -> None:
    config = MeshConfig("t", "t.mesh", "alice", ca_key_encrypted=False)
    ws = init_workspace(tmp_path / "mesh", config, None, NOW)
    assert b"ENCRYPTED" not in ws.issuing_ca_key.read_bytes()
    assert ws.issuer(None).cert == ws.issuer("ignored").cert


def test_load_without_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no mesh workspace") as info:
        Workspace.load(tmp_path)
    assert "meshctl init" in (info.value.hint or "")


def test_init_syncs_every_file_and_directory_before_it_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CA keys exist once: a crash right after init must not leave them empty."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ws = init_workspace(tmp_path / "mesh", CONFIG, PASS, NOW)
    staging = {Path(p).relative_to(tmp_path).parts[0] for p in synced if p != str(tmp_path)}
    assert len(staging) == 1 and staging.pop().startswith(".mesh.init-")  # synced, then renamed
    relative = {
        Path(*Path(p).relative_to(tmp_path).parts[1:]) for p in synced if p != str(tmp_path)
    }
    for path in [ws.root, *ws.root.rglob("*")]:
        assert path.relative_to(ws.root) in relative, path
    assert synced[-1] == str(tmp_path)  # the rename into place
