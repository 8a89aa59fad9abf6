"""The machine side of the testbed: processes, cgroups, links, iptables, mounts.

Small functions over /proc, /sys/fs/cgroup, `ip` and `iptables`. Every one of
them is scoped by a name or prefix the caller owns; none guesses by process
name, so nothing that is not the testbed's is ever touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from pathlib import Path

from meshd.errors import ProvisionError

from . import plan

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_HIERARCHIES = ("systemd", "unified", "memory")


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool, raising `ProvisionError` with its stderr when `check` and it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"{argv[0]} failed: {exc}", hint="is it installed?") from exc
    if check and result.returncode != 0:
        raise ProvisionError(
            f"`{' '.join(argv)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


# --- processes -------------------------------------------------------------


def read_proc(pid: int, name: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except OSError:
        return None


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def proc_start(pid: int) -> int | None:
    """The start time of a live (non-zombie) process, in clock ticks since boot."""
    stat = read_proc(pid, "stat")
    if stat is None:
        return None
    state, start = plan.parse_stat(stat)
    return None if state in ("Z", "X") else start


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, if given, started at `start`."""
    actual = proc_start(pid)
    return actual is not None and (start is None or actual == start)


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def nspid(pid: int) -> list[int]:
    return plan.parse_nspid(read_proc(pid, "status") or "")


def cmdline(pid: int) -> str:
    return (read_proc(pid, "cmdline") or "").replace("\0", " ").strip()


# --- cgroups ---------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    """The host's cgroup in every hierarchy this machine has (v1 hybrid or pure v2)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / name]
    return [CGROUP_ROOT / h / name for h in V1_HIERARCHIES if (CGROUP_ROOT / h).is_dir()]


def make_cgroups(name: str) -> list[Path]:
    dirs = cgroup_dirs(name)
    for d in dirs:
        d.mkdir(exist_ok=True)
    return dirs


def cgroup_pids(name: str) -> set[int]:
    """Every process in the host's cgroups, nested ones included."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for dirpath, _dirs, _files in os.walk(top):
            procs = Path(dirpath, "cgroup.procs")
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def remove_cgroups(name: str) -> list[str]:
    """rmdir the host's cgroups, deepest first; returns what could not be removed."""
    failed = []
    for top in cgroup_dirs(name):
        if not top.exists():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                Path(dirpath).rmdir()
            except OSError as exc:
                failed.append(f"{dirpath}: {exc.strerror}")
    return failed


def existing_cgroups(prefix: str) -> list[str]:
    """Top-level cgroup dirs named after this prefix, in any hierarchy."""
    found = [str(p) for p in CGROUP_ROOT.glob(f"{prefix}-*") if p.is_dir()]
    found += [str(p) for p in CGROUP_ROOT.glob(f"*/{prefix}-*") if p.is_dir()]
    return sorted(found)


# --- links and addresses ---------------------------------------------------


def link_names() -> list[str]:
    out = run(["ip", "-o", "link", "show"]).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def links_of(prefix: str) -> list[str]:
    """Our bridge and any veth nspawn made for our hosts (``vb-PREFIX-hN``)."""
    return [n for n in link_names() if n.startswith((f"{prefix}-", f"vb-{prefix}-"))]


def used_networks() -> list[ipaddress.IPv4Network]:
    text = run(["ip", "-o", "-4", "addr", "show"]).stdout
    text += run(["ip", "-4", "route", "show", "table", "all"]).stdout
    return plan.route_networks(text)


def create_bridge(name: str, address: str, prefixlen: int) -> None:
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "add", f"{address}/{prefixlen}", "dev", name])
    run(["ip", "link", "set", name, "up"])


def add_address6(link: str, address: str, prefixlen: int) -> None:
    """An IPv6 address on ``link``, usable at once (no duplicate address detection)."""
    run(["ip", "-6", "addr", "add", f"{address}/{prefixlen}", "dev", link, "nodad"])


def delete_link(name: str) -> None:
    run(["ip", "link", "delete", name], check=False)


# --- iptables --------------------------------------------------------------


def _forward_chain() -> str:
    if shutil.which("iptables") is None:
        return ""
    return run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout


def allow_bridge_forwarding(bridge: str, prefix: str) -> bool:
    """Allow bridge-to-bridge traffic if FORWARD drops by default; True if a rule was added."""
    if not plan.forward_policy_drops(_forward_chain()):
        return False
    run(["iptables", "-w", "-I", "FORWARD", *plan.forward_rule(bridge, prefix)])
    return True


def forward_rules_of(prefix: str) -> list[list[str]]:
    return plan.rules_to_delete(_forward_chain(), prefix)


def remove_forward_rules(prefix: str) -> None:
    for args in forward_rules_of(prefix):
        run(["iptables", "-w", *args], check=False)


# --- mounts ----------------------------------------------------------------


def mounts_mentioning(needle: str) -> list[str]:
    """``pid N: MOUNTPOINT`` for every mount, in any process's namespace, naming `needle`."""
    hits: list[str] = []
    seen: set[str] = set()
    for pid in all_pids():
        ns = _mount_ns(pid)
        if ns is None or ns in seen:
            continue
        seen.add(ns)
        hits += [
            f"pid {pid}: {m}"
            for m in plan.mountinfo_hits(read_proc(pid, "mountinfo") or "", needle)
        ]
    return hits


def _mount_ns(pid: int) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            send_signal(pid, signal.SIGKILL)
