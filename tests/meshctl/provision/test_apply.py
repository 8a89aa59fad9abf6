"""Applying plans over a scripted transport: commands sent, files staged, errors, rollback."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshctl.provision import layout
from meshctl.provision.apply import Applier
from meshctl.provision.desired import FileSpec
from meshctl.provision.plan import (
    CreateUser,
    Enroll,
    Plan,
    PruneBundles,
    ReloadSystemd,
    StartMeshd,
    Step,
    StopUnits,
    WriteFile,
    WriteHostsBlock,
)
from meshctl.transport import FakeTransport, LocalTransport, Result, Transport
from meshd.errors import ProvisionError
from meshd.identity import SpiffeId, make_id

STAGE = "/tmp/meshctl.stage123"
OK = Result(0, "", "")
MKTEMP = {"mktemp -d": Result(0, f"{STAGE}\n", "")}
ARM = {"set -e; umask 077; iptables-save -t nat": OK}
DISARM = {"systemctl is-active --quiet meshd-rules-rollback-": OK}
FIRED = {"systemctl is-active --quiet meshd-rules-rollback-": Result(3, "", "")}
RULES = "meshd rules apply"


@dataclass
class Host(FakeTransport):
    """A FakeTransport answering by command prefix, remembering root and close."""

    name: str = "web1"
    prefixes: dict[str, Result] = field(default_factory=dict)
    roots: list[bool] = field(default_factory=list)
    closed: bool = False

    def run(self, command: str, *, timeout: float = 120, root: bool = True) -> Result:
        self.roots.append(root)
        exact = super().run(command, timeout=timeout, root=root)
        if command in self.responses:
            return exact
        return next((r for p, r in self.prefixes.items() if command.startswith(p)), exact)

    def close(self) -> None:
        self.closed = True


def never() -> Transport:
    raise AssertionError("no reconnect expected")


def test_write_files_stages_then_moves_each_file_as_root() -> None:
    host = Host(prefixes=MKTEMP | {"set -e\n": OK})
    files = [FileSpec(layout.CONFIG, b"config"), FileSpec(layout.LAUNCHER, b"#!/bin/sh\n", 0o755)]
    Applier(host, never).write_files(files)
    assert host.files == {f"{STAGE}/0": b"config", f"{STAGE}/1": b"#!/bin/sh\n"}
    assert len(host.commands) == 2 and host.roots == [False, True]  # mktemp as the SSH user
    script = host.commands[1].splitlines()
    tmp = f"{layout.LAUNCHER}.meshctl-tmp"
    assert script[:2] == ["set -e", f"trap 'rm -rf {STAGE}' EXIT"]  # cleaned up, even on errors
    assert script[7:12] == [
        "mkdir -p /opt/meshd/bin",
        f"cp {STAGE}/1 {tmp}",
        f"chmod 755 {tmp}",
        f"chown root:root {tmp}",
        f"mv -f {tmp} {layout.LAUNCHER}",
    ]
    assert f"mv -f {layout.CONFIG}.meshctl-tmp {layout.CONFIG}" in script


def test_a_run_of_file_steps_is_one_batch() -> None:
    host = Host(prefixes=MKTEMP | {"set -e\n": OK, "systemctl daemon-reload": OK})
    plan = Plan(
        "web1",
        (
            WriteFile("missing", FileSpec("/etc/a", b"a")),
            WriteFile("missing", FileSpec("/etc/b", b"b")),
            ReloadSystemd("unit files changed"),
        ),
    )
    done = Applier(host, never).apply(plan)
    assert done == ["write /etc/a", "write /etc/b", "systemctl daemon-reload"]
    assert len(host.commands) == 3


@pytest.mark.parametrize(
    ("step", "what"),
    [
        (ReloadSystemd("x"), "daemon-reload"),
        (CreateUser("x"), "creating the meshd user"),
        (PruneBundles("x", ("0.1",)), "removing old meshd versions"),
        (StopUnits("x", layout.UNITS), "stopping meshd"),
        (WriteFile("x", FileSpec(layout.CONFIG, b"")), "writing files"),
    ],
)
def test_a_failing_command_names_host_and_step(step: Step, what: str) -> None:
    host = Host(prefixes=MKTEMP | {"": Result(1, "", "something\ndisk full")})
    with pytest.raises(ProvisionError) as caught:
        Applier(host, never).apply(Plan("web1", (step, ReloadSystemd("later"))))
    assert caught.value.message == f"web1: {what} failed: something / disk full"
    assert not any(c == "systemctl daemon-reload" for c in host.commands[1:])  # stopped


def test_meshd_that_does_not_start_shows_its_journal() -> None:
    journal = Result(0, "starting\n\nbad config: services[0]\nexiting\n", "")
    host = Host(
        prefixes={"systemctl start": Result(1, "", "failed"), "journalctl -u meshd": journal}
    )
    with pytest.raises(ProvisionError) as caught:
        Applier(host, never).run_step(StartMeshd("x", "start"))
    assert caught.value.message == (
        "web1: meshd did not start: starting / bad config: services[0] / exiting"
    )
    assert caught.value.hint == "see journalctl -u meshd on web1"


def test_enroll_signs_the_hosts_csr_and_installs_the_chain() -> None:
    ids = (make_id("t.mesh", "host", "web1"), make_id("t.mesh", "svc", "web"))
    keygen = Result(0, "-----BEGIN CERTIFICATE REQUEST-----\n", "")
    host = Host(
        prefixes=MKTEMP | {"set -e; mkdir -p /etc/meshd": keygen, "set -e\n": OK, "mv -f": OK}
    )
    signed: list[tuple[bytes, tuple[SpiffeId, ...], int]] = []

    def sign(csr: bytes, identities: tuple[SpiffeId, ...], seconds: int) -> bytes:
        signed.append((csr, identities, seconds))
        return b"chain"

    Applier(host, never, sign=sign).run_step(Enroll("x", ids, 24))
    assert signed == [(keygen.stdout.encode(), ids, 24)]
    assert "--id spiffe://t.mesh/host/web1 --id spiffe://t.mesh/svc/web" in host.commands[0]
    assert f"keygen --force --key {layout.KEY}.new" in host.commands[0]  # old key kept so far
    assert host.files == {f"{STAGE}/0": b"chain"}
    assert f"mv -f {layout.CERT}.new.meshctl-tmp {layout.CERT}.new" in host.commands[-2]
    assert host.commands[-1] == (  # the new pair replaces the old one only once both exist
        f"mv -f {layout.KEY}.new {layout.KEY} && mv -f {layout.CERT}.new {layout.CERT}"
    )


RELOAD = f"{layout.LAUNCHER} reload --config {layout.CONFIG} --unit meshd.service"
REFUSED = (
    "meshd: error: meshd refused the reload (generation 3): cert.pem: expired\n"
    "hint: meshd runs on unchanged; fix the files and reload again\n"
)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Result(0, "meshd reload (generation 3): reloaded /etc/meshd/meshd.toml\n", ""), None),
        (
            Result(1, "", REFUSED),
            "web1: meshd refused the new files: meshd refused the reload (generation 3): "
            "cert.pem: expired",
        ),
        (
            Result(1, "", "meshd: error: meshd did not finish the reload within 30s\n"),
            "web1: meshd refused the new files: meshd did not finish the reload within 30s",
        ),
    ],
)
def test_a_reload_takes_meshds_verdict_from_meshd_reload(answer: Result, error: str | None) -> None:
    host = Host(prefixes={RELOAD: answer})
    applier = Applier(host, never)
    if error is None:
        applier.run_step(StartMeshd("registry changed", "reload"))
    else:
        with pytest.raises(ProvisionError) as caught:
            applier.run_step(StartMeshd("registry changed", "reload"))
        assert caught.value.message == error
    assert host.commands == [RELOAD] and host.roots == [True]


def test_a_forged_log_line_does_not_make_a_refused_reload_pass() -> None:
    """A host whose journal says "reloaded" (a mesh peer forged it) while meshd refused.

    The journal is what an older meshctl read; meshd reload reads meshd's /stats.
    """
    forged = "reloaded /etc/meshd/meshd.toml (registry version 4)\n"
    journal = {"t=$(date +%s.%N); systemctl reload meshd": Result(0, forged, "")}
    host = Host(prefixes=journal | {RELOAD: Result(1, "", REFUSED)})
    with pytest.raises(ProvisionError, match="refused the reload"):
        Applier(host, never).run_step(StartMeshd("registry changed", "reload"))
    assert not any("journalctl" in c for c in host.commands)


@pytest.mark.parametrize(
    ("meanwhile", "error"),
    [
        (None, None),  # unchanged since meshctl read it: replaced
        ("NEW", None),  # meshd-sync wrote the same block meanwhile: fine as it is
        ("127.0.0.1 localhost\n10.0.0.9 mine\n", "changed while meshctl was working"),
    ],
    ids=["unchanged", "already-as-wanted", "changed-by-someone"],
)
def test_the_hosts_file_is_written_only_over_what_meshctl_read(
    tmp_path: Path, meanwhile: str | None, error: str | None
) -> None:
    """Real sh and sha256sum on a real file (the testbed runs it on /etc/hosts)."""
    old = "127.0.0.1 localhost\n"
    new = old + "# BEGIN meshd\n10.255.0.1\tapi.mesh\n# END meshd\n"
    hosts = tmp_path / "hosts"
    hosts.write_text(old)
    hosts.chmod(0o644)
    before = hashlib.sha256(old.encode()).hexdigest()
    if meanwhile is not None:
        hosts.write_text(new if meanwhile == "NEW" else meanwhile)
    on_disk = hosts.read_text()
    step = WriteHostsBlock("service names changed", new, "10.255.0.1\tapi.mesh", before, str(hosts))
    applier = Applier(LocalTransport(), never)
    if error is None:
        applier.apply(Plan("web1", (step,)))
        assert hosts.read_text() == new
        assert hosts.stat().st_mode & 0o777 == 0o644
    else:
        with pytest.raises(ProvisionError, match=error):
            applier.apply(Plan("web1", (step,)))
        assert hosts.read_text() == on_disk  # left as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]  # no temporary file left
