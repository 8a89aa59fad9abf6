"""The meshd bundle: pinned, hash-checked wheels; built once per content; cache checks."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

import pytest

from meshctl import bundle, bundle_lock
from meshd.errors import ProvisionError

TARGET = bundle.Target(f"{sys.version_info.major}.{sys.version_info.minor}", platform.machine())
LOCK_TEXT = bundle_lock.LOCK.read_text()


@pytest.fixture(scope="module")
def pinned_wheels() -> Path:
    """The real pinned wheels for this machine (fetched once into the shared cache)."""
    return bundle.wheels(TARGET)


@pytest.fixture
def cache(tmp_path: Path, pinned_wheels: Path) -> Path:
    """A private cache holding a copy of the pinned wheels, free to tamper with."""
    root = tmp_path / "cache"
    shutil.copytree(pinned_wheels, root / "wheels" / pinned_wheels.name)
    return root


def test_every_runtime_requirement_is_pinned_with_hashes() -> None:
    pins = bundle_lock.pins(LOCK_TEXT)
    for requirement in bundle_lock.RUNTIME_REQUIREMENTS:
        name = requirement.split(">=")[0]
        assert name in pins, f"{name} is not pinned in bundle.lock"
    assert len(bundle_lock.allowed_hashes(LOCK_TEXT)) >= len(pins)


def test_render_then_parse_round_trips() -> None:
    text = bundle_lock.render({("anyio", "4.16.0"): {"a" * 64}, ("cffi", "2.1.1"): {"b" * 64}})
    assert bundle_lock.pins(text) == {"anyio": "4.16.0", "cffi": "2.1.1"}
    assert bundle_lock.allowed_hashes(text) == {"a" * 64, "b" * 64}


def test_the_downloaded_wheels_are_the_pinned_ones(pinned_wheels: Path) -> None:
    bundle_lock.check_wheels(pinned_wheels, LOCK_TEXT)  # raises otherwise
    names = {p.name.split("-")[0].lower().replace("_", "-") for p in pinned_wheels.glob("*.whl")}
    assert names == set(bundle_lock.pins(LOCK_TEXT))


def test_built_once_then_reused(cache: Path) -> None:
    first = bundle.build(TARGET, cache)
    stamp = first.path.stat().st_mtime_ns
    again = bundle.build(TARGET, cache)
    assert again == first and again.path.stat().st_mtime_ns == stamp


def test_a_tampered_tarball_is_rebuilt(cache: Path) -> None:
    built = bundle.build(TARGET, cache)
    good = built.path.read_bytes()
    built.path.write_bytes(good + b"evil")
    assert bundle.build(TARGET, cache) == built
    assert built.path.read_bytes() == good


def test_a_tampered_wheel_is_refused(cache: Path) -> None:
    wheel = next((cache / "wheels").glob("*/*.whl"))
    with wheel.open("ab") as f:
        f.write(b"evil")
    with pytest.raises(ProvisionError, match=r"is not one of the wheels pinned in bundle\.lock"):
        bundle.build(TARGET, cache)


def test_offline_without_cached_wheels_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="are not cached"):
        bundle.build(TARGET, tmp_path / "empty", offline=True)


def test_old_tarballs_are_pruned(cache: Path) -> None:
    for i in range(4):
        old = cache / f"meshd-0.0.{i}-000000000000-{TARGET.tag}.tar.gz"
        old.write_bytes(b"old")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    built = bundle.build(TARGET, cache)
    left = sorted(p.name for p in cache.glob(f"meshd-*-{TARGET.tag}.tar.gz"))
    assert built.path.name in left and len(left) == 3
    assert f"meshd-0.0.3-000000000000-{TARGET.tag}.tar.gz" in left  # the newest old ones stay


@pytest.mark.parametrize(
    ("env", "euid", "expected"),
    [
        ({"MESHCTL_CACHE": "/srv/c"}, 1000, "/srv/c"),
        ({}, 0, "/var/cache/meshctl/bundles"),
        ({"XDG_CACHE_HOME": "/home/o/.xdg"}, 1000, "/home/o/.xdg/meshctl/bundles"),
        ({"HOME": "/home/o"}, 1000, "/home/o/.cache/meshctl/bundles"),
    ],
)
def test_the_cache_of_a_non_root_operator_is_their_own(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], euid: int, expected: str
) -> None:
    for name in ("MESHCTL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert bundle.default_cache() == Path(expected)


def test_the_bundle_does_not_depend_on_the_operators_umask(cache: Path) -> None:
    first = bundle.build(TARGET, cache)
    (cache / "index.json").unlink()  # force a rebuild
    old = os.umask(0o002)
    try:
        again = bundle.build(TARGET, cache)
    finally:
        os.umask(old)
    assert again.version == first.version
