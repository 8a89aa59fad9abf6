"""meshd.toml validation as tables: a config text in, the exact error out, or OK.

Three ways a config reaches meshd, each with its own table: the file at the
start (``MeshdConfig.from_dict``, where every check of a single file lives); a
pushed config document (``meshd.documents.config_on``: the file's checks, then
only the live parts may differ from the running config, and never the identity
files); and a reload of the file (``meshd.runtime.restart_needed``, which the
SIGHUP path asks first: nothing bound to a socket may change;
tests/meshd/test_daemon_reload.py runs that path in a real Daemon).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meshd.config import MeshdConfig
from meshd.configcheck import KEPT_HINT, NAME_HINT, PORT_HINT
from meshd.documents import config_on
from meshd.errors import ConfigError
from meshd.runtime import restart_needed
from tests.meshd import configs

OK = None
SOURCE = "meshd.toml"


def parse(text: str, directory: Path = Path("/etc/meshd")) -> MeshdConfig:
    return MeshdConfig.from_dict(tomllib.loads(text), SOURCE, directory)


def service(name: str, port: int, outbound: str | None = None) -> str:
    table = f'[[services]]\nname = "{name}"\nport = {port}\n'
    return table + (f'run_as = "{name}"\noutbound = "{outbound}"\n' if outbound else "")


def upstream(listen: str, name: str = "db") -> str:
    return f'[[upstreams]]\nlisten = "{listen}"\nservice = "{name}"\n'


def kept(port: int, what: str, name: str = "web") -> str:
    """The refusal of a service on a port the rules never intercept."""
    return (
        f"meshd.toml: services[0].port: {port} is {what}, which the rules never intercept:"
        f" the app of service {name!r} (services[0].port) would take connections without mTLS"
    )


def limit(name: str, low: int, high: int) -> list[pytest.ParameterSet]:
    """The values just past ``[limits] name``'s range, each refused with the range."""
    message = f"meshd.toml: limits.{name}: must be an integer from {low} to {high}, got "
    return [
        pytest.param(f"[limits]\n{name} = {v}\n", message + str(v), None, id=f"{name}={v}")
        for v in (low - 1, high + 1)
    ]


def timeout(name: str, low: float, high: float) -> list[pytest.ParameterSet]:
    """The values just past ``[timeouts] name``'s range, each refused with the range."""
    message = f"meshd.toml: timeouts.{name}: must be a number from {low:g} to {high:g}, got "
    return [
        pytest.param(f"[timeouts]\n{name} = {v!r}\n", message + repr(v), None, id=f"{name}={v}")
        for v in (low / 2, high + 1.0)
    ]


