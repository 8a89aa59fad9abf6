"""meshd.service's sandbox on real hosts: its exposure score, and meshd still doing its job.

Three testbed hosts joined by the real ``meshctl join`` (tests/e2e/mesh3.py).
``systemd-analyze security`` must score the unit 2.0 or lower (issue 12), and
under that sandbox meshd must still run, reload, serve traffic both ways and
report its own process metrics, and what renewal will do in it must work: run
``meshd keygen`` into the state directory (0600), reach the other hosts'
admin ports, and not write /etc/meshd.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.testbed import Testbed, TestbedHost
from meshctl.workspace import Workspace
from tests.e2e.mesh3 import Mesh, fetch, joined_mesh
from tests.meshd.onhost import ok, put
from tests.poll import until

pytestmark = pytest.mark.testbed

MAX_EXPOSURE = 2.0
OVERALL = re.compile(r"Overall exposure level for meshd\.service: (\d+\.\d+)")
PROBE_UNIT = "meshd-sandbox-probe"
PROBE_SCRIPT = "/usr/local/lib/meshd-sandbox-probe.py"
PROBE_OUT = "/var/lib/meshd/sandbox-probe.json"
# what renewal does inside meshd.service, run there by a unit with meshd's own sandbox
PROBE = r"""
import json, os, socket, subprocess, sys
ident, others = sys.argv[1], sys.argv[2:]
key = "/var/lib/meshd/identity/pending-key.pem"
os.makedirs(os.path.dirname(key), exist_ok=True)
csr = subprocess.run(
    ["/opt/meshd/bin/meshd", "keygen", "--force", "--key", key, "--csr", "-", "--id", ident],
    capture_output=True, text=True,
)
st = os.stat(key) if os.path.exists(key) else None
try:
    open("/etc/meshd/sandbox-probe", "w").close()
    etc = "written"
except OSError as e:
    etc = type(e).__name__ + ": " + e.strerror
admin = {}
for address in others:
    try:
        socket.create_connection((address, 15000), timeout=5).close()
        admin[address] = "connected"
    except OSError as e:
        admin[address] = repr(e)
print(json.dumps({
    "keygen": csr.returncode, "csr": csr.stdout.splitlines()[:1], "stderr": csr.stderr[-500:],
    "key_mode": oct(st.st_mode & 0o777) if st else None,
    "key_owner": st.st_uid == os.getuid() if st else None,
    "etc": etc, "admin": admin,
}))
"""


@pytest.fixture(scope="module")
def mesh(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with joined_mesh(testbed, tmp_path_factory.mktemp("units")) as m:
        yield m


def exposure(host: TestbedHost) -> tuple[float, str]:
    """The overall exposure of meshd.service, and the findings (the lines marked ✗)."""
    report = ok(host, "systemd-analyze security --no-pager meshd.service")
    found = OVERALL.search(report)
    assert found, report
    findings = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
    return float(found.group(1)), findings


def test_meshd_service_exposure_is_at_most_2(mesh: Mesh) -> None:
    for host in mesh.hosts:
        score, findings = exposure(host)
        assert score <= MAX_EXPOSURE, f"{host.name}: {score}\n{findings}"
        assert "UMask=" not in findings, findings


def test_meshd_runs_reloads_and_carries_traffic_in_its_sandbox(mesh: Mesh) -> None:
    web, api, db = mesh.hosts
    for host in mesh.hosts:
        assert ok(host, "systemctl is-active meshd").strip() == "active"
        assert '--comment "meshd:output" -j MESHD_OUTPUT' in ok(host, "iptables-save -t nat")
        assert "api.mesh" in ok(host, "cat /etc/hosts")
    page = fetch(web, "http://localhost:8080/")  # web -> api.mesh -> db.mesh, each over the mesh
    assert f"web@{web.name} -> api@{api.name} -> db@{db.name}" in page
    products6 = json.loads(fetch(web, f"http://[{api.address6}]:8081/products"))
    assert products6["served_by"] == api.name and products6["peer"] == "127.0.0.1"
    pid = ok(api, "systemctl show -p MainPID --value meshd").strip()

    def reloads() -> int:
        return ok(api, "journalctl -u meshd -o cat --no-pager").count("INFO meshd: reloaded ")

    before = reloads()
    ok(api, "systemctl reload meshd")
    until(lambda: reloads() > before, 10, "meshd reloaded")
    assert ok(api, "systemctl show -p MainPID --value meshd").strip() == pid
    assert json.loads(fetch(db, "http://web.mesh:8080/healthz"))["served_by"] == web.name


def test_meshd_reads_its_own_process_metrics(mesh: Mesh) -> None:
    """ProtectProc=invisible hides other processes, never meshd's own /proc/self."""
    client = AdminClient.for_workspace(Workspace.load(mesh.ws))
    node = mesh.nodes[0]
    reply = client.request(AdminEndpoint(node.name, node.host.address, 15000), "GET", "/metrics")
    rss = re.search(r"^process_resident_memory_bytes (\d+)", reply.body, re.MULTILINE)
    assert reply.status == 200 and rss and int(rss.group(1)) > 0, reply.body[:2000]


