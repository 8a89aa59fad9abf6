"""``meshctl init`` and ``meshctl ca``, run in-process and as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshctl.cli.errors import ExitCode
from meshd import __version__
from meshd.identity import SpiffeId
from meshd.pki import build_csr, generate_key, spiffe_ids
from tests.meshctl.cli.helpers import meshctl

PASS = {"MESHCTL_CA_PASSPHRASE": "correct horse battery"}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "prod"
    result = meshctl(
        "init", str(root), "--trust-domain", "prod.example", "--operator", "alice", env=PASS
    )
    assert result.code == ExitCode.OK, result.err
    return root


def test_init_reports_and_defaults(ws: Path) -> None:
    config = (ws / "mesh.toml").read_text()
    assert 'name = "prod"' in config and 'trust_domain = "prod.example"' in config
    assert 'leaf_lifetime = "24h"' in config and 'issuer_lifetime = "30d"' in config
    assert "leaf_lifetime_hours" not in config


def test_init_output_names_identity_and_next_step(tmp_path: Path) -> None:
    result = meshctl("init", str(tmp_path / "m"), "--name", "demo", "--operator", "bob", env=PASS)
    assert result.code == 0
    assert "spiffe://demo.mesh/operator/bob" in result.out
    assert "next: meshctl ca show" in result.out


def test_ca_show_json(ws: Path) -> None:
    result = meshctl("--workspace", str(ws), "ca", "show", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["trust_domain"] == "prod.example" and data["ca_key_encrypted"] is True
    roles = {c["role"]: c for c in data["certificates"]}
    assert set(roles) == {"root CA", "issuing CA", "operator"}
    assert roles["operator"]["spiffe_ids"] == ["spiffe://prod.example/operator/alice"]
    assert roles["root CA"]["expires_in_days"] >= 3649
    assert len(roles["issuing CA"]["fingerprint_sha256"]) == 95


def test_ca_show_table_from_env_workspace(ws: Path) -> None:
    result = meshctl("ca", "show", env={"MESHCTL_WORKSPACE": str(ws)})
    assert result.code == 0, result.err
    assert "spiffe://prod.example/operator/alice" in result.out
    assert "issuing CA" in result.out and "sha256" in result.out


def test_second_init_refuses(ws: Path) -> None:
    before = (ws / "secrets" / "issuing-ca.key").read_bytes()
    result = meshctl("init", str(ws), env=PASS)
    assert result.code == ExitCode.CONFIG
    assert "already a mesh workspace" in result.err and "hint:" in result.err
    assert (ws / "secrets" / "issuing-ca.key").read_bytes() == before


def test_passphrase_prompt_and_no_terminal(tmp_path: Path) -> None:
    prompted = meshctl("init", str(tmp_path / "a"), prompt_answer="typed at the prompt")
    assert prompted.code == 0, prompted.err
    headless = meshctl("init", str(tmp_path / "b"))
    assert headless.code == ExitCode.CONFIG
    assert "MESHCTL_CA_PASSPHRASE is not set" in headless.err
    assert not (tmp_path / "b").exists()


def test_short_passphrase_refused(tmp_path: Path) -> None:
    result = meshctl("init", str(tmp_path / "m"), env={"MESHCTL_CA_PASSPHRASE": "short"})
    assert result.code == ExitCode.CONFIG and "too short" in result.err
    assert not (tmp_path / "m").exists()


def test_insecure_no_passphrase_warns(tmp_path: Path) -> None:
    result = meshctl("init", str(tmp_path / "m"), "--insecure-no-passphrase")
    assert result.code == 0
    assert "UNENCRYPTED" in result.err
    assert b"ENCRYPTED" not in (tmp_path / "m" / "secrets" / "issuing-ca.key").read_bytes()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["init", "X", "--name", "Bad_Name"], ExitCode.CONFIG, "invalid mesh name"),
        (["init", "X", "--trust-domain", "UPPER"], ExitCode.CONFIG, "--trust-domain"),
        (["init", "X", "--bogus"], ExitCode.USAGE, "No such option"),
        (["ca", "show"], ExitCode.CONFIG, "no mesh workspace"),
    ],
)
def test_errors(tmp_path: Path, argv: list[str], code: ExitCode, message: str) -> None:
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    result = meshctl("--workspace", str(tmp_path / "none"), *argv, env=PASS)
    assert result.code == code, result.err
    assert message in result.err
    assert "Traceback" not in result.err


def test_sign_csr(ws: Path, tmp_path: Path) -> None:
    ids = [
        SpiffeId.parse("spiffe://prod.example/host/h1"),
        SpiffeId.parse("spiffe://prod.example/svc/api"),
    ]
    csr = tmp_path / "h1.csr"
    csr.write_bytes(build_csr(generate_key(), ids).public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "h1.pem"
    argv = [
        "-w",
        str(ws),
        "ca",
        "sign",
        str(csr),
        "--id",
        str(ids[0]),
        "--id",
        str(ids[1]),
        "-o",
        str(out),
    ]
    result = meshctl(*argv, env=PASS)
    assert result.code == 0, result.err
    leaf, _issuing = x509.load_pem_x509_certificates(out.read_bytes())
    assert spiffe_ids(leaf) == ids
    wrong = meshctl(*argv, env={"MESHCTL_CA_PASSPHRASE": "not it at all"})
    assert wrong.code == ExitCode.CERTIFICATE
    assert "wrong passphrase" in wrong.err
    mismatch = meshctl(*argv[:-4], "-o", str(out), env=PASS)
    assert mismatch.code == ExitCode.CERTIFICATE and "asks for identities" in mismatch.err


def _console_script(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("meshctl")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_")}
    return subprocess.run(
        [str(script), *argv],
        capture_output=True,
        text=True,
        env={**full_env, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_real_console_script_wrong_passphrase_is_one_line(ws: Path, tmp_path: Path) -> None:
    csr = tmp_path / "a.csr"
    sid = "spiffe://prod.example/svc/a"
    subprocess.run(
        [
            str(Path(sys.executable).with_name("meshd")),
            "keygen",
            "--key",
            str(tmp_path / "a.key"),
            "--csr",
            str(csr),
            "--id",
            sid,
        ],
        check=True,
    )
    result = _console_script(
        "-w",
        str(ws),
        "ca",
        "sign",
        str(csr),
        "--id",
        sid,
        "-o",
        str(tmp_path / "a.pem"),
        env={"MESHCTL_CA_PASSPHRASE": "definitely wrong"},
    )
    assert result.returncode == ExitCode.CERTIFICATE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: cannot decrypt") and "wrong passphrase" in lines[0]
    assert lines[1].startswith("hint: ")
    debug = _console_script(
        "--debug",
        "-w",
        str(ws),
        "ca",
        "sign",
        str(csr),
        "--id",
        sid,
        "-o",
        str(tmp_path / "a.pem"),
        env={"MESHCTL_CA_PASSPHRASE": "definitely wrong"},
    )
    assert "Traceback" in debug.stderr


def test_version() -> None:
    result = _console_script("--version", env={})
    assert result.returncode == 0 and result.stdout.strip() == f"meshctl {__version__}"
