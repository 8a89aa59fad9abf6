"""Socket facts: the original destination of a redirected connection, IPv6 on this host,
address formatting."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

SO_ORIGINAL_DST = 80  # from linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # from linux/netfilter_ipv6/ip6_tables.h (same number, other level)
SOCKADDR_IN = struct.Struct("!2xH4s8x")
SOCKADDR_IN6 = struct.Struct("!2xH4x16s4x")  # family, port, flow info, address, scope id
IF_INET6 = Path("/proc/net/if_inet6")  # the kernel's IPv6 addresses; absent without IPv6


def original_dst(sock: Any) -> tuple[str, int] | None:
    """Where an iptables-REDIRECTed connection was headed, or None if it was not redirected."""
    v6 = sock.family == socket.AF_INET6
    level, option, layout = (
        (socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6)
        if v6
        else (socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN)
    )
    try:
        raw = sock.getsockopt(level, option, layout.size)
    except OSError:
        return None
    port, address = layout.unpack(raw)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    original = (socket.inet_ntop(family, address), port)
    local = sock.getsockname()
    return None if original == (local[0], local[1]) else original


def ipv6_absent(if_inet6: Path = IF_INET6) -> str | None:
    """Why this host (network namespace) has no IPv6 at all, or None when it has."""
    if not if_inet6.exists():
        return "the kernel has no IPv6 (booted with ipv6.disable=1, or built without it)"
    return None


def fmt(address: Any) -> str:
    """``host:port`` of a socket address tuple (or "?" when unknown)."""
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
