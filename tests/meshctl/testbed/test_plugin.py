"""The pytest plugin's preconditions: skip when not root, fail when tools are missing."""

from __future__ import annotations

import pytest

from meshctl.testbed import pytest_plugin


def test_skips_when_not_root(monkeypatch):
    monkeypatch.setattr(pytest_plugin.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        pytest_plugin.require_testbed()


def test_fails_as_root_when_tools_are_missing(monkeypatch):
    monkeypatch.setattr(pytest_plugin.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pytest_plugin.shutil, "which", lambda tool: None)
    with pytest.raises(pytest.fail.Exception, match="systemd-nspawn, debootstrap"):
        pytest_plugin.require_testbed()


def test_passes_as_root_with_tools(monkeypatch):
    monkeypatch.setattr(pytest_plugin.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pytest_plugin.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    pytest_plugin.require_testbed()
