"""Three testbed hosts meshed by the real ``meshctl init``/``join``, each serving an HTTP app.

The end-to-end tests of the identity lifecycle (renewal under load, rollover)
start here: `joined_mesh` brings the hosts up the way an operator would (the
CLI in this process, real SSH and host keys) with a chosen leaf lifetime, and
`Mesh.start_load` runs `loadgen.py` on the hosts, each calling the apps on the
two others through the mesh; `Mesh.serials` probes the certificate each mesh
port presents; `Mesh.admin` calls a host's admin API as the operator. Hosts are reset when the mesh is left.

    with joined_mesh(testbed, tmp_path, leaf_lifetime="1m") as mesh:
        loads = [mesh.start_load(node, seconds=240) for node in mesh.nodes]
        ...  # poll mesh.serials() to see renewals
        assert all(load.result()["failed"] == 0 for load in loads)

Bringing the three up takes 15-22 s here (init, apps, one join), the reset
after (the three at once) 3-5 s; mind pytest's 300 s per-test timeout around long
loads. Loads are paced: ``start_load`` sends PER_CONNECTION requests a second
on each connection unless told a rate (the apps answer in a few ms; an
unpaced load would take both cores from the meshd under test).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import shlex
import socket
import ssl
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import toml
from rich.console import Console

from meshctl import demo
from meshctl.cli.app import run
from meshctl.cli.context import AppContext
from meshctl.config import DefaultsConfig
from meshctl.testbed import Testbed, TestbedHost
from meshctl.transport import SshTransport, Target
from meshctl.workspace import Workspace
from meshd.schema import parse_duration
from tests.e2e import loadgen, serial_probe, wrk
from tests.meshd.onhost import ok, put, reset
from tests.poll import until

PASSPHRASE = "an end-to-end passphrase"
NAMES = ("web1", "api1", "db1")  # the inventory names of testbed hosts 1-3
LOADGEN = "/usr/local/bin/meshctl-loadgen.py"
PER_CONNECTION = 20  # requests/s: what a connection carried while the apps waited on Nagle
PROBE = "/usr/local/bin/meshctl-serial-probe.py"
# the identity a host probes with: meshd's renewed pair once it has one (key and chain in
# one file, issue 12), else what join installed
HOST_IDENTITY = (
    "c=/var/lib/meshd/identity/renewed.pem; k=$c; "
    "[ -e $c ] || { c=/etc/meshd/cert.pem; k=/etc/meshd/key.pem; }"
)
MESH_PORT = DefaultsConfig().mesh_port
ADMIN_PORT = DefaultsConfig().admin_port


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class Node:
    """One joined host: its inventory name, the testbed host, the app it serves."""

    name: str
    host: TestbedHost
    app: demo.DemoApp

    @property
    def url(self) -> str:
        """What the other hosts call: the app's health check by its mesh name."""
        return f"http://{self.app.name}.mesh:{self.app.port}/healthz"


def in_process(argv: list[str], workspace: Path) -> Result:
    """meshctl in this process, as the operator runs it (real SSH, real clock)."""
    out = Console(record=True, width=200, force_terminal=False, emoji=False)
    err = Console(record=True, width=200, force_terminal=False, stderr=True, emoji=False)
    environ = {"MESHCTL_CA_PASSPHRASE": PASSPHRASE}
    context = AppContext(
        out=out, err=err, environ=environ, interactive=False, workspace_path=workspace
    )
    code = run(argv, context)
    return Result(code, out.export_text(), err.export_text())


def set_leaf_lifetime(workspace: Path, lifetime: str) -> None:
    """The one place the tests set the leaf lifetime (a duration: "1m", "24h").

    mesh.toml's key is ``[defaults] leaf_lifetime = "1m"`` once meshctl knows it
    (issue 12), and ``leaf_lifetime_hours`` (whole hours, rounded up) before.
    """
    path = workspace / "mesh.toml"
    doc = tomllib.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(DefaultsConfig)} | set(doc["defaults"])
    if "leaf_lifetime" in known:
        doc["defaults"]["leaf_lifetime"] = lifetime
    else:
        doc["defaults"]["leaf_lifetime_hours"] = math.ceil(parse_duration(lifetime) / 3600)
    path.write_text(toml.dumps(doc))
    Workspace.load(workspace)  # meshctl must accept it


