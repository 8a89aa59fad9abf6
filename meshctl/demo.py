"""``meshctl demo``: three local hosts, a web -> api -> db chain, meshed with meshctl itself.

The hosts come from the testbed harness (systemd-nspawn, real sshd and
systemd); the apps are the samples in ``examples/apps`` run as systemd units
on the hosts' python3; the mesh is made by the same ``join`` code users run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import meshctl
from meshctl import state
from meshctl.config import DefaultsConfig, MeshConfig
from meshctl.inventory import HostSpec, Inventory, ServiceSpec
from meshctl.provision.apply import Applier
from meshctl.provision.desired import FileSpec
from meshctl.transport import Transport, check
from meshctl.workspace import Workspace, init_workspace
from meshd.errors import ConfigError, ProvisionError

PREFIX = "demo"  # the testbed's prefix: host names demo-h1..3, bridge demo-br
MARKER = ".meshctl-demo"  # a workspace that `demo down` may delete
APP_DIR = "/usr/local/lib/meshctl-demo"
EXAMPLES = Path(meshctl.__file__).resolve().parent.parent / "examples" / "apps"
# the zero-trust policy the demo ends with: the mesh-wide document tightened (it replaces
# the workspace's default-allow policies/mesh.toml) and the rules of the three apps
POLICY_FILES = tuple(EXAMPLES.parent / "policies" / f for f in ("mesh.toml", "web-api-db.toml"))


@dataclass(frozen=True)
class DemoApp:
    name: str  # also the service name
    host: str
    port: int
    upstream: str | None

    @property
    def unit(self) -> str:
        return f"demo-{self.name}.service"


APPS = (
    DemoApp("web", "web1", 8080, "http://api.mesh:8081"),
    DemoApp("api", "api1", 8081, "http://db.mesh:8082"),
    DemoApp("db", "db1", 8082, None),
)


def app_unit(app: DemoApp) -> str:
    """The systemd unit that runs one sample app (an unprivileged dynamic user)."""
    command = f"/usr/bin/python3 {APP_DIR}/{app.name}.py --port {app.port}"
    if app.upstream:
        command += f" --upstream {app.upstream}"
    return "\n".join(
        [
            f"# meshctl demo: the sample app {app.name} (examples/apps/{app.name}.py)",
            "[Unit]",
            f"Description=meshctl demo app {app.name}",
            "After=network-online.target",
            "",
            "[Service]",
            f"ExecStart={command}",
            "DynamicUser=yes",
            "Restart=on-failure",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def app_script(name: str) -> bytes:
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        raise ProvisionError(
            f"{path} not found: the demo runs from a checkout of meshctl",
            hint="run it from the repository (./install.sh then .venv/bin/meshctl demo up)",
        )
    return path.read_bytes()


def install_app(transport: Transport, app: DemoApp) -> None:
    """Put the app and its unit on the host, enable and start it, wait until it listens."""
    applier = Applier(transport, reconnect=lambda: transport)
    applier.write_files(
        [
            FileSpec(f"{APP_DIR}/meshapp.py", app_script("meshapp")),  # what the apps share
            FileSpec(f"{APP_DIR}/{app.name}.py", app_script(app.name)),
            FileSpec(f"/etc/systemd/system/{app.unit}", app_unit(app).encode()),
        ]
    )
    applier.root(
        f"systemctl daemon-reload && systemctl enable --now --quiet {app.unit} && "
        f"for i in $(seq 50); do ss -ltn | grep -q ':{app.port} ' && exit 0; sleep 0.1; done; "
        "exit 1",
        f"starting {app.name}",
    )


TRAFFIC = r"""
import json, sys, time, urllib.request
n, ok, t0 = int(sys.argv[1]), 0, time.monotonic()
for i in range(n):
    with urllib.request.urlopen("http://localhost:8080/", timeout=5) as r:
        ok += r.status == 200
        page = r.read().decode()
body = json.dumps({"name": sys.argv[2], "price": 4.2}).encode()
headers = {"Content-Type": "application/json"}
req = urllib.request.Request("http://localhost:8080/order", body, headers)
with urllib.request.urlopen(req, timeout=5) as r:
    order = r.read().decode()