LOWS = """[limits]
max_connections = 1
max_streams_per_link = 1
max_header_bytes = 1024
stream_window = 16384
link_window = 16384
max_links_per_peer = 1
max_streams_per_peer = 1
max_frame = 1024
max_silent = 1
max_silent_per_source = 1
max_handshakes = 1
max_handshakes_per_source = 1
[timeouts]
handshake = 0.1
connect = 0.1
header_read = 0.1
idle = 1.0
drain = 0.1
ping_interval = 0.1
"""
HIGHS = """[limits]
max_connections = 1000000
max_streams_per_link = 100000
max_header_bytes = 1048576
stream_window = 2147483647
link_window = 2147483647
max_links_per_peer = 64
max_streams_per_peer = 1000000
max_frame = 1048576
max_silent = 65536
max_silent_per_source = 65536
max_handshakes = 4096
max_handshakes_per_source = 4096
[timeouts]
handshake = 300.0
connect = 300.0
header_read = 3600.0
idle = 604800.0
drain = 3600.0
ping_interval = 3600.0
"""
SSH = "interception.ssh_ports"
FILE_TABLE = [
    # --- services: names, ports, addresses ---------------------------------------------
    pytest.param("", OK, None, id="minimal"),
    pytest.param(service("web", 8080) + service("api", 9090), OK, None, id="two-services"),
    pytest.param(
        service("web", 8080) + service("web", 9090),
        "meshd.toml: services[1].name: duplicate service 'web'",
        NAME_HINT,
        id="duplicate-name",
    ),
    pytest.param(
        service("web", 8080) + service("api", 8080),
        "meshd.toml: services[1].port: 127.0.0.1:8080 is already the app of service 'web'"
        " (services[0].port)",
        PORT_HINT,
        id="two-services-on-one-port",
    ),
    pytest.param(
        service("web", 15001),
        "meshd.toml: services[0].port: 127.0.0.1:15001 is already meshd's listen.outbound",
        PORT_HINT,
        id="service-on-the-outbound-listener",
    ),
    pytest.param(
        service("web", 15006),  # the inbound listener is 0.0.0.0:15006: every address
        "meshd.toml: services[0].port: 127.0.0.1:15006 is already meshd's listen.inbound",
        PORT_HINT,
        id="service-on-the-inbound-listener",
    ),
    pytest.param(
        service("web", 8080, "127.0.0.1:15101") + service("api", 9090, "127.0.0.1:15102"),
        OK,
        None,
        id="service-outbounds",
    ),
    pytest.param(
        service("web", 8080, "127.0.0.1:15101") + service("api", 9090, "127.0.0.1:15101"),
        "meshd.toml: services[1].outbound: 127.0.0.1:15101 is already the outbound listener"
        " of service 'web' (services[0].outbound)",
        PORT_HINT,
        id="two-service-outbounds-on-one-address",
    ),
    pytest.param(
        service("web", 8080, "127.0.0.1:15001"),
        "meshd.toml: services[0].outbound: 127.0.0.1:15001 is already meshd's listen.outbound",
        PORT_HINT,
        id="service-outbound-on-the-outbound-listener",
    ),
    pytest.param(  # both IPv6 twins would be [::1]:15101
        service("web", 8080, "127.0.0.1:15101") + service("api", 9090, "127.0.0.2:15101"),
        "meshd.toml: services[1].outbound: its IPv6 twin [::1]:15101 is already the IPv6 twin"
        " of the outbound listener of service 'web' (services[0].outbound)",
        PORT_HINT,
        id="service-outbounds-whose-ipv6-twins-clash",
    ),
    pytest.param(
        "[listen]\nipv6 = false\n"
        + service("web", 8080, "127.0.0.1:15101")
        + service("api", 9090, "127.0.0.2:15101"),
        OK,
        None,
        id="service-outbounds-on-one-port-without-ipv6",
    ),
    pytest.param(
        upstream("127.0.0.1:16001") + upstream("127.0.0.1:16001", "api"),
        "meshd.toml: upstreams[1].listen: 127.0.0.1:16001 is already meshd's upstreams[0].listen",
        PORT_HINT,
        id="two-upstreams-on-one-address",
    ),
    pytest.param(
        upstream("127.0.0.1:16001") + upstream("127.0.0.2:16001", "api"),
        OK,
        None,
        id="upstreams-on-one-port-two-addresses",
    ),
    pytest.param(
        upstream("[::1]:15006"),  # the inbound listener's twin is [::]:15006
        "meshd.toml: upstreams[0].listen: [::1]:15006 is already the IPv6 twin of meshd's"
        " listen.inbound",
        PORT_HINT,
        id="upstream-on-the-inbound-listener-ipv6-twin",
    ),
    pytest.param(
        "[listen]\nipv6 = false\n" + upstream("[::1]:15006"),
        OK,
        None,
        id="upstream-on-the-inbound-port-without-ipv6",
    ),
    pytest.param(
        '[listen]\nadmin = "0.0.0.0:15443"\n',
        "meshd.toml: listen.admin: 0.0.0.0:15443 is already meshd's listen.mesh",
        PORT_HINT,
        id="admin-on-the-mesh-port",
    ),
    pytest.param(
        '[listen]\nmesh = "10.0.0.5:15006"\n',
        "meshd.toml: listen.mesh: 10.0.0.5:15006 is already meshd's listen.inbound",
        PORT_HINT,
        id="mesh-on-the-inbound-port",
    ),
    pytest.param(
        '[listen]\noutbound = "127.0.0.1:0"\ninbound = "127.0.0.1:0"\n'
        'mesh = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n',
        OK,
        None,
        id="every-listener-on-port-0",  # a free port each, chosen at bind time (tests)
    ),
    # --- services on the ports the rules never intercept ---------------------------------
    pytest.param(service("web", 22), kept(22, f"an SSH port ({SSH})"), KEPT_HINT, id="on-ssh"),
    pytest.param(
        f"[interception]\nssh_ports = [22, 2222]\n{service('web', 2222)}",
        kept(2222, f"an SSH port ({SSH})"),
        KEPT_HINT,
        id="on-the-second-ssh-port",
    ),
    pytest.param(
        f"[interception]\nssh_ports = [2222]\n{service('web', 22)}",
        OK,
        None,
        id="on-22-when-ssh-is-elsewhere",
    ),
    pytest.param(
        service("web", 15000),
        kept(15000, "meshd's admin port (listen.admin)"),
        KEPT_HINT,
        id="on-the-admin-port",
    ),
    pytest.param(
        service("web", 15443),
        kept(15443, "meshd's mesh port (listen.mesh)"),
        KEPT_HINT,
        id="on-the-mesh-port",
    ),
    # --- ssh_ports -------------------------------------------------------------------------
    pytest.param("[interception]\nssh_ports = [22, 2222]\n", OK, None, id="ssh-two"),
    pytest.param(
        "[interception]\nssh_ports = []\n",
        f"meshd.toml: {SSH}: expected a non-empty list of port numbers",
        None,
        id="ssh-empty",
    ),
    pytest.param(
        "[interception]\nssh_ports = 22\n",
        f"meshd.toml: {SSH}: expected list, got 22",
        None,
        id="ssh-not-a-list",
    ),
    pytest.param(
        "[interception]\nssh_ports = [0]\n",
        f"meshd.toml: {SSH}[0]: 0 is not a port number (1-65535)",
        None,
        id="ssh-0",
    ),
    pytest.param(
        "[interception]\nssh_ports = [22, 65536]\n",
        f"meshd.toml: {SSH}[1]: 65536 is not a port number (1-65535)",
        None,
        id="ssh-65536",
    ),
    pytest.param(
        "[interception]\nssh_ports = [-22]\n",
        f"meshd.toml: {SSH}[0]: -22 is not a port number (1-65535)",
        None,
        id="ssh-negative",
    ),
    pytest.param(
        "[interception]\nssh_ports = [true]\n",
        f"meshd.toml: {SSH}[0]: True is not a port number (1-65535)",
        None,
        id="ssh-true",  # bool is an int in Python: it must not pass as port 1
    ),
    pytest.param(
        '[interception]\nssh_ports = ["22"]\n',
        f"meshd.toml: {SSH}[0]: '22' is not a port number (1-65535)",
        None,
        id="ssh-string",
    ),
    pytest.param(
        "[interception]\nssh_ports = [22, 2222, 22]\n",
        f"meshd.toml: {SSH}[2]: port 22 is listed twice",
        None,
        id="ssh-duplicate",
    ),
    # --- [limits] and [timeouts]: every bound, both sides -----------------------------------
    pytest.param(LOWS, OK, None, id="every-lowest-value"),
    pytest.param(HIGHS, OK, None, id="every-highest-value"),
    *limit("max_connections", 1, 1_000_000),
    *limit("max_streams_per_link", 1, 100_000),
    *limit("max_header_bytes", 1024, 1024 * 1024),
    *limit("stream_window", 16 * 1024, 2**31 - 1),
    *limit("link_window", 16 * 1024, 2**31 - 1),
    *limit("max_links_per_peer", 1, 64),
    *limit("max_streams_per_peer", 1, 1_000_000),
    *limit("max_frame", 1024, 1024 * 1024),
    *limit("max_silent", 1, 65536),
    *limit("max_silent_per_source", 1, 65536),
    *limit("max_handshakes", 1, 4096),
    *limit("max_handshakes_per_source", 1, 4096),
    pytest.param(
        "[limits]\nstream_window = 65536\nlink_window = 65535\n",
        "meshd.toml: limits.link_window: must be at least limits.stream_window (65536), got 65535",
        None,
        id="link_window-below-stream_window",
    ),
    pytest.param(
        '[limits]\nmax_connections = "10"\n',
        "meshd.toml: limits.max_connections: expected int, got '10'",
        None,
        id="limit-as-a-string",
    ),
    *timeout("handshake", 0.1, 300.0),
    *timeout("connect", 0.1, 300.0),
    *timeout("header_read", 0.1, 3600.0),
    *timeout("idle", 1.0, 7 * 24 * 3600.0),
    *timeout("drain", 0.1, 3600.0),
    *timeout("ping_interval", 0.1, 3600.0),
]


