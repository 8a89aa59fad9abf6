"""Versioned documents (registry, config, policy, certs), applied atomically.

meshctl pushes each document as a JSON object with an integer ``version``.
A push is validated fully before anything changes, an older version is
refused, and the previous document is kept for rollback. Each kind has a
validator (JSON object -> parsed value, raising a MeshError that names the
field) and an apply hook (parsed value -> None) that swaps the value into the
running daemon. With a directory, documents persist as ``<kind>.json`` and
``<kind>.prev.json`` (0600, written atomically) and are reloaded at start.

``put`` and ``rollback`` are synchronous and serialized by a lock, so the
admin API may run them in a worker thread: apply hooks must then only swap
references (or hop to the event loop themselves).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from meshd.errors import ConfigError, MeshError
from meshd.files import sync_directory, write_temp
from meshd.schema import Fields

KINDS = ("registry", "config", "policy", "certs")

T = TypeVar("T")
Doc = dict[str, Any]

log = logging.getLogger("meshd.store")


class VersionConflictError(ConfigError):
    """A push older than the current document, or the same version with other content."""

    def __init__(self, message: str, hint: str, kind: str, current: int, offered: int) -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.current = current
        self.offered = offered


class ApplyError(MeshError):
    """A valid document could not be applied (or stored); nothing was changed."""


@dataclass(frozen=True)
class PutResult:
    status: Literal["applied", "unchanged"]
    version: int


@dataclass
class _Slot:
    validate: Callable[[Doc], Any]
    apply: Callable[[Any], None]
    current: Doc | None = None
    previous: Doc | None = None


class DocumentStore:
    """The current and previous document of each registered kind."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, validate: Callable[[Doc], T], apply: Callable[[T], None]) -> None:
        """Handle ``kind`` with ``validate`` (raise on any problem) and ``apply``."""
        if kind not in KINDS:
            raise ValueError(f"unknown document kind {kind!r}")
        self._slots[kind] = _Slot(validate, apply)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def get(self, kind: str) -> Doc | None:
        return _copy(self._slot(kind).current)

    def previous(self, kind: str) -> Doc | None:
        return _copy(self._slot(kind).previous)

    def versions(self) -> dict[str, int]:
        """The current version of each kind that has a document."""
        return {k: s.current["version"] for k, s in self._slots.items() if s.current is not None}

    def put(self, kind: str, doc: object) -> PutResult:
        """Validate, check the version, apply and keep ``doc``; raise without changing anything."""
        with self._lock:
            slot = self._slot(kind)
            fresh = _canonical(kind, doc)
            value = slot.validate(_copy_required(fresh))
            if slot.current is not None and _check_version(kind, slot.current, fresh):
                return PutResult("unchanged", fresh["version"])
            self._install(kind, slot, value, fresh, slot.current)
            return PutResult("applied", fresh["version"])

    def rollback(self, kind: str) -> PutResult:
        """Re-apply the previous document; the current one becomes the previous."""
        with self._lock:
            slot = self._slot(kind)
            if slot.previous is None or slot.current is None:
                raise ConfigError(f"no previous {kind} document to roll back to")
            target = slot.previous
            value = slot.validate(_copy_required(target))
            self._install(kind, slot, value, target, slot.current)
            return PutResult("applied", target["version"])

    def reapply(self, kind: str) -> None:
        """Validate and apply the current document again (after files under it were re-read)."""
        with self._lock:
            slot = self._slot(kind)
            if slot.current is not None:
                slot.apply(slot.validate(_copy_required(slot.current)))

    def load_persisted(self) -> dict[str, int]:
        """Validate and apply the stored document of each registered kind; return the versions."""
        if self.directory is None:
            return {}
        with self._lock:
            loaded = {kind: self._load(self.directory, kind) for kind in self._slots}
        return {kind: version for kind, version in loaded.items() if version is not None}

    def _load(self, directory: Path, kind: str) -> int | None:
        path, slot = directory / f"{kind}.json", self._slots[kind]
        current = _read(path, kind)
        if current is None:
            return None
        try:
            value = slot.validate(_copy_required(current))
        except MeshError as e:
            raise ConfigError(f"{path}: {e.message}", hint="push a valid document again") from e
        slot.apply(value)
        slot.current = current
        slot.previous = _read(directory / f"{kind}.prev.json", kind)
        return int(current["version"])

    def _slot(self, kind: str) -> _Slot:
        slot = self._slots.get(kind)
        if slot is None:
            raise ConfigError(
                f"unknown document kind {kind!r}",
                hint=f"documents are one of: {', '.join(self._slots) or 'none registered'}",
            )
        return slot

    def _install(self, kind: str, slot: _Slot, value: Any, new: Doc, old: Doc | None) -> None:
        """Stage the files, run the hook, then swap in memory and on disk."""
        staged = self._stage(kind, new, old)
        try:
            slot.apply(value)
        except Exception as e:
            _discard(staged)
            raise ApplyError(
                f"applying {kind} version {new['version']} failed: {e}",
                hint=f"the running {kind} is unchanged; fix the cause and push again",
            ) from e
        slot.current, slot.previous = new, old
        _commit(staged)

    def _stage(self, kind: str, new: Doc, old: Doc | None) -> list[tuple[Path, Path]]:
        if self.directory is None:
            return []
        pairs = [(self.directory / f"{kind}.json", new)]
        if old is not None:
            pairs.insert(0, (self.directory / f"{kind}.prev.json", old))
        staged: list[tuple[Path, Path]] = []
        try:
            for path, doc in pairs:
                staged.append((_write_temp(path, doc), path))
        except OSError as e:
            _discard(staged)
            raise ApplyError(
                f"cannot store {kind} in {self.directory}: {e}",
                hint="check that the directory exists and is writable by meshd",
            ) from e
        return staged


