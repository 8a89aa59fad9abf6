"""Monitor identities and the Prometheus scrape configuration that uses them.

A monitor is a scraper (the user's Prometheus): meshctl's issuing CA gives it
``spiffe://<td>/monitor/<name>``, with which meshd's admin API answers
``GET /metrics`` and nothing else. ``issue_monitor`` writes its files;
``prometheus_config`` renders, purely, the scrape job that reaches every
joined host's admin API with them.

Prometheus checks a host name, not a SPIFFE ID: it verifies meshd's certificate
against the workspace's trust bundle and the DNS name every meshd certificate
carries (``meshd.pki.admin_server_name``). That proves "a meshd of this mesh";
which host answers is what meshctl itself checks on top, and Prometheus cannot.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl import files
from meshctl.ca import OPERATOR_CERT_LIFETIME, Authority, issue_identity
from meshctl.inventory import HostSpec
from meshctl.workspace import Workspace
from meshd.errors import ConfigError
from meshd.identity import make_id
from meshd.pki import admin_server_name, cert_pem, private_pem

MONITOR_LIFETIME = OPERATOR_CERT_LIFETIME  # a scraper's certificate lives as an operator's does
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
JOB = "meshd"
SCRAPE_INTERVAL = "15s"
_INTERVAL = re.compile(r"[1-9][0-9]{0,5}(ms|s|m|h)")


@dataclass(frozen=True)
class MonitorFiles:
    """Where a monitor's files are (or go)."""

    directory: Path
    name: str

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"


@dataclass(frozen=True)
class IssuedMonitor:
    """What ``issue_monitor`` made: the identity, its files, when it expires."""

    identity: str
    files: MonitorFiles
    expires: dt.datetime

    def to_json(self) -> dict[str, str]:
        return {
            "identity": self.identity,
            "key": str(self.files.key),
            "certificate": str(self.files.cert),
            "ca": str(self.files.ca),
            "expires": self.expires.isoformat(),
        }


def check_monitor_name(name: str) -> str:
    """``name`` when it is a monitor name (``[a-z0-9][a-z0-9-]{0,62}``), else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid monitor name {name!r}",
            hint="use 1-63 lowercase letters, digits and '-', starting with a letter or digit"
            " (e.g. prometheus)",
        )
    return name


def monitor_files(ws: Workspace, name: str, out: Path | None = None) -> MonitorFiles:
    """The files of monitor ``name``: in ``out``, or ``<workspace>/monitors/<name>/``."""
    return MonitorFiles(out if out is not None else ws.root / "monitors" / name, name)


def issue_monitor(
    ws: Workspace, issuing: Authority, where: MonitorFiles, now: dt.datetime
) -> IssuedMonitor:
    """A fresh key and certificate for monitor ``where.name``, and the trust bundle, written
    (key 0600, the key first: a rerun replaces a half-written pair)."""
    identity = make_id(ws.config.trust_domain, "monitor", check_monitor_name(where.name))
    key, cert = issue_identity([identity], issuing, now, MONITOR_LIFETIME)
    _make_directory(where.directory)
    _keep_keys_out_of_git(ws, where)
    files.write_atomic(where.key, private_pem(key), 0o600)
    files.write_atomic(where.cert, cert_pem(cert, issuing.cert), 0o644)
    files.write_atomic(where.ca, ws.trust_bundle.read_bytes(), 0o644)
    return IssuedMonitor(str(identity), where, cert.not_valid_after_utc)


def _keep_keys_out_of_git(ws: Workspace, where: MonitorFiles) -> None:
    """The workspace goes into git but for secrets/: monitors/ keeps its keys out too."""
    ignore = ws.root / "monitors" / ".gitignore"
    if where.directory.parent == ignore.parent and not ignore.exists():
        files.write_atomic(ignore, b"*.key\n", 0o644)


def _make_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory", hint="pick another --out directory")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot make {directory}: {e.strerror}", hint="pick another --out directory"
        ) from e


def check_interval(text: str) -> str:
    """``text`` when it is a Prometheus duration meshctl writes (``15s``, ``500ms``, ``1m``)."""
    if not _INTERVAL.fullmatch(text):
        raise ConfigError(
            f"invalid scrape interval {text!r}", hint="a number with ms, s, m or h, e.g. 15s"
        )
    return text


@dataclass(frozen=True)
class ScrapeTarget:
    """One meshd admin API to scrape."""

    host: str
    address: str
    port: int

    @property
    def target(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.port}"


def scrape_targets(
    hosts: Sequence[HostSpec], joined: Sequence[str], admin_port: int
) -> list[ScrapeTarget]:
    """One target per joined host of the inventory, by name."""
    wanted = set(joined)
    return [ScrapeTarget(h.name, h.address, admin_port) for h in hosts if h.name in wanted]


def prometheus_config(
    trust_domain: str,
    where: MonitorFiles,
    targets: Sequence[ScrapeTarget],
    interval: str = SCRAPE_INTERVAL,
) -> dict[str, Any]:
    """The scrape configuration (as Prometheus' YAML reads it): one job, mTLS, a target
    per host labelled ``host``."""
    return {
        "global": {"scrape_interval": check_interval(interval)},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scheme": "https",
                "metrics_path": "/metrics",
                "tls_config": {
                    "ca_file": str(where.ca),
                    "cert_file": str(where.cert),
                    "key_file": str(where.key),
                    "server_name": admin_server_name(trust_domain),
                    "min_version": "TLS13",  # meshd speaks TLS 1.3 only
                },
                "static_configs": [
                    {"targets": [t.target], "labels": {"host": t.host}} for t in targets
                ],
            }
        ],
    }


def render_yaml(config: dict[str, Any], header: str = "") -> str:
    """YAML text of ``config``: block style, every string JSON-quoted (valid YAML 1.2)."""
    return header + "".join(_yaml(config, 0)).lstrip("\n") + "\n"


def _yaml(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        lines: list[str] = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines += [f"\n{pad}{key}:", *_yaml(item, indent + 1)]
            else:
                lines.append(f"\n{pad}{key}: {_scalar(item)}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            inner = _yaml(item, indent + 1) if isinstance(item, dict | list) else []
            if not inner:
                lines.append(f"\n{pad}- {_scalar(item)}")
                continue
            first = inner[0].lstrip("\n").lstrip()
            lines += [f"\n{pad}- {first}", *inner[1:]]
        return lines
    return [_scalar(value)]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))