@pytest.mark.parametrize(("extra", "message", "hint"), FILE_TABLE)
def test_a_config_file_is_taken_or_refused_by_field(
    extra: str, message: str | None, hint: str | None
) -> None:
    text = configs.minimal() + extra
    if message is None:
        assert isinstance(parse(text), MeshdConfig)
        return
    with pytest.raises(ConfigError) as caught:
        parse(text)
    print(f"\n{caught.value.message}\n  hint: {caught.value.hint}")
    assert (caught.value.message, caught.value.hint) == (message, hint)


# --- what a push or a reload may change -------------------------------------------------
FILE = """[identity]
host = "web1"
trust_domain = "t.mesh"
cert = "cert.pem"
key = "key.pem"
bundle = "bundle.pem"
[listen]
outbound = "127.0.0.1:15001"
mesh = "0.0.0.0:15443"
[mesh]
mtls = "strict"
registry = "registry.json"
state_dir = "/var/lib/meshd"
[interception]
ssh_ports = [22]
[limits]
max_connections = 20000
[timeouts]
idle = 300.0
[log]
level = "info"
[[services]]
name = "api"
port = 8080
run_as = "api"
outbound = "127.0.0.1:15101"
[[upstreams]]
listen = "127.0.0.1:16001"
service = "db"
"""
JOIN_HINT = "change it on the host: meshctl join writes the file and the rules from it"
RESTART_HINT = "change it on the host and restart meshd"
LISTENERS = "listen addresses or upstream listeners changed"


