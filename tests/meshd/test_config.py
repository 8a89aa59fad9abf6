"""meshd.toml's [limits] and [timeouts]: every value finite and in its range, or refused by name;
and the source identity the host's connections claim.

A pushed config goes through the same parser, so what is refused here is a
400 at the admin API (``test_documents``) and never reaches a link.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meshd.config import LIMIT_BOUNDS, TIMEOUT_BOUNDS, LimitsConfig, MeshdConfig, TimeoutsConfig
from meshd.errors import ConfigError
from meshd.proxy.frames import MAX_PAYLOAD
from tests.meshd import configs


def parse(extra: str) -> MeshdConfig:
    return MeshdConfig.from_dict(tomllib.loads(configs.minimal() + extra), "meshd.toml", Path("/"))


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[timeouts]\nconnect = nan", ["timeouts.connect", "nan", "0.1 to 300"]),
        ("[timeouts]\nhandshake = inf", ["timeouts.handshake", "inf", "0.1 to 300"]),
        ("[timeouts]\nidle = -inf", ["timeouts.idle", "-inf"]),
        ("[timeouts]\nping_interval = nan", ["timeouts.ping_interval", "nan"]),
        ("[timeouts]\ndrain = 1e300", ["timeouts.drain", "1e+300", "3600"]),
        ("[timeouts]\nheader_read = 0", ["timeouts.header_read", "0.0"]),
        ("[timeouts]\nidle = 0.001", ["timeouts.idle", "1 to 604800"]),
        ("[limits]\nstream_window = 8589934592", ["limits.stream_window", "2147483647"]),
        ("[limits]\nlink_window = 2147483648", ["limits.link_window", "2147483647"]),
        ("[limits]\nmax_frame = 4294967296", ["limits.max_frame", f"1024 to {MAX_PAYLOAD}"]),
        (f"[limits]\nmax_frame = {MAX_PAYLOAD + 1}", ["limits.max_frame", str(MAX_PAYLOAD)]),
        ("[limits]\nmax_frame = 16", ["limits.max_frame", "1024"]),
        ("[limits]\nmax_connections = 0", ["limits.max_connections", "got 0"]),
        ("[limits]\nmax_connections = 9223372036854775807", ["limits.max_connections"]),
        ("[limits]\nmax_streams_per_link = -1", ["limits.max_streams_per_link"]),
        ("[limits]\nmax_links_per_peer = 100000", ["limits.max_links_per_peer"]),
        ("[limits]\nmax_header_bytes = 1073741824", ["limits.max_header_bytes"]),
        ("[limits]\nmax_handshakes = 1000000", ["limits.max_handshakes"]),
        ("[limits]\nmax_silent = 0", ["limits.max_silent"]),
        ("[limits]\nmax_connections = 1.5", ["limits.max_connections", "expected int"]),
        ("[limits]\nmax_connections = true", ["limits.max_connections", "expected int"]),
        (
            "[limits]\nstream_window = 4194304\nlink_window = 1048576",
            ["limits.link_window", "at least limits.stream_window (4194304)"],
        ),
    ],
)
def test_out_of_range_limits_and_timeouts_are_refused_by_name(extra: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(extra)
    print(f"\n{caught.value.message}")
    assert caught.value.message.startswith("meshd.toml: ")
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "[timeouts]\nidle = 2.0\nhandshake = 0.1\nconnect = 300",
        "[timeouts]\nidle = 604800\nping_interval = 3600",
        "[limits]\nmax_frame = 1024\nstream_window = 16384\nlink_window = 16384",
        f"[limits]\nmax_frame = {MAX_PAYLOAD}\nlink_window = 2147483647",
        "[limits]\nmax_handshakes = 1\nmax_handshakes_per_source = 1",
    ],
)
def test_values_in_range_are_taken(extra: str) -> None:
    parsed = tomllib.loads(extra)
    config = parse(extra)
    for table, values in parsed.items():
        for key, value in values.items():
            assert getattr(getattr(config, table), key) == value


def test_every_limit_and_timeout_has_its_own_range() -> None:
    """A field added without a range would fall back to the generic one: give it its own."""
    assert set(LIMIT_BOUNDS) == set(LimitsConfig.__dataclass_fields__)
    assert set(TIMEOUT_BOUNDS) == set(TimeoutsConfig.__dataclass_fields__)
    for name, (low, high) in {**LIMIT_BOUNDS, **TIMEOUT_BOUNDS}.items():
        default = getattr(LimitsConfig(), name, None) or getattr(TimeoutsConfig(), name)
        assert low <= default <= high, name


def test_a_config_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text(configs.minimal() + "[log]\nx = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(ConfigError, match=f"^{path}: nested too deeply to read$"):
        MeshdConfig.load(path)


def _service(name: str, run_as: str | None = None) -> str:
    user = f'outbound = "127.0.0.1:15101"\nrun_as = "{run_as}"\n' if run_as else ""
    return f'[[services]]\nname = "{name}"\nport = 8080\n{user}'


@pytest.mark.parametrize(
    ("services", "source"),
    [
        ("", "spiffe://t.mesh/host/web1"),
        (_service("web"), "spiffe://t.mesh/svc/web"),
        (_service("web") + _service("cli").replace("8080", "8081"), "spiffe://t.mesh/host/web1"),
        # its own connections are told apart by user: root's are not the service's
        (_service("cli", run_as="cli"), "spiffe://t.mesh/host/web1"),
    ],
    ids=["no-service", "one-service", "two-services", "one-service-run-as"],
)
def test_the_source_identity_is_the_single_service_else_the_host(
    services: str, source: str
) -> None:
    assert str(parse(services).source_id) == source
