"""The policy set's version (pure) and the workspace store's checks of several files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshctl import policies
from meshctl.policies import Source, next_version
from tests.meshctl.helpers import NOW, TD

SET = {"mesh": {"version": 1, "name": "mesh"}}
HOSTS = {"web1": [{"version": 1, "name": "mesh"}]}
LAST = {"version": 4, "documents": SET, "hosts": HOSTS}


@pytest.mark.parametrize(
    ("last", "content", "hosts", "expected"),
    [
        (None, SET, HOSTS, 1),  # the first push
        (None, {}, {}, 1),
        (LAST, SET, HOSTS, 4),  # nothing changed: hosts behind get the same version
        (LAST, SET, {}, 4),  # no joined host now
        (LAST, SET, {**HOSTS, "db1": [{"new": 1}]}, 4),  # a host never given any: no conflict
        (LAST, {}, HOSTS, 5),  # a document went away
        (LAST, {**SET, "b": {"name": "b"}}, HOSTS, 5),  # one came
        (LAST, SET, {"web1": []}, 5),  # what web1 enforces changed (its services did)
    ],
)
def test_the_version_moves_when_the_set_or_what_a_host_gets_changes(
    last: dict[str, Any] | None, content: dict[str, Any], hosts: dict[str, Any], expected: int
) -> None:
    assert next_version(last, content, hosts) == expected


ONE = 'version = 1\nname = "one"\n\n[authz]\ndefault = "deny"\n'


@pytest.mark.parametrize(
    ("texts", "cross", "expected"),
    [
        ([ONE], True, []),
        ([ONE, ONE.replace('"one"', '"two"')], True, [("b.toml", 5, "P040")]),
        ([ONE, ONE.replace('"one"', '"two"')], False, []),  # apply checks the whole set
        ([ONE, ONE], True, [("b.toml", 2, "P006")]),  # one document name, two files
        (["version = 2\n", ONE], True, [("a.toml", 1, "P004"), ("a.toml", 1, "P007")]),
    ],
)
def test_check_reports_every_file_then_the_cross_document_rules(
    texts: list[str], cross: bool, expected: list[tuple[str, int, str]]
) -> None:
    sources = [Source(name, text) for name, text in zip(("a.toml", "b.toml"), texts, strict=False)]
    checked = policies.check(sources, TD, NOW, cross)
    assert sorted((p.file, p.line, p.code) for p in checked.problems) == expected


def test_upserted_swaps_documents_in_by_name(tmp_path: Path) -> None:
    current = policies.check([Source("s/one.toml", ONE)], TD, NOW)
    new = policies.check([Source("new/one.toml", ONE.replace("deny", "audit"))], TD, NOW)
    [(doc, file)] = policies.upserted(current, new)
    assert (doc.name, file, doc.authz_default.value if doc.authz_default else "") == (
        "one",
        "new/one.toml",
        "audit",
    )