def _canonical(kind: str, doc: object) -> Doc:
    """A private deep copy of ``doc`` after checking its envelope: strict JSON, a safe version."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{kind}: expected a JSON object")
    Fields(doc, kind).version()
    try:
        copied: Doc = json.loads(json.dumps(doc, allow_nan=False))
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise ConfigError(f"{kind}: not representable as JSON: {e}") from e
        raise ConfigError(
            f"{kind}: NaN and Infinity are not JSON numbers", hint="send finite numbers only"
        ) from e
    except (TypeError, RecursionError) as e:
        raise ConfigError(f"{kind}: not representable as JSON: {e}") from e
    return copied


def _check_version(kind: str, current: Doc, fresh: Doc) -> bool:
    """True when ``fresh`` is the current document again; raise when it may not replace it."""
    have, offered = current["version"], fresh["version"]
    if offered < have:
        raise VersionConflictError(
            f"{kind} version {offered} is older than the current version {have}",
            f"push a version above {have}, or roll back on purpose",
            kind,
            have,
            offered,
        )
    if offered > have:
        return False
    if _dumps(current) == _dumps(fresh):
        return True
    raise VersionConflictError(
        f"{kind} version {offered} is already applied with different content",
        f"bump the version above {have} to replace it",
        kind,
        have,
        offered,
    )


def _dumps(doc: Doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _copy(doc: Doc | None) -> Doc | None:
    return None if doc is None else _copy_required(doc)


def _copy_required(doc: Doc) -> Doc:
    copied: Doc = json.loads(json.dumps(doc))
    return copied


def _read(path: Path, kind: str) -> Doc | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    try:
        return _canonical(kind, json.loads(text))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or an integer past 4300 digits
        raise ConfigError(f"{path}: not JSON: {e}", hint="remove the file or push again") from e
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.message}", hint="remove the file or push again") from e


def _write_temp(path: Path, doc: Doc) -> Path:
    """``doc`` in a fresh temporary file beside ``path`` (0600, synced); renamed at commit."""
    return write_temp(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _commit(staged: list[tuple[Path, Path]]) -> None:
    # the current file is renamed last, so on disk it flips from old to new in one step
    for tmp, path in staged:
        try:
            tmp.replace(path)
        except OSError:  # the daemon already runs the new document; only disk lags
            log.exception("cannot store %s", path)
    if staged:
        try:
            sync_directory(staged[0][1].parent)
        except OSError:
            log.exception("cannot sync %s", staged[0][1].parent)


def _discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)
