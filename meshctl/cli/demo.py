"""``meshctl demo up|down``: a meshed web -> api -> db chain on three local hosts."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from meshctl import demo, policies, state
from meshctl.cli import policy as policy_cli
from meshctl.cli.common import finish, make_rollout
from meshctl.cli.context import AppContext, app_context
from meshctl.cli.explain import service_port
from meshctl.cli.join import _policy_on_the_way  # the very step of `meshctl join`
from meshctl.control import push_registry
from meshctl.fleet import SshOptions, parallel
from meshctl.provision import rollout
from meshctl.provision.rollout import Rollout, push_outcomes
from meshctl.testbed import Testbed
from meshctl.testbed.testbed import default_state_root
from meshctl.workspace import Workspace
from meshd.errors import ConfigError, ProvisionError
from meshd.identity import make_id
from meshd.policy.lang.compiled import CompiledPolicy
from meshd.policy.lang.evaluate import explain

app = typer.Typer(help="A local demo mesh: three hosts, three apps, one command.")
DEFAULT_WORKSPACE = Path("mesh-demo")


def _root(actx: AppContext) -> Path:
    return actx.workspace_path or DEFAULT_WORKSPACE


PrefixOption = Annotated[
    str, typer.Option("--testbed-prefix", hidden=True, help="the testbed's prefix (tests)")
]


@app.command("up")
def up(ctx: typer.Context, prefix: PrefixOption = demo.PREFIX) -> None:
    """Start 3 local hosts (systemd-nspawn), join them, run web -> api -> db, send traffic,
    then apply a zero-trust policy and show a call it allows and one it denies.

    Needs root on a Debian machine (install.sh installs what it needs). The
    demo workspace is ./mesh-demo (or --workspace); meshctl demo down removes
    hosts and workspace again.

    Example: meshctl demo up
    """
    actx = app_context(ctx)
    root = _root(actx)
    say = actx.err.print
    if (default_state_root() / prefix).exists():
        raise ConfigError(
            "a demo is already running", hint="meshctl demo down, then meshctl demo up again"
        )
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"{root} already exists",
            hint="meshctl demo down removes a previous demo's; or pass another --workspace",
        )
    say(f"[bold]1/6[/] starting 3 hosts (testbed {prefix})")
    tb = Testbed.up(
        hosts=3, prefix=prefix, persistent=True, progress=lambda m: say(f"    {escape(m)}")
    )
    try:
        _up(ctx, actx, root, tb)
    except BaseException:  # nothing half-made stays behind: the hosts and this workspace go
        say("[red]the demo failed; removing its hosts and workspace[/]")
        tb.down()
        if (root / demo.MARKER).exists():
            demo.remove_workspace(root, lambda m: None)
        raise


def _up(ctx: typer.Context, actx: AppContext, root: Path, tb: Testbed) -> None:
    say = actx.err.print
    say(f"[bold]2/6[/] creating the demo workspace {root}")
    ws = demo.create_workspace(
        root, [h.address for h in tb.hosts], tb.client_key, tb.known_hosts.read_text()
    )
    actx.workspace_path = ws.root
    ro = make_rollout(actx, SshOptions())
    inventory = state.load_inventory(ws)
    say("[bold]3/6[/] installing the sample apps (examples/apps) as systemd units")

    def install(app: demo.DemoApp) -> None:
        host = inventory.host(app.host)
        assert host is not None
        transport = ro.connect(ws, host, ro.ssh)
        try:
            demo.install_app(transport, app)
        finally:
            transport.close()

    parallel(install, demo.APPS)
    say("[bold]4/6[/] meshctl join web1 api1 db1")
    ro.progress = lambda host, what: say(f"    {escape(host)}: {escape(what)}")
    outcomes = rollout.join(ro, list(inventory.hosts), dry_run=False)
    pushes = [p for p in push_outcomes(push_registry(ro, state.joined(ws))) if not p.ok]
    # as `meshctl join` does: the workspace's policies/mesh.toml (default allow) goes along
    finish(actx, "join", _policy_on_the_way(ro, outcomes + pushes), json_out=False)
    say("[bold]5/6[/] sending traffic web -> api -> db")
    _traffic(actx, ro, ws)
    files = " ".join(str(p.relative_to(demo.EXAMPLES.parent.parent)) for p in demo.POLICY_FILES)
    say(f"[bold]6/6[/] zero trust: meshctl policy apply -f {escape(files)}")
    _zero_trust(ctx, actx, ro, ws)
    _next_steps(actx, root, tb)


def _traffic(actx: AppContext, ro: Rollout, ws: Workspace) -> None:
    web = state.load_inventory(ws).host("web1")
    assert web is not None
    transport = ro.connect(ws, web, ro.ssh)
    try:
        result = demo.drive_traffic(transport, 50, f"demo-order-{uuid.uuid4().hex[:8]}")
    finally:
        transport.close()
    if result["ok"] != result["n"]:
        raise ProvisionError(f"only {result['ok']} of {result['n']} demo requests succeeded")
    seconds = float(str(result["seconds"]))
    actx.out.print(
        f"\n{result['n']} requests through web -> api -> db in {seconds:.2f}s, "
        "all answered; the last page:\n",
        markup=False,
    )
    actx.out.print(str(result["page"]), markup=False)


def _zero_trust(ctx: typer.Context, actx: AppContext, ro: Rollout, ws: Workspace) -> None:
    """Apply the demo's policy as ``meshctl policy apply`` does (the same command), then
    call api and db from web for real: the first is allowed, the second denied."""
    for path in demo.POLICY_FILES:
        if not path.is_file():
            raise ProvisionError(
                f"{path} not found: the demo runs from a checkout of meshctl",
                hint="run it from the repository (./install.sh then .venv/bin/meshctl demo up)",
            )
    policy_cli.apply(ctx, files=list(demo.POLICY_FILES), more=None, json_out=False)
    web = state.load_inventory(ws).host("web1")
    assert web is not None
    transport = ro.connect(ws, web, ro.ssh)
    try:
        calls = demo.policy_calls(transport, "web")
    finally:
        transport.close()
    allowed, denied = calls
    if allowed.status != 200 or denied.status != 403 or not denied.rule:
        got = "; ".join(f"{c.url}: {c.status} {c.rule}" for c in calls)
        raise ProvisionError(f"the zero-trust policy did not decide as expected: {got}")
    why = _allowed_by(actx, ws, allowed)
    actx.out.print("\nWith the zero-trust policy in force:", markup=False)
    for call in calls:
        actx.out.print("  " + demo.call_line(call, why), markup=False, soft_wrap=True)


def _allowed_by(actx: AppContext, ws: Workspace, call: demo.Call) -> str:
    """The rule that admits ``call``, by meshd's own evaluator over the applied set."""
    documents = policies.applied(ws, actx.clock()).only()
    policy = CompiledPolicy.compile(documents, ws.config.trust_domain)
    source = str(make_id(ws.config.trust_domain, "svc", call.caller))
    port = service_port(ws, call.callee)
    target = "/" + call.url.split("/", 3)[3]
    return explain(policy, call.callee, port, source, "GET", target, ()).rule


