"""Reading a leaf's cA flag and key usage out of DER, against certificates cryptography makes."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from meshd.tls.der import LeafFacts, leaf_facts, leaf_problem

KEY = ec.generate_private_key(ec.SECP256R1())
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def usage(digital_signature: bool, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not digital_signature,
        key_cert_sign=key_cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def cert(*extensions: x509.ExtensionType) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://t/host/a")]),
            critical=False,
        )
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("extensions", "facts", "problem"),
    [
        ((x509.BasicConstraints(False, None), usage(True)), LeafFacts(False, 0x80), None),
        ((usage(True),), LeafFacts(False, 0x80), None),  # cA absent: not a CA
        (
            (x509.BasicConstraints(True, 0), usage(True, key_cert_sign=True)),
            LeafFacts(True, 0x84),
            "is a CA certificate",
        ),
        ((x509.BasicConstraints(False, None),), LeafFacts(False, None), "no key usage"),
        ((), LeafFacts(False, None), "no key usage"),
        (
            (x509.BasicConstraints(False, None), usage(False)),
            LeafFacts(False, 0x08),
            "does not allow digital signatures",
        ),
    ],
    ids=["leaf", "no-basic-constraints", "ca", "no-key-usage", "no-extensions", "no-signing"],
)
def test_leaf_facts_and_problems(
    extensions: tuple[x509.ExtensionType, ...], facts: LeafFacts, problem: str | None
) -> None:
    der = cert(*extensions)
    assert leaf_facts(der) == facts
    found = leaf_problem(der)
    assert (found is None) if problem is None else (found is not None and problem in found)


@given(st.binary(max_size=600))
def test_garbage_is_a_problem_never_a_crash(data: bytes) -> None:
    problem = leaf_problem(data)
    assert problem is None or isinstance(problem, str)


@given(st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_a_truncated_or_corrupted_certificate_is_unreadable(cut: int, noise: bytes) -> None:
    der = cert(x509.BasicConstraints(False, None), usage(True))
    assert leaf_problem(der[: len(der) - 1 - cut]) == "its certificate cannot be read"