def changed(old: str, new: str) -> str:
    assert old in FILE, old
    return FILE.replace(old, new)


def identity(name: str, change: str) -> str:
    return (
        f"config: identity.{name} changed ({change}):"
        " a push may not change meshd's identity or its files"
    )


# (the file as meshd runs it, edited: what is pushed) -> the error and its hint, or OK
PUSH_TABLE = [
    pytest.param(FILE, OK, None, id="unchanged"),
    pytest.param(changed("20000", "100"), OK, None, id="limits"),
    pytest.param(changed("idle = 300.0", "idle = 60.0"), OK, None, id="timeouts"),
    pytest.param(changed('"strict"', '"permissive"'), OK, None, id="mtls"),
    pytest.param(changed('"info"', '"debug"'), OK, None, id="log-level"),
    pytest.param(  # the same file, named absolute: still the file meshd runs with
        changed('cert = "cert.pem"', 'cert = "/etc/meshd/cert.pem"'), OK, None, id="same-cert"
    ),
    pytest.param(
        changed('cert = "cert.pem"', 'cert = "/tmp/cert.pem"'),
        identity("cert", "/etc/meshd/cert.pem to /tmp/cert.pem"),
        JOIN_HINT,
        id="cert-repointed",
    ),
    pytest.param(
        changed('key = "key.pem"', 'key = "other/key.pem"'),
        identity("key", "/etc/meshd/key.pem to /etc/meshd/other/key.pem"),
        JOIN_HINT,
        id="key-repointed",
    ),
    pytest.param(
        changed('bundle = "bundle.pem"', 'bundle = "/tmp/evil.pem"'),
        identity("bundle", "/etc/meshd/bundle.pem to /tmp/evil.pem"),
        JOIN_HINT,
        id="bundle-repointed",
    ),
    pytest.param(
        changed('host = "web1"', 'host = "web2"'),
        identity("host", "web1 to web2"),
        JOIN_HINT,
        id="host-renamed",
    ),
    pytest.param(
        changed('trust_domain = "t.mesh"', 'trust_domain = "u.mesh"'),
        identity("trust_domain", "t.mesh to u.mesh"),
        JOIN_HINT,
        id="trust-domain",
    ),
    pytest.param(
        changed("port = 8080", "port = 8081"),
        "config: [[services]] changed (meshd rules renders them from the file)",
        JOIN_HINT,
        id="service-port",
    ),
    pytest.param(
        changed("ssh_ports = [22]", "ssh_ports = [22, 2222]"),
        "config: [interception] changed (meshd rules and meshd sync read it from the file)",
        JOIN_HINT,
        id="interception",
    ),
    pytest.param(
        changed('"registry.json"', '"other.json"'),
        "config: [mesh] registry changed (meshd sync reads it from the file)",
        JOIN_HINT,
        id="registry-file",
    ),
    pytest.param(
        changed('mesh = "0.0.0.0:15443"', 'mesh = "0.0.0.0:15444"'),
        f"config: {LISTENERS}",
        RESTART_HINT,
        id="listen-mesh",
    ),
    pytest.param(
        changed("[listen]\n", '[listen]\nadmin = "10.0.0.5:15000"\n'),
        f"config: {LISTENERS}",
        RESTART_HINT,
        id="listen-admin",
    ),
    pytest.param(
        changed("[listen]\n", "[listen]\nipv6 = false\n"),
        f"config: {LISTENERS}",
        RESTART_HINT,
        id="listen-ipv6",
    ),
    pytest.param(
        changed('"127.0.0.1:16001"', '"127.0.0.1:16002"'),
        f"config: {LISTENERS}",
        RESTART_HINT,
        id="upstream-moved",
    ),
    pytest.param(
        changed('"/var/lib/meshd"', '"/tmp/state"'),
        "config: the state directory changed",
        RESTART_HINT,
        id="state-dir",
    ),
    pytest.param(  # a pushed file goes through every check of a file first
        FILE + '[[services]]\nname = "api"\nport = 9090\n',
        "config.toml: services[1].name: duplicate service 'api'",
        NAME_HINT,
        id="duplicate-service-pushed",
    ),
]