def _next_steps(actx: AppContext, root: Path, tb: Testbed) -> None:
    ws_opt = f"-w {shlex.quote(str(root))}"
    web = tb.hosts[0]
    ssh = f"ssh -i {tb.client_key} -o UserKnownHostsFile={tb.known_hosts} root@{web.address}"
    actx.out.print(
        "\nTry next:\n"
        f"  .venv/bin/meshctl {ws_opt} status              # 3 healthy hosts\n"
        f"  .venv/bin/meshctl {ws_opt} policy list         # the applied policy documents\n"
        f"  .venv/bin/meshctl {ws_opt} policy explain --from web --to db --path /items"
        "   # why web may not call db\n"
        f"  {ssh} \\\n"
        "      python3 -c 'import urllib.request as u; "
        'print(u.urlopen("http://api.mesh:8081/products").read().decode())\'\n'
        f"  .venv/bin/meshctl {ws_opt} leave api1          # take api1 out of the mesh\n"
        f"  .venv/bin/meshctl {ws_opt} join {tb.hosts[1].address} --name api1 --service api:8081"
        "   # and back in\n"
        f"  .venv/bin/meshctl {ws_opt} demo down           # remove hosts and workspace\n",
        markup=False,
        soft_wrap=True,  # commands to copy: never broken over lines
    )


@app.command("down")
def down(ctx: typer.Context, prefix: PrefixOption = demo.PREFIX) -> None:
    """Stop the demo hosts and remove the demo workspace. Harmless when there is no demo.

    Example: meshctl demo down
    """
    actx = app_context(ctx)
    say = actx.err.print
    try:
        Testbed.attach(prefix).down()
        say(f"stopped the demo hosts (testbed {prefix})")
    except ProvisionError:
        say("no demo hosts are running")
    demo.remove_workspace(_root(actx), lambda m: say(escape(m)))
