"""The workspace's inventory (``hosts.toml``) and its record of what was applied where.

``applied/hosts/<name>.json`` says a host joined (and with what bundle,
registry version and certificate); ``applied/registry.json`` holds the last
registry pushed, so its version only moves when its content changes. All
writes are atomic (temp file + rename) and 0600.
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
from meshctl.workspace import HOSTS_HEADER, Workspace
from meshd.errors import ConfigError
from meshd.registry import IssuerRef, Registry, Service
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
    write_atomic(_records(ws) / f"{name}.json", json.dumps(record, indent=2, sort_keys=True))


def forget_host(ws: Workspace, name: str) -> None:
    (_records(ws) / f"{name}.json").unlink(missing_ok=True)


def versioned_registry(
    ws: Workspace, services: Iterable[Service], issuers: Iterable[IssuerRef] = ()
) -> Registry:
    """The registry of ``services`` (and ``issuers``): the recorded version when unchanged,
    else the next one."""
    path = ws.root / "applied" / "registry.json"
    last: dict[str, Any] = (
        json.loads(path.read_text()) if path.exists() else {"version": 0, "services": None}
    )
    registry = Registry.of(int(last["version"]), services, issuers)
    fresh = registry.to_dict()
    if all(last.get(k) == fresh.get(k) for k in ("services", "issuers")):  # as recorded
        return registry
    return registry.with_version(registry.version + 1)


def record_registry(ws: Workspace, registry: Registry) -> None:
    path = ws.root / "applied" / "registry.json"
    write_atomic(path, json.dumps(registry.to_dict(), indent=2, sort_keys=True))