took = time.monotonic() - t0
print(json.dumps({"ok": ok, "n": n, "seconds": took, "page": page, "order": order}))
"""


def drive_traffic(web: Transport, requests: int, item: str) -> dict[str, object]:
    """Requests through the whole chain, run on the web host; what they returned."""
    command = f"python3 -c {shlex.quote(TRAFFIC)} {requests} {shlex.quote(item)}"
    out = check(web.run(command, root=False, timeout=120), "sending demo traffic", web.name)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@dataclass(frozen=True)
class Call:
    """One HTTP call made on a demo host through the mesh, and what came back."""

    caller: str  # the calling service (the host's single service: its source identity)
    callee: str
    url: str
    status: int
    rule: str = ""  # x-mesh-rule of a refusal ("" when the app answered)
    body: str = ""  # the first bytes of the answer


# (callee, URL): web -> api is what zero trust allows, web -> db directly what it denies
POLICY_CALLS = (
    ("api", "http://api.mesh:8081/products"),
    ("db", "http://db.mesh:8082/items"),
)

CALLS = r"""
import json, sys, urllib.error, urllib.request
out = []
for url in sys.argv[1:]:
    try:
        answer = urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as e:
        answer = e
    with answer:
        rule = answer.headers.get("x-mesh-rule") or ""
        body = answer.read(400).decode(errors="replace")
        out.append({"url": url, "status": answer.status, "rule": rule, "body": body})
print(json.dumps(out))
"""


def policy_calls(host: Transport, caller: str) -> list[Call]:
    """``POLICY_CALLS`` made on ``host`` (whose one service is ``caller``), as its apps would."""
    urls = " ".join(shlex.quote(url) for _, url in POLICY_CALLS)
    out = check(
        host.run(f"python3 -c {shlex.quote(CALLS)} {urls}", root=False, timeout=60),
        "calling api and db from web",
        host.name,
    )
    answers = json.loads(out.stdout)
    return [
        Call(caller, callee, a["url"], int(a["status"]), str(a["rule"]), str(a["body"]).strip())
        for (callee, _), a in zip(POLICY_CALLS, answers, strict=True)
    ]


def call_line(call: Call, allowed_by: str) -> str:
    """One call as the demo prints it: who called what, the answer, and the rule that decided
    (``allowed_by``: the rule ``meshctl policy explain`` names for an answered call)."""
    head = f"{call.caller} -> {call.callee}: GET {call.url} -> {call.status}"
    if call.rule:
        return f"{head} denied by {call.rule}\n    {call.body[:200]}"
    return f"{head} allowed by {allowed_by}"


def create_workspace(root: Path, addresses: list[str], key: Path, known_hosts: str) -> Workspace:
    """A demo workspace (CA keys unencrypted: it is a throwaway), its inventory and pinned keys."""
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"{root} already exists",
            hint="meshctl demo down removes a previous demo; or pass another --workspace",
        )
    defaults = dataclasses.replace(DefaultsConfig(), ssh_key=str(key))
    config = MeshConfig("demo", "demo.mesh", "demo-operator", False, defaults)
    ws = init_workspace(root, config, None, dt.datetime.now(dt.UTC))
    (root / MARKER).write_text(PREFIX + "\n")
    (root / "known_hosts").write_text(known_hosts)
    hosts = tuple(
        HostSpec(app.host, address, services=(ServiceSpec(app.name, app.port),))
        for app, address in zip(APPS, addresses, strict=True)
    )
    state.save_inventory(ws, Inventory(hosts).allocate_vips())
    return ws


def remove_workspace(root: Path, report: Callable[[str], None]) -> None:
    if not root.exists():
        return
    if not (root / MARKER).exists():
        raise ConfigError(
            f"{root} is not a demo workspace (no {MARKER}); not removing it",
            hint="pass the demo's --workspace",
        )
    shutil.rmtree(root)
    report(f"removed the demo workspace {root}")
