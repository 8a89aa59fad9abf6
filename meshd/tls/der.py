"""Just enough DER to read two facts of a peer's leaf certificate: is it a CA, may it sign.

Python's ``getpeercert()`` leaves out basicConstraints and keyUsage, and the
daemon does not load an x509 library (cryptography's costs ~10 MB of
resident memory in every meshd). OpenSSL has already verified the chain and
its signatures; this only reads two extensions of the verified leaf, so that
a certificate issued as a CA, or without a key usage that allows TLS
signatures, is not accepted as a peer's identity. Pure; any malformed input
is a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE, BOOLEAN, OCTET_STRING, BIT_STRING, OID = 0x30, 0x01, 0x04, 0x03, 0x06
EXTENSIONS = 0xA3  # [3] EXPLICIT in TBSCertificate
BASIC_CONSTRAINTS = bytes.fromhex("551d13")  # 2.5.29.19
KEY_USAGE = bytes.fromhex("551d0f")  # 2.5.29.15
DIGITAL_SIGNATURE = 0x80  # bit 0 of keyUsage: the first bit of its first byte


@dataclass(frozen=True)
class LeafFacts:
    is_ca: bool
    key_usage: int | None  # the first byte of keyUsage's bits; None when absent


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element runs past its container")
    return tag, start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _tlv(data, start)
        out.append(element)
        start = element[2]
    if start != end:
        raise ValueError("DER elements overrun their container")
    return out


def _expect(element: tuple[int, int, int], tag: int) -> tuple[int, int]:
    if element[0] != tag:
        raise ValueError(f"expected DER tag {tag:#x}, got {element[0]:#x}")
    return element[1], element[2]


def leaf_facts(cert: bytes) -> LeafFacts:
    """Read basicConstraints' cA flag and keyUsage from a DER certificate."""
    start, end = _expect(_tlv(cert, 0), SEQUENCE)
    tbs = _expect(_children(cert, start, end)[0], SEQUENCE)
    is_ca, usage = False, None
    for tag, value_start, _ in _children(cert, *tbs):
        if tag != EXTENSIONS:
            continue
        extensions = _expect(_tlv(cert, value_start), SEQUENCE)
        for ext in _children(cert, *extensions):
            oid, value = _extension(cert, ext)
            if oid == BASIC_CONSTRAINTS:
                is_ca = _is_ca(value)
            elif oid == KEY_USAGE:
                usage = _first_usage_byte(value)
    return LeafFacts(is_ca, usage)


def _extension(cert: bytes, ext: tuple[int, int, int]) -> tuple[bytes, bytes]:
    """(OID bytes, extnValue contents) of one Extension."""
    parts = _children(cert, *_expect(ext, SEQUENCE))
    oid = _expect(parts[0], OID)
    value = _expect(parts[-1], OCTET_STRING)
    return cert[oid[0] : oid[1]], cert[value[0] : value[1]]


def _is_ca(value: bytes) -> bool:
    fields = _children(value, *_expect(_tlv(value, 0), SEQUENCE))
    if not fields or fields[0][0] != BOOLEAN:
        return False  # cA absent: DEFAULT FALSE
    start, end = fields[0][1], fields[0][2]
    return end - start == 1 and value[start] != 0


def _first_usage_byte(value: bytes) -> int:
    start, end = _expect(_tlv(value, 0), BIT_STRING)
    if end - start < 2:
        return 0  # no bits set
    return value[start + 1]


def leaf_problem(cert: bytes) -> str | None:
    """Why this verified leaf may not identify a peer, or None when it may."""
    try:
        facts = leaf_facts(cert)
    except (ValueError, IndexError):
        return "its certificate cannot be read"
    if facts.is_ca:
        return "its certificate is a CA certificate, not a leaf"
    if facts.key_usage is None:
        return "its certificate has no key usage"
    if not facts.key_usage & DIGITAL_SIGNATURE:
        return "its certificate's key usage does not allow digital signatures"
    return None
