"""The sample apps of `meshctl demo` (examples/apps): the web -> api -> db chain, run for real.

Each app runs as its own process on loopback, the way systemd runs it on a host,
with its upstream pointed at 127.0.0.1 instead of a .mesh name.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

APPS = Path(__file__).resolve().parent.parent / "examples" / "apps"
HOST = socket.gethostname()


def _free_port() -> int:
    """A port the apps can bind on every address, outside the kernel's ephemeral range.

    A port the kernel hands out (bind to port 0) goes back to the ephemeral
    pool once released, and a busy machine may give it to another socket
    before the app binds it; ports below that range are only taken on purpose.
    """
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("0.0.0.0", port))  # what the apps bind
            return port
    raise AssertionError("no free port in 20000-32000")


def _request(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def _json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    status, content_type, answer = _request(port, method, path, data)
    assert content_type == "application/json", (status, content_type, answer)
    return status, json.loads(answer)


@contextlib.contextmanager
def _running(name: str, port: int, log: Path, upstream: int | None = None) -> Iterator[int]:
    """Run examples/apps/<name>.py until it answers /healthz; always stop it."""
    argv = [sys.executable, str(APPS / f"{name}.py"), "--port", str(port)]
    if upstream is not None:
        argv += ["--upstream", f"http://127.0.0.1:{upstream}"]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"{name} exited:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                if _request(port, "GET", "/healthz")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"{name} never got healthy:\n{log.read_text()}"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """db, api and web, each pointed at the next; their ports by name."""
    logs = tmp_path_factory.mktemp("apps")
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(_running("db", _free_port(), logs / "db.log"))
        api = stack.enter_context(_running("api", _free_port(), logs / "api.log", db))
        web = stack.enter_context(_running("web", _free_port(), logs / "web.log", api))
        yield {"web": web, "api": api, "db": db}


def test_healthz_on_each_app_over_one_keepalive_connection(chain: dict[str, int]) -> None:
    for name, port in chain.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sockets = []
        try:
            for _ in range(2):
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                assert response.status == 200, name
                assert json.loads(response.read()) == {"status": "ok", "served_by": HOST}
                assert not response.will_close, name  # HTTP/1.1 keep-alive
                sockets.append(conn.sock)
            assert sockets[0] is sockets[1] is not None, f"{name} closed the connection"
        finally:
            conn.close()


def test_web_page_shows_all_three_hops(chain: dict[str, int]) -> None:
    status, content_type, page = _request(chain["web"], "GET", "/")
    assert (status, content_type) == (200, "text/plain; charset=utf-8")
    assert f"web@{HOST} -> api@{HOST} -> db@{HOST}" in page.decode()
    assert "espresso" in page.decode()


def test_web_proxies_api_products_as_json(chain: dict[str, int]) -> None:
    status, answer = _json(chain["web"], "GET", "/api/products")
    assert status == 200 and answer["served_by"] == HOST
    assert answer["db"]["served_by"] == HOST
    assert {"id": 1, "name": "espresso", "price": 2.5} in answer["db"]["items"]


def test_an_order_body_travels_web_api_db(chain: dict[str, int]) -> None:
    marker = f"order-{uuid.uuid4()}"
    status, answer = _json(chain["web"], "POST", "/order", {"product": 1, "marker": marker})
    assert status == 201, answer
    item = answer["db"]["item"]
    assert item["marker"] == marker and answer["served_by"] == answer["db"]["served_by"] == HOST
    _, listing = _json(chain["db"], "GET", "/items")
    assert item in listing["items"]
    assert _json(chain["db"], "GET", f"/items/{item['id']}") == (
        200,
        {"served_by": HOST, "item": item},
    )


def test_bad_requests_get_json_errors(chain: dict[str, int]) -> None:
    status, content_type, answer = _request(chain["web"], "POST", "/order", b"not json")
    assert (status, content_type) == (400, "application/json")  # db's verdict, via api and web
    assert "JSON object" in answer.decode()
    assert _json(chain["db"], "GET", "/items/999")[0] == 404
    assert _json(chain["api"], "GET", "/nowhere")[0] == 404


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_api_echoes_what_it_receives_under_v1(chain: dict[str, int], method: str) -> None:
    # the target as it arrived, query and odd spellings included: what the mesh forwarded
    for target in ("/v1", "/v1/orders/1?x=%2e", "/v1//a/../b%3a"):
        status, answer = _json(chain["api"], method, target)
        assert status == 200, (method, target, answer)
        assert answer == {"served_by": HOST, "method": method, "target": target}
    assert _json(chain["api"], method, "/v1x")[0] == 404


def test_api_and_web_answer_502_json_naming_a_down_upstream(tmp_path: Path) -> None:
    # bound but not listening for the whole test: refused, and no app can be given the port
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    down = int(held.getsockname()[1])
    try:
        _down_upstream_answers(tmp_path, down)
    finally:
        held.close()


def _down_upstream_answers(tmp_path: Path, down: int) -> None:
    with _running("api", _free_port(), tmp_path / "api.log", down) as api:
        status, answer = _json(api, "GET", "/products")
        assert status == 502 and answer["upstream"] == f"http://127.0.0.1:{down}"
        assert answer["upstream"] in answer["error"] and "Traceback" not in answer["error"]
        with _running("web", _free_port(), tmp_path / "web.log", api) as web:
            status, answer = _json(web, "GET", "/")
            assert status == 502 and answer["upstream"] == f"http://127.0.0.1:{api}"
            assert answer["answer"]["upstream"] == f"http://127.0.0.1:{down}"
    with _running("web", _free_port(), tmp_path / "web2.log", down) as web:
        status, answer = _json(web, "POST", "/order", {"marker": "lost"})
        assert status == 502 and answer["upstream"] == f"http://127.0.0.1:{down}"


def _start_db(log: Path, port: int) -> subprocess.Popen[bytes]:
    """db.py on ``port``, its output in ``log``, once it says it is listening (the caller stops it)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(APPS / "db.py"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while "listening" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"db.py did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return proc


def _read_head(replies: BinaryIO) -> tuple[bytes, dict[bytes, bytes]]:
    """An HTTP/1.1 response's status line and headers (names lower-case)."""
    status = replies.readline()
    headers = {}
    while (line := replies.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def test_sigterm_stops_cleanly_after_logging_each_request(tmp_path: Path) -> None:
    log = tmp_path / "db.log"
    port = _free_port()
    proc = _start_db(log, port)
    try:
        assert _request(port, "GET", "/items/1")[0] == 200
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert re.search(r"^GET /items/1 200 \d+\.\dms$", output, re.MULTILINE), output
    assert "Traceback" not in output and output.endswith("db stopped\n")


def test_sigterm_waits_for_a_request_being_answered(tmp_path: Path) -> None:
    """SIGTERM while a POST body is still arriving: the request is answered and
    logged before the app stops (an app stopped by systemd loses no answer)."""
    log = tmp_path / "db.log"
    port = _free_port()
    proc = _start_db(log, port)
    try:
        body = json.dumps({"marker": "drain"}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            replies = conn.makefile("rb")
            # a first request on this connection: its handler thread exists and waits for more
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: db\r\n\r\n")
            status, headers = _read_head(replies)
            assert status.startswith(b"HTTP/1.1 200 ")
            replies.read(int(headers[b"content-length"]))
            head = f"POST /items HTTP/1.1\r\nHost: db\r\nContent-Length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode() + body[:5])
            time.sleep(1)  # the waiting handler is now reading the rest of the body
            proc.terminate()
            time.sleep(0.5)
            assert proc.poll() is None, "the app stopped with a request half-read"
            conn.sendall(body[5:])
            answer, headers = _read_head(replies)
        assert answer.startswith(b"HTTP/1.1 201 "), answer
        assert headers.get(b"connection") == b"close"  # the app is stopping: no next request
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert re.search(
        r"^GET /healthz 200 \d+\.\dms\nPOST /items 201 \d+\.\dms\ndb stopped\n$", output, re.M
    ), output


# --- /work: a known latency and status, shared by the three apps ---------------------------------
@pytest.mark.parametrize("name", ["web", "api", "db"])
@pytest.mark.parametrize(
    ("target", "status", "delay"),
    [
        ("/work", 200, 0),
        ("/work/slow?delay_ms=250", 200, 250),
        ("/work/fail?status=500", 500, 0),
        ("/work/a/b?status=503&delay_ms=120", 503, 120),
        ("/work/x?status=299&status=404", 404, 0),  # the last value counts
    ],
)
def test_work_waits_and_answers_as_asked(
    chain: dict[str, int], name: str, target: str, status: int, delay: int
) -> None:
    started = time.monotonic()
    found, answer = _json(chain[name], "GET", target)
    took = (time.monotonic() - started) * 1000
    assert found == status, answer
    assert answer == {
        "served_by": HOST,
        "method": "GET",
        "target": target,
        "delay_ms": delay,
        "status": status,
    }
    assert delay <= took < delay + 1000, took


@pytest.mark.parametrize(
    "query",
    [
        "delay_ms=5001",
        "delay_ms=-1",
        "delay_ms=1e3",
        "delay_ms=",
        "delay_ms=%D9%A1",  # an Arabic-Indic one: a digit to str.isdigit, not a number here
        "status=199",
        "status=600",
        "status=2OO",
        "status=99999999999999999999",
    ],
)
def test_work_refuses_values_out_of_range(chain: dict[str, int], query: str) -> None:
    started = time.monotonic()
    status, answer = _json(chain["api"], "POST", f"/work/x?{query}")
    assert status == 400, answer
    assert "must be a whole number" in answer["error"], answer
    assert time.monotonic() - started < 1  # refused before any wait


def test_work_answers_204_without_a_body_and_keeps_the_connection(chain: dict[str, int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", chain["db"], timeout=10)
    try:
        conn.request("DELETE", "/work/gone?status=204")
        response = conn.getresponse()
        assert response.status == 204 and response.read() == b""
        assert response.getheader("Content-Length") is None
        sock = conn.sock
        conn.request("GET", "/work/next")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["target"] == "/work/next"
        assert conn.sock is sock is not None  # the same connection: the 204 left nothing behind
    finally:
        conn.close()


def test_work_does_not_hide_an_apps_own_routes(chain: dict[str, int]) -> None:
    assert _json(chain["api"], "GET", "/v1/work?status=500") == (
        200,
        {"served_by": HOST, "method": "GET", "target": "/v1/work?status=500"},
    )
    assert _json(chain["db"], "GET", "/workers")[0] == 404  # /work's prefix is a whole segment


@pytest.mark.parametrize("name", ["web", "api", "db"])
def test_a_keepalive_client_is_not_held_by_nagle(chain: dict[str, int], name: str) -> None:
    """The head and the body of an answer leave in two writes: with Nagle's algorithm on,
    the body waited for the client's delayed ACK of the head, 40 ms on Linux, on every
    request of a kept-alive connection after the first (what a user would blame on meshd)."""
    conn = http.client.HTTPConnection("127.0.0.1", chain[name], timeout=10)
    took = []
    try:
        for _ in range(15):
            started = time.monotonic()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
            took.append(time.monotonic() - started)
    finally:
        conn.close()
    assert sorted(took)[len(took) // 2] < 0.02, took  # ~1 ms without the stall
