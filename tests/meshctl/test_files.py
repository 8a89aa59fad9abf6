"""meshctl's file writer: whole or not at all, 0600, synced, never through a planted link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshctl.files import write_atomic


def synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What os.fsync is called on from now (files and directories), by path."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_write_atomic_syncs_the_file_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the rename must not leave an empty known_hosts or hosts.toml."""
    synced = synced_paths(monkeypatch)
    write_atomic(tmp_path / "known_hosts", b"10.0.0.1 ssh-ed25519 AAAA\n")
    assert (tmp_path / "known_hosts").read_bytes() == b"10.0.0.1 ssh-ed25519 AAAA\n"
    assert len(synced) == 2, synced
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.startswith(".known_hosts.")
    assert synced[1] == str(tmp_path)


def test_write_atomic_replaces_a_planted_link_and_leaves_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    victim.chmod(0o644)
    (tmp_path / "known_hosts").symlink_to(victim)
    write_atomic(tmp_path / "known_hosts", b"new\n")
    assert victim.read_text() == "keep me\n" and victim.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "known_hosts").is_symlink()
    assert (tmp_path / "known_hosts").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts", "victim"]
