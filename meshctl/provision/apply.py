"""Carry out a plan on one host: the only provisioning code that changes a host.

Files travel to a staging directory owned by the SSH user and are moved into
place by one root command each batch (atomically: a temp file next to the
target, then rename), so non-root users work through sudo. Redirect rules go
in under a dead-man switch: a transient systemd timer on the host restores
the previous nat table unless a *new* SSH connection confirms in time.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.inventory import VIP_RANGE
from meshctl.provision import guard, layout, tables
from meshctl.provision.desired import FileSpec
from meshctl.provision.plan import (
    ApplyRules,
    CreateUser,
    EnableUnits,
    Enroll,
    InstallBundle,
    Plan,
    PruneBundles,
    ReloadSystemd,
    RemovePaths,
    RemoveRules,
    RemoveUser,
    StartMeshd,
    Step,
    StopUnits,
    WriteFile,
    WriteHostsBlock,
)
from meshctl.transport import Transport, check
from meshd.errors import ProvisionError
from meshd.identity import SpiffeId
from meshd.rules import remove_document

Signer = Callable[[bytes, tuple[SpiffeId, ...], int], bytes]  # CSR PEM, ids, seconds -> chain
APPLY_RULES = f"{layout.LAUNCHER} rules apply --config {layout.CONFIG}"
# meshd reload triggers the reload and takes the verdict from meshd itself (/stats on its
# local socket), never from its log: anything a mesh peer gets into the log could forge it
RELOAD = f"{layout.LAUNCHER} reload --config {layout.CONFIG} --unit meshd.service"
# the tables our rules made (nft backend), dropped by leave once empty: nat tables as the
# guard noted them at join (steps carry it), filter tables as meshd's rejecting rules noted
# them in /run (the boot fallback, IPv6 that meshd does not serve)
FILTER_CREATED = {"iptables": layout.FILTER_CREATED, "ip6tables": layout.FILTER6_CREATED}


@dataclass
class Applier:
    """Runs plans over one transport. ``reconnect`` opens a new SSH connection to the host."""

    transport: Transport
    reconnect: Callable[[], Transport]
    bundle: Path | None = None
    sign: Signer | None = None
    report: Callable[[str], None] = lambda _: None
    rollback_deadline: float = guard.ROLLBACK_DEADLINE
    rules_command: str = APPLY_RULES
    done: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.transport.name

    def apply(self, plan: Plan) -> list[str]:
        """Run every step in order; stop at the first failure (later steps depend on it)."""
        steps = list(plan.steps)
        while steps:
            step = steps.pop(0)
            if isinstance(step, WriteFile):  # one upload and one root command for a run of files
                batch = [step.file]
                while steps and isinstance(following := steps[0], WriteFile):
                    batch.append(following.file)
                    steps.pop(0)
                self.report(f"writing {len(batch)} file(s)")
                self.write_files(batch)
                self.done += [f"write {f.path}" for f in batch]
                continue
            self.report(step.title)
            self.run_step(step)
            self.done.append(step.title)
        return self.done

    def root(self, command: str, what: str, timeout: float = 120) -> str:
        return check(self.transport.run(command, timeout=timeout), what, self.host).stdout

    def run_step(self, step: Step) -> None:  # noqa: PLR0912 - one flat case per kind of step
        match step:
            case InstallBundle():
                self._install_bundle(step)
            case CreateUser():
                self._create_user()
            case Enroll():
                self._enroll(step)
            case WriteFile():
                self.write_files([step.file])
            case ReloadSystemd():
                self._daemon_reload()
            case EnableUnits():
                self._enable(step)
            case StartMeshd():
                self._start(step)
            case ApplyRules():
                self.apply_rules_guarded(self.rules_command, step.files)
            case WriteHostsBlock():
                self._hosts(step)
            case PruneBundles():
                self._prune(step)
            case StopUnits():
                self._stop(step)
            case RemoveRules():
                self._remove_rules(step)
            case RemovePaths():
                self._remove_paths(step)
            case RemoveUser():
                self._remove_user()
            case _:
                raise ProvisionError(f"{self.host}: no way to carry out {type(step).__name__}")

    # files
    def upload(self, files: dict[str, bytes]) -> tuple[str, str]:
        """Put ``files`` (name -> content) into a new staging directory owned by the SSH user.

        Returns the directory and the shell line that removes it when the root
        command using it exits, however it exits.
        """
        result = self.transport.run("mktemp -d /tmp/meshctl.XXXXXXXX", root=False, timeout=30)
        stage = check(result, "creating a staging directory", self.host).stdout.strip()
        for name, data in files.items():
            self.transport.put(f"{stage}/{name}", data, 0o600)
        return stage, f"trap 'rm -rf {stage}' EXIT"

    def write_files(self, files: list[FileSpec]) -> None:
        stage, cleanup = self.upload({str(i): spec.content for i, spec in enumerate(files)})
        commands = ["set -e", cleanup]
        for i, spec in enumerate(files):
            tmp = shlex.quote(f"{spec.path}.meshctl-tmp")
            commands += [
                f"mkdir -p {shlex.quote(str(Path(spec.path).parent))}",
                f"cp {stage}/{i} {tmp}",
                f"chmod {spec.mode:o} {tmp}",
                f"chown {spec.owner}:{spec.owner} {tmp}",
                f"mv -f {tmp} {shlex.quote(spec.path)}",
            ]
        self.root("\n".join(commands), "writing files")

    # steps
    def _install_bundle(self, step: InstallBundle) -> None:
        if self.bundle is None:
            raise ProvisionError(f"{self.host}: no meshd bundle was built for this host")
        stage, cleanup = self.upload({"meshd.tar.gz": self.bundle.read_bytes()})
        target = f"{layout.OPT}/{step.version}"
        self.root(
            f"set -e; {cleanup}; rm -rf {target}.tmp; "
            f"mkdir -p {target}.tmp {layout.OPT}/bin; "
            f"tar -xzf {stage}/meshd.tar.gz -C {target}.tmp; "
            f"python3 -I -m compileall -q {target}.tmp/lib >/dev/null 2>&1 || true; "
            f"rm -rf {target}; mv {target}.tmp {target}",
            "unpacking meshd",
            timeout=300,
        )

    def _daemon_reload(self) -> None:
        self.root("systemctl daemon-reload", "daemon-reload")

    def _create_user(self) -> None:
        self.root(  # the marker: leave removes the user only if it was ours
            f"id -u {layout.USER} >/dev/null 2>&1 || {{ useradd --system --no-create-home "
            f"--home-dir {layout.STATE} --shell /usr/sbin/nologin {layout.USER} && "
            f"mkdir -p {layout.ETC} && touch {layout.USER_CREATED}; }}",
            "creating the meshd user",
        )

    def _enroll(self, step: Enroll) -> None:
        if self.sign is None:
            raise ProvisionError(f"{self.host}: a certificate is needed but no signer was given")
        ids = " ".join(f"--id {shlex.quote(str(i))}" for i in step.identities)
        key, cert = f"{layout.KEY}.new", f"{layout.CERT}.new"  # the old pair stays until both exist
        csr = self.root(
            f"set -e; mkdir -p {layout.ETC}; umask 077; "
            f"{layout.LAUNCHER} keygen --force --key {key} --csr - {ids}; "
            f"chown {layout.USER}:{layout.USER} {key}; chmod 600 {key}",
            "making the host's key",
        )
        chain = self.sign(csr.encode(), step.identities, step.lifetime)
        self.write_files([FileSpec(cert, chain)])
        self.root(
            f"mv -f {key} {layout.KEY} && mv -f {cert} {layout.CERT}", "installing the identity"
        )

    def _enable(self, step: EnableUnits) -> None:
        self.root(
            f"systemctl enable --quiet {' '.join(step.units)} && systemctl start meshd-sync.path",
            "enabling units",
        )

    def _start(self, step: StartMeshd) -> None:
        if step.action == "reload":
            self._reload()
            return
        result = self.transport.run(f"systemctl {step.action} meshd.service", timeout=60)
        if not result.ok:
            log = self.transport.run("journalctl -u meshd.service -n 8 --no-pager -o cat").stdout
            last = [line for line in log.splitlines() if line.strip()][-3:]
            raise ProvisionError(
                f"{self.host}: meshd did not {step.action}: {' / '.join(last) or result.stderr}",
                hint=f"see journalctl -u meshd on {self.host}",
            )

    def _reload(self) -> None:
        """Reload meshd and take its own verdict: a reload it refused keeps the old state."""
        result = self.transport.run(RELOAD, timeout=60)
        if not result.ok:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            why = lines[0].removeprefix("meshd: error: ") if lines else f"exit {result.status}"
            raise ProvisionError(
                f"{self.host}: meshd refused the new files: {why}",
                hint=f"meshd runs on with the old ones; see journalctl -u meshd on {self.host}",
            )

    def _hosts(self, step: WriteHostsBlock) -> None:
        """Replace /etc/hosts atomically (through a symlink; in place if it is bind-mounted)."""
        content = step.content.encode("utf-8", "surrogateescape")
        stage, cleanup = self.upload({"hosts": content})
        result = self.transport.run(
            f"set -e; {cleanup}; h=$(readlink -f {shlex.quote(step.path)})\n"
            'now=$(sha256sum < "$h" | cut -d" " -f1)\n'
            # it already says what we want (meshd-sync wrote the same block meanwhile)
            f'[ "$now" != {hashlib.sha256(content).hexdigest()} ] || exit 0\n'
            # someone else changed the file since meshctl read it: write nothing, say so
            f'[ "$now" = {step.before} ] || exit 3\n'
            f't="$h.meshctl-tmp"; cp {stage}/hosts "$t"\n'
            'chmod --reference="$h" "$t"; chown --reference="$h" "$t"\n'
            'mv -f "$t" "$h" 2>/dev/null || { cat "$t" > "$h"; rm -f "$t"; }',
            timeout=60,
        )
        if result.status == 3:
            raise ProvisionError(
                f"{self.host}: {step.path} changed while meshctl was working; it was left as it is",
                hint="run the command again",
            )
        check(result, f"writing {step.path}", self.host)

    def _prune(self, step: PruneBundles) -> None:
        paths = " ".join(shlex.quote(f"{layout.OPT}/{v}") for v in step.versions)
        self.root(f"rm -rf {paths}", "removing old meshd versions")

    def _stop(self, step: StopUnits) -> None:
        units = " ".join(step.units)
        self.root(
            # a join cut short: its rollback timer, or the rollback already running (its
            # nat table restore would race the removal below, which reads and writes apart)
            f"systemctl stop '{guard.ROLLBACK_UNIT}-*.timer' '{guard.ROLLBACK_UNIT}-*.service' "
            "2>/dev/null; "
            f"systemctl disable --now --quiet {units} 2>/dev/null; "
            f"systemctl reset-failed {units} 2>/dev/null; true",
            "stopping meshd",
        )

    def _remove_rules(self, step: RemoveRules) -> None:
        """Take out what of ours is in the tables *now* (stopping meshd may have taken some)."""
        drops = {"iptables": step.drop_nat_table, "ip6tables": step.drop_nat6_table}
        files, commands = {}, ["set -e"]
        for tool in tables.TOOLS:
            only_with_ipv6 = f"{tables.HAS_IPV6} || exit 0; " if tool == "ip6tables" else ""
            saved = self.root(
                f"{only_with_ipv6}{tool}-save -t nat; {tool}-save -t filter",
                "reading the nat and filter tables",
            )
            document = remove_document(saved)
            if document:
                files[f"{tool}.rules"] = document.encode()
                commands.append(f"{tool}-restore -w 5 --noflush $stage/{tool}.rules")
        if files:
            stage, cleanup = self.upload(files)
            commands[1:1] = [cleanup, f"stage={stage}"]
        commands.append(f"ip route del {VIP_RANGE} dev lo 2>/dev/null || true")
        commands += [tables.drop_empty(tool, "nat") for tool in tables.TOOLS if drops[tool]]
        commands += [
            f"if [ -f {marker} ]; then\n{tables.drop_empty(tool, 'filter')}\nfi"
            for tool, marker in FILTER_CREATED.items()
        ]
        self.root("\n".join(commands), "removing the redirect rules")

    def _remove_paths(self, step: RemovePaths) -> None:
        paths = " ".join(shlex.quote(p) for p in step.paths)
        self.root(f"rm -rf {paths} && systemctl daemon-reload", "removing meshd's files")

    def _remove_user(self) -> None:
        self.root(
            f"userdel {layout.USER}; getent group {layout.USER} >/dev/null && "
            f"groupdel {layout.USER}; true",
            "removing the meshd user",
        )

    # the dead-man switch (provision/guard.py)
    def apply_rules_guarded(self, command: str, files: tuple[FileSpec, ...] = ()) -> None:
        """Write ``files`` and run ``command`` so that they undo themselves unless confirmed."""
        guard.guarded(
            self.transport,
            self.reconnect,
            command,
            lambda: self.write_files(list(files)) if files else None,
            self.rollback_deadline,
        )
