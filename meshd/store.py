"""Versioned documents (registry, config, policy, certs), applied atomically.

meshctl pushes each document as a JSON object with an integer ``version``.
A push is validated fully before anything changes, an older version is
refused, and the previous document is kept for rollback. Each kind has a
validator (JSON object -> parsed value, raising a MeshError that names the
field) and an apply hook (parsed value -> None) that swaps the value into the
running daemon. With a directory, documents persist as ``<kind>.json`` and
``<kind>.prev.json`` (0600, written atomically) and are read again at start.

The daemon puts the stored documents on top of its files at start and at
SIGHUP (``meshd.documents``); one that no longer validates (an expired pushed
certificate, a registry an older meshd accepted) is *set aside*: moved to
``<kind>.rejected.json``, reported on /stats and /metrics, and meshd runs on
the files until a new document of that kind is pushed.

``put`` and ``rollback`` are synchronous and serialized by a lock, so the
admin API may run them in a worker thread: apply hooks must then only swap
references (or hop to the event loop themselves).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from meshd.errors import ConfigError, MeshError
from meshd.files import sync_directory, write_temp
from meshd.paths import pushed_document
from meshd.schema import TOO_DEEP, Fields
from meshd.stats import KINDS, SetAside

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
        self._set_aside: dict[str, SetAside] = {}
        self._lock = threading.RLock()  # re-entered by record and set_aside in a transaction

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
            value = _validated(kind, slot, fresh)
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
            value = _validated(kind, slot, target)
            self._install(kind, slot, value, target, slot.current)
            return PutResult("applied", target["version"])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold off every put and rollback for the block (a reload reads, decides, swaps)."""
        with self._lock:
            yield

    def documents(self) -> dict[str, Doc]:
        """The current document of each kind that has one (copies)."""
        return {k: _copy_required(s.current) for k, s in self._slots.items() if s.current}

    def load_persisted(self) -> dict[str, int]:
        """Read the stored document of each registered kind; return the versions.

        Nothing is validated or applied here: the daemon puts the documents on
        top of its files and sets aside what no longer validates. A file that
        cannot even be read as a document is set aside at once.
        """
        if self.directory is None:
            return {}
        with self._lock:
            for kind in self._slots:
                self._load(self.directory, kind)
        return self.versions()

    def set_aside(self, kind: str, reason: str) -> None:
        """Stop using the current ``kind`` document: moved to ``<kind>.rejected.json``, reported."""
        with self._lock:
            slot = self._slot(kind)
            version = None if slot.current is None else int(slot.current["version"])
            slot.current = slot.previous = None
            kept = self._move_aside(kind)
            kept_at = None if kept is None else str(kept)
            self._set_aside[kind] = SetAside(version, reason, kept_at, time.time())
        log.error(
            "set aside the pushed %s document%s (%s), running without it: %s",
            kind,
            "" if version is None else f" version {version}",
            kept or "not kept",
            reason,
        )

    def set_aside_documents(self) -> dict[str, SetAside]:
        """The documents set aside and not yet followed by a push (or rollback), by kind."""
        return dict(self._set_aside)

    def record(self, kind: str, doc: Doc) -> None:
        """Make ``doc`` the current document without applying it: the caller runs it already.

        For the registry file meshd read itself: its version is the one later
        pushes are compared with. Stored best effort (the file is read again
        at every start).
        """
        with self._lock:
            slot = self._slot(kind)
            fresh = _canonical(kind, doc)
            try:
                staged = self._stage(kind, fresh, slot.current)
            except ApplyError as e:
                log.warning("%s (kept in memory only)", e.message)
                staged = []
            slot.current, slot.previous = fresh, slot.current
            _commit(staged)  # a set-aside push stays reported: only a new push answers it

    def _load(self, directory: Path, kind: str) -> None:
        path, slot = pushed_document(directory, kind), self._slots[kind]
        try:
            slot.current = _read(path, kind)
        except ConfigError as e:
            kept = self._move_aside(kind)
            kept_at = None if kept is None else str(kept)
            self._set_aside[kind] = SetAside(None, e.message, kept_at, time.time())
            log.error("set aside %s, running without it: %s", path, e.message)
            return
        if slot.current is not None:
            slot.previous = _read_quietly(directory / f"{kind}.prev.json", kind)

    def _move_aside(self, kind: str) -> Path | None:
        if self.directory is None:
            return None
        path = pushed_document(self.directory, kind)
        kept = path.with_name(f"{kind}.rejected.json")
        try:
            path.replace(kept)  # kept for the operator to look at; never read again
        except FileNotFoundError:
            return None
        except OSError:
            log.exception("cannot move %s aside", path)
            return None
        return kept

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
        self._set_aside.pop(kind, None)
        _commit(staged)

    def _stage(self, kind: str, new: Doc, old: Doc | None) -> list[tuple[Path, Path]]:
        if self.directory is None:
            return []
        pairs = [(pushed_document(self.directory, kind), new)]
        if old is not None:
            pairs.insert(0, (self.directory / f"{kind}.prev.json", old))
        else:  # a previous left from before a document was set aside is not ours to restore
            (self.directory / f"{kind}.prev.json").unlink(missing_ok=True)
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


def _validated(kind: str, slot: _Slot, doc: Doc) -> Any:
    """``slot``'s value for ``doc``; nesting too deep for a validator is a refusal, not a 500."""
    try:
        return slot.validate(_copy_required(doc))
    except RecursionError:
        raise ConfigError(f"{kind}: {TOO_DEEP}") from None


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


def _read_quietly(path: Path, kind: str) -> Doc | None:
    """A previous document, if it reads (a broken one only costs the rollback)."""
    try:
        return _read(path, kind)
    except ConfigError as e:
        log.warning("ignoring %s: %s", path, e.message)
        return None


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
