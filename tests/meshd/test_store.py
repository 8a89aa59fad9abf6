"""DocumentStore: validate fully, refuse older versions, apply atomically, keep the previous."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from meshd.errors import ConfigError
from meshd.registry import Registry
from meshd.store import ApplyError, DocumentStore, PutResult, VersionConflictError


def registry_doc(version: int, port: int = 8080) -> dict[str, Any]:
    return {"version": version, "services": {"api": {"vip": "10.255.0.2", "port": port}}}


class Target:
    """What the apply hook swaps, as the daemon's registry holder would."""

    def __init__(self, fail: bool = False) -> None:
        self.applied: list[int] = []
        self.fail = fail

    def apply(self, registry: Registry) -> None:
        if self.fail:
            raise RuntimeError("hook exploded")
        self.applied.append(registry.version)


def make_store(directory: Path | None = None, target: Target | None = None) -> DocumentStore:
    store = DocumentStore(directory)
    hook = (target or Target()).apply
    store.register("registry", lambda d: Registry.from_dict(d, "registry"), hook)
    return store


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        ([registry_doc(1)], [PutResult("applied", 1)]),
        ([registry_doc(1), registry_doc(2)], [PutResult("applied", 1), PutResult("applied", 2)]),
        ([registry_doc(1), registry_doc(1)], [PutResult("applied", 1), PutResult("unchanged", 1)]),
        ([registry_doc(0), registry_doc(7)], [PutResult("applied", 0), PutResult("applied", 7)]),
    ],
)
def test_put_results(pushes: list[dict[str, Any]], expected: list[PutResult]) -> None:
    store = make_store()
    assert [store.put("registry", d) for d in pushes] == expected
    assert store.get("registry") == pushes[-1]


@pytest.mark.parametrize(
    ("second", "error", "words"),
    [
        (registry_doc(2), VersionConflictError, ["version 2", "current version 3"]),
        (registry_doc(3, port=9090), VersionConflictError, ["version 3", "different content"]),
        (
            {"version": 4, "services": {"api": {"vip": "x", "port": 1}}},
            ConfigError,
            ["services.api.vip"],
        ),
        (
            {"version": 4, "services": {"api": {"vip": "10.0.0.1", "port": 0}}},
            ConfigError,
            ["port"],
        ),
        ({"version": "4"}, ConfigError, ["version"]),
        ({"version": True}, ConfigError, ["version"]),
        ({"version": -1}, ConfigError, ["version"]),
        ({"version": 2**53}, ConfigError, ["version", "9007199254740991"]),
        ({"version": 10**309}, ConfigError, ["version", "9007199254740991"]),
        ({"version": 4.0}, ConfigError, ["version"]),
        ({"version": float("nan")}, ConfigError, ["version"]),
        (
            {"version": 4, "services": {"api": {"vip": "10.0.0.1", "port": float("inf")}}},
            ConfigError,
            ["NaN"],
        ),
        ({"services": {}}, ConfigError, ["version"]),
        (["not", "an", "object"], ConfigError, ["JSON object"]),
        ({"version": 4, "typo": 1}, ConfigError, ["typo", "unknown field"]),
    ],
)
def test_refused_push_changes_nothing(
    second: object, error: type[Exception], words: list[str]
) -> None:
    target = Target()
    store = make_store(target=target)
    store.put("registry", registry_doc(1))
    store.put("registry", registry_doc(3))
    with pytest.raises(error) as info:
        store.put("registry", second)
    for word in words:
        assert word in str(info.value)
    assert store.get("registry") == registry_doc(3)
    assert store.previous("registry") == registry_doc(1)
    assert target.applied == [1, 3]


def test_version_conflict_is_a_config_error_with_both_versions() -> None:
    store = make_store()
    store.put("registry", registry_doc(5))
    with pytest.raises(VersionConflictError) as info:
        store.put("registry", registry_doc(4))
    assert (info.value.current, info.value.offered, info.value.kind) == (5, 4, "registry")
    assert isinstance(info.value, ConfigError)
    assert info.value.hint


