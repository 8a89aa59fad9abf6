"""The mesh's error hierarchy, shared by meshd and meshctl.

A small, flat set of classes; each error carries an optional hint that says
what to do next. Where and how an error is shown is up to the front end.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(MeshError):
    """Bad input: a file, a field or an option is wrong."""


class ConnectError(MeshError):
    """A host, a port or a peer could not be reached or authenticated."""


class ProvisionError(MeshError):
    """Changing a host (or a test host) failed."""


class PolicyError(MeshError):
    """A policy document is invalid or cannot be applied."""


class CertificateError(MeshError):
    """A key or certificate is missing, unreadable, invalid or refused."""
