"""The pytest plugin's preconditions: skip when not root, fail when tools are missing."""

from __future__ import annotations

import os
import shutil

import pytest

from meshctl.testbed import pytest_plugin

# the plugin looks these up through the os and shutil modules, which is where they are patched


def test_skips_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        pytest_plugin.require_testbed()


def test_fails_as_root_when_tools_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(pytest.fail.Exception, match="systemd-nspawn, debootstrap"):
        pytest_plugin.require_testbed()


def test_passes_as_root_with_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    pytest_plugin.require_testbed()
