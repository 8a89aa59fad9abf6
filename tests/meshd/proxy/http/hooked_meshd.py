"""``meshd`` with test request hooks installed, for real-socket tests of the HTTP exchange.

    python hooked_meshd.py SPEC run --config FILE

SPEC is JSON: ``{"inbound": {"web": [{"deny": "/admin"}]}, "outbound": {"web":
[{"add": ["X-Mesh-Test", "a"]}]}}``: per direction and service, hooks that
answer 403 to paths under a prefix (``"keep": true``: keeping the connection
alive), or add a header. Policy will
fill ``Runtime.http_rules`` one day; until then this launcher is the only
thing that does, in its own process (meshd itself is unchanged).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshd import cli, daemon
from meshd.config import MeshdConfig
from meshd.proxy.http.actions import AddHeader, Answer, RequestAction
from meshd.proxy.http.plan import HttpPlan, HttpRules, RequestHead, RequestHook

DENIED = b"denied by a test hook\n"


def deny(prefix: str, keep_alive: bool = False) -> RequestHook:
    answer = (Answer(403, (("Content-Type", "text/plain"),), DENIED, keep_alive),)

    def hook(head: RequestHead) -> tuple[RequestAction, ...]:
        return answer if head.path.startswith(prefix) else ()

    return hook


def add(name: str, value: str) -> RequestHook:
    action = (AddHeader(name, value),)
    return lambda head: action


def plans(spec: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, HttpPlan]:
    """Per service, a plan with the hooks ``spec`` lists (``deny`` a prefix, ``add`` a header)."""
    return {
        service: HttpPlan(
            hooks=tuple(
                deny(h["deny"], h.get("keep", False)) if "deny" in h else add(*h["add"])
                for h in hooks
            )
        )
        for service, hooks in spec.items()
    }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    rules = HttpRules(plans(spec.get("inbound", {})), plans(spec.get("outbound", {})))

    class HookedDaemon(daemon.Daemon):
        def __init__(self, config_path: Path, config: MeshdConfig) -> None:
            super().__init__(config_path, config)
            self.rt.http_rules = rules
            self.rt.recompile()  # the bundle carries each connection's plan

    daemon.Daemon = HookedDaemon  # type: ignore[misc]  # what daemon.run starts
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
