"""``meshd keygen``, ``reload`` and ``version`` through the real console script."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshd import __version__
from meshd.identity import SpiffeId
from meshd.pki import spiffe_ids
from tests.meshd import configs
from tests.meshd.harness import MeshNet

MESHD = str(Path(sys.executable).with_name("meshd"))


def _meshd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHD, *argv], capture_output=True, text=True, check=False)


def test_version() -> None:
    assert _meshd("version").stdout.strip() == f"meshd {__version__}"


def test_keygen(tmp_path: Path) -> None:
    key, csr = tmp_path / "key.pem", tmp_path / "req.csr"
    ids = ["spiffe://t.mesh/host/h1", "spiffe://t.mesh/svc/api"]
    result = _meshd("keygen", "--key", str(key), "--csr", str(csr), "--id", ids[0], "--id", ids[1])
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert request.is_signature_valid
    assert spiffe_ids(request) == [SpiffeId.parse(i) for i in ids]
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert private.public_key() == request.public_key()


def test_keygen_refuses_to_replace_key(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("existing")
    result = _meshd("keygen", "--key", str(key), "--csr", "-", "--id", "spiffe://t.mesh/host/h1")
    assert result.returncode == 1
    assert "exists" in result.stderr and "--force" in result.stderr
    assert key.read_text() == "existing"


def test_keygen_bad_id(tmp_path: Path) -> None:
    result = _meshd("keygen", "--key", str(tmp_path / "k"), "--csr", "-", "--id", "http://nope")
    assert result.returncode == 1
    assert "invalid SPIFFE ID" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "k").exists()


def test_keygen_a_stale_temporary_file_does_not_loosen_the_key(tmp_path: Path) -> None:
    """A left-over temp file at the old fixed name (0644) must not give the key its mode."""
    key = tmp_path / "key.pem"
    stale = tmp_path / ".key.pem.tmp"
    stale.write_text("left over")
    stale.chmod(0o644)
    result = _meshd("keygen", "--key", str(key), "--csr", "-", "--id", "spiffe://t.mesh/host/h1")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert serialization.load_pem_private_key(key.read_bytes(), None)


def test_keygen_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """root runs keygen: a link planted at any name beside the key is not followed."""
    key = tmp_path / "key.pem"
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / ".key.pem.tmp").symlink_to(target)
    csr = tmp_path / "req.csr"
    csr_target = tmp_path / "csr-elsewhere"
    csr_target.write_text("keep me too\n")
    csr.symlink_to(csr_target)
    result = _meshd(
        "keygen", "--key", str(key), "--csr", str(csr), "--id", "spiffe://t.mesh/host/h1"
    )
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep me\n"
    assert csr_target.read_text() == "keep me too\n"
    assert not key.is_symlink() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not csr.is_symlink() and x509.load_pem_x509_csr(csr.read_bytes()).is_signature_valid
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".key.pem.tmp",
        "csr-elsewhere",
        "elsewhere",
        "key.pem",
        "req.csr",
    ]


def test_reload_reports_meshds_own_verdict_not_its_log(net: MeshNet) -> None:
    """``meshd reload`` reads the outcome from /stats: a forged log line convinces nobody."""
    ident = net.pki.issue("a", "host/a")
    a = net.start("a", identity=ident)
    ok = _meshd("reload", "--config", str(a.config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"meshd reload (generation 1): reloaded {a.config} (registry version 1)\n"
    ident.cert.write_bytes(net.pki.issue("other", "host/a").cert.read_bytes())  # not its key
    with a.log.open("a") as log:  # what a mesh peer got into the log, had it managed to
        log.write(f"INFO meshd: reloaded {a.config} (registry version 99)\n")
    refused = _meshd("reload", "--config", str(a.config))
    print(f"\n{refused.stderr}")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("meshd: error: meshd refused the reload (generation 2): ")
    assert "key" in refused.stderr and "hint: meshd runs on unchanged" in refused.stderr
    assert a.proc.poll() is None


def test_reload_without_a_running_meshd_says_so(tmp_path: Path) -> None:
    config = tmp_path / "meshd.toml"
    socket = tmp_path / "admin.sock"
    config.write_text(configs.minimal() + f'[listen]\nadmin_socket = "{socket}"\n')
    result = _meshd("reload", "--config", str(config), "--timeout", "2")
    assert result.returncode == 1
    assert f"cannot ask meshd on {socket}" in result.stderr and "Traceback" not in result.stderr
