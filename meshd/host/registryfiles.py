"""The registry files on a host: the config's, the pushed one, and the sync note.

meshd reads its registry file at start and on SIGHUP (``load_registry``);
the root-run helpers (``meshd rules``, ``meshd hosts``, ``meshd sync``) follow
pushes without a running daemon to ask, through the copy the DocumentStore
keeps (``effective_registry``); ``meshd sync`` notes the version whose rules
and /etc/hosts names it put in place (``mark_synced``), which meshd reports
on /stats (``synced_version``) and meshctl waits for after a push. Where
these files are comes from ``meshd.paths``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from meshd import paths
from meshd.config import MeshdConfig
from meshd.errors import ConfigError
from meshd.files import write_atomic
from meshd.registry import ANY, Registry, check_vip_range


def load_registry(path: Path | None, vip_range: str, mesh_host: str = ANY) -> Registry:
    """A registry file (an empty registry when there is none), checked against ``vip_range``
    and where meshd listens for links (``check_vip_range``)."""
    if path is None or not path.exists():
        return Registry()
    try:
        doc = json.loads(path.read_text(), parse_constant=_not_json)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: {e.msg}") from e
    except (ValueError, RecursionError) as e:  # NaN, or an integer past 4300 digits
        raise ConfigError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    registry = Registry.from_dict(doc, str(path))
    return check_vip_range(registry, vip_range, str(path), mesh_host=mesh_host)


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def pushed_registry_path(config: MeshdConfig) -> Path | None:
    """Where meshd's DocumentStore keeps the pushed registry: ``<state_dir>/registry.json``."""
    return None if config.state_dir is None else paths.pushed_document(config.state_dir, "registry")


def synced_path(config: MeshdConfig) -> Path:
    """Where ``meshd sync`` notes the registry version it applied: next to the rules record
    (``meshd.paths.RunFiles.synced`` says why there)."""
    return paths.RunFiles(config.interception.rules_record).synced


def mark_synced(config: MeshdConfig, version: int) -> None:
    """Note that the rules and /etc/hosts names of registry ``version`` are in place.

    Written by root (meshd-sync.service), 0644 so that meshd can report it on
    /stats, where meshctl waits for it after a push.
    """
    path = synced_path(config)
    doc = {"registry_version": version, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        write_atomic(path, (json.dumps(doc) + "\n").encode(), 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}", hint="run this as root") from e


def synced_version(config: MeshdConfig) -> int | None:
    """The registry version ``meshd sync`` last applied; None when it never ran (or unreadable)."""
    try:
        doc = json.loads(synced_path(config).read_text())
    except (OSError, ValueError):
        return None
    version = doc.get("registry_version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def effective_registry(config: MeshdConfig) -> Registry:
    """The newer (by version) of the config's registry file and the pushed one meshd persisted.

    For root-run helpers (``meshd rules``, ``meshd hosts``) that must follow
    pushes without a running daemon to ask. On a tie the pushed document wins:
    it is the one meshd loads at start.
    """
    bootstrap = _readable_registry(config.registry, config)
    pushed = _readable_registry(pushed_registry_path(config), config)
    return pushed if pushed.version >= bootstrap.version else bootstrap


def _readable_registry(path: Path | None, config: MeshdConfig) -> Registry:
    try:
        return load_registry(path, config.interception.vip_range, config.listen.mesh[0])
    except OSError as e:  # the state dir is meshd's own (0700): other users cannot look inside
        raise ConfigError(
            f"{path}: cannot read: {e.strerror}", hint="run this as root (or as meshd)"
        ) from e
