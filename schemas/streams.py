"""The inner streams a char device's pending write bytes carry, as the guest side will parse them.

spice-server writes a char device's pending bytes into the guest device on the target exactly as
queued. Its write buffers hold whole client messages (one ``SPICEVMC_DATA``, ``SMARTCARD_DATA``
or ``AGENT_DATA`` each), so a legitimate buffer starts and ends on a message boundary; what the
device makes of a broken stream ranges from a log line to an abort of QEMU. Each check here
accepts only a whole, well-formed stream and raises ``ValueError`` (a schema violation) with the
offset of the first problem otherwise. Where the device's reading depends on state the migration
data does not carry, the check assumes the one state a current peer pair negotiates and refuses
the rest (SECURITY.md lists each assumption).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "USBREDIR_CAPS",
    "USBREDIR_MAX_BULK",
    "VDP_CLIENT_PORT",
    "VDP_SERVER_PORT",
    "VD_AGENT_MAX_DATA_SIZE",
    "VSC_MAX_MESSAGE",
    "check_usbredir_stream",
    "check_vdi_chunks",
    "check_vsc_stream",
    "usbredir_bulk_in",
    "usbredir_packet",
    "vdi_chunk",
    "vsc_message",
]

# --- usbredir (usbredirproto.h, usbredirparser.c; the guest-side parser in QEMU's usb-redir) ---

#: libusbredirparser's MAX_BULK_TRANSFER_SIZE; a longer packet is a parse error.
USBREDIR_MAX_BULK: Final = 128 * 1024 * 1024
_USBREDIR_MAX_PACKET: Final = 1024 + USBREDIR_MAX_BULK
_HELLO: Final = 0
_HELLO_HEADER: Final = struct.Struct("<III")  # type, length, 32-bit id: before the peer's caps
_HEADER: Final = struct.Struct("<IIQ")  # type, length, 64-bit id
#: The capabilities that decide how the guest's parser reads a host's packets, all set by both
#: QEMU's usb-redir and spice-gtk's usbredirhost: bulk_streams (0), connect_device_version (1),
#: ep_info_max_packet_size (4), 64bits_ids (5), 32bits_bulk_length (6), bulk_receiving (7).
#: The packet sizes below are those of this profile.
USBREDIR_CAPS: Final = 0b1111_0011
_HELLO_VERSION_SIZE: Final = 64

# type -> (type-specific header length, extra data allowed) for packets a usb host sends to the
# guest (the only direction written into QEMU's usb-redir chardev).
_USBREDIR_TO_GUEST: Final[dict[int, tuple[int, bool]]] = {
    1: (10, False),  # device_connect (with device_version_bcd)
    2: (0, False),  # device_disconnect
    4: (132, False),  # interface_info
    5: (288, False),  # ep_info (max_packet_size and max_streams)
    8: (2, False),  # configuration_status
    11: (3, False),  # alt_setting_status
    14: (2, False),  # iso_stream_status
    17: (2, False),  # interrupt_receiving_status
    20: (9, False),  # bulk_streams_status
    23: (0, True),  # filter_filter
    27: (6, False),  # bulk_receiving_status
    100: (10, True),  # control_packet
    101: (10, True),  # bulk_packet (32-bit length)
    102: (4, True),  # iso_packet
    103: (4, True),  # interrupt_packet
    104: (10, True),  # buffered_bulk_packet
}


def _usbredir_data_length(kind: int, head: bytes) -> tuple[int, int]:
    """(endpoint, data length the type header announces) of a data packet."""
    if kind == 100:
        return head[0], int.from_bytes(head[8:10], "little")
    if kind == 101:
        return head[0], int.from_bytes(head[2:4], "little") | (
            int.from_bytes(head[8:10], "little") << 16
        )
    if kind == 104:
        return head[8], int.from_bytes(head[4:8], "little")
    return head[0], int.from_bytes(head[2:4], "little")  # iso, interrupt


def _check_usbredir_packet(kind: int, head: bytes, data: bytes, where: str) -> None:
    if kind == 4 and int.from_bytes(head[0:4], "little") > 32:
        raise ValueError(f"{where}: interface_info with more than 32 interfaces")
    if kind == 17 and not head[1] & 0x80:
        raise ValueError(f"{where}: interrupt_receiving_status for an output endpoint")
    if kind == 27 and not head[4] & 0x80:
        raise ValueError(f"{where}: bulk_receiving_status for an output endpoint")
    if kind == 23 and (not data or data[-1] != 0):
        raise ValueError(f"{where}: filter_filter data is not NUL-terminated")
    if kind < 100:
        return
    endpoint, length = _usbredir_data_length(kind, head)
    if kind in (101, 104) and length > USBREDIR_MAX_BULK:
        raise ValueError(f"{where}: bulk length {length} over {USBREDIR_MAX_BULK}")
    if endpoint & 0x80:  # device-to-host data travels to the guest
        if len(data) != length:
            raise ValueError(f"{where}: {len(data)} data bytes, the header announces {length}")
    elif data or kind in (102, 104):
        raise ValueError(f"{where}: data packet type {kind} for output endpoint {endpoint:#04x}")


def check_usbredir_stream(data: bytes) -> None:
    """``data`` is whole usbredir packets as QEMU's usb-redir parser reads them from the host.

    A hello may only come first (the parser reads it with the 32-bit-id header and switches to
    64-bit ids from its capabilities, which must then be the full profile above).
    """
    view = memoryview(data)
    size = len(data)
    offset = 0
    while offset < size:
        header = _HELLO_HEADER if offset == 0 and data[:4] == b"\0\0\0\0" else _HEADER
        if size - offset < header.size:
            raise ValueError(f"usbredir packet header at offset {offset} is cut short")
        kind, length, _id = header.unpack_from(data, offset)
        where = f"usbredir packet at offset {offset}"
        body = offset + header.size
        if length > _USBREDIR_MAX_PACKET or length > size - body:
            raise ValueError(f"{where}: length {length} runs past the end or over the limit")
        if kind == _HELLO:
            if offset:
                raise ValueError(f"{where}: hello after the first packet")
            caps = bytes(view[body + _HELLO_VERSION_SIZE : body + length])
            if length < _HELLO_VERSION_SIZE + 4 or len(caps) % 4:
                raise ValueError(f"{where}: hello of length {length}")
            if int.from_bytes(caps[:4], "little") & USBREDIR_CAPS != USBREDIR_CAPS:
                raise ValueError(f"{where}: hello without the capabilities the checks assume")
            offset = body + length
            continue
        spec = _USBREDIR_TO_GUEST.get(kind)
        if spec is None:
            raise ValueError(f"{where}: type {kind} is not one a usb host sends to the guest")
        head_len, extra = spec
        if length < head_len or (length > head_len and not extra):
            raise ValueError(f"{where}: length {length} for type {kind}")
        _check_usbredir_packet(
            kind,
            bytes(view[body : body + head_len]),
            bytes(view[body + head_len : body + length]),
            where,
        )
        offset = body + length


# --- smartcard (libcacard vscard_common.h; QEMU's ccid-card-passthru) ---

_VSC_HEADER: Final = struct.Struct(">III")  # type, reader_id, length: network order
#: ccid-card-passthru assembles VSC messages in a 64 KiB buffer; a longer one never completes.
VSC_MAX_MESSAGE: Final = 65_536 - _VSC_HEADER.size
#: VSC_Init .. VSC_FlushComplete.
_VSC_TYPES: Final = range(1, 10)


def check_vsc_stream(data: bytes) -> None:
    """``data`` is whole VSC messages, each short enough for the passthru card's buffer."""
    size = len(data)
    offset = 0
    while offset < size:
        if size - offset < _VSC_HEADER.size:
            raise ValueError(f"VSC message header at offset {offset} is cut short")
        kind, _reader, length = _VSC_HEADER.unpack_from(data, offset)
        where = f"VSC message at offset {offset}"
        if kind not in _VSC_TYPES:
            raise ValueError(f"{where}: unknown type {kind}")
        if length > VSC_MAX_MESSAGE:
            raise ValueError(f"{where}: length {length} over the card's {VSC_MAX_MESSAGE}")
        if length > size - offset - _VSC_HEADER.size:
            raise ValueError(f"{where}: length {length} runs past the end")
        offset += _VSC_HEADER.size + length


