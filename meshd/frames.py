"""The sidecar link's wire format: small binary frames multiplexing streams.

Each frame is a 9-byte header (type: u8, stream id: u32, payload length: u32,
big-endian) followed by the payload. The side that dialled the link opens
streams; both sides send data, window credit, half-close and resets.

    OPEN    service NUL port NUL source-id NUL original-destination
    DATA    bytes of the stream
    WINDOW  u32 credit: the receiver has passed that many more bytes on
    FIN     the sender will send no more data (half-close)
    RST     u8 code + reason: the stream is gone, both directions
    PING    8 opaque bytes; answered by PONG with the same bytes
    GOAWAY  the sender takes no new streams (draining); existing ones go on
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshd.errors import ConnectError

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size
WINDOW_CREDIT = struct.Struct("!I")
MAX_PAYLOAD = 1 << 20  # a peer announcing more is broken or hostile

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

# reset codes
RST_CANCEL = 1  # the sender's app side went away
RST_REFUSED = 2  # not allowed: unknown service, identity mismatch, limit
RST_CONNECT_FAILED = 3  # the destination app could not be reached
RST_LINK_LOST = 4  # synthesised locally when the link dies
RST_PROTOCOL = 5  # the peer broke the protocol


class ProtocolError(ConnectError):
    """The peer sent something the link protocol does not allow."""


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
        try:
            service, port, source, original = payload.decode().split("\0")
            return cls(service, int(port), source, original)
        except ValueError as e:
            raise ProtocolError(f"malformed OPEN frame: {e}") from None


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return HEADER.pack(kind, stream_id, len(payload)) + payload


def reset_payload(code: int, reason: str) -> bytes:
    return bytes((code,)) + reason.encode()[:200]


def parse_reset(payload: bytes) -> tuple[int, str]:
    if not payload:
        return RST_PROTOCOL, "empty reset"
    return payload[0], payload[1:].decode(errors="replace")
