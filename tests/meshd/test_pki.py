"""meshd's key, CSR and certificate helpers."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshctl.ca import sign_csr as meshctl_sign_csr
from meshd.errors import CertificateError
from meshd.files import write_private
from meshd.identity import SpiffeId
from meshd.pki import (
    admin_server_name,
    backdate,
    build_csr,
    fingerprint,
    generate_key,
    load_certs,
    private_pem,
    sign_csr,
    spiffe_ids,
)
from tests.meshctl.helpers import make_ca

A = SpiffeId.parse("spiffe://t.mesh/svc/a")
B = SpiffeId.parse("spiffe://t.mesh/host/h1")


def test_csr_carries_ids_and_verifies() -> None:
    csr = build_csr(generate_key(), [B, A, A])
    assert csr.is_signature_valid
    assert spiffe_ids(csr) == sorted([A, B])


def test_csr_needs_an_id() -> None:
    with pytest.raises(CertificateError):
        build_csr(generate_key(), [])


def test_private_pem_encrypted_only_with_passphrase() -> None:
    key = generate_key()
    assert serialization.load_pem_private_key(private_pem(key), None)
    encrypted = private_pem(key, b"secret-pass")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(encrypted, None)
    with pytest.raises(ValueError, match=r"ncorrect password|Bad decrypt"):
        serialization.load_pem_private_key(encrypted, b"wrong-pass")


def test_write_private_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private(path, b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"x"


def test_load_certs_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    with pytest.raises(CertificateError, match=r"bad\.pem"):
        load_certs(bad)
    with pytest.raises(CertificateError, match="no such file"):
        load_certs(tmp_path / "missing.pem")


def test_fingerprint_format(tmp_path: Path) -> None:
    cert = make_ca().root.cert
    fp = fingerprint(cert)
    assert len(fp) == 95 and fp.count(":") == 31


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        (dt.timedelta(minutes=1), dt.timedelta(seconds=6)),
        (dt.timedelta(minutes=50), dt.timedelta(minutes=5)),
        (dt.timedelta(hours=24), dt.timedelta(minutes=5)),
        (dt.timedelta(seconds=3), dt.timedelta(seconds=0.3)),
    ],
)
def test_backdate_is_a_tenth_of_the_life_at_most(
    lifetime: dt.timedelta, expected: dt.timedelta
) -> None:
    assert backdate(lifetime) == expected


def test_a_one_minute_leaf_is_not_due_for_renewal_when_issued() -> None:
    now = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)
    ca = make_ca()
    leaf = sign_csr(build_csr(generate_key(), [B]), [B], ca.issuing, now, dt.timedelta(minutes=1))
    begins, ends = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    assert ends == now + dt.timedelta(minutes=1)
    assert begins + (ends - begins) * 2 / 3 > now  # its renewal point lies ahead of it


def test_meshctl_signs_with_the_same_signer() -> None:
    assert meshctl_sign_csr is sign_csr


NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


@pytest.mark.parametrize(
    ("floor", "begins"),
    [
        (None, NOW - dt.timedelta(minutes=5)),
        (NOW - dt.timedelta(hours=1), NOW - dt.timedelta(minutes=5)),  # long before: backdated
        (NOW - dt.timedelta(minutes=1), NOW - dt.timedelta(minutes=1)),  # within the backdate
        (NOW + dt.timedelta(seconds=5), NOW + dt.timedelta(seconds=5)),  # a clock behind
    ],
    ids=["no-floor", "floor-long-ago", "floor-within-the-backdate", "floor-ahead"],
)
def test_a_leaf_never_starts_before_its_floor(
    floor: dt.datetime | None, begins: dt.datetime
) -> None:
    """A revoked host name that joined at ``floor``: its leaves must start at or after it."""
    ca = make_ca()
    leaf = sign_csr(build_csr(generate_key(), [B]), [B], ca.issuing, NOW, DAY, not_before=floor)
    assert leaf.not_valid_before_utc == begins
    assert leaf.not_valid_after_utc == NOW + DAY


def test_a_floor_past_the_end_is_refused() -> None:
    ca = make_ca()
    with pytest.raises(CertificateError, match="no earlier than it ends"):
        sign_csr(build_csr(generate_key(), [B]), [B], ca.issuing, NOW, DAY, not_before=NOW + DAY)


@pytest.mark.parametrize(
    ("asked", "signed", "subset", "refused"),
    [
        ([A, B], [A, B], False, False),
        ([A, B], [B], False, True),  # meshctl signs exactly what the inventory says
        ([A, B], [B], True, False),  # an issuer leaves out a service no longer assigned
        ([B], [A, B], True, True),  # never more than the CSR asked for
        ([A], [B], True, True),
    ],
    ids=["exact", "fewer-not-allowed", "fewer-allowed", "more", "other"],
)
def test_a_subset_of_the_csrs_ids_only_when_asked(
    asked: list[SpiffeId], signed: list[SpiffeId], subset: bool, refused: bool
) -> None:
    ca = make_ca()
    csr = build_csr(generate_key(), asked)
    if refused:
        with pytest.raises(CertificateError, match="CSR asks for identities"):
            sign_csr(csr, signed, ca.issuing, NOW, DAY, subset=subset)
    else:
        leaf = sign_csr(csr, signed, ca.issuing, NOW, DAY, subset=subset)
        assert spiffe_ids(leaf) == sorted(signed)


@pytest.mark.parametrize(
    ("paths", "dns"),
    [
        (["host/h1"], ["meshd.t.mesh"]),  # what Prometheus' tls_config.server_name checks
        (["host/h1", "svc/a"], ["meshd.t.mesh"]),
        (["svc/a"], []),
        (["operator/alice"], []),
        (["monitor/prom"], []),
    ],
)
def test_a_leaf_with_a_host_id_names_the_admin_server(paths: list[str], dns: list[str]) -> None:
    ids = [SpiffeId("t.mesh", "/" + p) for p in paths]
    key = generate_key()
    cert = sign_csr(build_csr(key, ids), ids, make_ca().issuing, dt.datetime.now(dt.UTC))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns
    assert spiffe_ids(cert) == sorted(ids)
    assert admin_server_name("t.mesh") == "meshd.t.mesh"
