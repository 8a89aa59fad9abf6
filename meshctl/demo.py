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
