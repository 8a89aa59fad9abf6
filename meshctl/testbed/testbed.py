"""A testbed: N test hosts on a private bridge, brought up, attached to, torn down.

The on-disk state (``STATE_ROOT/PREFIX/testbed.json`` plus one dir per host)
is written before anything is created on the machine, so a crashed run can
always be found and cleaned up by `cleanup_leftovers`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from meshctl.files import locked, write_atomic
from meshd.errors import ProvisionError

from . import keys, plan, system
from .host import HostContext, TestbedHost
from .image import build_image, image_path

DEFAULT_STATE_ROOT = Path("/run/meshctl-testbed")
REQUIRED_TOOLS = ("systemd-nspawn", "unshare", "nsenter", "setsid", "ip", "mount")

Progress = Callable[[str], None]
T = TypeVar("T")


def default_state_root() -> Path:
    """`MESHCTL_TESTBED_STATE` or ``/run/meshctl-testbed``."""
    return Path(os.environ.get("MESHCTL_TESTBED_STATE", str(DEFAULT_STATE_ROOT)))


class Testbed:
    """Handle on one testbed; see `Testbed.up` and `Testbed.attach`."""

    __test__ = False  # not a pytest test class

    def __init__(self, spec: plan.TestbedSpec, state_dir: Path, image: Path) -> None:
        self.spec = spec
        self.prefix = spec.prefix
        self.subnet = spec.subnet
        self.subnet6 = spec.subnet6
        self.bridge = spec.bridge
        self.persistent = spec.persistent
        self.state_dir = state_dir
        self.known_hosts = state_dir / "known_hosts"
        self.client_key = state_dir / "client_key"
        self.hosts = [TestbedHost(h, state_dir, self._context(h, image)) for h in spec.hosts]
        self._down = False

    def __repr__(self) -> str:
        return f"Testbed({self.prefix!r}, {self.subnet!r}, hosts={len(self.hosts)})"

    @property
    def subnets(self) -> tuple[str, ...]:
        """The IPv4 /24 and the IPv6 /64 of the bridge (what a capture of the wire covers)."""
        return (self.subnet, self.subnet6) if self.subnet6 else (self.subnet,)

    def _context(self, me: plan.HostSpec, image: Path) -> HostContext:
        net = ipaddress.IPv4Network(self.subnet)
        pub = self.state_dir / "client_key.pub"
        seed = {
            "etc/hostname": me.name + "\n",
            "etc/hosts": plan.render_hosts_file(me, self.spec.hosts),
            "etc/systemd/network/10-host0.network": plan.render_network_file(
                me.address, net.prefixlen, me.address6
            ),
            "root/.ssh/authorized_keys": pub.read_text() if pub.exists() else "",
        }
        return HostContext(image, self.bridge, self.known_hosts, self.client_key, seed)

    # --- up ------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        hosts: int = 3,
        *,
        prefix: str | None = None,
        subnet: str | None = None,
        persistent: bool = False,
        progress: Progress = print,
        timeout: float = 120.0,
    ) -> Testbed:
        """Bring up `hosts` test hosts and wait until all are ready."""
        _preflight()
        cleanup_leftovers()
        image = build_image(progress)
        tb = cls._create(hosts, prefix, subnet, persistent, image)
        try:
            tb._boot(progress, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                tb.down()
            raise
        return tb

    @classmethod
    def _create(
        cls, count: int, prefix: str | None, subnet: str | None, persistent: bool, image: Path
    ) -> Testbed:
        root = default_state_root()
        with _state_lock(root):
            spec = _new_spec(count, prefix, subnet, persistent, root)
            state_dir = root / spec.prefix
            state_dir.mkdir(mode=0o700)
            write_atomic(state_dir / "testbed.json", spec.to_json().encode(), 0o644)
            net, net6 = ipaddress.IPv4Network(spec.subnet), ipaddress.IPv6Network(spec.subnet6)
            system.create_bridge(spec.bridge, plan.gateway_address(net), net.prefixlen)
            system.add_address6(spec.bridge, plan.gateway_address(net6), net6.prefixlen)
        system.allow_bridge_forwarding(spec.bridge, spec.prefix)
        keys.write_keypair(state_dir / "client_key", f"meshctl-testbed@{spec.prefix}")
        return cls(spec, state_dir, image)

    def _boot(self, progress: Progress, timeout: float) -> None:
        started = time.monotonic()
        progress(
            f"testbed {self.prefix}: {len(self.hosts)} hosts on {self.bridge} "
            f"{self.subnet} {self.subnet6}"
        )
        for h in self.hosts:
            h.create()
        self.known_hosts.write_text(
            "".join(
                keys.known_hosts_entry(h.address, (h.dir / "ssh_host_ed25519_key.pub").read_text())
                for h in self.hosts
            )
        )
        for h in self.hosts:
            h.launch()
        _parallel(lambda h: h.wait_ready(timeout), self.hosts)
        progress(f"testbed {self.prefix}: ready in {time.monotonic() - started:.1f} s")

    # --- attach / down -------------------------------------------------------

    @classmethod
    def attach(cls, prefix: str, state_root: Path | None = None) -> Testbed:
        """Rebuild the handle of a running testbed from its state dir."""
        state_dir = (state_root or default_state_root()) / prefix
        spec = _read_spec(state_dir)
        if spec is None:
            raise ProvisionError(
                f"no testbed {prefix!r} in {state_dir.parent}",
                hint=f"list them with `ls {state_dir.parent}`",
            )
        return cls(spec, state_dir, image_path())

    def down(self) -> None:
        """Tear everything down; idempotent; tries every step before reporting failures."""
        if self._down:
            return
        problems: list[str] = []
        try:
            for result in _parallel(lambda h: h.stop(), self.hosts):
                problems += result
        except Exception as exc:  # keep tearing down; reported below
            problems.append(f"stopping hosts: {exc}")
        problems += purge(self.prefix, self.state_dir)
        self._down = True
        if problems:
            raise ProvisionError(
                f"testbed {self.prefix} not fully torn down: " + "; ".join(problems),
                hint="run cleanup again, or inspect with meshctl.testbed.leftovers(prefix)",
            )

    def __enter__(self) -> Testbed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


# --- module-level helpers -----------------------------------------------------


def _preflight() -> None:
    if os.geteuid() != 0:
        raise ProvisionError("the testbed needs root", hint="run as root (or under sudo)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise ProvisionError(
            f"the testbed needs {', '.join(missing)}",
            hint="apt-get install systemd-container debootstrap iproute2 util-linux",
        )


def _new_spec(
    count: int, prefix: str | None, subnet: str | None, persistent: bool, root: Path
) -> plan.TestbedSpec:
    rng = random.SystemRandom()
    taken = {p.name for p in root.iterdir()} | {n.split("-")[0] for n in system.link_names()}
    prefix = prefix or plan.choose_prefix(rng, taken)
    if not plan.valid_prefix(prefix) or prefix in taken:
        raise ProvisionError(f"testbed prefix {prefix!r} is invalid or in use")
    used = system.used_networks()
    net = ipaddress.IPv4Network(subnet) if subnet else plan.choose_subnet(rng, used)
    if subnet and (net.prefixlen != 24 or any(net.overlaps(u) for u in used)):
        raise ProvisionError(f"subnet {subnet} is not a free /24 on this machine")
    owner = os.getpid()
    return plan.TestbedSpec(
        prefix=prefix,
        subnet=str(net),
        subnet6=str(plan.ipv6_subnet(net)),
        bridge=plan.bridge_name(prefix),
        hosts=plan.host_specs(prefix, net, count),
        owner_pid=owner,
        owner_start=system.proc_start(owner) or 0,
        persistent=persistent,
    )


def _parallel(fn: Callable[[TestbedHost], T], hosts: list[TestbedHost]) -> list[T]:
    """Run `fn` on every host in threads; wait for all, then raise the first failure."""
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        futures = [pool.submit(fn, h) for h in hosts]
    for f in futures:
        exc = f.exception()
        if exc is not None:
            raise exc
    return [f.result() for f in futures]


@contextlib.contextmanager
def _state_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    with locked(root / ".lock"):
        yield


def purge(prefix: str, state_dir: Path) -> list[str]:
    """Kill and remove whatever of `prefix` is left: processes by cgroup, links, rules, state."""
    problems: list[str] = []
    for cg in {Path(c).name for c in system.existing_cgroups(prefix)}:
        for _ in range(50):
            pids = system.cgroup_pids(cg)
            if not pids:
                break
            system.kill_all(pids)
            time.sleep(0.1)
        problems += system.remove_cgroups(cg)
    for link in system.links_of(prefix):
        system.delete_link(link)
    system.remove_forward_rules(prefix)
    shutil.rmtree(state_dir, ignore_errors=True)
    return problems


def leftovers(prefix: str, state_root: Path | None = None) -> list[str]:
    """Everything of `prefix` still on the machine; empty when it is clean."""
    state_dir = (state_root or default_state_root()) / prefix
    found = [f"cgroup {c}" for c in system.existing_cgroups(prefix)]
    found += [f"mount {m}" for m in system.mounts_mentioning(str(state_dir))]
    found += [f"link {n}" for n in system.links_of(prefix)]
    found += [f"iptables {' '.join(r[1:])}" for r in system.forward_rules_of(prefix)]
    found += [f"process {p}: {system.cmdline(p)}" for p in _processes_of(prefix, state_dir)]
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    return found


def _processes_of(prefix: str, state_dir: Path) -> list[int]:
    pids = []
    for pid in system.all_pids():
        if pid == os.getpid() or not system.pid_alive(pid):
            continue
        cmd = system.cmdline(pid)
        in_cgroup = plan.cgroup_mentions(system.read_proc(pid, "cgroup") or "", prefix)
        if in_cgroup or f"{prefix}-" in cmd or str(state_dir) in cmd:
            pids.append(pid)
    return pids


def cleanup_leftovers(state_root: Path | None = None) -> list[str]:
    """Tear down every testbed whose owner is dead and which is not persistent.

    Returns the prefixes removed.
    """
    root = state_root or default_state_root()
    if not root.is_dir():
        return []
    removed = []
    with _state_lock(root):
        for state_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            spec = _read_spec(state_dir)
            # Dirs are made and their json written under this lock: no json means a dead run.
            if spec is None or _is_orphan(spec):
                _teardown_orphan(state_dir, spec)
                removed.append(state_dir.name)
    return removed


def _read_spec(state_dir: Path) -> plan.TestbedSpec | None:
    try:
        return plan.TestbedSpec.from_json((state_dir / "testbed.json").read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _is_orphan(spec: plan.TestbedSpec) -> bool:
    return not spec.persistent and not system.pid_alive(spec.owner_pid, spec.owner_start)


def _teardown_orphan(state_dir: Path, spec: plan.TestbedSpec | None) -> None:
    if spec is not None:
        with contextlib.suppress(ProvisionError):
            Testbed(spec, state_dir, image_path()).down()
    purge(state_dir.name, state_dir)
