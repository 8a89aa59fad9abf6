"""Real test hosts on one machine: systemd-nspawn containers on a private bridge.

Used by the end-to-end tests (through `meshctl.testbed.pytest_plugin`) and by
`meshctl demo`. Each host is a container with its own systemd as PID 1, its
own sshd, iptables and network namespace, booted from a debootstrapped
Debian image built once per machine (``image.py``); the hosts reach only the
bridge, never the outside.
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
