"""What ``TlsMaterial`` reads of our own certificate, building it again from text, and which
of a peer's IDs its CA may vouch for."""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from meshd.errors import CertificateError
from meshd.identity import issuer_ca_name
from meshd.tls.context import Pem, TlsMaterial, issued_by_issuer, serial_of, vouched_ids
from tests.meshd.issuer.issuers import issued_by, issuer_authority
from tests.meshd.tlsfixtures import Identity, TestPki


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


MESH = (("organizationName", "mesh t"),)


@pytest.mark.parametrize(
    ("issuer_cn", "by_issuer"),
    [
        (issuer_ca_name("h1"), True),
        ("t issuing CA", False),  # meshctl's CA: joins and operators
        ("t root CA", False),
        ("issuer CA", False),  # no host before it
        ("h1 issuer CA2", False),
    ],
)
def test_a_leaf_signed_by_an_issuer_ca_is_told_by_its_issuer_name(
    issuer_cn: str, by_issuer: bool
) -> None:
    peer = {"issuer": (MESH, (("commonName", issuer_cn),))}
    assert issued_by_issuer(peer) is by_issuer


def test_only_host_and_service_ids_count_from_an_issuer_signed_leaf(tmp_path: Path) -> None:
    pki = TestPki(tmp_path)
    paths = ("host/h1", "svc/api", "operator/x", "monitor/m", "issuer/h2")
    forged = issued_by(issuer_authority(pki, "h1"), pki, "forged", *paths)
    real = pki.issue("real", *paths)
    held = {str(i) for i in vouched_ids(_peer_of(forged))}
    assert held == {"spiffe://t.mesh/host/h1", "spiffe://t.mesh/svc/api"}
    assert len(vouched_ids(_peer_of(real))) == 5


def _peer_of(who: Identity) -> ssl.SSLObject:
    """The server's side of a handshake with ``who``, in memory (as ``_self_check`` does)."""
    tls = TlsMaterial.load(who.cert, who.key, who.bundle)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    near = tls.client.wrap_bio(c_in, c_out, server_side=False)
    far = tls.server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(5):
        for obj, out, into in ((near, c_out, s_in), (far, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            into.write(out.read())
    return far
