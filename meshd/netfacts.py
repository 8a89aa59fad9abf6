"""Socket facts: the original destination of a redirected connection, address formatting."""

from __future__ import annotations

import socket
import struct
from typing import Any

SO_ORIGINAL_DST = 80  # from linux/netfilter_ipv4.h
SOCKADDR_IN = struct.Struct("!2xH4s8x")


def original_dst(sock: Any) -> tuple[str, int] | None:
    """Where an iptables-REDIRECTed IPv4 connection was headed, or None if it was not redirected."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, address = SOCKADDR_IN.unpack(raw)
    original = (socket.inet_ntoa(address), port)
    local = sock.getsockname()
    return None if original == (local[0], local[1]) else original


def fmt(address: Any) -> str:
    """``host:port`` of a socket address tuple (or "?" when unknown)."""
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
