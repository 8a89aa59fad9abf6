"""The examples parse with the code's own parsers, so they cannot drift from it."""

from __future__ import annotations

import json
from pathlib import Path

from meshd.config import MeshdConfig
from meshd.registry import Registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_meshd_toml() -> None:
    config = MeshdConfig.load(EXAMPLES / "meshd.toml")
    assert config.identity.host == "api1" and config.mtls == "strict"
    assert [s.name for s in config.services] == ["api", "reports"]
    assert config.services[1].outbound == ("127.0.0.1", 15101)


def test_registry_json() -> None:
    registry = Registry.from_dict(
        json.loads((EXAMPLES / "registry.json").read_text()), "registry.json"
    )
    api = registry.service("api")
    assert api is not None and len(api.endpoints) == 2
    web = registry.service("web")
    assert web is not None and (web.vip, web.port) == ("10.255.0.2", 80)