def _probe_unit(meshd_service: str) -> str:
    """meshd.service's text, its sandbox untouched, running the probe once instead of meshd."""
    kept = [
        line
        for line in meshd_service.splitlines()
        if not line.startswith(
            ("ExecStart", "ExecStop", "ExecReload", "Type=", "Notify", "Watchdog", "Restart")
        )
    ]
    at = kept.index("[Service]") + 1
    args = "/usr/bin/python3 " + PROBE_SCRIPT + " %I"
    run = ["Type=oneshot", f"ExecStart=/bin/sh -c '{args} > {PROBE_OUT}'"]
    return "\n".join([*kept[:at], *run, *kept[at:]])


def test_renewal_can_run_in_meshd_sandbox(mesh: Mesh) -> None:
    """keygen into the state dir (0600, meshd's), the others' admin ports, /etc/meshd read-only."""
    node = mesh.nodes[0]
    host, others = node.host, [o.host.address for o in mesh.others(node)]
    unit = _probe_unit(ok(host, "cat /etc/systemd/system/meshd.service"))
    assert "UMask=0077" in unit and "SystemCallFilter=~@privileged @resources" in unit
    ident = f"spiffe://{Workspace.load(mesh.ws).config.trust_domain}/host/{node.name}"
    unit = unit.replace("%I", " ".join([ident, *others]))
    put(host, PROBE_SCRIPT, PROBE.encode())
    put(host, f"/etc/systemd/system/{PROBE_UNIT}.service", unit.encode())
    try:
        ok(host, f"systemctl daemon-reload && systemctl start {PROBE_UNIT}")
        seen = json.loads(ok(host, f"cat {PROBE_OUT}"))
    finally:
        ok(host, f"rm -f /etc/systemd/system/{PROBE_UNIT}.service {PROBE_SCRIPT} {PROBE_OUT}")
        ok(host, "rm -rf /var/lib/meshd/identity; systemctl daemon-reload")
    assert seen["keygen"] == 0, seen
    assert seen["csr"] == ["-----BEGIN CERTIFICATE REQUEST-----"], seen
    assert (seen["key_mode"], seen["key_owner"]) == ("0o600", True), seen
    assert seen["etc"] == "OSError: Read-only file system", seen
    assert seen["admin"] == dict.fromkeys(others, "connected"), seen


def test_the_probe_unit_keeps_the_sandbox() -> None:
    """The probe runs under every sandbox line of the real unit (pure: no host needed)."""
    from meshctl.provision.units import UnitOptions, meshd_service  # noqa: PLC0415

    real = meshd_service(UnitOptions(fail_mode="closed"))
    probe = _probe_unit(real)
    sandbox = [
        line
        for line in real.splitlines()
        if line.startswith(("Protect", "Private", "Restrict", "SystemCall", "UMask", "User="))
        or line.startswith(("Capability", "Ambient", "ReadOnly", "StateDirectory", "NoNew"))
    ]
    assert len(sandbox) > 20 and all(line in probe.splitlines() for line in sandbox)
    assert "Type=oneshot" in probe and "Type=notify" not in probe