# --- main: the agent port (spice-protocol vd_agent.h; spice-vdagentd's virtio-port reader) ---

_VDI_CHUNK: Final = struct.Struct("<II")  # port, size
VDP_CLIENT_PORT: Final = 1
VDP_SERVER_PORT: Final = 2
#: The largest chunk spice-server takes from a client and vdagentd accepts from the port.
VD_AGENT_MAX_DATA_SIZE: Final = 2048


def check_vdi_chunks(data: bytes) -> int:
    """``data`` is whole VDI chunks as spice-server queues them; returns the client chunks.

    Each client ``AGENT_DATA`` becomes one chunk (port 1) and costs one token; spice-server's
    own messages (port 2) cost none.
    """
    size = len(data)
    offset = 0
    client = 0
    while offset < size:
        if size - offset < _VDI_CHUNK.size:
            raise ValueError(f"VDI chunk header at offset {offset} is cut short")
        port, length = _VDI_CHUNK.unpack_from(data, offset)
        where = f"VDI chunk at offset {offset}"
        if port not in (VDP_CLIENT_PORT, VDP_SERVER_PORT):
            raise ValueError(f"{where}: port {port}")
        if not 0 < length <= VD_AGENT_MAX_DATA_SIZE:
            raise ValueError(f"{where}: size {length} outside 1..{VD_AGENT_MAX_DATA_SIZE}")
        if length > size - offset - _VDI_CHUNK.size:
            raise ValueError(f"{where}: size {length} runs past the end")
        client += port == VDP_CLIENT_PORT
        offset += _VDI_CHUNK.size + length
    return client


# --- builders of well-formed streams (samples, corpora, tests) ---


def usbredir_packet(kind: int, head: bytes, data: bytes = b"", packet_id: int = 0) -> bytes:
    """One usbredir packet with the 64-bit-id header."""
    return _HEADER.pack(kind, len(head) + len(data), packet_id) + head + data


def usbredir_bulk_in(data: bytes, packet_id: int = 0, endpoint: int = 0x81) -> bytes:
    """A bulk packet carrying ``data`` from an IN endpoint to the guest (32-bit length)."""
    head = struct.pack("<BBHIH", endpoint, 0, len(data) & 0xFFFF, 0, len(data) >> 16)
    return usbredir_packet(101, head, data, packet_id)


def vsc_message(kind: int, reader_id: int, payload: bytes) -> bytes:
    """One VSC message: big-endian header, then ``payload``."""
    return _VSC_HEADER.pack(kind, reader_id, len(payload)) + payload


def vdi_chunk(port: int, payload: bytes) -> bytes:
    """One VDI chunk: little-endian (port, size) header, then ``payload``."""
    return _VDI_CHUNK.pack(port, len(payload)) + payload
