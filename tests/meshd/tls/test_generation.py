"""A TlsMaterial's generation: what links compare at a swap (certificate and trust bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.tls.context import Pem, TlsMaterial
from tests.meshd.tlsfixtures import TestPki, joint_bundle


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("nothing (a reload)", True),
        ("the key before the chain (renewed.pem)", True),
        ("another trust bundle", False),
        ("a renewed certificate", False),
    ],
)
def test_the_generation_tells_a_swap_of_certificate_or_bundle(
    tmp_path: Path, change: str, same: bool
) -> None:
    pki = TestPki(tmp_path / "pki")
    ident = pki.issue("a", "host/a")
    running = TlsMaterial.load(ident.cert, ident.key, ident.bundle)
    chain, key, bundle = running.pem.chain, running.pem.key, running.pem.bundle
    if change == "the key before the chain (renewed.pem)":
        chain = key + chain
    elif change == "another trust bundle":
        bundle = joint_bundle(tmp_path / "both.pem", pki, TestPki(tmp_path / "other")).read_bytes()
    elif change == "a renewed certificate":
        chain = pki.reissue(ident, "a2").cert.read_bytes()
    swapped = TlsMaterial.from_pem(Pem(chain, key, bundle))
    assert (swapped.generation == running.generation) is same
    assert len(running.generation) == 32
