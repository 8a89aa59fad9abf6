"""The revocations meshctl keeps: their names, their end, merging and pruning (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from meshctl.revocation import (
    backdate,
    in_force,
    merged,
    readmitted,
    revoke_host,
    serial_of,
)
from meshd.pki import cert_pem
from meshd.registry import MAX_REVOKED_NAMES, Revocation
from tests.meshctl.helpers import NOW, TD, make_ca

T = int(NOW.timestamp())
ID = f"spiffe://{TD}/host/web1"


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [(86400, 300), (3000, 300), (600, 60), (60, 6), (5, 1)],  # rounded up: a margin
    ids=["day", "50min", "10min", "1min", "5s"],
)
def test_backdate_is_five_minutes_or_a_tenth_of_the_life(lifetime: int, expected: int) -> None:
    assert backdate(lifetime) == expected


@pytest.mark.parametrize(
    ("serials", "lifetime", "expected"),
    [
        (("AB", "CD"), 86400, Revocation("web1", (ID,), ("AB", "CD"), T + 86400 + 300)),
        (("AB", "", "AB"), 60, Revocation("web1", (ID,), ("AB",), T + 66)),
        ((), 3600, Revocation("web1", (ID,), (), T + 3900)),
        (("ab", "0x12", "F" * 41, "C0"), 60, Revocation("web1", (ID,), ("AB", "C0"), T + 66)),
    ],
    ids=["two-serials", "unknown-and-repeated", "none-known", "odd-spellings"],
)
def test_a_host_is_revoked_by_id_and_serials_until_its_leaves_expire(
    serials: tuple[str, ...], lifetime: int, expected: Revocation
) -> None:
    assert revoke_host("web1", TD, serials, NOW, lifetime) == expected


OLD = Revocation("web1", (), ("AA",), T + 100)
NEW = Revocation("web1", (ID,), ("BB", "AA"), T + 50)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (None, NEW, NEW),
        (OLD, NEW, Revocation("web1", (ID,), ("AA", "BB"), T + 100)),
        (NEW, OLD, Revocation("web1", (ID,), ("BB", "AA"), T + 100)),
        # a name that joined again and is revoked again: every certificate of it, again
        (
            Revocation("web1", (ID,), ("AA",), T + 100, before=T),
            NEW,
            Revocation("web1", (ID,), ("AA", "BB"), T + 100),
        ),
    ],
    ids=["first", "again-keeps-the-later-end", "order-kept", "rejoined-then-revoked"],
)
def test_revoking_again_merges(
    old: Revocation | None, new: Revocation, expected: Revocation
) -> None:
    assert merged(old, new) == expected


def test_merging_keeps_the_newest_serials_the_registry_takes() -> None:
    many = Revocation("web1", (ID,), tuple(f"{i:X}" for i in range(MAX_REVOKED_NAMES)), T)
    result = merged(many, Revocation("web1", (ID,), ("FFFF",), T))
    assert len(result.serials) == MAX_REVOKED_NAMES
    assert result.serials[0] == "1" and result.serials[-1] == "FFFF"


A = Revocation("a", (f"spiffe://{TD}/host/a",), ("0A",), T + 10)
B = Revocation("b", (f"spiffe://{TD}/host/b",), (), T + 20)


@pytest.mark.parametrize(
    ("now", "expected"),
    [(T, (A, B)), (T + 9, (A, B)), (T + 10, (B,)), (T + 20, ())],
    ids=["now", "just-before-a-ends", "a-ended", "all-ended"],
)
def test_in_force_prunes_by_the_clock(now: int, expected: tuple[Revocation, ...]) -> None:
    assert in_force((A, B), dt.datetime.fromtimestamp(now, dt.UTC)) == expected


def test_in_force_drops_an_entry_that_names_nothing() -> None:
    assert in_force((A, Revocation("c", (), (), T + 10)), NOW) == (A,)


REJOINED = Revocation("b", B.ids, (), T + 20, before=T - 5)


@pytest.mark.parametrize(
    ("joining", "expected"),
    [
        ((), {"a": A, "b": B}),
        # certificates signed from now on start at now - backdate (5 minutes for a day)
        (("a",), {"a": Revocation("a", A.ids, ("0A",), T + 10, before=T - 300), "b": B}),
        (("c",), {"a": A, "b": B}),  # never revoked: nothing to readmit
    ],
    ids=["nobody", "a-joins-again", "a-new-name"],
)
def test_a_name_joining_again_keeps_its_id_revoked_for_earlier_certificates(
    joining: tuple[str, ...], expected: dict[str, Revocation]
) -> None:
    assert readmitted({"a": A, "b": B}, joining, NOW, 86400) == expected


def test_a_name_that_joined_again_keeps_its_time_on_later_joins() -> None:
    """A later ``join`` (to converge) must not revoke the certificate the rejoin signed."""
    later = NOW + dt.timedelta(hours=1)
    assert readmitted({"b": REJOINED}, ["b"], later, 86400) == {"b": REJOINED}


def test_serial_of_spells_it_as_ssl_does() -> None:
    root = make_ca().root.cert
    assert serial_of(cert_pem(root).decode()) == f"{root.serial_number:X}"
    assert serial_of("") == serial_of("not a certificate") == ""
