"""What every chain shares: the mesh PKI (make_pki) and the nginx backend
(nginx_config, start_nginx)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from common import (
    ID_A,
    ID_B,
    ID_OPERATOR,
    ID_WEB,
    LOADGEN_CPU,
    LOCAL,
    SMALL_BODY,
    SMALL_PATH,
    TRUST_DOMAIN,
    Settings,
)
from procs import Ports, Proc, Processes, find_binary, wait_port

# ---------------------------------------------------------------- PKI and backend


@dataclass(frozen=True)
class Pki:
    bundle: Path  # root CA
    a_cert: Path  # leaf + issuing CA
    a_key: Path
    a_combined: Path  # cert chain + key, as HAProxy's crt wants it
    b_cert: Path
    b_key: Path
    b_combined: Path
    operator_cert: Path  # the admin API's client, as meshctl's operator identity
    operator_key: Path


def make_pki(workdir: Path) -> Pki:
    """A mesh CA and leaf certs for host a and host b (+ svc web) and an operator, ECDSA P-256."""
    from meshctl.ca import create_ca, sign_csr  # noqa: PLC0415 - needs the project venv
    from meshd.files import write_private  # noqa: PLC0415
    from meshd.identity import SpiffeId  # noqa: PLC0415
    from meshd.pki import build_csr, cert_pem, generate_key, private_pem  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    ca = create_ca("bench", TRUST_DOMAIN, now)
    bundle = workdir / "bundle.pem"
    bundle.write_bytes(cert_pem(ca.root.cert))
    paths: dict[str, Path] = {}
    for host, ids in (("a", [ID_A]), ("b", [ID_B, ID_WEB]), ("operator", [ID_OPERATOR])):
        spiffe = [SpiffeId.parse(i) for i in ids]
        key = generate_key()
        leaf = sign_csr(build_csr(key, spiffe), spiffe, ca.issuing, now, dt.timedelta(days=1))
        chain = cert_pem(leaf, ca.issuing.cert)
        paths[f"{host}_cert"] = workdir / f"{host}.pem"
        paths[f"{host}_key"] = workdir / f"{host}.key"
        paths[f"{host}_cert"].write_bytes(chain)
        write_private(paths[f"{host}_key"], private_pem(key))
        if host != "operator":
            paths[f"{host}_combined"] = workdir / f"{host}-haproxy.pem"
            write_private(paths[f"{host}_combined"], chain + private_pem(key))
    return Pki(bundle=bundle, **paths)


def nginx_config(workdir: Path, port: int) -> str:
    w = workdir
    return f"""\
daemon off;
master_process off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    open_file_cache max=16;
    client_body_temp_path {w}/nginx-tmp;
    proxy_temp_path {w}/nginx-tmp;
    fastcgi_temp_path {w}/nginx-tmp;
    uwsgi_temp_path {w}/nginx-tmp;
    scgi_temp_path {w}/nginx-tmp;
    server {{
        listen {LOCAL}:{port} backlog=4096;
        location = {SMALL_PATH} {{ alias {w}/www/small; }}
        location = /bulk {{ alias {w}/www/bulk; }}
    }}
}}
"""


def start_nginx(procs: Processes, ports: Ports, s: Settings) -> tuple[int, Proc]:
    w = procs.workdir
    (w / "nginx-tmp").mkdir()
    (w / "www").mkdir()
    (w / "www" / "small").write_bytes(b"x" * (SMALL_BODY - 1) + b"\n")
    with (w / "www" / "bulk").open("wb") as f:
        f.truncate(s.bulk_bytes)  # sparse: served from the page cache, no disk I/O
    port = ports.take()
    conf = w / "nginx.conf"
    conf.write_text(nginx_config(w, port))
    nginx = find_binary("nginx")
    proc = procs.start(
        "nginx",
        [nginx, "-p", str(w), "-c", str(conf), "-e", str(w / "nginx-error.log")],
        LOADGEN_CPU,
    )
    wait_port(port, [proc])
    return port, proc
