"""Every pushed document kind is validated fully at the door of a real meshd.

A refused push is a 400 that names the field, changes nothing, and leaves
/metrics and /stats working.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.meshd.harness import Meshd, MeshNet, admin_call


def put_raw(net: MeshNet, meshd: Meshd, kind: str, body: str) -> tuple[int, dict[str, object]]:
    ctx = net.operator_context()
    status, text = admin_call(
        ("127.0.0.1", meshd.ports["admin"]), ctx, "PUT", f"/{kind}", body.encode()
    )
    return status, json.loads(text)


def assert_still_serving(net: MeshNet, meshd: Meshd) -> None:
    status, text = net.admin(meshd, "GET", "/metrics")
    assert status == 200, text
    assert "meshd_document_version" in text
    assert net.admin(meshd, "GET", "/stats")[0] == 200


@pytest.mark.parametrize(
    ("kind", "body", "words"),
    [
        ("policy", '{"version": 6, "allow": []}', ["allow", "unknown fields"]),
        ("policy", '{"version": 6, "x": NaN}', ["NaN"]),
        ("registry", '{"version": 1, "services": {}, "x": Infinity}', ["NaN"]),
        ("registry", '{"version": 1' + "0" * 309 + ', "services": {}}', ["version", "2^53"]),
        ("policy", '{"version": 9007199254740992}', ["version"]),
        ("config", '{"version": 1e400, "toml": ""}', ["version"]),
    ],
    ids=[
        "policy-unknown-field",
        "policy-nan",
        "registry-inf",
        "registry-1e309",
        "policy-2^53",
        "config-inf",
    ],
)
def test_out_of_range_and_unenforceable_documents_get_400(
    net: MeshNet, kind: str, body: str, words: list[str]
) -> None:
    meshd = net.start("a")
    assert put_raw(net, meshd, "policy", '{"version": 5}')[0] == 200  # the one policy accepted
    status, answer = put_raw(net, meshd, kind, body)
    print(f"\n{kind}: {status} {answer}")
    assert status == 400, answer
    for word in words:
        assert word.replace("2^53", "9007199254740991") in str(answer["error"])
    status, text = net.admin(meshd, "GET", "/policy")
    assert (status, json.loads(text)) == (200, {"version": 5})
    assert_still_serving(net, meshd)
    meshd.stop()
    assert meshd.proc.returncode == 0


def registry(mesh_port: int, vip: str = "10.255.0.9", **endpoint: object) -> dict[str, object]:
    entry = {"host": "b", "address": "127.0.0.1", "port": 8080, "mesh_port": mesh_port}
    return {
        "version": 2,
        "services": {"api": {"vip": vip, "port": 8080, "endpoints": [entry | endpoint]}},
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"host": "B_Host"}, "services.api.endpoints[0].host"),
        ({"host": "b\nINFO meshd: reloaded"}, "services.api.endpoints[0].host"),
        ({"vip": "10.0.0.9"}, "services.api.vip"),  # outside vip_range 10.255.0.0/16
        ({"address": "10.255.3.3"}, "services.api.endpoints[0].address"),  # inside it
        ({"labels": {"zone": "a b"}}, "services.api.endpoints[0].labels"),
        ({"labels": {"": "a"}}, "services.api.endpoints[0].labels"),
    ],
    ids=["host", "host-newline", "vip-outside", "address-inside", "label-value", "label-key"],
)
def test_a_registry_with_a_bad_field_gets_400_naming_it(
    net: MeshNet, change: dict[str, str], field: str
) -> None:
    b = net.start("b", services={"api": 8080})
    a = net.start("a", upstreams={"api": 0})
    vip = change.pop("vip", "10.255.0.9")
    status, text = net.admin(a, "PUT", "/registry", registry(b.ports["mesh"], vip, **change))
    print(f"\n{status} {text}")
    assert status == 400, text
    assert json.loads(text)["error"].startswith(f"registry: {field}:")
    assert json.loads(net.admin(a, "GET", "/registry")[1])["version"] == 1
    with socket.create_connection(("127.0.0.1", a.ports["upstream:api"]), timeout=5) as s:
        s.settimeout(5)
        try:  # no such service: refused, and meshd lives on
            s.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    assert a.proc.poll() is None, a.log_text()
    assert_still_serving(net, a)


def test_a_pushed_config_may_not_change_what_root_helpers_read(net: MeshNet) -> None:
    a = net.start("a")
    toml = a.config.read_text() + '[interception]\nvip_range = "10.0.0.0/8"\n'
    status, text = net.admin(a, "PUT", "/config", {"version": 1, "toml": toml})
    assert status == 400 and "[interception] changed" in json.loads(text)["error"], text


def test_a_config_push_keeps_a_pushed_certificate(net: MeshNet) -> None:
    """Each push replaces its own layer: a config push must not bring the files' TLS back."""
    ident = net.pki.issue("a", "host/a")
    a = net.start("a", identity=ident)
    pushed = net.pki.reissue(ident, "a-v2")
    body = {
        "version": 1,
        "cert_pem": pushed.cert.read_text(),
        "bundle_pem": net.pki.bundle.read_text(),
    }
    assert net.admin(a, "PUT", "/certs", body)[0] == 200
    before = json.loads(net.admin(a, "GET", "/stats")[1])["certificate_not_after"]
    toml = a.config.read_text() + "[limits]\nmax_connections = 100\n"
    status, text = net.admin(a, "PUT", "/config", {"version": 1, "toml": toml})
    assert status == 200, text
    assert json.loads(net.admin(a, "GET", "/stats")[1])["certificate_not_after"] == before


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ("[timeouts]\nhandshake = nan", "timeouts.handshake"),
        ("[timeouts]\nconnect = inf", "timeouts.connect"),
        ("[limits]\nstream_window = 8589934592", "limits.stream_window"),
        ("[limits]\nmax_frame = 4294967296", "limits.max_frame"),
    ],
)
def test_a_config_with_an_unbounded_limit_or_timeout_gets_400(
    net: MeshNet, table: str, field: str
) -> None:
    a = net.start("a")
    toml = a.config.read_text().replace("[log]", f"{table}\n[log]")
    status, text = net.admin(a, "PUT", "/config", {"version": 2, "toml": toml})
    print(f"\n{status} {text}")
    assert status == 400, text
    assert json.loads(text)["error"].startswith(f"config.toml: {field}:")
    assert net.admin(a, "GET", "/config")[0] == 404  # nothing applied
    assert_still_serving(net, a)


