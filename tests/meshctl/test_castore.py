"""The CA generations of a workspace: the next CA, the bundle, the move to it."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from meshctl import castore
from meshctl.ca import Authority
from meshctl.workspace import Workspace, init_workspace, load_key
from meshd.errors import CertificateError
from meshd.pki import cert_pem, load_certs
from tests.meshctl.helpers import MESH, NOW

SECRET = "correct horse battery"


def workspace(tmp_path: Path, encrypted: bool = False) -> Workspace:
    config = dataclasses.replace(MESH, ca_key_encrypted=encrypted)
    return init_workspace(tmp_path / "ws", config, SECRET if encrypted else None, NOW)


def test_the_next_ca_is_made_once_with_keys_encrypted_like_the_others(tmp_path: Path) -> None:
    ws = workspace(tmp_path, encrypted=True)
    made, fresh = castore.next_ca(ws, SECRET, NOW)
    assert fresh and castore.in_progress(ws)
    files = ws.ca_files("next")
    for key in (files.root_key, files.issuing_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        with pytest.raises(CertificateError, match="encrypted and no passphrase"):
            load_key(key, None)
    assert stat.S_IMODE(files.root_key.parent.stat().st_mode) == 0o700
    again, fresh = castore.next_ca(ws, SECRET, NOW)
    assert not fresh and again.root.cert == made.root.cert
    assert again.issuing.key.public_key() == made.issuing.key.public_key()
    assert made.root.cert != load_certs(ws.root_ca_cert)[0]


def test_a_next_ca_written_in_part_is_made_anew(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    castore.next_ca(ws, None, NOW)
    files = ws.ca_files("next")
    half = files.issuing_key.read_bytes()
    files.root_cert.unlink()  # interrupted before its last write
    assert not castore.in_progress(ws)
    _, fresh = castore.next_ca(ws, None, NOW)
    assert fresh and files.issuing_key.read_bytes() != half


def promoted(ws: Workspace) -> tuple[bytes, bytes]:
    old = ws.root_ca_cert.read_bytes()
    castore.next_ca(ws, None, NOW)
    return old, ws.ca_files("next").root_cert.read_bytes()


def test_promote_retires_the_old_ca_and_puts_the_next_in_place(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    _, new = promoted(ws)
    old_files = {p.name: p.read_bytes() for p in ws.ca_files().all()}
    assert castore.promote(ws, NOW) == "2026-11-27"
    retired = ws.ca_files("retired/2026-11-27")
    assert {p.name: p.read_bytes() for p in retired.all()} == old_files
    assert ws.root_ca_cert.read_bytes() == new == ws.trust_bundle.read_bytes()
    assert not castore.in_progress(ws)
    assert not (ws.root / "ca" / "next").exists() and not (ws.root / "secrets" / "next").exists()
    castore.load(ws, "", None)  # keys fit their certificates


def test_a_move_interrupted_after_the_copy_is_finished_under_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace(tmp_path)
    old, new = promoted(ws)
    real_write = castore.write_bundle

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the CA copied into place, the bundle not yet written

    monkeypatch.setattr(castore, "write_bundle", crash)
    with pytest.raises(KeyboardInterrupt):
        castore.promote(ws, NOW)
    assert ws.root_ca_cert.read_bytes() == new and castore.in_progress(ws)
    monkeypatch.setattr(castore, "write_bundle", real_write)
    assert castore.promote(ws, NOW) == "2026-11-27"
    assert ws.ca_files("retired/2026-11-27").root_cert.read_bytes() == old
    assert ws.root_ca_cert.read_bytes() == new == ws.trust_bundle.read_bytes()
    assert not (ws.root / "ca" / "next").exists()


def test_a_second_rotation_the_same_day_retires_beside_the_first(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    old, new = promoted(ws)
    castore.promote(ws, NOW)
    castore.next_ca(ws, None, NOW)
    assert castore.promote(ws, NOW) == "2026-11-27-2"
    assert ws.ca_files("retired/2026-11-27-2").root_cert.read_bytes() == new
    assert ws.ca_files("retired/2026-11-27").root_cert.read_bytes() == old


def test_the_operator_pair_is_mended_when_its_key_no_longer_fits(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    current = castore.load(ws, "", None)
    assert not castore.mend_operator(ws, current.issuing, NOW)
    other = castore.next_ca(ws, None, NOW)[0].issuing
    ws.operator_key.write_bytes((ws.ca_files("next").issuing_key).read_bytes())  # a torn swap
    assert not castore.operator_under(ws, current.issuing.cert)
    assert castore.mend_operator(ws, current.issuing, NOW)
    assert castore.operator_under(ws, current.issuing.cert)
    assert not castore.operator_under(ws, other.cert)


@pytest.mark.parametrize("which", ["root", "issuing"])
def test_signed_by_checks_the_signature_not_only_the_names(tmp_path: Path, which: str) -> None:
    ws = workspace(tmp_path)
    ca = castore.load(ws, "", None)
    twin = castore.next_ca(ws, None, NOW)[0]  # same names, other keys
    signer: Authority = getattr(ca, which)
    cert = ca.issuing.cert if which == "root" else load_certs(ws.operator_cert)[0]
    assert castore.signed_by(cert, signer.cert)
    assert not castore.signed_by(cert, getattr(twin, which).cert)
    assert cert_pem(cert)
