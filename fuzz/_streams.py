"""Well-formed inner streams for the structure-aware native mutators.

A char device's pending bytes must be whole usbredir packets (usbredir), whole VSC messages
(smartcard) or whole VDI chunks (main) before the schema lets a state through; random bytes stop
at the first header. These generators lay out a stream the rules accept, now and then with one
field moved off by one or to another value, so the fuzzer reaches past each check.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from schemas.main import AGENT_CLIENT_WINDOW
from schemas.streams import (
    USBREDIR_CAPS,
    VD_AGENT_MAX_DATA_SIZE,
    VSC_MAX_MESSAGE,
    usbredir_packet,
    vdi_chunk,
    vsc_message,
)

__all__ = ["STREAMS", "Stream"]

#: (type, type-header builder) for the packets a usb host sends to the guest.
_NO_DATA: tuple[tuple[int, int], ...] = (
    (1, 10),
    (2, 0),
    (4, 132),
    (5, 288),
    (8, 2),
    (11, 3),
    (14, 2),
    (17, 2),
    (20, 9),
    (27, 6),
)


def _data(rng: random.Random, room: int) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, 8, 64, max(0, min(room, 4096)))))


def _usbredir_packet(rng: random.Random, room: int) -> bytes:
    kind = rng.choice((100, 101, 102, 103, 104, 23, *(k for k, _ in _NO_DATA)))
    endpoint = rng.randrange(16) | (0x80 if rng.random() < 0.9 else 0)
    packet_id = rng.choice((0, 1, 2**32, 2**64 - 1, rng.randrange(2**64)))
    if kind == 23:
        return usbredir_packet(23, b"", b"0x03,-1,-1,-1,0|-1,-1,-1,-1,1\0", packet_id)
    if kind < 100:
        head = bytearray(rng.randbytes(dict(_NO_DATA)[kind]))
        if kind == 4:
            head[0:4] = struct.pack("<I", rng.randrange(33))
        elif kind == 17:
            head[1] |= 0x80
        elif kind == 27:
            head[4] |= 0x80
        return usbredir_packet(kind, bytes(head), b"", packet_id)
    data = _data(rng, room) if endpoint & 0x80 else b""
    if kind == 100:
        head = struct.pack("<BBBBHHH", endpoint, 6, 0x80, 0, 0x100, 0, len(data))
    elif kind == 101:
        head = struct.pack("<BBHIH", endpoint, 0, len(data) & 0xFFFF, 0, len(data) >> 16)
    elif kind == 104:
        head = struct.pack("<IIBB", 0, len(data), endpoint | 0x80, 0)
    else:
        head = struct.pack("<BBH", endpoint | (0x80 if kind == 102 else 0), 0, len(data))
    return usbredir_packet(kind, head, data, packet_id)


def _usbredir(rng: random.Random, room: int) -> tuple[bytes, int]:
    out = b""
    if rng.random() < 0.1:
        body = b"usbredir".ljust(64, b"\0") + struct.pack("<I", USBREDIR_CAPS)
        out = struct.pack("<III", 0, len(body), 0) + body
    count = 0
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        packet = _usbredir_packet(rng, room - len(out))
        if len(out) + len(packet) > room:
            break
        out += packet
        count += 1
    return out, count


def _vsc(rng: random.Random, room: int) -> tuple[bytes, int]:
    out = b""
    count = 0
    for _ in range(rng.choice((1, 1, 2, 4))):
        size = rng.choice((0, 1, 4, 261, VSC_MAX_MESSAGE - 1, VSC_MAX_MESSAGE))
        size = min(size, max(0, room - len(out) - 12))
        message = vsc_message(rng.randrange(1, 10), rng.randrange(4), rng.randbytes(size))
        if len(out) + len(message) > room:
            break
        out += message
        count += 1
    return out, count


def _vdi(rng: random.Random, room: int) -> tuple[bytes, int]:
    out = b""
    client = 0
    for _ in range(rng.choice((1, 1, 2, 3, AGENT_CLIENT_WINDOW))):
        size = rng.choice((1, 20, 28, VD_AGENT_MAX_DATA_SIZE - 1, VD_AGENT_MAX_DATA_SIZE))
        size = min(size, room - len(out) - 8)
        if size < 1:
            break
        port = 1 if rng.random() < 0.8 else 2
        out += vdi_chunk(port, rng.randbytes(size))
        client += port == 1
    return out, client


def _nudge(rng: random.Random, data: bytearray) -> None:
    """One header word moved off by one or to a boundary: the rule's edge."""
    if len(data) < 4:
        return
    offset = rng.randrange(0, min(len(data), 24) - 3)
    value = struct.unpack_from("<I", data, offset)[0]
    value = rng.choice((value - 1, value + 1, 0, 0xFFFFFFFF, value ^ 0x80)) & 0xFFFFFFFF
    struct.pack_into("<I", data, offset, value)


@dataclass(frozen=True)
class Stream:
    """A generator of pending bytes for one layout's write block.

    ``tokens``: the dotted field that counts the stream's client messages, kept in step;
    ``window``: the field of the tokens the client still holds, and the window both share.
    """

    generate: Callable[[random.Random, int], tuple[bytes, int]]
    tokens: str | None = None
    window: tuple[str, int] | None = None

    def fill(self, rng: random.Random, room: int) -> tuple[bytes, int]:
        data, count = self.generate(rng, room)
        if rng.random() < 0.15:
            buf = bytearray(data)
            _nudge(rng, buf)
            data = bytes(buf)
        return data, count


STREAMS: dict[str, Stream] = {
    "usbredir": Stream(_usbredir),
    "smartcard": Stream(_vsc),
    "main": Stream(
        _vdi,
        tokens="agent.write_num_client_tokens",
        window=("agent.num_client_tokens", AGENT_CLIENT_WINDOW),
    ),
}