@dataclass
class Load:
    """loadgen.py running on a host in a transient unit; `result` waits for its summary."""

    node: Node
    unit: str
    seconds: float
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def output(self) -> str:
        return f"/run/{self.unit}.json"

    def result(self, grace: float = 60) -> dict[str, object]:
        _wait_for(self.node.host, self.output, self.started + self.seconds, grace)
        summary: dict[str, object] = json.loads(ok(self.node.host, f"cat {self.output}"))
        return summary


def _wait_for(host: TestbedHost, path: str, end: float, grace: float) -> None:
    """Sleep until the run should end, then look for its output (an SSH login a second)."""
    time.sleep(max(0.0, end - time.monotonic()))
    until(lambda: host.run(f"test -e {path}")[0] == 0, grace, f"{path} on {host.name}", 1.0)


@dataclass
class WrkLoad:
    """wrk running on a host in a transient unit; `result` waits for its report, parsed."""

    node: Node
    unit: str
    seconds: float
    started: float = dataclasses.field(default_factory=time.monotonic)

    def result(self, grace: float = 60) -> dict[str, object]:
        report = f"/run/{self.unit}.txt"
        _wait_for(self.node.host, report, self.started + self.seconds, grace)
        return wrk.parse(ok(self.node.host, f"cat {report}"))


@dataclass
class Mesh:
    """Three joined hosts; see the module docstring."""

    tb: Testbed
    ws: Path
    nodes: tuple[Node, ...]
    took: float  # seconds from nothing to three joined hosts serving (init, apps, join)

    @property
    def hosts(self) -> tuple[TestbedHost, ...]:
        return tuple(n.host for n in self.nodes)

    def meshctl(self, *argv: str) -> Result:
        return in_process(list(argv), self.ws)

    def node(self, name: str) -> Node:
        (found,) = [n for n in self.nodes if n.name == name or n.host.name == name]
        return found

    def others(self, node: Node) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n is not node)

    def start_load(
        self, node: Node, seconds: float, connections: int = 8, rate: float | None = None
    ) -> Load:
        """loadgen.py on ``node`` against the other two apps, connections spread over both,
        ``rate`` requests a second in all (default PER_CONNECTION each)."""
        if rate is None:
            rate = PER_CONNECTION * connections
        unit = f"meshctl-load-{time.monotonic_ns()}"
        urls = " ".join(f"--url={o.url}" for o in self.others(node))
        command = (
            f"python3 {LOADGEN} {urls} --connections={connections} --duration={seconds} "
            f"--rate={rate} --output=/run/{unit}.json"
        )
        ok(node.host, f"systemd-run --quiet --unit={unit} --collect {command}")
        return Load(node, unit, seconds)

    def start_wrk(self, node: Node, target: Node, seconds: int, connections: int = 8) -> WrkLoad:
        """wrk on ``node`` against ``target``'s app (one URL a run: wrk takes one)."""
        for upload in wrk.local_uploads():
            put(node.host, upload.target, upload.source.read_bytes(), upload.mode)
        unit = f"meshctl-wrk-{time.monotonic_ns()}"
        run = (
            f"{wrk.BINARY} -t1 -c{connections} -d{seconds}s --timeout 5s {target.url} "
            f"> /run/{unit}.tmp && mv /run/{unit}.tmp /run/{unit}.txt"
        )
        ok(node.host, "ldconfig")
        ok(node.host, f"systemd-run --quiet --unit={unit} --collect /bin/sh -c {shlex.quote(run)}")
        return WrkLoad(node, unit, seconds)

    def failed_load(self, load: Load, result: dict[str, object]) -> str:
        """What a failed load's assertion shows: its summary without the timeline, when the
        failures began, and the host's meshd journal around them (a flake in CI is read
        from this alone)."""
        brief = {k: v for k, v in result.items() if k not in ("timeline", "latency_ms")}
        timeline = result.get("timeline")
        seconds = timeline if isinstance(timeline, list) else []
        failing = [s for s, (_, bad) in enumerate(seconds) if bad]
        began = f"failures from second {failing[0]} to {failing[-1]}" if failing else ""
        restarts = ok(load.node.host, "systemctl show meshd -p NRestarts --value").strip()
        journal = ok(load.node.host, "journalctl -u meshd -o short-precise --no-pager -n 120")
        return f"{load.node.name}: {brief}\n{began}; meshd restarts: {restarts}\n{journal}"

    def operator_context(self) -> ssl.SSLContext:
        """TLS as the operator: the workspace's operator certificate, its trust bundle."""
        ws = Workspace.load(self.ws)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(ws.trust_bundle))
        ctx.load_cert_chain(str(ws.operator_cert), str(ws.operator_key))
        return ctx

    def admin(self, node: Node, method: str, path: str, body: object = None) -> tuple[int, str]:
        """One request to ``node``'s admin API as the operator (``body``: sent as JSON): the
        status and the text. Every socket is closed, also when meshd goes away mid-way (a
        test may poll a restarting meshd)."""
        address = node.host.address
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        with (
            socket.create_connection((address, ADMIN_PORT), timeout=10) as raw,
            self.operator_context().wrap_socket(raw) as tls,
        ):
            conn = http.client.HTTPConnection(address, ADMIN_PORT, timeout=10)
            conn.sock = tls
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.sock = None  # closed by the with above

    def serial(self, node: Node) -> str:
        """The serial of the certificate ``node``'s mesh port presents right now.

        Probed from here with the operator's identity (TLS 1.3 hides it from a capture).
        """
        ws = Workspace.load(self.ws)
        return serial_probe.presented(
            node.host.address, MESH_PORT, ws.operator_cert, ws.operator_key, ws.trust_bundle
        ).serial

    def serials(self) -> dict[str, str]:
        """Each host's presented serial, by inventory name (poll it to watch renewals)."""
        return {node.name: self.serial(node) for node in self.nodes}

    def serial_seen_from(self, node: Node, target: Node) -> str:
        """The same, probed from ``node`` with its own meshd's identity (as a peer sees it)."""
        probe = (
            f"{HOST_IDENTITY}; python3 {PROBE} {target.host.address} {MESH_PORT} "
            '--cert "$c" --key "$k" --bundle /etc/meshd/bundle.pem'
        )
        found = json.loads(ok(node.host, probe))
        return str(found["serial"])


