"""Shared by every bench module: paths, CPUs, identities, sizes, the scenario names,
the two error classes, and the run settings (Settings, scenario_title)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
ENVOY_VENV = BENCH / ".venv-envoy"
LOCAL = "127.0.0.1"
LOADGEN_CPU = "0"  # load generator and nginx
PROXY_CPU = "1"  # every proxy process
TRUST_DOMAIN = "bench.mesh"
ID_A = f"spiffe://{TRUST_DOMAIN}/host/a"
ID_B = f"spiffe://{TRUST_DOMAIN}/host/b"
ID_WEB = f"spiffe://{TRUST_DOMAIN}/svc/web"
ID_OPERATOR = f"spiffe://{TRUST_DOMAIN}/operator/bench"  # the admin API's client (meshd-policy)
SMALL_PATH = "/small"
SMALL_BODY = 1024  # bytes of the response body in scenarios a, b, c
MIB = 1024 * 1024
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

SCENARIOS = ("keepalive", "close", "rate", "bulk")


class ChainError(Exception):
    """A chain did not start or does not carry a request: reported, not fatal."""


class LoadError(Exception):
    """A load generator failed or its output could not be read."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: int  # seconds of each measured run in scenarios a, b, c
    warmup: int  # seconds of unmeasured load before each of them
    bulk_bytes: int
    pin: bool
    connections: int = 50
    rate: int = 2000
    rate_clients: int = 20

    @classmethod
    def make(cls, quick: bool, pin: bool) -> Settings:
        if quick:
            return cls(rounds=1, duration=3, warmup=1, bulk_bytes=256 * MIB, pin=pin)
        return cls(rounds=3, duration=10, warmup=2, bulk_bytes=1024 * MIB, pin=pin)


def scenario_title(name: str, s: Settings) -> str:
    return {
        "keepalive": f"(a) HTTP keep-alive, {s.connections} connections, wrk",
        "close": f"(b) Connection: close, {s.connections} connections, wrk",
        "rate": f"(c) fixed {s.rate:,} req/s, {s.rate_clients} connections, h2load --h1 --rps",
        "bulk": f"(d) bulk: {s.bulk_bytes // MIB} MiB response, curl",
    }[name]
