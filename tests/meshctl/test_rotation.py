"""Where a host is in a CA rotation, and why finish refuses: pure, by tables."""

from __future__ import annotations

import pytest

from meshctl.rotation import NEW, OLD, HostRotation, refusal

READY = HostRotation("web1", "10.0.0.11", NEW, "AB", 1, "ok")


@pytest.mark.parametrize(
    ("row", "ready", "why"),
    [
        (READY, True, ""),
        (HostRotation("web1", "a", NEW, issuer=NEW), True, ""),
        (HostRotation("web1", "a", OLD), False, "web1 (serves a leaf of the old root)"),
        (
            HostRotation("web1", "a", OLD, renewal="failing", renewal_error="no issuer"),
            False,
            "web1 (serves a leaf of the old root; its renewal fails: no issuer)",
        ),
        (HostRotation("web1", "a", NEW, issuer=OLD), False, "web1 (its issuer CA is old root)"),
        (HostRotation("web1", "a", NEW, issuer="no CA"), False, "web1 (its issuer CA is missing)"),
        (HostRotation("web1", "a", error="no answer"), False, "web1 (unreachable: no answer)"),
    ],
    ids=["new-leaf", "issuer-new", "old-leaf", "old-leaf-failing", "issuer-old", "no-ca", "down"],
)
def test_a_host_is_ready_only_on_the_new_root(row: HostRotation, ready: bool, why: str) -> None:
    assert row.ready is ready
    if not ready:
        assert row.why_not() == why
    assert row.to_json()["ready"] is ready


@pytest.mark.parametrize(
    ("rows", "named"),
    [
        ([READY], None),
        ([], None),
        ([READY, HostRotation("db1", "b", OLD)], "db1 (serves a leaf of the old root)"),
        (
            [HostRotation("a1", "a", OLD), READY, HostRotation("db1", "b", error="gone")],
            "a1 (serves a leaf of the old root), db1 (unreachable: gone)",
        ),
    ],
    ids=["all-ready", "no-hosts", "one-waits", "two-wait"],
)
def test_finish_is_refused_naming_every_host_that_still_needs_the_old_root(
    rows: list[HostRotation], named: str | None
) -> None:
    problem = refusal(rows)
    if named is None:
        assert problem is None
        return
    assert problem is not None
    assert problem.message == (
        f"not finishing the CA rotation: the old root is still needed by {named}"
    )
    assert problem.hint and "meshctl ca rotate begin again" in problem.hint
