"""Facts + desired state -> the steps that make a host match. Pure.

A plan is empty when the host already matches, so re-running ``join`` on a
converged host changes nothing. Steps are imperatives (``InstallBundle``);
each says what it does and why, and ``--dry-run`` prints them with the
rendered files and the rules document.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshctl.provision import layout
from meshctl.provision.desired import DesiredHost, FileSpec
from meshctl.provision.facts import HostFacts
from meshd import hostsfile
from meshd.identity import SpiffeId
from meshd.pki import spiffe_ids
from meshd.registry import Registry
from meshd.rules import (
    NAT,
    TABLES,
    V4,
    V6,
    Family,
    apply_document,
    our_jumps,
    remove_document,
    table_of,
)

RENEW_AT = 2 / 3  # renew a certificate once two thirds of its life have passed


@dataclass(frozen=True)
class Step:
    why: str

    @property
    def title(self) -> str:
        raise NotImplementedError

    def detail(self) -> str:
        """What a dry run shows beneath the title (a rendered file, a rules document)."""
        return ""


@dataclass(frozen=True)
class InstallBundle(Step):
    version: str

    @property
    def title(self) -> str:
        return f"install meshd {self.version} into {layout.OPT}/{self.version}"


@dataclass(frozen=True)
class CreateUser(Step):
    @property
    def title(self) -> str:
        return f"create the system user {layout.USER}"


@dataclass(frozen=True)
class Enroll(Step):
    identities: tuple[SpiffeId, ...]
    lifetime: int  # seconds

    @property
    def title(self) -> str:
        return "make a key on the host, sign its CSR, install the certificate"

    def detail(self) -> str:
        return "\n".join(str(i) for i in self.identities)


@dataclass(frozen=True)
class WriteFile(Step):
    file: FileSpec

    @property
    def title(self) -> str:
        return f"write {self.file.path} ({self.file.mode:o}, {self.file.owner})"

    def detail(self) -> str:
        text = self.file.content.decode(errors="replace")
        return text if len(text) < 4000 and "\0" not in text else f"{len(text)} bytes"


@dataclass(frozen=True)
class ReloadSystemd(Step):
    @property
    def title(self) -> str:
        return "systemctl daemon-reload"


@dataclass(frozen=True)
class EnableUnits(Step):
    units: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"enable {' '.join(self.units)}"


@dataclass(frozen=True)
class StartMeshd(Step):
    action: str  # "start" | "restart" | "reload"

    @property
    def title(self) -> str:
        return f"systemctl {self.action} meshd (and wait until it is ready)"


@dataclass(frozen=True)
class ApplyRules(Step):
    document: str
    files: tuple[FileSpec, ...] = ()  # the config/registry they come from, written under the guard
    document6: str = ""  # the ip6tables document, on a host with IPv6

    @property
    def title(self) -> str:
        what = " with " + ", ".join(f.path for f in self.files) if self.files else ""
        return f"apply the redirect rules{what} (undone unless a new SSH connection confirms)"

    def detail(self) -> str:
        return self.document + (f"# ip6tables:\n{self.document6}" if self.document6 else "")


@dataclass(frozen=True)
class WriteHostsBlock(Step):
    content: str  # the whole new /etc/hosts
    block: str  # our part of it ("" when it is taken out)
    before: str = ""  # sha256 of the file it replaces: a file changed meanwhile is left alone
    path: str = layout.HOSTS_FILE

    @property
    def title(self) -> str:
        return f"update the meshd block of {layout.HOSTS_FILE}"

    def detail(self) -> str:
        return self.block or "(block removed)"


@dataclass(frozen=True)
class PruneBundles(Step):
    versions: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"remove old meshd versions {', '.join(self.versions)}"


# leave
@dataclass(frozen=True)
class StopUnits(Step):
    units: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"stop and disable {' '.join(self.units)}"


@dataclass(frozen=True)
class RemoveRules(Step):
    document: str | None  # as the facts saw it (shown); removal reads the tables again
    route: bool
    drop_nat_table: bool = False  # our first rules created the nat table
    document6: str | None = None  # the same for the ip6 nat table
    drop_nat6_table: bool = False

    @property
    def title(self) -> str:
        return "remove the redirect rules" + (" and the virtual-IP route" if self.route else "")

    def detail(self) -> str:
        v6 = f"# ip6tables:\n{self.document6}" if self.document6 else ""
        return (self.document or "") + v6


@dataclass(frozen=True)
class RemovePaths(Step):
    paths: tuple[str, ...]

    @property
    def title(self) -> str:
        return "remove meshd's program, configuration, state and units"

    def detail(self) -> str:
        return "\n".join(self.paths)


@dataclass(frozen=True)
class RemoveUser(Step):
    @property
    def title(self) -> str:
        return f"remove the system user {layout.USER}"


@dataclass(frozen=True)
class Plan:
    host: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not self.steps

    def has(self, kind: type[Step]) -> bool:
        return any(isinstance(s, kind) for s in self.steps)


def cert_problem(
    facts: HostFacts, desired: DesiredHost, issuer: x509.Certificate, now: dt.datetime
) -> str | None:
    """Why the host needs a new certificate, or None when its certificate is good."""
    if not facts.key_mode:
        return "no key on the host yet"
    if facts.key_mode != f"600 {layout.USER}":
        return f"the key has mode/owner {facts.key_mode}"
    if not facts.cert_pem:
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(facts.cert_pem.encode())
    except ValueError:
        return "the certificate cannot be read"
    if set(spiffe_ids(cert)) != set(desired.identities):
        return "its identities differ from the inventory's"
    if not _issued(cert, issuer):
        return "it was not issued by this mesh's issuing CA"
    if _revoked(cert, desired.registry):
        return (
            "the registry revokes it (by serial, or by ID: it started before the host joined again)"
        )
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if now >= cert.not_valid_before_utc + life * RENEW_AT:
        return f"it expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (past 2/3 of its life)"
    return None


def _revoked(cert: x509.Certificate, registry: Registry) -> bool:
    """Whether the registry the host gets revokes ``cert`` (a revoked name joining again)."""
    ids = [str(i) for i in spiffe_ids(cert)]
    start = cert.not_valid_before_utc.timestamp()
    return registry.revocation(ids, format(cert.serial_number, "X"), start) is not None


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _files(facts: HostFacts, desired: DesiredHost) -> list[WriteFile]:
    steps = []
    for spec in desired.files:
        current = facts.hashes.get(spec.path)
        if spec.path == layout.REGISTRY:  # pushed registries supersede the file: compare those
            if facts.registry != desired.registry.to_dict():
                steps.append(WriteFile("registry changed", spec))
            continue
        if current != spec.sha256:
            why = "missing" if current is None else "content differs"
            steps.append(WriteFile(why, spec))
    return steps


def plan_join(
    facts: HostFacts, desired: DesiredHost, issuer: x509.Certificate, now: dt.datetime
) -> Plan:
    """The steps that turn ``facts`` into ``desired``; empty when they match."""
    steps: list[Step] = []
    launcher = desired.file(layout.LAUNCHER)
    new_bundle = desired.bundle_version not in facts.versions or (
        facts.hashes.get(layout.LAUNCHER) != launcher.sha256
    )
    if desired.bundle_version not in facts.versions:
        steps.append(InstallBundle("not installed yet", desired.bundle_version))
    writes = _files(facts, desired)
    steps += [w for w in writes if w.file.path == layout.LAUNCHER]  # keygen runs it
    if not facts.user_exists:
        steps.append(CreateUser("missing"))
    problem = _cert_problem(facts, desired, issuer, now)
    if problem:
        steps.append(Enroll(problem, desired.identities, desired.leaf_lifetime))
    rules_due = _rules_due(facts, desired)
    guarded = (layout.CONFIG, layout.REGISTRY) if rules_due else ()  # written by ApplyRules
    steps += [w for w in writes if w.file.path != layout.LAUNCHER and w.file.path not in guarded]
    written = {w.file.path for w in writes}
    units_changed = bool(written & set(layout.UNIT_FILES.values()))
    if units_changed:
        steps.append(ReloadSystemd("unit files changed"))
    disabled = tuple(u for u in layout.ENABLED_UNITS if facts.enabled.get(u) != "enabled")
    if disabled:
        steps.append(EnableUnits("not enabled", disabled))
    # rules before meshd (re)starts: only the guarded apply may install a new rule set
    if rules_due:
        files = tuple(w.file for w in writes if w.file.path in guarded)
        v4 = apply_document(desired.rules, facts.tables(V4))
        v6 = apply_document(desired.rules, facts.tables(V6), V6) if facts.ipv6 else ""
        steps.append(ApplyRules(rules_due, v4, files, v6))
    steps += _meshd_action(facts, written, bool(problem), new_bundle)
    hosts = hostsfile.with_block(facts.hosts, desired.vips)
    if hosts != facts.hosts:
        block = hostsfile.render_block(desired.vips) if desired.vips else ""
        steps.append(WriteHostsBlock("service names changed", hosts, block, _sha(facts.hosts)))
    old = tuple(v for v in facts.versions if v not in ("bin", desired.bundle_version))
    if old:
        steps.append(PruneBundles("superseded", old))
    return Plan(desired.name, tuple(steps))


def _cert_problem(
    facts: HostFacts, desired: DesiredHost, issuer: x509.Certificate, now: dt.datetime
) -> str | None:
    try:
        return cert_problem(facts, desired, issuer, now)
    except Exception as e:  # a malformed certificate on the host: replace it
        return f"the certificate is unusable ({e})"


def _meshd_action(
    facts: HostFacts, written: set[str], enrolled: bool, new_bundle: bool
) -> list[Step]:
    if facts.meshd.active != "active":
        return [StartMeshd(f"meshd is {facts.meshd.active}", "start")]
    restart_on = {layout.CONFIG, layout.LAUNCHER, layout.UNIT_FILES["meshd.service"]}
    if new_bundle or written & restart_on:
        return [StartMeshd("its program, config or unit changed", "restart")]
    if enrolled or written & {layout.REGISTRY, layout.TRUST_BUNDLE}:
        return [StartMeshd("certificate, trust bundle or registry changed", "reload")]
    return []


def _rules_due(facts: HostFacts, desired: DesiredHost) -> str:
    """Why the rules must be applied (under the guard), or "" when they are in place."""
    if facts.rollback_pending:
        return "a join was cut short before it confirmed its rules"
    if not rules_present(facts, desired):
        return "not installed"
    if facts.rules_record != desired.rules_fingerprint:
        return "rule set changed"
    return ""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def rules_present(facts: HostFacts, desired: DesiredHost | None = None) -> bool:
    """Our jumps and chains are in place (with as many rules, in the tables ``desired`` has).

    Both families where the host has IPv6: without the ip6tables rules, strict
    mode and closed fail mode would hold for IPv4 only.
    """
    families: list[tuple[Family, str]] = [(V4, desired.rules_document if desired else "")]
    if facts.ipv6:
        families.append((V6, desired.rules_document6 if desired else ""))
    saved = [(facts.tables(f), document) for f, document in families]
    if not facts.route or any(len(our_jumps(text)) != len(NAT.jumps) for text, _ in saved):
        return False  # two jumps, in one table: redirecting (nat) or rejecting (filter)
    if len(our_jumps(facts.nat, NAT)) != len(NAT.jumps):
        return False  # meshd's own rules always redirect IPv4 (the boot fallback rejects it)
    return desired is None or all(_rule_counts(t) == _rule_counts(d) for t, d in saved)


def _rule_counts(saved: str) -> dict[tuple[str, str], int]:
    """Rules per table and meshd chain: iptables-save rewrites rule text, not their number."""
    counts = {(t.name, c): 0 for t in TABLES for c in t.chains}
    for table in TABLES:
        for line in table_of(saved, table.name).splitlines():
            key = (table.name, line.split(" ", 2)[1] if line.startswith("-A ") else "")
            if key in counts:
                counts[key] += 1
    return counts


def plan_leave(facts: HostFacts) -> Plan:
    """The steps that take everything of ours off the host; empty when nothing is left."""
    steps: list[Step] = []
    active_units = tuple(u for u, state in facts.enabled.items() if state not in ("", "not-found"))
    if active_units or facts.meshd.active not in ("inactive", ""):
        steps.append(StopUnits("meshd is installed", layout.UNITS))
    removal, removal6 = remove_document(facts.tables(V4)), remove_document(facts.tables(V6))
    tables_made = facts.nat_created or facts.nat6_created
    if removal is not None or removal6 is not None or facts.route or tables_made:
        steps.append(
            RemoveRules(
                "rules installed",
                removal,
                facts.route,
                facts.nat_created,
                removal6,
                facts.nat6_created,
            )
        )
    hosts = hostsfile.without_block(facts.hosts)
    if hosts != facts.hosts:
        steps.append(WriteHostsBlock("service names of the mesh", hosts, "", _sha(facts.hosts)))
    if facts.installed:
        steps.append(RemovePaths("files of meshd", layout.REMOVED_PATHS))
    if facts.user_exists and facts.user_created:
        steps.append(RemoveUser("created at join"))
    return Plan(facts.hostname, tuple(steps))
