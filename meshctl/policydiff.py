"""What applying a policy document would change: settings and rules, by id (pure).

A document is flattened into the ids POLICY.md §2.1 gives its parts
(``<doc>/mtls/mode``, ``<doc>/authz/services/api``, ``<doc>/allow/web-to-api``,
...) with the value each stands for, taken from ``Document.data`` (the TOML
shape); two flattenings are then compared id by id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

_IDENTITY = ("version", "name")
_SETTINGS = ("mtls", "authz")


@dataclass(frozen=True)
class Change:
    """One id that a new version of a document adds, removes or changes."""

    change: Literal["added", "removed", "changed"]
    id: str
    before: Any = None
    after: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "id": self.id, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class DocumentDiff:
    """One document: new (nothing applied by that name), changed, or unchanged."""

    name: str
    status: Literal["new", "changed", "unchanged"]
    changes: tuple[Change, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "changes": [c.to_json() for c in self.changes],
        }


def flatten(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting and rule of a document by its id."""
    found: dict[str, Any] = {}
    for key, value in data.items():
        if key in _IDENTITY:
            continue
        if key in _SETTINGS and isinstance(value, Mapping):
            found |= _settings(f"{name}/{key}", value)
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for i, entry in enumerate(value):
                rule = str(entry.get("name", i))
                found[f"{name}/{key}/{rule}"] = {k: v for k, v in entry.items() if k != "name"}
        else:
            found[f"{name}/{key}"] = value
    return found


def _settings(prefix: str, table: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            found |= {f"{prefix}/{key}/{k}": v for k, v in value.items()}
        else:
            found[f"{prefix}/{key}"] = value
    return found


def diff(name: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> DocumentDiff:
    """What replacing ``before`` (None: no such document applied) by ``after`` changes."""
    old = flatten(name, before or {})
    new = flatten(name, after)
    changes = [Change("removed", i, old[i]) for i in old if i not in new]
    changes += [Change("added", i, None, new[i]) for i in new if i not in old]
    changes += [Change("changed", i, old[i], new[i]) for i in new if i in old and old[i] != new[i]]
    changes.sort(key=lambda c: c.id)
    status: Literal["new", "changed", "unchanged"] = (
        "new" if before is None else "changed" if changes else "unchanged"
    )
    return DocumentDiff(name, status, tuple(changes))
