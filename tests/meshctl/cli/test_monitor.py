"""Monitor identities: ``meshctl ca issue-monitor`` and ``meshctl monitor prometheus-config``.

The scrape configuration is compared whole with ``examples/prometheus/prometheus.yml``
(made by the same command for a demo-like mesh), so the example cannot drift.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from meshctl import state
from meshctl.config import MeshConfig
from meshctl.inventory import HostSpec, Inventory
from meshctl.monitors import (
    MonitorFiles,
    ScrapeTarget,
    prometheus_config,
    render_yaml,
    scrape_targets,
)
from meshctl.workspace import init_workspace, load_key
from meshd.pki import load_certs, spiffe_ids
from tests.meshctl.cli.fakes import FakeMesh, Reply
from tests.meshctl.helpers import NOW, TD

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "prometheus" / "prometheus.yml"


def test_issue_monitor_writes_key_chain_and_bundle(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path)
    done = mesh.meshctl("ca", "issue-monitor", "prom", "--json")
    assert done.code == 0, done.out + done.err
    where = mesh.ws.root / "monitors" / "prom"
    assert done.json() == {
        "identity": f"spiffe://{TD}/monitor/prom",
        "key": str(where / "prom.key"),
        "certificate": str(where / "prom.crt"),
        "ca": str(where / "ca.crt"),
        "expires": (NOW + dt.timedelta(days=90)).isoformat(),
    }
    assert (where / "prom.key").stat().st_mode & 0o777 == 0o600
    assert (where.parent / ".gitignore").read_text() == "*.key\n"  # the workspace is in git
    assert where.stat().st_mode & 0o777 == 0o700
    leaf, issuing = load_certs(where / "prom.crt")
    assert [str(i) for i in spiffe_ids(leaf)] == [f"spiffe://{TD}/monitor/prom"]
    assert issuing == load_certs(mesh.ws.issuing_ca_cert)[0]
    leaf.verify_directly_issued_by(issuing)
    assert load_key(where / "prom.key", None).public_key() == leaf.public_key()
    assert (where / "ca.crt").read_bytes() == mesh.ws.trust_bundle.read_bytes()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []  # a client: no server name


def test_issue_monitor_again_renews_into_out(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path)
    out = tmp_path / "prom-files"
    first = mesh.meshctl("ca", "issue-monitor", "prom", "--out", str(out))
    assert first.code == 0, first.err
    assert "issued spiffe://t.mesh/monitor/prom" in first.out
    key = (out / "prom.key").read_bytes()
    again = mesh.meshctl("ca", "issue-monitor", "prom", "--out", str(out))
    assert again.code == 0, again.err
    assert (out / "prom.key").read_bytes() != key
    assert not (mesh.ws.root / "monitors").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["Prom"], "invalid monitor name 'Prom'"),
        (["-x"], "No such option"),
        (["a" * 64], "invalid monitor name"),
        (["a/b"], "invalid monitor name 'a/b'"),
        (["p_q"], "invalid monitor name 'p_q'"),
        (["prom", "--out", "FILE"], "is not a directory"),
    ],
)
def test_issue_monitor_refuses_clearly(tmp_path: Path, argv: list[str], message: str) -> None:
    mesh = FakeMesh(tmp_path)
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    done = mesh.meshctl("ca", "issue-monitor", *argv)
    assert done.code != 0
    assert message in done.err, done.err
    assert not (mesh.ws.root / "monitors").exists()


@pytest.mark.parametrize(
    ("joined", "expected"),
    [
        ([], []),
        (["db1"], [("db1", "10.0.0.12:15000")]),
        (["web1", "db1", "gone"], [("db1", "10.0.0.12:15000"), ("web1", "[fd00::11]:15000")]),
    ],
)
def test_one_target_per_joined_host(joined: list[str], expected: list[tuple[str, str]]) -> None:
    hosts = (HostSpec("db1", "10.0.0.12"), HostSpec("web1", "fd00::11"), HostSpec("x1", "10.0.0.9"))
    assert [(t.host, t.target) for t in scrape_targets(hosts, joined, 15000)] == expected


def test_the_job_verifies_meshd_and_presents_the_monitor() -> None:
    where = MonitorFiles(Path("/m"), "prom")
    config = prometheus_config("t.mesh", where, [ScrapeTarget("web1", "10.0.0.1", 15000)])
    (job,) = config["scrape_configs"]
    assert job["scheme"] == "https" and job["job_name"] == "meshd"
    assert job["tls_config"] == {
        "ca_file": "/m/ca.crt",
        "cert_file": "/m/prom.crt",
        "key_file": "/m/prom.key",
        "server_name": "meshd.t.mesh",
        "min_version": "TLS13",
    }
    assert "insecure_skip_verify" not in render_yaml(config)
    assert job["static_configs"] == [{"targets": ["10.0.0.1:15000"], "labels": {"host": "web1"}}]


def demo_like(tmp_path: Path) -> FakeMesh:
    """The example's mesh: demo.mesh with web1, api1 and db1 joined, x1 not."""
    mesh = FakeMesh(tmp_path)
    config = MeshConfig("demo", "demo.mesh", "demo-operator", False)
    mesh.ws = init_workspace(tmp_path / "demo", config, None, NOW)
    hosts = [("web1", "10.0.0.11"), ("api1", "10.0.0.12"), ("db1", "10.0.0.13"), ("x1", "10.0.0.9")]
    state.save_inventory(mesh.ws, Inventory(tuple(HostSpec(n, a) for n, a in hosts)))
    for name, address in hosts[:3]:
        state.record_join(mesh.ws, name, {"address": address})
    return mesh


def test_the_example_is_what_the_command_prints(tmp_path: Path) -> None:
    mesh = demo_like(tmp_path)
    done = mesh.meshctl(
        "monitor",
        "prometheus-config",
        "--identity",
        "prometheus",
        "--files",
        "/etc/prometheus/meshctl",
    )
    assert done.code == 0, done.err
    assert done.out == EXAMPLE.read_text()
    assert "10.0.0.9" not in done.out


def test_prometheus_config_out_writes_the_file(tmp_path: Path) -> None:
    mesh = demo_like(tmp_path)
    out = tmp_path / "meshd.yml"
    done: Reply = mesh.meshctl("monitor", "prometheus-config", "-o", str(out))
    assert done.code == 0, done.err
    assert "wrote" in done.err and "3 meshd target(s)" in done.err
    text = out.read_text()
    assert f'"{mesh.ws.root / "monitors" / "prometheus" / "prometheus.crt"}"' in text
    assert text.startswith("# Prometheus scrape configuration for meshd:")
    bad = mesh.meshctl("monitor", "prometheus-config", "--identity", "Bad")
    assert bad.code != 0 and "invalid monitor name 'Bad'" in bad.err


@pytest.mark.parametrize(
    ("interval", "ok"), [("1s", True), ("500ms", True), ("2m", True), ("0s", False), ("15", False),
                         ("1s\nx: y", False), ("", False)]
)  # fmt: skip
def test_the_scrape_interval_is_checked(tmp_path: Path, interval: str, ok: bool) -> None:
    done = demo_like(tmp_path).meshctl("monitor", "prometheus-config", "--interval", interval)
    assert (done.code == 0) == ok, done.err
    if ok:
        assert f'scrape_interval: "{interval}"' in done.out
        assert f"--identity prometheus --interval {interval}\n" in done.out
    else:
        assert "invalid scrape interval" in done.err
