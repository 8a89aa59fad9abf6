"""The smallest meshd.toml the command-line tests build on (files relative to its directory)."""

from __future__ import annotations


def minimal(host: str = "web1") -> str:
    """Identity files and a registry file, nothing else: add tables after it."""
    return f"""
[identity]
host = "{host}"
trust_domain = "t.mesh"
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"
[mesh]
registry = "registry.json"
"""