@pytest.mark.parametrize(("pushed", "message", "hint"), PUSH_TABLE)
def test_a_pushed_config_may_change_only_the_live_parts(
    pushed: str, message: str | None, hint: str | None
) -> None:
    running = parse(FILE)
    doc = {"version": 2, "toml": pushed}
    if message is None:
        assert config_on(running, doc, Path("/etc/meshd")) == parse(pushed)
        return
    with pytest.raises(ConfigError) as caught:
        config_on(running, doc, Path("/etc/meshd"))
    print(f"\n{caught.value.message}\n  hint: {caught.value.hint}")
    assert (caught.value.message, caught.value.hint) == (message, hint)


# (the file edited on the host, then SIGHUP) -> why meshd must be restarted instead, or OK
RELOAD_TABLE = [
    pytest.param(FILE, OK, id="unchanged"),
    pytest.param(changed("20000", "100"), OK, id="limits"),
    pytest.param(changed('"strict"', '"permissive"'), OK, id="mtls"),
    pytest.param(changed("port = 8080", "port = 8081"), OK, id="service-port"),  # rules: sync
    pytest.param(  # the files are the host's own: a reload may name others (they are checked)
        changed('cert = "cert.pem"', 'cert = "/etc/meshd/new/cert.pem"'), OK, id="cert-path"
    ),
    pytest.param(changed('host = "web1"', 'host = "web2"'), "the host name changed", id="host"),
    pytest.param(
        changed('"/var/lib/meshd"', '"/tmp/state"'), "the state directory changed", id="state"
    ),
    pytest.param(
        changed('mesh = "0.0.0.0:15443"', 'mesh = "0.0.0.0:15444"'), LISTENERS, id="listen-mesh"
    ),
    pytest.param(
        changed('outbound = "127.0.0.1:15001"', 'outbound = "127.0.0.2:15001"'),
        LISTENERS,
        id="listen-outbound",
    ),
    pytest.param(
        changed("[listen]\n", '[listen]\ninbound = "0.0.0.0:15007"\n'),
        LISTENERS,
        id="listen-inbound",
    ),
    pytest.param(changed("[listen]\n", "[listen]\nipv6 = false\n"), LISTENERS, id="listen-ipv6"),
    pytest.param(FILE + upstream("127.0.0.1:16002", "web"), LISTENERS, id="upstream-added"),
    pytest.param(
        changed('"127.0.0.1:15101"', '"127.0.0.1:15102"'),
        "a service's outbound listener changed",
        id="service-outbound",
    ),
]


@pytest.mark.parametrize(("edited", "problem"), RELOAD_TABLE)
def test_a_reload_may_not_change_what_is_bound(edited: str, problem: str | None) -> None:
    got = restart_needed(parse(FILE), parse(edited))
    assert got == problem
