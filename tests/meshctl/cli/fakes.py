"""A scripted mesh for in-process CLI tests: hosts that answer meshctl's SSH commands, and meshd.

``FakeHost`` is a ``FakeTransport`` holding a small model of a Debian host
(files, the meshd user, units, the nat table, /etc/hosts). It changes the
model as each command ``meshctl.provision.apply`` sends would change the
host, and answers the fact script from it, so that ``join`` and ``leave``
run their real plans, apply and checks against it. ``ScriptedMeshd`` is the
admin API of every host's meshd (PUT /registry, /stats, the issuer's
POST /issuer/csr, GET and PUT /issuer, a CA rotation's PUT /trust and
POST /renew, PUT /policy checked with meshd's ``wire.load``): it talks to
no socket, and a pushed registry reaches the host's rules and names at
once, as ``meshd-sync`` would. It decides mutual
TLS as meshd does, from the roots each side trusts, so that a step taken
out of order in a CA rotation fails as it would on real hosts.
``FakeMesh`` ties hosts, workspace and a fake meshd bundle together and
runs meshctl in-process with them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console

from meshctl.admin_client import AdminClient, AdminEndpoint, AdminReply
from meshctl.bundle import Bundle, Target
from meshctl.cli.app import run
from meshctl.cli.context import AppContext
from meshctl.fleet import SshOptions
from meshctl.inventory import VIP_RANGE, HostSpec
from meshctl.provision import layout
from meshctl.provision.apply import APPLY_RULES, RELOAD
from meshctl.transport import FakeTransport, Result, Transport, UnreachableError
from meshctl.workspace import Workspace, init_workspace
from meshd import hostsfile
from meshd.config import MeshdConfig
from meshd.errors import ConfigError, ConnectError
from meshd.identity import SpiffeId, make_id
from meshd.pki import build_csr, generate_key
from meshd.policy.lang import wire
from meshd.registry import Registry
from meshd.rules import apply_document, fingerprint, ruleset
from tests.meshctl.helpers import MESH, NOW

OK = Result(0, "", "")
HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"'
BUNDLE_VERSION = "0.1.0-fake"


@dataclass
class Reply:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out)
        return data

    def rows(self) -> dict[str, dict[str, Any]]:
        """``--json`` output of join/leave/status: each host's entry, by host."""
        return {h["host"]: h for h in self.json()["hosts"]}


