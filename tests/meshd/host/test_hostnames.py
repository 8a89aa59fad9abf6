"""``meshd hosts``: our block written into a real (temporary) hosts file, the rest untouched."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.cli import main
from meshd.errors import ProvisionError
from meshd.host import hostnames
from meshd.hostsfile import BEGIN, END
from meshd.registry import Registry
from tests.meshd import configs

MESHD = str(Path(sys.executable).with_name("meshd"))
CONFIG = configs.minimal() + 'state_dir = "state"\n'
# CRLF, a tab, a byte that is not UTF-8 and no final newline: all must survive as they were
ORIGINAL = b"127.0.0.1\tlocalhost\r\n::1 localhost ip6-localhost\n10.0.0.5 caf\xe9.internal"


def registry_doc(version: int, vips: dict[str, str]) -> dict[str, object]:
    return {
        "version": version,
        "services": {name: {"vip": vip, "port": 8080} for name, vip in vips.items()},
    }


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A config dir with a registry of two services and an ``etc/hosts`` (0644)."""
    (tmp_path / "meshd.toml").write_text(CONFIG)
    vips = {"web": "10.255.0.2", "api": "10.255.0.1"}
    (tmp_path / "registry.json").write_text(json.dumps(registry_doc(3, vips)))
    (tmp_path / "etc").mkdir()
    hosts = tmp_path / "etc" / "hosts"
    hosts.write_bytes(ORIGINAL)
    hosts.chmod(0o644)
    return tmp_path


def hosts_cmd(host: Path, action: str) -> int:
    config, hosts = str(host / "meshd.toml"), str(host / "etc" / "hosts")
    return main(["hosts", action, "--config", config, "--hosts-file", hosts])


def test_apply_twice_writes_once_and_remove_restores(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = host / "etc" / "hosts"
    assert hosts_cmd(host, "apply") == 0
    block = f"{BEGIN}\n10.255.0.1\tapi.mesh\n10.255.0.2\tweb.mesh\n{END}\n".encode()
    assert hosts.read_bytes() == ORIGINAL + b"\n" + block
    first = hosts.stat()
    assert stat.S_IMODE(first.st_mode) == 0o644
    assert "updated (2 names, registry version 3)" in capsys.readouterr().out

    assert hosts_cmd(host, "apply") == 0
    again = hosts.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    assert "already up to date" in capsys.readouterr().out

    assert hosts_cmd(host, "remove") == 0
    assert hosts.read_bytes() == ORIGINAL + b"\n"  # the newline our block needed stays
    assert "block removed" in capsys.readouterr().out
    removed = hosts.stat()
    assert hosts_cmd(host, "remove") == 0
    assert hosts.stat().st_ino == removed.st_ino
    assert "no meshd block" in capsys.readouterr().out
    assert not [p.name for p in hosts.parent.iterdir() if p.name != "hosts"]  # no temp files left


@pytest.mark.parametrize(
    "text",
    [
        b"127.0.0.1 localhost\n",
        b"",
        b"127.0.0.1 localhost\r\n# comment\twith tab\n\n10.1.1.1 \xff\xfe\n",
    ],
)
def test_remove_restores_the_original_bytes(tmp_path: Path, text: bytes) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_bytes(text)
    assert hostnames.apply(Registry.from_dict(registry_doc(1, {"a": "10.255.0.3"}), "r"), hosts)
    assert hosts.read_bytes().startswith(text)
    assert hostnames.remove(hosts)
    assert hosts.read_bytes() == text
    assert not hostnames.remove(hosts)


def test_a_pushed_registry_replaces_the_block(host: Path) -> None:
    hosts = host / "etc" / "hosts"
    assert hosts_cmd(host, "apply") == 0
    (host / "state").mkdir()
    (host / "state" / "registry.json").write_text(json.dumps(registry_doc(4, {"db": "10.255.0.7"})))
    assert hosts_cmd(host, "apply") == 0
    text = hosts.read_bytes()
    assert text.count(BEGIN.encode()) == 1 and b"10.255.0.7\tdb.mesh\n" in text
    assert b"web.mesh" not in text and text.startswith(ORIGINAL)


def test_an_empty_registry_takes_the_block_out(host: Path) -> None:
    hosts = host / "etc" / "hosts"
    assert hosts_cmd(host, "apply") == 0
    (host / "registry.json").write_text(json.dumps(registry_doc(5, {})))
    assert hosts_cmd(host, "apply") == 0
    assert hosts.read_bytes() == ORIGINAL + b"\n"


def test_mode_and_owner_are_kept(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    hosts.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (1234, 4321)
        os.chown(hosts, *owner)
    assert hostnames.apply(Registry.from_dict(registry_doc(1, {"a": "10.255.0.3"}), "r"), hosts)
    st = hosts.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, *owner)


def test_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    target, link = tmp_path / "real-hosts", tmp_path / "hosts"
    target.write_text("127.0.0.1 localhost\n")
    link.symlink_to(target)
    assert hostnames.apply(Registry.from_dict(registry_doc(1, {"a": "10.255.0.3"}), "r"), link)
    assert link.is_symlink() and b"a.mesh" in target.read_bytes()


def test_a_bind_mounted_file_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    inode = hosts.stat().st_ino

    def busy(self: Path, target: Path) -> Path:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(Path, "replace", busy)
    assert hostnames.apply(Registry.from_dict(registry_doc(1, {"a": "10.255.0.3"}), "r"), hosts)
    assert hosts.stat().st_ino == inode and b"10.255.0.3\ta.mesh\n" in hosts.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]


