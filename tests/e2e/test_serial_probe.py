"""The serial probe against a local mutual-TLS 1.3 server whose certificate changes."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e import serial_probe
from tests.meshd.tlsfixtures import Identity, TestPki


def _server_context(identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(identity.bundle))
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


class Port:
    """A mesh-port stand-in: completes mutual TLS 1.3 with whatever identity it holds now."""

    def __init__(self, identity: Identity) -> None:
        self.context = _server_context(identity)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def swap(self, identity: Identity) -> None:
        self.context = _server_context(identity)  # the next handshake presents it

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.listener.accept()
                with contextlib.suppress(OSError), self.context.wrap_socket(raw, True) as tls:
                    tls.recv(1)  # until the client closes


@contextlib.contextmanager
def mesh_port(identity: Identity) -> Iterator[Port]:
    port = Port(identity)
    port.thread.start()
    try:
        yield port
    finally:
        port.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        port.listener.close()
        port.thread.join(5)


def serial_of(identity: Identity) -> str:
    return format(x509.load_pem_x509_certificate(identity.cert.read_bytes()).serial_number, "X")


def test_the_probe_reads_the_serial_presented_now(tmp_path: Path) -> None:
    pki = TestPki(tmp_path)
    first, second = pki.issue("a", "host/h1"), pki.issue("b", "host/h1")
    client = pki.issue("op", "operator/root")
    args = (client.cert, client.key, client.bundle)
    with mesh_port(first) as port:
        before = serial_probe.presented("127.0.0.1", port.port, *args)
        port.swap(second)
        after = serial_probe.presented("127.0.0.1", port.port, *args)
    assert (before.serial, after.serial) == (serial_of(first), serial_of(second))
    assert before.ids == ("spiffe://t.mesh/host/h1",) and before.not_after.endswith("GMT")


def test_a_certificate_outside_the_bundle_is_never_read(tmp_path: Path) -> None:
    stranger = TestPki(tmp_path / "other").issue("x", "host/h1")
    client = TestPki(tmp_path / "ours").issue("op", "operator/root")
    with mesh_port(stranger) as port, pytest.raises(ssl.SSLCertVerificationError):
        serial_probe.presented("127.0.0.1", port.port, client.cert, client.key, client.bundle)


def test_the_probe_runs_as_a_script(tmp_path: Path) -> None:
    pki = TestPki(tmp_path)
    server, client = pki.issue("a", "host/h1"), pki.issue("op", "operator/root")
    flags = [f"--cert={client.cert}", f"--key={client.key}", f"--bundle={client.bundle}"]
    with mesh_port(server) as port:
        done = subprocess.run(
            [sys.executable, serial_probe.__file__, "127.0.0.1", str(port.port), *flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    assert json.loads(done.stdout)["serial"] == serial_of(server)


@pytest.mark.parametrize(
    ("spelled", "serial"),
    [
        ("0A1B", "A1B"),  # ssl pads to whole bytes; the contracts do not
        ("A1B2", "A1B2"),
        ("00FF", "FF"),
        ("1f", "1F"),
    ],
)
def test_serials_are_spelled_as_the_contracts_spell_them(spelled: str, serial: str) -> None:
    peer = {
        "serialNumber": spelled,
        "notAfter": "Dec  5 08:00:00 2026 GMT",
        "subjectAltName": (("URI", "spiffe://t.mesh/host/h1"), ("DNS", "h1")),
    }
    found = serial_probe.of_peer(peer)
    assert (found.serial, found.ids) == (serial, ("spiffe://t.mesh/host/h1",))