def _services_toml(services: dict[str, int]) -> str:
    return "".join(f'[[services]]\nname = "{n}"\nport = {p}\n' for n, p in services.items())


@pytest.mark.parametrize(
    "pushed",
    [{"web": 8081, "api": 9090}, {"web": 8080, "api": 9090, "db": 5432}, {"web": 8080}],
    ids=["moved", "added", "removed"],
)
def test_a_pushed_config_may_not_change_the_services_the_rules_protect(
    net: MeshNet, pushed: dict[str, int]
) -> None:
    """meshd rules and meshd sync render the services from the file: a push would leave
    the new port without interception (strict mode not held) and the old one protected."""
    services = {"web": 8080, "api": 9090}
    a = net.start("a", services=services)
    text = a.config.read_text()
    toml = text.replace(_services_toml(services), _services_toml(pushed))
    assert toml != text
    status, answer = net.admin(a, "PUT", "/config", {"version": 2, "toml": toml})
    print(f"\n{status} {answer}")
    assert status == 400, answer
    error = json.loads(answer)
    assert error["error"] == "config: [[services]] changed (meshd rules renders them from the file)"
    assert "meshctl join" in error["hint"]
    assert net.admin(a, "GET", "/config")[0] == 404
    reordered = text.replace(
        _services_toml(services), _services_toml(dict(reversed(services.items())))
    )
    assert net.admin(a, "PUT", "/config", {"version": 2, "toml": reordered})[0] == 200


def test_a_deeply_nested_pushed_config_gets_400_not_a_traceback(net: MeshNet) -> None:
    a = net.start("a")
    toml = a.config.read_text() + "\nx = " + "[" * 5000 + "]" * 5000 + "\n"
    status, text = net.admin(a, "PUT", "/config", {"version": 2, "toml": toml})
    print(f"\n{status} {text}")
    assert status == 400, text
    assert json.loads(text)["error"] == "config: toml: nested too deeply to read"
    assert "Traceback" not in a.log_text()
    assert_still_serving(net, a)
