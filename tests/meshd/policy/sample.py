"""A host "b" serving api and echo, and a registry of api's two endpoints: the policy tests' world."""

from __future__ import annotations

from pathlib import Path

from meshd.config import IdentityConfig, LimitsConfig, MeshdConfig, ServiceConfig
from meshd.registry import Endpoint, Registry, Service

MAX_CONNS, MAX_PEER_STREAMS, MAX_PEER_LINKS = 4, 3, 2
B1 = Endpoint("b1", "10.77.0.11", 8080, ipv6=("fd00:77::11",))
B2 = Endpoint("b2", "10.77.0.12", 8080)
API = Service("api", "10.255.0.2", 80, (B1, B2))
LONELY = Service("lonely", "10.255.0.3", 80)
REGISTRY = Registry(7, (API, LONELY))
TD = "t.mesh"
HOST_A, HOST_C = f"spiffe://{TD}/host/a", f"spiffe://{TD}/host/c"
WEB, DB = f"spiffe://{TD}/svc/web", f"spiffe://{TD}/svc/db"


def config(mtls: str = "strict") -> MeshdConfig:
    return MeshdConfig(
        identity=IdentityConfig("b", TD, Path("c"), Path("k"), Path("b")),
        mtls=mtls,
        services=(ServiceConfig("api", 8080), ServiceConfig("echo", 7000)),
        limits=LimitsConfig(
            max_connections=MAX_CONNS,
            max_streams_per_peer=MAX_PEER_STREAMS,
            max_links_per_peer=MAX_PEER_LINKS,
        ),
    )
