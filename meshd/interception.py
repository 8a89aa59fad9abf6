"""``meshd rules apply|remove``: install this host's redirect rules from its config.

Run by ``meshd-rules.service`` at boot (before the network is up) and by
meshctl; needs root (iptables). The rule set is derived from the config and
the registry (the newer of the config's file and the last pushed one;
``meshd.rules`` renders it); applying is one ``iptables-restore
--noflush`` after a ``--test`` of the same document, plus a route that sends
virtual IPs to ``lo`` so that connect() reaches the nat hook at all (without
the rules, such connections go nowhere: nothing leaks).

Every writer of the rules on the host takes one lock first (``flock`` on
``meshd-rules.lock`` beside the rules record): ``rules apply``, ``rules
remove``, ``meshd sync`` and meshctl's rollback script. A change is then never
made from a stale ``iptables-save``, and in open fail mode a sync that checks
"is meshd running?" cannot apply rules after meshd's stop removed them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshd.config import MeshdConfig
from meshd.errors import ProvisionError
from meshd.files import write_atomic
from meshd.registry import Registry
from meshd.rules import apply_document, fingerprint, remove_document, ruleset
from meshd.runtime import effective_registry, synced_path


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise ProvisionError(f"{argv[0]} not found", hint="install iptables and iproute2") from e
    if done.returncode != 0:
        raise ProvisionError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done.stdout


# seconds: every holder is a short rules command, so waiting longer means trouble. Below
# meshctl's rollback deadline (20 s): a guarded apply fails before its rollback could run.
LOCK_WAIT = 10.0


def lock_path(config: MeshdConfig) -> Path:
    return config.interception.rules_record.with_name("meshd-rules.lock")


@contextmanager
def rules_lock(config: MeshdConfig, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the host's rules lock (``apply`` and ``remove`` expect it held)."""
    path = lock_path(config)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ProvisionError(f"cannot open the rules lock {path}: {e.strerror}") from e
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProvisionError(
                        f"another command has held the rules lock {path} for {wait:g}s",
                        hint=f"see which one with: lslocks | grep {path.name}",
                    ) from None
                time.sleep(0.05)
            except OSError as e:
                raise ProvisionError(f"cannot lock {path}: {e.strerror}") from e
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def locked_config(path: Path) -> Iterator[MeshdConfig]:
    """Hold the rules lock; yield the config as it is once held (a rollback may restore it)."""
    with rules_lock(MeshdConfig.load(path)):
        yield MeshdConfig.load(path)


def unit_active(unit: str) -> bool:
    """Is the systemd unit active or reloading (not starting, stopping or stopped)?"""
    argv = ["systemctl", "is-active", "--quiet", unit]
    try:
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    except FileNotFoundError as e:
        raise ProvisionError("systemctl not found", hint="--while-active needs systemd") from e


def apply(config: MeshdConfig, registry: Registry | None = None) -> str:
    """Install (or replace) the rules for ``registry`` (default: the effective one).

    The caller holds ``rules_lock``: this reads the nat table and writes it back.
    """
    rules = ruleset(config, registry if registry is not None else effective_registry(config))
    document = apply_document(rules, _run(["iptables-save", "-t", "nat"]))
    _run(["iptables-restore", "--test", "--noflush"], document)
    _run(["iptables-restore", "--noflush"], document)
    _run(["ip", "route", "replace", rules.vip_range, "dev", "lo"])
    _record(config.interception.rules_record, fingerprint(rules))
    return document


def _record(path: Path, digest: str | None) -> None:
    """Note which rule set is installed (in /run: gone at reboot, like the rules themselves).

    meshctl compares it with the rule set it wants, to tell drift from a match.
    """
    try:
        if digest is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, (digest + "\n").encode(), 0o644)
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror}") from e


def remove(config: MeshdConfig) -> bool:
    """Take out our rules and route; False when there were none (the caller holds the lock)."""
    document = remove_document(_run(["iptables-save", "-t", "nat"]))
    if document is not None:
        _run(["iptables-restore", "--noflush"], document)
    routes = _run(["ip", "route", "show", config.interception.vip_range, "dev", "lo"])
    if routes.strip():
        _run(["ip", "route", "del", config.interception.vip_range, "dev", "lo"])
    _record(config.interception.rules_record, None)
    try:  # without the rules, no registry is "in place" any more
        synced_path(config).unlink(missing_ok=True)
    except OSError as e:
        raise ProvisionError(f"cannot remove {synced_path(config)}: {e.strerror}") from e
    return document is not None
