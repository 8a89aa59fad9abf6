"""``meshd rules apply|remove``: install this host's redirect rules from its config.

Run by ``meshd-rules.service`` at boot (before the network is up) and by
meshctl; needs root (iptables). The rule set is derived from the config and
the registry (the newer of the config's file and the last pushed one;
``meshd.rules`` renders it); applying is one ``iptables-restore
--noflush`` and one ``ip6tables-restore --noflush`` (on a kernel with IPv6),
each after a ``--test`` of its document: if the second fails, the first is
undone, so nothing is ever half-applied. Then a route that sends virtual IPs
to ``lo`` so that connect() reaches the nat hook at all (without the rules,
such connections go nowhere: nothing leaks), and, where the config names one,
the fallback script of closed fail mode (the same matches, rejected, for boot
when the rules cannot be made from the config and meshd is down).

Rules that reject live in the filter table; where the nft backend had no
filter table before ours (the fallback at boot, IPv6 that meshd does not
serve), a note in /run says so, and the table goes again with our last rule,
so that removing the rules leaves ``iptables-save`` as it was.

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
from meshd.host.registryfiles import effective_registry, synced_path
from meshd.netfacts import ipv6_absent
from meshd.paths import RunFiles
from meshd.registry import Registry
from meshd.rules import (
    FAMILIES,
    FILTER,
    NFT_FAMILIES,
    REJECT,
    TABLES,
    V4,
    Family,
    RuleSet,
    apply_document,
    empty_table,
    fallback_script,
    fingerprint,
    our_chains,
    remove_document,
    ruleset,
)


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
    return RunFiles(config.interception.rules_record).lock


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


def families() -> tuple[Family, ...]:
    """The address families whose rules this host needs (IPv6 where the kernel has it)."""
    return FAMILIES if ipv6_absent() is None else (V4,)


def fallback_marker(config: MeshdConfig) -> Path:
    """Touched by the fallback script when it ran: the rules in place are not meshd's own."""
    return RunFiles(config.interception.rules_record).fallback_ran


def filter_created(config: MeshdConfig, family: Family) -> Path:
    """Touched when our rules made the family's nft filter table: removing ours drops it."""
    return RunFiles(config.interception.rules_record).filter_created(family.version)


def _saved(family: Family) -> str:
    """The family's tables we use, as ``iptables-save`` prints them."""
    return "".join(_run([f"{family.tool}-save", "-t", t.name]) for t in TABLES)


def apply(config: MeshdConfig, registry: Registry | None = None) -> str:
    """Install (or replace) the rules for ``registry`` (default: the effective one).

    The caller holds ``rules_lock``: this reads the tables and writes them back.
    Returns the documents applied (``rules.notes`` reads what they left out).
    """
    rules = ruleset(config, registry if registry is not None else effective_registry(config))
    saved = {f: _saved(f) for f in families()}
    documents = {f: apply_document(rules, table, f) for f, table in saved.items()}
    for f, document in documents.items():
        _run([f"{f.tool}-restore", "--test", "--noflush"], document)
    for f in documents:
        if rules.action(f) == REJECT:
            _note_created(f, filter_created(config, f))
    _restore_all(documents, saved)
    _run(["ip", "route", "replace", rules.vip_range, "dev", "lo"])
    _write_fallback(config, rules)
    _record(config.interception.rules_record, fingerprint(rules))
    _unlink(fallback_marker(config))
    for f in documents:
        _drop_created(f, filter_created(config, f))
    return "".join(documents.values())


def _nft_filter(family: Family) -> bool | None:
    """Whether the nft backend has the family's filter table; None: not nft, or no nft tool."""
    if "nf_tables" not in _run([family.tool, "-V"]):
        return None
    nft = NFT_FAMILIES[family]
    try:
        tables = _run(["nft", "list", "tables", nft]).splitlines()
    except ProvisionError:  # no nft to list it with, nor to drop it later
        return None
    return f"table {nft} {FILTER.name}" in tables


def _note_created(family: Family, marker: Path) -> None:
    """Touch ``marker`` if the nft backend has no filter table yet (ours will make it)."""
    if not marker.exists() and _nft_filter(family) is False:
        try:
            write_atomic(marker, b"", 0o644)
        except OSError as e:
            raise ProvisionError(f"cannot write {marker}: {e.strerror}") from e


def _drop_created(family: Family, marker: Path) -> None:
    """Drop the filter table our rules made, once nothing of ours (or anyone's) is in it."""
    if not marker.exists():
        return
    saved = _run([f"{family.tool}-save", "-t", FILTER.name])
    if our_chains(saved, FILTER):
        return  # still ours: it goes with our last rule
    if empty_table(saved, FILTER.name) and _nft_filter(family):
        _run(["nft", "delete", "table", NFT_FAMILIES[family], FILTER.name])
    _unlink(marker)  # anyone else's rules in it make it theirs


def _restore_all(documents: dict[Family, str], saved: dict[Family, str]) -> None:
    """Each family's document in turn; on a failure the ones already in are undone."""
    done: list[Family] = []
    try:
        for f, document in documents.items():
            _run([f"{f.tool}-restore", "--noflush"], document)
            done.append(f)
    except ProvisionError as e:
        for f in done:
            _undo(f, saved[f], documents[f])
        undone = " (the IPv4 rules were taken out again)" if done else ""
        raise ProvisionError(e.message + undone, hint=e.hint) from e


def _undo(family: Family, saved: str, document: str) -> None:
    """Put the tables ``document`` changed back as they were saved (a table that was not
    saved: take ours out of it)."""
    lines, changed = saved.splitlines(), document.splitlines()
    touched = [t for t in TABLES if f"*{t.name}" in changed]
    for table in touched:
        if f"*{table.name}" in lines:
            _run([f"{family.tool}-restore", "-T", table.name], saved)
    unsaved = tuple(t for t in touched if f"*{t.name}" not in lines)
    removal = remove_document(_saved(family), unsaved) if unsaved else None
    if removal is not None:
        _run([f"{family.tool}-restore", "--noflush"], removal)


def _write_fallback(config: MeshdConfig, rules: RuleSet) -> None:
    path = config.interception.fallback_rules
    if path is None:
        return
    created = {f: str(filter_created(config, f)) for f in FAMILIES}
    script = fallback_script(rules, str(fallback_marker(config)), created)
    try:
        write_atomic(path, script.encode(), 0o700)
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror}") from e


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise ProvisionError(f"cannot remove {path}: {e.strerror}") from e


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
    """Take out our rules (both families) and route; False when there were none.

    The caller holds the lock. The fallback script stays: it is configuration,
    and leave removes it with the rest of /etc/meshd.
    """
    removed = False
    for f in families():
        document = remove_document(_saved(f))
        if document is not None:
            _run([f"{f.tool}-restore", "--noflush"], document)
            removed = True
        _drop_created(f, filter_created(config, f))
    routes = _run(["ip", "route", "show", config.interception.vip_range, "dev", "lo"])
    if routes.strip():
        _run(["ip", "route", "del", config.interception.vip_range, "dev", "lo"])
    _record(config.interception.rules_record, None)
    _unlink(fallback_marker(config))
    _unlink(synced_path(config))  # without the rules, no registry is "in place" any more
    return removed
