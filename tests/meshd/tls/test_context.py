"""What ``TlsMaterial`` reads of our own certificate, and building it again from text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from meshd.errors import CertificateError
from meshd.tls.context import Pem, TlsMaterial, serial_of
from tests.meshd.tlsfixtures import TestPki


def test_serial_and_validity_are_read_as_a_peer_sees_them(tmp_path: Path) -> None:
    ident = TestPki(tmp_path).issue("h", "host/h", lifetime=dt.timedelta(minutes=7))
    cert = x509.load_pem_x509_certificate(ident.cert.read_bytes())
    tls = TlsMaterial.load(ident.cert, ident.key, ident.bundle)
    assert tls.serial == format(cert.serial_number, "X")  # as meshd.registry spells serials
    assert tls.not_before == cert.not_valid_before_utc
    assert tls.not_after == cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("openssl", "registry"),
    [("0A1B", "A1B"), ("1A1B", "1A1B"), ("00", "0"), ("0942D4", "942D4")],
)
def test_serials_are_spelled_as_format_x_spells_them(openssl: str, registry: str) -> None:
    assert serial_of({"serialNumber": openssl}) == registry


def test_one_file_holding_key_and_chain_loads(tmp_path: Path) -> None:
    ident = TestPki(tmp_path).issue("h", "host/h")
    both = ident.key.read_bytes() + ident.cert.read_bytes()  # renewed.pem's layout
    tls = TlsMaterial.from_pem(Pem(both, both, ident.bundle.read_bytes()))
    assert tls.serial == TlsMaterial.load(ident.cert, ident.key, ident.bundle).serial


def test_under_another_bundle_the_certificate_must_verify(tmp_path: Path) -> None:
    ident = TestPki(tmp_path / "a").issue("h", "host/h")
    other = TestPki(tmp_path / "b")
    tls = TlsMaterial.load(ident.cert, ident.key, ident.bundle)
    both = ident.bundle.read_bytes() + other.bundle.read_bytes()
    assert tls.under(both).pem.bundle == both
    with pytest.raises(CertificateError, match="the certificate does not verify") as e:
        tls.under(other.bundle.read_bytes())
    assert "meshd-tls-" not in e.value.message  # no scratch file names
