"""The registry files on a host: the newer of /etc's and the pushed one, and the sync note."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshd.cli import main
from meshd.config import MeshdConfig
from meshd.errors import ConfigError
from meshd.host.registryfiles import (
    effective_registry,
    mark_synced,
    pushed_registry_path,
    synced_version,
)
from meshd.registry import Registry
from meshd.store import DocumentStore
from tests.meshd import configs

CONFIG = configs.minimal()
STATE = 'state_dir = "state"\n'


def registry_doc(version: int, service: str, address: str = "10.0.0.20") -> dict[str, Any]:
    endpoint = {"host": "db1", "address": address, "port": 5432}
    return {
        "version": version,
        "services": {service: {"vip": "10.255.0.9", "port": 5432, "endpoints": [endpoint]}},
    }


def make_config(tmp_path: Path, etc: int | None, pushed: int | None, state: bool = True) -> Path:
    """A config in ``tmp_path``; registry files only for the versions given."""
    (tmp_path / "meshd.toml").write_text(CONFIG + (STATE if state else ""))
    if etc is not None:
        (tmp_path / "registry.json").write_text(json.dumps(registry_doc(etc, "frometc")))
    if pushed is not None:
        store = DocumentStore(tmp_path / "state")  # written exactly as meshd writes it
        (tmp_path / "state").mkdir()
        store.register("registry", lambda d: Registry.from_dict(d, "registry"), lambda r: None)
        store.put("registry", registry_doc(pushed, "fromstate", "10.0.0.21"))
    return tmp_path / "meshd.toml"


@pytest.mark.parametrize(
    ("etc", "pushed", "state", "version", "service"),
    [
        (None, None, True, 0, None),  # neither: an empty registry
        (None, None, False, 0, None),  # no state_dir configured
        (3, None, True, 3, "frometc"),  # only /etc (nothing pushed yet)
        (3, None, False, 3, "frometc"),
        (None, 4, True, 4, "fromstate"),  # only the pushed one
        (3, 7, True, 7, "fromstate"),  # a push after join
        (9, 7, True, 9, "frometc"),  # a re-join wrote a newer file than the last push
        (5, 5, True, 5, "fromstate"),  # a tie: the pushed one, as meshd loads at start
    ],
)
def test_effective_registry(
    tmp_path: Path,
    etc: int | None,
    pushed: int | None,
    state: bool,
    version: int,
    service: str | None,
) -> None:
    registry = effective_registry(MeshdConfig.load(make_config(tmp_path, etc, pushed, state)))
    assert registry.version == version
    assert [s.name for s in registry.services] == ([service] if service else [])


def test_pushed_registry_path_is_where_the_store_writes(tmp_path: Path) -> None:
    config = MeshdConfig.load(make_config(tmp_path, None, 2))
    assert pushed_registry_path(config) == tmp_path / "state" / "registry.json"
    assert pushed_registry_path(MeshdConfig.load(make_config(tmp_path, 1, None, False))) is None


def test_a_broken_pushed_registry_is_named(tmp_path: Path) -> None:
    path = make_config(tmp_path, 3, None)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "registry.json").write_text("{nope")
    with pytest.raises(ConfigError, match=r"state/registry\.json: line 1"):
        effective_registry(MeshdConfig.load(path))


@pytest.mark.parametrize(("etc", "pushed", "address"), [(3, 7, "10.0.0.21"), (9, 7, "10.0.0.20")])
def test_rules_show_follows_the_newer_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], etc: int, pushed: int, address: str
) -> None:
    assert main(["rules", "show", "--config", str(make_config(tmp_path, etc, pushed))]) == 0
    shown = capsys.readouterr().out
    assert f"-d {address}/32" in shown
    assert shown.count("--dport 5432") == 1  # only the newer document's endpoint


def synced_config(tmp_path: Path) -> MeshdConfig:
    """A config whose rules record (and so the sync note) lives in ``tmp_path/run``."""
    (tmp_path / "run").mkdir()
    record = f'[interception]\nrules_record = "{tmp_path / "run" / "rules.sha256"}"\n'
    (tmp_path / "meshd.toml").write_text(CONFIG + STATE + record)
    return MeshdConfig.load(tmp_path / "meshd.toml")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),  # meshd sync never ran
        ('{"registry_version": 4, "at": "2026-11-27T18:00:00+00:00"}', 4),
        ('{"registry_version": true}', None),
        ('{"registry_version": "4"}', None),
        ("[4]", None),
        ("not json", None),
    ],
)
def test_synced_version_reads_only_a_well_formed_note(
    tmp_path: Path, content: str | None, expected: int | None
) -> None:
    config = synced_config(tmp_path)
    if content is not None:
        (tmp_path / "run" / "meshd-synced.json").write_text(content)
    assert synced_version(config) == expected


def test_mark_synced_replaces_the_note_beside_the_rules_record(tmp_path: Path) -> None:
    config = synced_config(tmp_path)
    mark_synced(config, 3)
    mark_synced(config, 5)
    assert synced_version(config) == 5
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["meshd-synced.json"]  # no tmp
    assert (tmp_path / "run" / "meshd-synced.json").stat().st_mode & 0o777 == 0o644


def test_mark_synced_replaces_a_planted_link_and_never_writes_through_it(tmp_path: Path) -> None:
    """Root writes the note: a link where it goes is replaced, its target left alone."""
    config = synced_config(tmp_path)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    target.chmod(0o600)
    (tmp_path / "run" / "meshd-synced.json").symlink_to(target)
    mark_synced(config, 4)
    assert target.read_text() == "keep me\n" and target.stat().st_mode & 0o777 == 0o600
    note = tmp_path / "run" / "meshd-synced.json"
    assert not note.is_symlink() and synced_version(config) == 4


def test_sync_looks_again_when_a_push_lands_during_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd folds a push that arrives mid-run into the running sync: it must look again.

    Only iptables is replaced (the netns test in test_interception runs it for real):
    the first rules apply is where the second push lands.
    """
    from meshd.host import interception  # noqa: PLC0415

    config_path = make_config(tmp_path, 3, 5)
    record = f'[interception]\nrules_record = "{tmp_path / "rules.sha256"}"\n'
    config_path.write_text(config_path.read_text() + record)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    applied: list[int] = []

    def apply(config: MeshdConfig, registry: Registry | None = None) -> str:
        assert registry is not None
        applied.append(registry.version)
        if len(applied) == 1:  # a push lands now, written as meshd writes it
            (tmp_path / "state" / "registry.json").write_text(
                json.dumps(registry_doc(6, "pushedmeanwhile", "10.0.0.22"))
            )
        return ""

    monkeypatch.setattr(interception, "apply", apply)
    assert main(["sync", "--config", str(config_path), "--hosts-file", str(hosts)]) == 0
    assert applied == [5, 6]
    assert synced_version(MeshdConfig.load(config_path)) == 6
    assert "pushedmeanwhile.mesh" in hosts.read_text()
