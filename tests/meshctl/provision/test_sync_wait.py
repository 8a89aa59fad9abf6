"""After a registry push meshctl waits until the host's rules and names follow it
(meshd reports what ``meshd sync`` applied on /stats). The real thing runs in
tests/meshctl/provision/test_join_testbed.py; here a scripted meshd and a fake clock."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meshctl import control, fleet
from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.provision import layout
from meshd.config import MeshdConfig
from meshd.errors import ProvisionError
from meshd.host.registryfiles import synced_path
from meshd.stats import Stats

ENDPOINT = AdminEndpoint("web1", "10.0.0.11", 15001)
GOLDEN = Path(__file__).parent / "golden"


class ScriptedMeshd:
    """Answers /stats with each of ``synced`` in turn (the last one from then on)."""

    def __init__(self, *synced: Any, key: bool = True) -> None:
        self.synced = list(synced)
        self.key = key
        self.asked = 0

    def stats(self, endpoint: AdminEndpoint) -> Stats:
        assert endpoint == ENDPOINT
        self.asked += 1
        answer = self.synced.pop(0) if len(self.synced) > 1 else self.synced[0]
        doc = {"registry_version": 9, **({"synced_registry_version": answer} if self.key else {})}
        return Stats.from_json(doc)  # as AdminClient.stats reads the JSON


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def wait(meshd: ScriptedMeshd, version: int = 9) -> bool:
    ro = cast(fleet.Fleet, SimpleNamespace(sync_wait=15.0))
    return control._wait_synced(ro, cast(AdminClient, meshd), ENDPOINT, "web1", version)


def test_returns_once_the_rules_and_names_follow_the_pushed_version(clock: list[float]) -> None:
    meshd = ScriptedMeshd(None, 8, 9)
    assert wait(meshd) is True
    assert meshd.asked == 3 and clock[0] == pytest.approx(100.4)


def test_a_newer_synced_version_also_counts(clock: list[float]) -> None:
    assert wait(ScriptedMeshd(12)) is True


def test_a_meshd_that_does_not_report_it_is_not_waited_for(clock: list[float]) -> None:
    meshd = ScriptedMeshd(None, key=False)
    assert wait(meshd) is False
    assert meshd.asked == 1 and clock[0] == 100.0


def test_a_host_whose_rules_never_follow_is_an_error_saying_where_to_look(
    clock: list[float],
) -> None:
    with pytest.raises(ProvisionError) as caught:
        wait(ScriptedMeshd(8))
    assert caught.value.message == (
        "web1: meshd took registry version 9, but the host's redirect rules and /etc/hosts "
        "names did not follow within 15s (they follow version 8)"
    )
    assert caught.value.hint is not None
    assert "systemctl status meshd-sync.path meshd-sync.service" in caught.value.hint
    assert "journalctl -u meshd-sync" in caught.value.hint
    assert "systemctl start meshd-sync.service" in caught.value.hint
    assert clock[0] >= 115.0


def test_never_synced_says_so(clock: list[float]) -> None:
    with pytest.raises(ProvisionError, match=r"\(no meshd sync has run since the host booted"):
        wait(ScriptedMeshd(None))


def test_meshctl_and_meshd_agree_on_where_the_note_lives() -> None:
    """leave and a rollback remove it by meshctl's path; meshd writes it by the config's."""
    joined = MeshdConfig.load(GOLDEN / "meshd.toml")  # the meshd.toml join writes (golden)
    assert str(synced_path(joined)) == layout.SYNCED
    assert str(joined.interception.rules_record) == layout.RULES_RECORD
    assert layout.SYNCED in layout.REMOVED_PATHS


@pytest.mark.parametrize(
    ("synced", "fails"),
    [(9, False), (12, False), (None, False), (8, True)],
    ids=["followed", "newer", "no-note-since-boot", "behind"],
)
def test_a_push_meshd_already_had_fails_only_if_its_sync_is_behind(
    synced: int | None, fails: bool
) -> None:
    """A second run after a failed wait must not pass a host whose names never followed."""
    stats = {"registry_version": 9, "synced_registry_version": synced}
    if not fails:
        control._check_not_behind(Stats.from_json(stats), "web1", 9)
        return
    with pytest.raises(
        ProvisionError, match=r"did not follow since it was pushed \(they follow version 8\)"
    ):
        control._check_not_behind(Stats.from_json(stats), "web1", 9)


def test_the_registry_lists_each_hosts_ipv6_addresses(tmp_path: Path) -> None:
    """From the facts of hosts joining now, else from the join record of the others."""
    from meshctl import state  # noqa: PLC0415
    from meshctl.control import registry_for  # noqa: PLC0415
    from meshctl.fleet import SshOptions  # noqa: PLC0415
    from meshctl.inventory import HostSpec, Inventory, ServiceSpec  # noqa: PLC0415
    from meshctl.provision.rollout import Rollout  # noqa: PLC0415
    from tests.meshctl.test_state import workspace  # noqa: PLC0415

    ws = workspace(tmp_path)
    hosts = tuple(
        HostSpec(name, f"10.0.0.{i}", services=(ServiceSpec(name[:-1], 8000 + i),))
        for i, name in enumerate(("web1", "api1", "db1"), start=1)
    )
    inventory = Inventory(hosts).allocate_vips()
    state.record_join(ws, "web1", {"address": "10.0.0.1", "ipv6": ["fd00::1"]})
    state.record_join(ws, "api1", {"address": "10.0.0.2"})  # joined before IPv6 was gathered
    ro = Rollout(ws, SshOptions())
    registry = registry_for(ro, inventory, ("web1", "api1", "db1"), {"db1": ("fd00::3",)})
    endpoints = {s: e for s, v in registry.to_dict()["services"].items() for e in v["endpoints"]}
    assert endpoints["web"]["ipv6"] == ["fd00::1"] and endpoints["db"]["ipv6"] == ["fd00::3"]
    assert "ipv6" not in endpoints["api"]
