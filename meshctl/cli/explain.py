"""``meshctl policy explain``: what meshd would decide for one request, offline.

It runs meshd's own evaluator (``meshd.policy.lang.evaluate.explain``:
mTLS, normalisation, deny-overrides authz) against the applied set or
exactly the files given, so its answer is the enforcement's. The ``--json``
shape is an interface: ``{"decision", "status", "rule", "would_deny"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl import policies, state
from meshctl.cli.common import JsonOption
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.policy import (
    INVALID,
    FilesOption,
    MoreFiles,
    show_problems,
    sources,
    workspace_or_none,
)
from meshctl.views.policy import decision_json, decision_view
from meshctl.workspace import Workspace
from meshd.errors import PolicyError
from meshd.identity import make_id
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import explain as explain_request


def explain(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option(
            "--from", help="a service name, host/NAME, a SPIFFE ID, or unauthenticated (plaintext)"
        ),
    ],
    service: Annotated[str, typer.Option("--to", help="the destination service")],
    port: Annotated[
        int | None,
        typer.Option(help="the service port (default: its port in hosts.toml, if it has one)"),
    ] = None,
    method: Annotated[str, typer.Option(help="the HTTP method")] = "GET",
    path: Annotated[
        str, typer.Option(help="the raw request target, normalised as meshd would")
    ] = "/",
    headers: Annotated[
        list[str] | None, typer.Option("--header", help='"name: value" (repeat)')
    ] = None,
    tcp: Annotated[bool, typer.Option("--tcp", help="opaque TCP, not an HTTP request")] = False,
    files: FilesOption = None,
    more: MoreFiles = None,
    json_out: JsonOption = False,
) -> None:
    """Say what meshd would decide for one request, offline, with meshd's own evaluator.

    Against the applied set, or exactly the files given with -f (checked
    first). Short names in --from resolve in the trust domain the documents
    all declare, else the workspace's.

    Examples:
      meshctl policy explain --from web --to api --port 8080 --method GET --path /v1/admin/x
      meshctl policy explain --from api --to db --port 5432 --tcp -f policy/zero-trust.toml
    """
    actx = app_context(ctx)
    ws = workspace_or_none(actx)
    mesh_domain = ws.config.trust_domain if ws else policies.FALLBACK_TRUST_DOMAIN
    paths = (files or []) + (more or [])
    checked = _documents(actx, ws, mesh_domain, paths, json_out)
    documents = checked.only()
    if not documents:  # built-in defaults apply to a set with documents only
        raise PolicyError(
            "no policy document is applied: meshd enforces no policy, so every "
            "authenticated peer reaches every service",
            hint="meshctl policy apply -f FILE applies one; or explain against files with -f",
        )
    domains = {d.trust_domain for d in documents}
    peer = resolve_source(source, domains.pop() if len(domains) == 1 else mesh_domain)
    port = port if port is not None else service_port(ws, service)
    version = (policies.recorded_version(ws) or 0) if ws and not paths else 0
    policy = CompiledPolicy.compile(documents, mesh_domain, version)
    pairs = tuple(parse_header(h) for h in headers or ())
    decision = explain_request(policy, service, port, peer, None if tcp else method, path, pairs)
    if json_out:
        actx.print_json(decision_json(decision))
        return
    what = "opaque TCP" if tcp else f"{method} {path}"
    request = f"{source} ({peer or 'plaintext peer'}) -> {service}:{port} {what}"
    actx.out.print(decision_view(decision, request))


def _documents(
    actx: AppContext, ws: Workspace | None, domain: str, paths: list[Path], json_out: bool
) -> policies.Checked:
    """The files given (checked; exit 2 on errors), else the workspace's applied set."""
    if not paths:
        if ws is None:
            actx.workspace()  # raises: no workspace, and no -f
        assert ws is not None
        return policies.applied(ws, actx.clock())
    checked = policies.check(sources(paths), domain, actx.clock())
    if checked.failed:
        show_problems(actx, checked.problems, len(paths), json_out)
        raise typer.Exit(INVALID)
    return checked


def resolve_source(text: str, trust_domain: str) -> str | None:
    """The peer identity ``--from`` names (None: a plaintext peer)."""
    if text == "unauthenticated":
        return None
    if text.startswith("spiffe://"):
        return text
    kind, _, name = text.rpartition("/")
    if kind not in ("", "host", "svc"):
        raise typer.BadParameter(
            f"{text!r}: use a service name, host/NAME, a SPIFFE ID or unauthenticated",
            param_hint="--from",
        )
    return str(make_id(trust_domain, kind or "svc", name))


def service_port(ws: Workspace | None, service: str) -> int:
    """The port of ``service`` in hosts.toml, when it has exactly one."""
    ports: set[int] = set()
    if ws is not None:
        for host in state.load_inventory(ws).hosts:
            ports |= {s.port for s in host.services if s.name == service}
    if len(ports) == 1:
        return ports.pop()
    known = (
        f"{service} has ports {', '.join(map(str, sorted(ports)))}"
        if ports
        else (f"hosts.toml has no service {service}")
    )
    raise typer.BadParameter(f"--port is needed: {known}", param_hint="--port")


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise typer.BadParameter(f"{text!r}: write it as 'name: value'", param_hint="--header")
    return name.strip(), value.strip()