def _with_ssh(tb: Testbed, host: TestbedHost) -> SshTransport:
    return SshTransport(Target(host.address), tb.known_hosts, key_file=tb.client_key)


def _install_app(tb: Testbed, node: Node) -> None:
    transport = _with_ssh(tb, node.host)
    try:
        demo.install_app(transport, node.app)
    finally:
        transport.close()
    put(node.host, LOADGEN, Path(loadgen.__file__).read_bytes(), 0o755)
    put(node.host, PROBE, Path(serial_probe.__file__).read_bytes(), 0o755)


def _check(result: Result, what: str) -> Result:
    assert result.code == 0, f"{what}: exit {result.code}\n{result.out}\n{result.err}"
    return result


def bring_up(
    tb: Testbed, root: Path, leaf_lifetime: str = "24h", join_args: tuple[str, ...] = ()
) -> Mesh:
    """init, the apps, hosts add and one join of all three; see the module docstring.

    ``join_args``: more options for that join (an issuer, once ``join --issuer`` exists).
    """
    started = time.monotonic()
    ws = root / "ws"
    nodes = tuple(Node(*n) for n in zip(NAMES, tb.hosts[:3], demo.APPS, strict=True))
    _check(in_process(["init", str(ws), "--name", "e2e"], ws), "meshctl init")
    set_leaf_lifetime(ws, leaf_lifetime)
    with ThreadPoolExecutor() as pool:  # SSH round trips, host by host: all three at once
        installs = [pool.submit(_install_app, tb, node) for node in nodes]
    for install in installs:
        install.result()
    for node in nodes:
        service = f"{node.app.name}:{node.app.port}"
        added = in_process(["hosts", "add", node.name, node.host.address, "-s", service], ws)
        _check(added, f"hosts add {node.name}")
    join = ["join", *NAMES, "-i", str(tb.client_key), "--accept-new-host-key", *join_args]
    _check(in_process(join, ws), "meshctl join")
    return Mesh(tb, ws, nodes, time.monotonic() - started)


@contextmanager
def joined_mesh(
    tb: Testbed, root: Path, leaf_lifetime: str = "24h", join_args: tuple[str, ...] = ()
) -> Iterator[Mesh]:
    """`bring_up`, then always reset the three hosts to their seeded state."""
    try:
        yield bring_up(tb, root, leaf_lifetime, join_args)
    finally:
        reset(tb.hosts[:3])


def fetch(host: TestbedHost, url: str) -> str:
    """One GET from ``host`` (through its mesh rules), the body as text."""
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"
    return ok(host, f"python3 -c {shlex.quote(code)}").strip()