@dataclass
class FakeHost(FakeTransport):
    """A host as meshctl's provisioning commands see it (see the module docstring)."""

    hostname: str = "host"
    users: frozenset[str] = frozenset()  # the run-as users that exist
    fs: dict[str, bytes] = field(default_factory=dict)  # the host's files
    versions: set[str] = field(default_factory=set)  # unpacked bundles under /opt/meshd
    user: bool = False
    user_created: bool = False
    key: bool = False  # a key in place, 0600 meshd
    enabled: set[str] = field(default_factory=set)
    active: str = "inactive"
    nat: str = ""
    rules_record: str = ""
    route: bool = False
    hosts: bytes = HOSTS
    pushed: dict[str, Any] | None = None  # the registry meshd took over its admin API
    synced: int | None = None  # the version meshd-sync put in place
    refuse_push: str | None = None  # meshd answers a PUT /registry with this error
    stages: int = 0
    issuer_key: ec.EllipticCurvePrivateKey | None = None  # made by POST /issuer/csr
    issuer: dict[str, Any] | None = None  # the issuer document meshd runs (PUT /issuer)
    issuer_csrs: int = 0  # fresh issuer keys made
    no_issuer_api: bool = False  # a meshd from before issuers: 404 on /issuer
    renewal: dict[str, Any] | None = None  # what /stats says of its renewal
    renewed_serial: str = ""  # the serial of a certificate meshd renewed (none: the files')
    # a CA rotation: the root its running leaf chains to (b"": the mesh's first root), the
    # pushed trust document, and its renewal
    served_root: bytes = b""
    trust: dict[str, Any] | None = None
    refuse_trust: str | None = None  # meshd answers a PUT /trust with this error
    stuck: bool = False  # POST /renew renews nothing
    policy: dict[str, Any] | None = None  # the policy document meshd runs (PUT /policy)

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        self.commands.append(command)
        for marker, handler in self._handlers():
            if marker in command:
                return handler(command)
        return Result(127, "", f"fake host: no model for {command[:80]!r}")

    def _handlers(self) -> list[tuple[str, Callable[[str], Result]]]:
        return [  # the first marker found in a command picks its handler
            ("\ns() {", self._facts),
            ("mktemp -d", self._mktemp),
            ("tar -xzf", self._unpack),
            (" keygen --force", self._keygen),
            (f"mv -f {layout.KEY}.new {layout.KEY}", self._identity),
            ("useradd", self._useradd),
            ("readlink -f", self._hosts_file),
            ("ip route del", self._remove_rules),
            ("iptables-save -t nat; iptables-save -t filter", lambda _: Result(0, self.nat, "")),
            ("ip6tables-save -t nat; ip6tables-save", lambda _: OK),  # no IPv6 here
            ("systemctl disable --now", self._stop),
            ("userdel", self._userdel),
            ("&& systemctl daemon-reload", self._remove_paths),
            ("systemctl daemon-reload", lambda _: OK),
            ("systemctl enable --quiet", self._enable),
            (APPLY_RULES, self._apply_rules),
            ("umask 077\nsystemctl stop", lambda _: OK),  # the rollback armed
            ("flock ", lambda _: OK),  # ... and disarmed
            ("start meshd.service", self._start),
            (RELOAD, lambda _: OK),
            (f"rm -rf {layout.OPT}/", self._prune),
            ("\ntrap 'rm -rf", self._write_files),
        ]

    # what meshctl reads
    def _facts(self, command: str) -> Result:
        asked = re.search(r"for u in ([^;]*); do id -u", command)
        sections = {
            "os": OS_RELEASE,
            "machine": "x86_64",
            "hostname": self.hostname,
            "python": "3.11",
            "systemd": "yes",
            "iptables": "iptables v1.8.9 (nf_tables)",
            "user": "998" if self.user else "",
            "run_as": "\n".join(u for u in (asked[1] if asked else "").split() if u in self.users),
            "sha256": "\n".join(
                f"{hashlib.sha256(self.fs[p]).hexdigest()}  {p}"
                for p in layout.MANAGED_FILES
                if p in self.fs
            ),
            "key": f"600 {layout.USER}" if self.key else "",
            "cert": self.fs.get(layout.CERT, b"").decode(),
            "enabled": "\n".join(f"{u} {self._unit_state(u)}" for u in layout.UNITS),
            "meshd": f"ActiveState={self.active}\nNRestarts=0\nMainPID=42\n"
            "ActiveEnterTimestampMonotonic=5000000\nNow=65.0",
            "registry_etc": self.fs.get(layout.REGISTRY, b"").decode(),
            "registry_state": json.dumps(self.pushed) if self.pushed else "",
            "rules": self.rules_record,
            "user_created": "yes" if self.user_created else "",
            "iproute": "/usr/bin/ip",
            "nat": self.nat,
            "route": f"{VIP_RANGE} dev lo scope link" if self.route else "",
            "hosts": base64.b64encode(self.hosts).decode(),
            "versions": "\n".join(sorted(self.versions | ({"bin"} if self._launcher else set()))),
            "end": "",
        }
        return Result(0, "".join(f"\n@@{k}\n{v}\n" for k, v in sections.items()), "")

    @property
    def _launcher(self) -> bool:
        return layout.LAUNCHER in self.fs

    def _unit_state(self, unit: str) -> str:
        if layout.UNIT_FILES[unit] not in self.fs:
            return ""
        return "enabled" if unit in self.enabled else "disabled"

    # what join changes
    def _mktemp(self, command: str) -> Result:
        self.stages += 1
        return Result(0, f"/tmp/meshctl.stage{self.stages}\n", "")

    def _write_files(self, command: str) -> Result:
        staged: dict[str, bytes] = {}
        for line in command.splitlines():
            words = shlex.split(line) if line.startswith(("cp ", "mv -f ")) else []
            if words[:1] == ["cp"]:
                staged[words[2]] = self.files[words[1]]
            elif words[:2] == ["mv", "-f"]:
                self.fs[words[3]] = staged.pop(words[2])
        return OK

    def _unpack(self, command: str) -> Result:
        found = re.search(rf"mkdir -p {layout.OPT}/(\S+)\.tmp", command)
        assert found, command
        self.versions.add(found[1])
        return OK

    def _useradd(self, command: str) -> Result:
        self.user_created = self.user_created or not self.user
        self.user = True
        return OK

    def _keygen(self, command: str) -> Result:
        words = shlex.split(command.rsplit("--csr - ", 1)[1].partition(";")[0])
        ids = [SpiffeId.parse(w) for w in words if w != "--id"]
        csr = build_csr(generate_key(), ids).public_bytes(serialization.Encoding.PEM)
        return Result(0, csr.decode(), "")

    def _identity(self, command: str) -> Result:
        self.fs[layout.CERT] = self.fs.pop(f"{layout.CERT}.new")
        self.key = True
        return OK

    def _enable(self, command: str) -> Result:
        self.enabled |= set(layout.ENABLED_UNITS)
        return OK

    def _start(self, command: str) -> Result:
        self.active = "active"
        return OK

    def _apply_rules(self, command: str) -> Result:
        """``meshd rules apply``: the rules of the config and registry in /etc/meshd."""
        self._sync(json.loads(self.fs[layout.REGISTRY]))
        return OK

    def _sync(self, registry: dict[str, Any]) -> None:
        text = self.fs[layout.CONFIG].decode()
        config = MeshdConfig.from_dict(tomllib.loads(text), layout.CONFIG, Path(layout.ETC))
        rules = ruleset(config, Registry.from_dict(registry, layout.REGISTRY))
        self.nat, self.rules_record, self.route = (
            apply_document(rules, ""),
            fingerprint(rules),
            True,
        )

    def _hosts_file(self, command: str) -> Result:
        found = re.search(r"cp (\S+/hosts) ", command)
        assert found, command
        self.hosts = self.files[found[1]]
        return OK

    def _prune(self, command: str) -> Result:
        for path in shlex.split(command)[2:]:
            self.versions.discard(path.rsplit("/", 1)[1])
        return OK

    # what leave changes
    def _stop(self, command: str) -> Result:
        self.active, self.enabled = "inactive", set()
        return OK

    def _remove_rules(self, command: str) -> Result:
        self.nat, self.rules_record, self.route = "", "", False
        return OK

    def _remove_paths(self, command: str) -> Result:
        removed = shlex.split(command.partition(" && ")[0])[2:]
        for path in list(self.fs):
            if any(path == r or path.startswith(f"{r}/") for r in removed):
                del self.fs[path]
        self.versions.clear()
        self.key = self.user_created = False
        self.pushed = self.synced = self.policy = None  # meshd's state directory is gone
        return OK

    def _userdel(self, command: str) -> Result:
        self.user = False
        return OK

    # what meshd does with a pushed registry
    @property
    def registry_version(self) -> int | None:
        etc = json.loads(self.fs[layout.REGISTRY])["version"] if layout.REGISTRY in self.fs else 0
        pushed = self.pushed["version"] if self.pushed else 0
        return max(etc, pushed) or None

    def take_registry(self, registry: dict[str, Any]) -> None:
        """meshd takes it, and meshd-sync puts its rules and /etc/hosts names in place."""
        self.pushed, self.synced = registry, registry["version"]
        self._sync(registry)
        vips = {name: s["vip"] for name, s in registry["services"].items()}
        text = hostsfile.with_block(self.hosts.decode(), vips)
        self.hosts = text.encode()

    @property
    def serial(self) -> str:
        """The serial of the certificate meshd runs, as /stats reports it."""
        if self.renewed_serial:
            return self.renewed_serial
        cert = self.fs.get(layout.CERT)
        return format(x509.load_pem_x509_certificate(cert).serial_number, "X") if cert else ""

    def trust_roots(self) -> list[bytes]:
        """The roots meshd verifies peers with: the pushed trust bundle, else its files'."""
        pem = self.trust["bundle_pem"].encode() if self.trust else self.fs.get(layout.TRUST_BUNDLE)
        return [_pem(c) for c in x509.load_pem_x509_certificates(pem)] if pem else []

    def model(self) -> dict[str, Any]:
        """Everything of the host's state, to check that a command changed nothing."""
        return {k: v for k, v in vars(self).items() if k not in ("commands", "files", "stages")}


