"""The workspace's inventory (``hosts.toml``) and its record of what was applied where.

``applied/hosts/<name>.json`` says a host joined (and with what bundle,
registry version and certificate serial); ``applied/registry.json`` holds the
last registry pushed, so its version only moves when its content changes, and
``applied/<kind>.json`` likewise the last of other documents pushed to every
host (the ``trust`` bundle of a CA rotation). ``applied/revoked.json`` holds
the revocations of hosts that left or were revoked (``meshctl.revocation``).
All writes are atomic (temp file + rename) and 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import toml

from meshctl import files
from meshctl.inventory import Inventory
from meshctl.revocation import merged
from meshctl.workspace import HOSTS_HEADER, Workspace
from meshd.errors import ConfigError
from meshd.registry import IssuerRef, Registry, Revocation, Service
from meshd.schema import read_toml


@contextlib.contextmanager
def locked(ws: Workspace) -> Iterator[None]:
    """Hold the workspace's lock: one command at a time changes hosts.toml and applied/."""
    path = ws.root / ".lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(
                f"another meshctl command is changing {ws.root} ({holder})",
                hint="wait for it to finish, then run this again",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def inventory_path(ws: Workspace) -> Path:
    return ws.root / "hosts.toml"


def load_inventory(ws: Workspace) -> Inventory:
    path = inventory_path(ws)
    try:
        doc = read_toml(path.read_text(), str(path)) if path.exists() else {}
    except ConfigError as e:
        raise ConfigError(e.message, hint="fix the TOML syntax") from e
    return Inventory.from_dict(doc, str(path))


def save_inventory(ws: Workspace, inventory: Inventory) -> None:
    write_atomic(inventory_path(ws), HOSTS_HEADER + toml.dumps(inventory.to_toml_dict()))


def write_atomic(path: Path, text: str) -> None:
    """A workspace file: 0600, in directories made 0700."""
    for directory in reversed(path.parents):  # mkdir's mode only applies to the last one
        if not directory.exists():
            directory.mkdir(mode=0o700)
    files.write_atomic(path, text.encode())


def _records(ws: Workspace) -> Path:
    return ws.root / "applied" / "hosts"


def joined(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The record of every joined host, by name."""
    directory = _records(ws)
    if not directory.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def record_join(ws: Workspace, name: str, record: dict[str, Any]) -> None:
    """``name`` joined: its record (a revocation of the name stays, ``readmitted`` by the
    join: ``meshctl.revocation``)."""
    write_atomic(_records(ws) / f"{name}.json", json.dumps(record, indent=2, sort_keys=True))


def forget_host(ws: Workspace, name: str) -> None:
    (_records(ws) / f"{name}.json").unlink(missing_ok=True)


def versioned_registry(
    ws: Workspace,
    services: Iterable[Service],
    issuers: Iterable[IssuerRef] = (),
    revoked: Iterable[Revocation] = (),
) -> Registry:
    """The registry of these parts: the recorded version when unchanged, else the next one."""
    registry = Registry.of(0, services, issuers, revoked)
    return registry.with_version(_version(ws, "registry", registry.to_dict()))


def versioned_document(ws: Workspace, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """``content`` as a document of ``kind`` for every host, versioned like the registry."""
    return {**content, "version": _version(ws, kind, {**content, "version": 0})}


def record_document(ws: Workspace, kind: str, doc: dict[str, Any]) -> None:
    write_atomic(ws.root / "applied" / f"{kind}.json", json.dumps(doc, indent=2, sort_keys=True))


def _version(ws: Workspace, kind: str, doc: dict[str, Any]) -> int:
    """The version recorded for ``kind`` when ``doc`` (any version) is what was recorded,
    else the next one; 1 when nothing was."""
    path = ws.root / "applied" / f"{kind}.json"
    if not path.exists():
        return 1
    last: dict[str, Any] = json.loads(path.read_text())
    version = int(last.pop("version"))
    same = last == {k: v for k, v in doc.items() if k != "version"}  # by the same writer
    return version if same else version + 1


def record_registry(ws: Workspace, registry: Registry) -> None:
    record_document(ws, "registry", registry.to_dict())


def _revoked_path(ws: Workspace) -> Path:
    return ws.root / "applied" / "revoked.json"


def revocations(ws: Workspace) -> dict[str, Revocation]:
    """Every revocation the workspace keeps, by host (expired ones too: ``in_force`` prunes)."""
    path = _revoked_path(ws)
    if not path.exists():
        return {}
    doc = {"version": 1, "revoked": json.loads(path.read_text())}
    return {r.host: r for r in Registry.from_dict(doc, str(path)).revoked}


def record_revocation(ws: Workspace, entry: Revocation) -> Revocation:
    """Keep ``entry``, merged with the host's earlier one; what is kept now."""
    entries = revocations(ws)
    entries[entry.host] = merged(entries.get(entry.host), entry)
    save_revocations(ws, entries.values())
    return entries[entry.host]


def save_revocations(ws: Workspace, entries: Iterable[Revocation]) -> None:
    doc = Registry.of(1, (), (), entries).to_dict().get("revoked", [])
    write_atomic(_revoked_path(ws), json.dumps(doc, indent=2, sort_keys=True))
