"""The sidecar link's wire format: small binary frames multiplexing streams.

Each frame is a 9-byte header (type: u8, stream id: u32, payload length: u32,
big-endian) followed by the payload. The side that dialled the link opens
streams; both sides send data, window credit, half-close and resets.

    OPEN    service NUL port NUL source-id NUL original-destination (ip:port or empty;
            "upstream NAME" from meshd 0.1.0, still taken during a rolling upgrade)
    DATA    bytes of the stream
    WINDOW  u32 credit: the receiver has passed that many more bytes on
    FIN     the sender will send no more data (half-close)
    RST     u8 code + reason: the stream is gone, both directions
    PING    8 opaque bytes; answered by PONG with the same bytes
    GOAWAY  the sender takes no new streams (draining); existing ones go on

Control frames have small fixed sizes (``CONTROL_MAX``), checked at the
header: a peer cannot make a link buffer more than a few KiB of anything but
DATA, and DATA is handed on as it arrives, within flow-control windows. OPEN
fields are names and SPIFFE IDs, never free text: they end up in logs and
metric labels.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from meshd.errors import ConnectError

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size
WINDOW_CREDIT = struct.Struct("!I")
MAX_PAYLOAD = 1 << 20  # a peer announcing more is broken or hostile
MAX_SID = (1 << 32) - 1  # stream ids are u32: a link retires before its dialler runs out
MAX_REASON = 200  # bytes of a reset's reason

OPEN, DATA, WINDOW, FIN, RST, PING, PONG, GOAWAY = range(1, 9)
FRAME_NAMES = {
    OPEN: "OPEN",
    DATA: "DATA",
    WINDOW: "WINDOW",
    FIN: "FIN",
    RST: "RST",
    PING: "PING",
    PONG: "PONG",
    GOAWAY: "GOAWAY",
}

PING_SIZE = 8
# the largest payload of each control frame type; DATA is bounded by MAX_PAYLOAD alone
CONTROL_MAX = {
    OPEN: 4096,
    WINDOW: 4,
    FIN: 0,
    RST: 1 + MAX_REASON,
    PING: PING_SIZE,
    PONG: PING_SIZE,
    GOAWAY: 0,
}

# reset codes
RST_CANCEL = 1  # the sender's app side went away
RST_REFUSED = 2  # not allowed: unknown service, identity mismatch, limit
RST_CONNECT_FAILED = 3  # the destination app could not be reached
RST_LINK_LOST = 4  # synthesised locally when the link dies
RST_PROTOCOL = 5  # the peer broke the protocol


class ProtocolError(ConnectError):
    """The peer sent something the link protocol does not allow."""


# service (a DNS label), port, source SPIFFE ID, original destination (empty or ip:port)
_OPEN = re.compile(
    r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\0"
    r"([1-9][0-9]{0,4})\0"
    r"(spiffe://[a-z0-9._-]{1,255}(?:/[A-Za-z0-9._-]{1,255}){1,8})\0"
    r"((?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):([1-9][0-9]{0,4})"
    r"|upstream [a-z0-9-]{1,63}|)"  # meshd 0.1.0 named its upstream listener there
)


DECODED_MAX = 512  # OPEN payloads kept, parsed (see OpenRequest.decode)


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """What a stream is for: where it goes, for whom, and where it was headed originally."""

    service: str
    port: int
    source: str
    original_dst: str = ""

    def encode(self) -> bytes:
        return "\0".join((self.service, str(self.port), self.source, self.original_dst)).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OpenRequest:
        """Parse an OPEN payload; ProtocolError unless every field is well formed.

        The OPENs of a link repeat (a service, a port, a source, a VIP): requests
        parsed once are kept (a few hundred at most), so a new stream costs a lookup.
        """
        known = _DECODED.get(payload)
        if known is not None:
            return known
        request = cls._parse(payload)
        if len(_DECODED) >= DECODED_MAX:
            _DECODED.clear()
        _DECODED[payload] = request
        return request

    @classmethod
    def _parse(cls, payload: bytes) -> OpenRequest:
        try:
            match = _OPEN.fullmatch(payload.decode("ascii"))
        except UnicodeDecodeError:
            match = None
        if match is None:
            raise ProtocolError("malformed OPEN frame")
        service, port, source, original, original_port = match.groups()
        number = int(port)
        if number > 65535 or (original_port and int(original_port) > 65535):
            raise ProtocolError("malformed OPEN frame: port out of range")
        return cls(service, number, source, original)


_DECODED: dict[bytes, OpenRequest] = {}


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return HEADER.pack(kind, stream_id, len(payload)) + payload


def reset_payload(code: int, reason: str) -> bytes:
    return bytes((code,)) + reason.encode()[:MAX_REASON]


def parse_reset(payload: bytes) -> tuple[int, str]:
    if not payload:
        return RST_PROTOCOL, "empty reset"
    return payload[0], payload[1:].decode(errors="replace")