class ScriptedMeshd(AdminClient):
    """The admin API of every host's meshd in ``mesh``, answered from its ``FakeHost``."""

    def __init__(self, ws: Workspace, timeout: float, mesh: FakeMesh) -> None:
        super().__init__(
            ws.operator_cert, ws.operator_key, ws.trust_bundle, ws.config.trust_domain, timeout
        )
        self.mesh = mesh

    def request(
        self, endpoint: AdminEndpoint, method: str, path: str, doc: Any | None = None
    ) -> AdminReply:
        host = self.mesh.hosts[endpoint.address]
        self.mesh.requests.append((endpoint.host, method, path))
        if endpoint.address in self.mesh.unreachable:
            raise ConnectError(  # as AdminClient says it
                f"{endpoint.where}: no answer within {self.timeout:g}s",
                hint="check that the host is up and that its admin port is reachable (firewall)",
            )
        if host.active != "active":
            raise ConnectError(
                f"{endpoint.where}: connection refused",
                hint="is meshd running? check systemctl status meshd on the host",
            )
        self._handshake(host, endpoint)
        if (method, path) == ("PUT", "/registry"):
            return self._put(host, doc)
        if (method, path) == ("PUT", "/policy"):
            return self._put_policy(host, doc)
        if path.startswith("/issuer"):
            return self._issuer(host, endpoint.host, method, path, doc)
        if (method, path) != ("GET", "/stats"):
            return Rotation(self.mesh, host).answer(method, path, doc)
        return self._reply(200, self._stats(host))

    def _handshake(self, host: FakeHost, endpoint: AdminEndpoint) -> None:
        """What mutual TLS decides: meshd's leaf verifies under our bundle, ours under its."""
        served = host.served_root or self.mesh.first_root
        ours = x509.load_pem_x509_certificates(self.bundle.read_bytes())
        if served not in [_pem(c) for c in ours]:
            raise ConnectError(  # as AdminClient says it
                f"{endpoint.where} presented a certificate the trust bundle does not accept: "
                "certificate verify failed",
                hint=f"check that {self.bundle} is this mesh's trust bundle",
            )
        issuing = x509.load_pem_x509_certificates(self.cert.read_bytes())[1]
        roots = host.trust_roots()
        if roots and not any(_signed(issuing, r) for r in roots):
            raise ConnectError(
                f"{endpoint.where} closed the connection before answering",
                hint=f"meshd may have refused the operator certificate {self.cert}",
            )

    def _issuer(self, host: FakeHost, name: str, method: str, path: str, doc: Any) -> AdminReply:
        if host.no_issuer_api:
            return self._reply(404, {"error": "not found"})
        if (method, path) == ("POST", "/issuer/csr"):
            host.issuer_key, host.issuer_csrs = generate_key(), host.issuer_csrs + 1
            ids = [make_id(self.trust_domain, "issuer", name)]
            csr = build_csr(host.issuer_key, ids).public_bytes(serialization.Encoding.PEM)
            return self._reply(200, {"csr_pem": csr.decode()})
        if (method, path) == ("GET", "/issuer"):
            return self._reply(200, host.issuer) if host.issuer else self._reply(404, {})
        assert (method, path) == ("PUT", "/issuer"), (method, path)
        return self._put_issuer(host, doc)

    def _put_issuer(self, host: FakeHost, doc: Any) -> AdminReply:
        """As meshd checks it: a newer version, a CA for the pending key, under the root."""
        current = host.issuer["version"] if host.issuer else 0
        if doc["version"] <= current:
            return self._reply(409, {"error": f"issuer version {doc['version']} is not newer"})
        if doc["cert_pem"]:
            cert = x509.load_pem_x509_certificate(doc["cert_pem"].encode())
            roots = host.trust_roots() or [self.mesh.first_root]  # what meshd runs with
            assert any(_signed(cert, root) for root in roots)
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            assert basic.ca and basic.path_length == 0
            assert host.issuer_key is not None
            assert cert.public_key() == host.issuer_key.public_key()
        host.issuer = dict(doc)
        return self._reply(200, {"status": "applied", "version": doc["version"]})

    def _put(self, host: FakeHost, doc: Any) -> AdminReply:
        if host.refuse_push is not None:
            return self._reply(
                500, {"error": host.refuse_push, "hint": "see journalctl -u meshd on the host"}
            )
        version, current = doc["version"], host.registry_version or 0
        if version < current:
            return self._reply(409, {"error": f"registry version {version} is older"})
        if version > current:
            host.take_registry(doc)
        status = "applied" if version > current else "unchanged"
        return self._reply(200, {"status": status, "version": version})

    def _put_policy(self, host: FakeHost, doc: Any) -> AdminReply:
        """As meshd's store and ``wire.load`` take it: every document valid, a newer version,
        or the same version with the same content (unchanged)."""
        try:
            wire.load(wire.PolicyDocument.from_json(doc), self.trust_domain, NOW)
        except ConfigError as e:
            return self._reply(400, {"error": e.message, "hint": e.hint})
        current = host.policy or {"version": 0}
        if doc["version"] < current["version"] or (
            doc["version"] == current["version"] and doc != current
        ):
            return self._reply(409, {"error": f"policy version {doc['version']} conflicts"})
        status = "unchanged" if doc == current else "applied"
        host.policy = doc
        return self._reply(200, {"status": status, "version": doc["version"]})

    def _stats(self, host: FakeHost) -> dict[str, Any]:
        return {
            "ready": True,
            "version": "0.1.0",
            "uptime_seconds": 60.0,
            "registry_version": host.registry_version,
            "synced_registry_version": host.synced,
            "documents": {
                **({"trust": host.trust["version"]} if host.trust else {}),
                **({"policy": host.policy["version"]} if host.policy else {}),
            },
            "certificate_serial": host.serial,
            "issuer": self._issuer_report(host),
            "renewal": host.renewal,
        }

    def _issuer_report(self, host: FakeHost) -> dict[str, Any] | None:
        if not host.issuer or not host.issuer["cert_pem"]:
            return None
        cert = x509.load_pem_x509_certificate(host.issuer["cert_pem"].encode())
        return {"not_after": cert.not_valid_after_utc.isoformat(), "signed": 3, "refused": 1}

    def _reply(self, status: int, body: Any) -> AdminReply:
        return AdminReply(status, body, NOW + dt.timedelta(hours=24))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _signed(cert: x509.Certificate, root_pem: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass
class Rotation:
    """meshd's routes for a CA rotation on one fake host: PUT /trust and POST /renew."""

    mesh: FakeMesh
    host: FakeHost

    def answer(self, method: str, path: str, doc: Any) -> AdminReply:
        route = {("PUT", "/trust"): self.put_trust, ("POST", "/renew"): self.renew}
        handler = route.get((method, path))
        assert handler is not None, (method, path)
        status, body = handler(doc)
        return AdminReply(status, body, NOW + dt.timedelta(hours=24))

    def put_trust(self, doc: Any) -> tuple[int, Any]:
        """As meshd takes it: newer (or the same), and its own leaf verifies under it."""
        if self.host.refuse_trust is not None:
            return 500, {"error": self.host.refuse_trust}
        current = self.host.trust or {"version": 0}
        if doc["version"] < current["version"] or (
            doc["version"] == current["version"] and doc != current
        ):
            return 409, {"error": f"trust version {doc['version']} is older or conflicting"}
        served = self.host.served_root or self.mesh.first_root
        roots = x509.load_pem_x509_certificates(doc["bundle_pem"].encode())
        if served not in [_pem(c) for c in roots]:
            return 409, {"error": "meshd's own certificate does not verify under this bundle"}
        status = "unchanged" if doc == current else "applied"
        self.host.trust = doc
        return 200, {"status": status, "version": doc["version"]}

    def renew(self, doc: Any) -> tuple[int, Any]:
        """Renewal at once, from the first issuer (by name) whose CA a trusted root signed."""
        if self.host.stuck:
            return 202, {"renewing": True}
        for other in sorted(self.mesh.hosts.values(), key=lambda h: h.hostname):
            pem = (other.issuer or {}).get("cert_pem", "")
            cert = x509.load_pem_x509_certificate(pem.encode()) if pem else None
            root = next((r for r in self.host.trust_roots() if cert and _signed(cert, r)), None)
            if root is not None:
                self.host.served_root = root
                self.host.renewed_serial = format(x509.random_serial_number(), "X")
                break
        return 202, {"renewing": True}


@dataclass
class FakeMesh:
    """A workspace, its fake hosts (by address) and meshctl run in-process against them."""

    root: Path
    hosts: dict[str, FakeHost] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)  # addresses that answer nothing
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # admin API: host, ...
    clock: Callable[[], dt.datetime] = lambda: NOW

    def __post_init__(self) -> None:
        self.ws = init_workspace(self.root / "ws", MESH, None, NOW)
        self.first_root = self.ws.root_ca_cert.read_bytes()
        self.bundle = self.root / "meshd.tar.gz"
        self.bundle.write_bytes(b"a fake meshd bundle")

    def host(self, address: str, hostname: str, users: frozenset[str] = frozenset()) -> FakeHost:
        self.hosts[address] = FakeHost(name=address, hostname=hostname, users=users)
        return self.hosts[address]

    def connect(self, ws: Workspace, host: HostSpec, ssh: SshOptions) -> Transport:
        if host.address in self.unreachable:
            raise UnreachableError(
                f"{host.address}:{host.port}: no answer within {ssh.timeout:g}s",
                hint="is the host up and the SSH port open?",
            )
        return self.hosts[host.address]

    def admin(self, ws: Workspace, timeout: float) -> AdminClient:
        return ScriptedMeshd(ws, timeout, self)

    def build(self, target: Target, cache: Path, offline: bool = False) -> Bundle:
        return Bundle(self.bundle, BUNDLE_VERSION, target)

    def meshctl(self, *argv: str) -> Reply:
        out = Console(record=True, width=200, force_terminal=False, emoji=False)
        err = Console(record=True, width=200, force_terminal=False, stderr=True, emoji=False)
        context = AppContext(
            out=out,
            err=err,
            environ={},
            clock=self.clock,
            interactive=False,
            workspace_path=self.ws.root,
            connect=self.connect,
            connect_admin=self.admin,
            bundle_cache=self.root / "cache",
            build_bundle=self.build,
        )
        code = run(list(argv), context)
        return Reply(code, out.export_text(), err.export_text())

    def workspace_files(self) -> dict[str, bytes]:
        """hosts.toml and applied/: what a refused command must leave as it was."""
        paths = [self.ws.root / "hosts.toml", *sorted((self.ws.root / "applied").rglob("*"))]
        return {str(p): p.read_bytes() for p in paths if p.is_file()}


# web1, api1 and db1: name -> (address, --service)
FLEET = {
    "web1": ("10.0.0.11", "web:8080"),
    "api1": ("10.0.0.12", "api:8081"),
    "db1": ("10.0.0.13", "db:5432"),
}


def fleet(root: Path, *joined: str) -> FakeMesh:
    """web1, api1 and db1 in hosts.toml, the hosts ``joined`` joined already (by one join)."""
    mesh = FakeMesh(root)
    for name, (address, service) in FLEET.items():
        mesh.host(address, name)
        assert mesh.meshctl("hosts", "add", name, address, "--service", service).code == 0
    if joined:
        done = mesh.meshctl("join", *joined)
        assert done.code == 0, done.out + done.err
    return mesh


def at(mesh: FakeMesh, name: str) -> FakeHost:
    """The fake host of ``name`` (one of FLEET)."""
    return mesh.hosts[FLEET[name][0]]
