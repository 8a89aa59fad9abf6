"""Real test hosts on one machine: systemd-nspawn containers on a private bridge.

Used by the end-to-end tests (through `meshctl.testbed.pytest_plugin`) and by
`meshctl demo`. See /work/shared/TESTBED.md for the facts this is built on.
"""

from __future__ import annotations

from .host import TestbedHost
from .image import build_image
from .testbed import Testbed, cleanup_leftovers, default_state_root, leftovers

__all__ = [
    "Testbed",
    "TestbedHost",
    "build_image",
    "cleanup_leftovers",
    "default_state_root",
    "leftovers",
]