def test_failing_hook_swaps_nothing(tmp_path: Path) -> None:
    target = Target()
    store = make_store(tmp_path, target)
    store.put("registry", registry_doc(1))
    target.fail = True
    with pytest.raises(ApplyError, match="hook exploded"):
        store.put("registry", registry_doc(2))
    assert store.get("registry") == registry_doc(1)
    assert store.previous("registry") is None
    assert json.loads((tmp_path / "registry.json").read_text()) == registry_doc(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.json"]


def test_rollback_reapplies_previous_and_toggles() -> None:
    target = Target()
    store = make_store(target=target)
    with pytest.raises(ConfigError, match="no previous"):
        store.rollback("registry")
    store.put("registry", registry_doc(1))
    store.put("registry", registry_doc(2))
    assert store.rollback("registry") == PutResult("applied", 1)
    assert (store.get("registry"), store.previous("registry")) == (registry_doc(1), registry_doc(2))
    assert target.applied == [1, 2, 1]
    assert store.put("registry", registry_doc(2)) == PutResult("applied", 2)


def test_returned_documents_are_copies() -> None:
    store = make_store()
    doc = registry_doc(1)
    store.put("registry", doc)
    doc["version"] = 99
    got = store.get("registry")
    assert got is not None
    got["version"] = 42
    assert store.get("registry") == registry_doc(1)


def test_unknown_kinds() -> None:
    store = make_store()
    with pytest.raises(ConfigError, match="unknown document kind 'policy'"):
        store.put("policy", {"version": 1})
    with pytest.raises(ValueError, match="unknown document kind"):
        store.register("secrets", dict, lambda _: None)
    assert store.get("registry") is None
    assert store.kinds == ("registry",)


def test_persistence_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.put("registry", registry_doc(1))
    store.put("registry", registry_doc(2))
    for name in ("registry.json", "registry.prev.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    target = Target()
    reloaded = make_store(tmp_path, target)
    assert reloaded.load_persisted() == {"registry": 2}
    assert target.applied == []  # the daemon puts them on top of its files (meshd.documents)
    assert reloaded.documents() == {"registry": registry_doc(2)}
    assert reloaded.previous("registry") == registry_doc(1)
    assert reloaded.versions() == {"registry": 2}
    with pytest.raises(VersionConflictError):
        reloaded.put("registry", registry_doc(1))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"services": {}}), "version"),
        ('{"version": 1' + "0" * 309 + ', "services": {}}', "9007199254740991"),  # older meshd's
        ('{"version": 1' + "0" * 5000 + ', "services": {}}', "not JSON"),  # past 4300 digits
        ('{"version": 3, "services": {}, "x": NaN}', "NaN"),
    ],
    ids=["not-json", "no-version", "1e309", "5000-digits", "NaN"],
)
def test_an_unreadable_persisted_document_is_set_aside_and_named(
    tmp_path: Path, content: str, words: str
) -> None:
    """Set aside, not fatal: meshd must still start on its files."""
    (tmp_path / "registry.json").write_text(content)
    (tmp_path / "registry.prev.json").write_text(json.dumps(registry_doc(1)))
    target = Target()
    store = make_store(tmp_path, target)
    assert store.load_persisted() == {}
    aside = store.set_aside_documents()["registry"]
    assert words in aside.reason and str(tmp_path / "registry.json") in aside.reason
    assert len(aside.reason) < 400  # the offending value is not echoed whole
    assert aside.kept == str(tmp_path / "registry.rejected.json")
    assert (tmp_path / "registry.rejected.json").read_text() == content  # kept to look at
    assert not (tmp_path / "registry.json").exists()
    assert (target.applied, store.documents(), store.previous("registry")) == ([], {}, None)
    store.put("registry", registry_doc(1))  # any version may follow: nothing runs
    assert store.set_aside_documents() == {}
    assert store.previous("registry") is None and not (tmp_path / "registry.prev.json").exists()


def test_set_aside_moves_the_current_document_and_reports_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.put("registry", registry_doc(1))
    store.put("registry", registry_doc(2))
    store.set_aside("registry", "expired")
    aside = store.set_aside_documents()["registry"]
    assert (aside.version, aside.reason) == (2, "expired")
    assert json.loads((tmp_path / "registry.rejected.json").read_text()) == registry_doc(2)
    assert store.get("registry") is None and store.versions() == {}
    assert store.put("registry", registry_doc(1)) == PutResult("applied", 1)


def test_record_makes_a_document_current_without_applying_it(tmp_path: Path) -> None:
    """The registry file read at SIGHUP: later pushes are compared with its version."""
    target = Target()
    store = make_store(tmp_path, target)
    store.put("registry", registry_doc(3))
    with store.transaction():  # re-entrant: the daemon records while it holds the store
        store.record("registry", registry_doc(5))
    assert (target.applied, store.versions()) == ([3], {"registry": 5})
    assert store.previous("registry") == registry_doc(3)
    assert json.loads((tmp_path / "registry.json").read_text()) == registry_doc(5)
    with pytest.raises(VersionConflictError):
        store.put("registry", registry_doc(4))


def test_load_persisted_without_files_or_directory(tmp_path: Path) -> None:
    assert make_store(tmp_path).load_persisted() == {}
    assert make_store(None).load_persisted() == {}


def test_unwritable_directory_refuses_before_applying(tmp_path: Path) -> None:
    target = Target()
    store = make_store(tmp_path / "missing", target)
    with pytest.raises(ApplyError, match="cannot store registry"):
        store.put("registry", registry_doc(1))
    assert target.applied == []
    assert store.get("registry") is None


def test_documents_are_never_written_through_a_planted_link_or_stale_file(tmp_path: Path) -> None:
    """Fresh temporary names only: a link or a 0644 left-over at the old fixed names is inert."""
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / ".registry.json.tmp").symlink_to(target)
    stale = tmp_path / ".registry.prev.json.tmp"
    stale.write_text("left over")
    stale.chmod(0o644)
    store = make_store(tmp_path)
    store.put("registry", registry_doc(1))
    store.put("registry", registry_doc(2))
    assert target.read_text() == "keep me\n"
    for name, version in (("registry.json", 2), ("registry.prev.json", 1)):
        path = tmp_path / name
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["version"] == version


def test_non_json_numbers_are_refused_anywhere_in_any_kind() -> None:
    """NaN and Infinity are not JSON: a kind that validates little must not let them in."""
    store = DocumentStore()
    store.register("policy", dict, lambda _: None)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ConfigError, match="NaN") as info:
            store.put("policy", {"version": 1, "deep": [{"x": bad}]})
        assert info.value.message.startswith("policy:")
    assert store.get("policy") is None
    store.put("policy", {"version": 2**53 - 1})
    assert store.versions() == {"policy": 2**53 - 1}


def test_a_validator_that_recurses_too_deep_is_a_config_error_naming_the_kind() -> None:
    """Whatever a validator parses (TOML, nested JSON), nesting is never a 500."""
    import tomllib  # noqa: PLC0415

    applied: list[object] = []
    store = DocumentStore()
    store.register("config", lambda d: tomllib.loads(d["toml"]), applied.append)
    deep = {"version": 1, "toml": "x = " + "[" * 5000 + "]" * 5000}
    with pytest.raises(ConfigError, match=r"^config: nested too deeply to read$"):
        store.put("config", deep)
    assert store.get("config") is None and applied == []
