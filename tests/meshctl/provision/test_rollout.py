"""Registry pushes as rows of a join's or leave's result table: charged to their own host."""

from __future__ import annotations

import pytest

from meshctl.control import Pushed
from meshctl.fleet import HostResults
from meshctl.inventory import HostSpec
from meshctl.provision.rollout import Outcome, with_pushes
from meshd.errors import ConnectError, MeshError

WEB1, API1, DB1 = (HostSpec(n, f"10.0.0.{i}") for i, n in enumerate(("web1", "api1", "db1"), 11))
APPLIED = Pushed(2, ("registry version 2 applied, rules and names follow",))
HAD_IT = Pushed(2)
DOWN = ConnectError("meshd on db1: connection refused")


def rows(outcomes: list[Outcome]) -> list[tuple[str, str, list[str], str | None]]:
    return [(o.host, o.status, o.done, o.error.message if o.error else None) for o in outcomes]


def joined(name: str, status: str = "joined", error: MeshError | None = None) -> Outcome:
    return Outcome(name, "10.0.0.9", status, done=["install meshd"], error=error)


@pytest.mark.parametrize(
    ("outcomes", "pushes", "expected"),
    [
        (  # the joining host had it already (from its files); another took it
            [joined("api1")],
            {API1: HAD_IT, WEB1: APPLIED},
            [
                ("api1", "joined", ["install meshd"], None),
                ("web1", "registry", list(APPLIED.done), None),
            ],
        ),
        (  # the joining host's push failed: its row fails, no row of its own
            [joined("db1")],
            {WEB1: HAD_IT, DB1: DOWN},
            [("db1", "failed", ["install meshd"], DOWN.message)],
        ),
        (  # another host's push failed: a row for it, the joined host stays joined
            [joined("api1")],
            {API1: APPLIED, DB1: DOWN},
            [
                ("api1", "joined", ["install meshd", *APPLIED.done], None),
                ("db1", "failed", [], DOWN.message),
            ],
        ),
        (  # a host that failed already keeps its own error
            [joined("db1", "failed", ConnectError("db1:22: no answer"))],
            {DB1: DOWN},
            [("db1", "failed", ["install meshd"], "db1:22: no answer")],
        ),
    ],
    ids=["took-it", "own-push-failed", "other-push-failed", "failed-before"],
)
def test_with_pushes_charges_each_push_to_its_host(
    outcomes: list[Outcome], pushes: HostResults[Pushed], expected: list[tuple[object, ...]]
) -> None:
    assert rows(with_pushes(outcomes, pushes)) == expected