def test_an_unwritable_directory_is_a_provision_error(tmp_path: Path) -> None:
    hosts = tmp_path / "missing-dir" / "hosts"
    with pytest.raises(ProvisionError, match=r"cannot write .*missing-dir/hosts"):
        hostnames.apply(Registry.from_dict(registry_doc(1, {"a": "10.255.0.3"}), "r"), hosts)


def test_show_prints_the_block_and_writes_nothing(host: Path) -> None:
    shown = subprocess.run(
        [MESHD, "hosts", "show", "--config", str(host / "meshd.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == f"{BEGIN}\n10.255.0.1\tapi.mesh\n10.255.0.2\tweb.mesh\n{END}\n"
    assert (host / "etc" / "hosts").read_bytes() == ORIGINAL


def test_hosts_file_option_is_hidden() -> None:
    usage = subprocess.run(
        [MESHD, "hosts", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config" in usage and "--hosts-file" not in usage and "Example:" in usage


@pytest.mark.parametrize("where", ["pushed", "file"])
@pytest.mark.parametrize("command", ["hosts", "sync"])
def test_a_vip_outside_vip_range_is_never_written(
    host: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    command: str,
) -> None:
    """A registry whose VIP lies outside [interception] vip_range is refused, the file left."""
    from meshd.host import interception  # noqa: PLC0415

    applied: list[object] = []  # sync must stop before the rules too (and never run iptables)
    monkeypatch.setattr(interception, "apply", lambda *args: applied.append(args))
    bad = registry_doc(9, {"evil": "192.168.1.1"})
    if where == "pushed":  # as an older meshd accepted and stored it
        (host / "state").mkdir()
        (host / "state" / "registry.json").write_text(json.dumps(bad))
    else:
        (host / "registry.json").write_text(json.dumps(bad))
    record = f'[interception]\nrules_record = "{host / "rules.sha256"}"\n'
    (host / "meshd.toml").write_text(CONFIG + record)
    config, hosts = str(host / "meshd.toml"), str(host / "etc" / "hosts")
    argv = [command, "apply"] if command == "hosts" else [command]
    assert main([*argv, "--config", config, "--hosts-file", hosts]) == 1
    err = capsys.readouterr().err
    assert "services.evil.vip: 192.168.1.1 is outside vip_range 10.255.0.0/16" in err, err
    assert (host / "etc" / "hosts").read_bytes() == ORIGINAL
    assert applied == []
