"""Bodies of the migration messages (and MAIN_INIT), decoded and encoded.

Layouts are those of spice-common's generated (de)marshallers for ``spice.proto``. The checks
are stricter than theirs on purpose: a body that spice-server would never write (an empty
message with bytes in it, a string without its NUL, a pointer into the fixed part) is refused
rather than interpreted, so the gateway and the endpoint can never read one message two ways.

Type numbers are per channel: the common ones (MIGRATE, MIGRATE_DATA, FLUSH_MARK) are
recognised on every channel, the 101+ ones on the main channel only. Use
:func:`decode_migration` to map a data message to one of the classes below.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from gateway.errors import ProtocolError
from gateway.spice.constants import (
    ChannelType,
    Direction,
    HeaderKind,
    MainMsg,
    MainMsgc,
    MigrateFlags,
    Msg,
    Msgc,
)
from gateway.spice.link import pack

__all__ = [
    "DST_INFO_SIZE",
    "MAX_CERT_SUBJECT_SIZE",
    "MAX_HOST_SIZE",
    "ClientMigrateData",
    "ClientMigrateEnd",
    "DstInfo",
    "MainInit",
    "Migrate",
    "MigrateBegin",
    "MigrateBeginSeamless",
    "MigrateCancel",
    "MigrateConnectError",
    "MigrateConnected",
    "MigrateConnectedSeamless",
    "MigrateData",
    "MigrateDstDoSeamless",
    "MigrateDstSeamlessAck",
    "MigrateDstSeamlessNack",
    "MigrateEnd",
    "MigrateFlushMark",
    "MigrateSwitchHost",
    "MigrationMessage",
    "decode_migration",
    "migration_class",
]

_U32 = struct.Struct("<I")
_DST_INFO = struct.Struct("<HHIIII")
_MAIN_INIT = struct.Struct("<8I")
_MINI = struct.Struct("<HI")
_FULL = struct.Struct("<QHII")

#: Fixed part of ``DstInfo``: port, sport, host size and pointer, cert subject size and pointer.
DST_INFO_SIZE = _DST_INFO.size
#: Host string bound, NUL included: a DNS name is at most 253 bytes; leave room for literals.
MAX_HOST_SIZE = 1024
#: Certificate subject bound, NUL included (an X.509 distinguished name in text form).
MAX_CERT_SUBJECT_SIZE = 4096


def encode_data_message(
    kind: HeaderKind, msg_type: int, body: bytes, *, serial: int = 0, sub_list: int = 0
) -> bytes:
    """One data message: the header of ``kind`` followed by ``body``.

    The mini header has no serial and no sub-message list, so both must be left at 0 for it.
    """
    if kind is HeaderKind.MINI:
        if serial or sub_list:
            raise ProtocolError("cannot encode a mini header with a serial or a sub_list")
        return pack(_MINI, msg_type, len(body), what="mini data header") + body
    return pack(_FULL, serial, msg_type, len(body), sub_list, what="full data header") + body


@dataclass(frozen=True, slots=True)
class MigrationMessage:
    """A decoded migration message body; subclasses say where they belong."""

    MSG_TYPE: ClassVar[int]
    DIRECTION: ClassVar[Direction]
    #: True for the 101+ types, which mean something else on other channels.
    MAIN_ONLY: ClassVar[bool] = True

    def encode_body(self) -> bytes:
        return b""

    def encode(self, kind: HeaderKind, *, serial: int = 0) -> bytes:
        """The whole data message, header included (for tests and scripted peers)."""
        return encode_data_message(kind, self.MSG_TYPE, self.encode_body(), serial=serial)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        """The empty-body case; subclasses with a body override it."""
        if body:
            raise ProtocolError(f"{cls.__name__}: body must be empty, got {len(body)} bytes")
        return cls()


def _fixed_u32(cls_name: str, body: bytes, field_name: str) -> int:
    if len(body) != _U32.size:
        raise ProtocolError(
            f"{cls_name}: body must be {_U32.size} bytes ({field_name} at offset 0), "
            f"got {len(body)}"
        )
    (value,) = _U32.unpack(body)
    return int(value)


# --- every channel -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migrate(MigrationMessage):
    """``SPICE_MSG_MIGRATE``: the source tells the client to migrate this channel now."""

    MSG_TYPE = Msg.MIGRATE
    DIRECTION = Direction.SERVER_TO_CLIENT
    MAIN_ONLY = False

    flags: MigrateFlags

    @property
    def need_flush(self) -> bool:
        return MigrateFlags.NEED_FLUSH in self.flags

    @property
    def need_data_transfer(self) -> bool:
        return MigrateFlags.NEED_DATA_TRANSFER in self.flags

    def encode_body(self) -> bytes:
        return pack(_U32, self.flags, what="MIGRATE flags")

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        flags = _fixed_u32(cls.__name__, body, "flags")
        # Plain ints: ``~`` on an IntFlag would complement within the known bits only.
        unknown = flags & ~int(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
        if unknown:
            raise ProtocolError(f"Migrate: field flags at offset 0 has unknown bits {unknown:#x}")
        return cls(flags=MigrateFlags(flags))


@dataclass(frozen=True, slots=True)
class MigrateData(MigrationMessage):
    """``SPICE_MSG_MIGRATE_DATA``: the source's opaque migration payload for this channel."""

    MSG_TYPE = Msg.MIGRATE_DATA
    DIRECTION = Direction.SERVER_TO_CLIENT
    MAIN_ONLY = False

    payload: bytes = field(repr=False)

    def encode_body(self) -> bytes:
        return self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(payload=bytes(body))


@dataclass(frozen=True, slots=True)
class MigrateFlushMark(MigrationMessage):
    """``SPICE_MSGC_MIGRATE_FLUSH_MARK``: the client has flushed what it sent the source."""

    MSG_TYPE = Msgc.MIGRATE_FLUSH_MARK
    DIRECTION = Direction.CLIENT_TO_SERVER
    MAIN_ONLY = False


@dataclass(frozen=True, slots=True)
class ClientMigrateData(MigrationMessage):
    """``SPICE_MSGC_MIGRATE_DATA``: the client hands the payload to the destination."""

    MSG_TYPE = Msgc.MIGRATE_DATA
    DIRECTION = Direction.CLIENT_TO_SERVER
    MAIN_ONLY = False

    payload: bytes = field(repr=False)

    def encode_body(self) -> bytes:
        return self.payload

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(payload=bytes(body))


# --- main channel: destination info --------------------------------------------------------


def _decode_string(
    body: bytes,
    *,
    fixed: int,
    what: str,
    name: str,
    size: int,
    ptr: int,
    size_at: int,
    limit: int,
    required: bool,
) -> str | None:
    """A NUL-terminated string addressed by a body-relative pointer.

    spice-gtk reads these as C strings and checks the final NUL; one with a NUL inside would
    be read shorter by the client than by the gateway, so it is refused.
    """
    if size == 0:
        if required:
            raise ProtocolError(
                f"{what}: field {name}_size at offset {size_at} is 0; "
                f"the {name} must be a NUL-terminated string"
            )
        if ptr != 0:
            raise ProtocolError(
                f"{what}: field {name}_ptr at offset {size_at + 4} is {ptr} "
                f"although {name}_size is 0"
            )
        return None
    if size > limit:
        raise ProtocolError(
            f"{what}: field {name}_size at offset {size_at} is {size}, more than {limit}"
        )
    if ptr < fixed:
        raise ProtocolError(
            f"{what}: field {name}_ptr at offset {size_at + 4} is {ptr}, "
            f"inside the {fixed}-byte fixed part"
        )
    if ptr + size > len(body):
        raise ProtocolError(
            f"{what}: {name} at body offset {ptr} with {size} bytes reaches past the end "
            f"of the {len(body)}-byte body"
        )
    raw = body[ptr : ptr + size]
    if raw[-1] != 0:
        raise ProtocolError(f"{what}: {name} at body offset {ptr} is not NUL-terminated")
    nul = raw.find(0)
    if nul != size - 1:
        raise ProtocolError(f"{what}: {name} at body offset {ptr} has a NUL at offset {ptr + nul}")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{what}: {name} at body offset {ptr} is not UTF-8 (byte {ptr + exc.start})"
        ) from None


def _encode_string(value: str | None, name: str, limit: int) -> bytes:
    if value is None:
        return b""
    raw = value.encode("utf-8") + b"\0"
    if b"\0" in raw[:-1] or len(raw) > limit:
        raise ProtocolError(f"cannot encode {name}: a NUL inside or more than {limit} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class DstInfo:
    """Where the client should connect to reach the destination (``SpiceMigrationDstInfo``).

    ``host`` and ``cert_subject`` are the strings without their NUL; a missing cert subject
    (size 0, pointer 0 on the wire) is ``None``.
    """

    port: int
    sport: int
    host: str
    cert_subject: str | None = None

    def encode_with(self, trailer: bytes = b"") -> bytes:
        """The fixed part, then ``trailer`` (the seamless version), then the two strings."""
        host = _encode_string(self.host, "host", MAX_HOST_SIZE)
        cert = _encode_string(self.cert_subject, "cert_subject", MAX_CERT_SUBJECT_SIZE)
        host_ptr = DST_INFO_SIZE + len(trailer)
        cert_ptr = host_ptr + len(host) if cert else 0
        fixed = pack(
            _DST_INFO,
            self.port,
            self.sport,
            len(host),
            host_ptr,
            len(cert),
            cert_ptr,
            what="DstInfo",
        )
        return fixed + trailer + host + cert

    @classmethod
    def decode_from(cls, body: bytes, *, fixed: int, what: str) -> DstInfo:
        """Decode the DstInfo at the start of ``body``, whose fixed part is ``fixed`` bytes."""
        if len(body) < fixed:
            raise ProtocolError(
                f"{what}: body of {len(body)} bytes is shorter than its {fixed}-byte fixed part"
            )
        port, sport, host_size, host_ptr, cert_size, cert_ptr = _DST_INFO.unpack_from(body)
        host = _decode_string(
            body,
            fixed=fixed,
            what=what,
            name="host",
            size=host_size,
            ptr=host_ptr,
            size_at=4,
            limit=MAX_HOST_SIZE,
            required=True,
        )
        assert host is not None  # required=True
        cert = _decode_string(
            body,
            fixed=fixed,
            what=what,
            name="cert_subject",
            size=cert_size,
            ptr=cert_ptr,
            size_at=12,
            limit=MAX_CERT_SUBJECT_SIZE,
            required=False,
        )
        return cls(port=port, sport=sport, host=host, cert_subject=cert)


@dataclass(frozen=True, slots=True)
class _DstInfoMessage(MigrationMessage):
    """A main-channel message whose whole body is one DstInfo."""

    DIRECTION = Direction.SERVER_TO_CLIENT

    dst_info: DstInfo

    def encode_body(self) -> bytes:
        return self.dst_info.encode_with()

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(DstInfo.decode_from(body, fixed=DST_INFO_SIZE, what=cls.__name__))


@dataclass(frozen=True, slots=True)
class MigrateBegin(_DstInfoMessage):
    """``SPICE_MSG_MAIN_MIGRATE_BEGIN``: semi-seamless "connect to the destination"."""

    MSG_TYPE = MainMsg.MIGRATE_BEGIN


@dataclass(frozen=True, slots=True)
class MigrateSwitchHost(_DstInfoMessage):
    """``SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST``: legacy "reconnect there after migration"."""

    MSG_TYPE = MainMsg.MIGRATE_SWITCH_HOST


@dataclass(frozen=True, slots=True)
class MigrateBeginSeamless(MigrationMessage):
    """``SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS``: DstInfo plus the source's protocol version."""

    MSG_TYPE = MainMsg.MIGRATE_BEGIN_SEAMLESS
    DIRECTION = Direction.SERVER_TO_CLIENT

    dst_info: DstInfo
    src_mig_version: int

    def encode_body(self) -> bytes:
        trailer = pack(_U32, self.src_mig_version, what="src_mig_version")
        return self.dst_info.encode_with(trailer)

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        fixed = DST_INFO_SIZE + _U32.size
        dst_info = DstInfo.decode_from(body, fixed=fixed, what=cls.__name__)
        (version,) = _U32.unpack_from(body, DST_INFO_SIZE)
        return cls(dst_info=dst_info, src_mig_version=version)


# --- main channel: the rest ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrateCancel(MigrationMessage):
    MSG_TYPE = MainMsg.MIGRATE_CANCEL
    DIRECTION = Direction.SERVER_TO_CLIENT


@dataclass(frozen=True, slots=True)
class MigrateEnd(MigrationMessage):
    """Semi-seamless "switch now" from the source."""

    MSG_TYPE = MainMsg.MIGRATE_END
    DIRECTION = Direction.SERVER_TO_CLIENT


@dataclass(frozen=True, slots=True)
class MigrateDstSeamlessAck(MigrationMessage):
    MSG_TYPE = MainMsg.MIGRATE_DST_SEAMLESS_ACK
    DIRECTION = Direction.SERVER_TO_CLIENT


@dataclass(frozen=True, slots=True)
class MigrateDstSeamlessNack(MigrationMessage):
    MSG_TYPE = MainMsg.MIGRATE_DST_SEAMLESS_NACK
    DIRECTION = Direction.SERVER_TO_CLIENT


@dataclass(frozen=True, slots=True)
class MainInit(MigrationMessage):
    """``SPICE_MSG_MAIN_INIT``; its session id is the connection id of a migration target link."""

    MSG_TYPE = MainMsg.INIT
    DIRECTION = Direction.SERVER_TO_CLIENT

    session_id: int
    display_channels_hint: int = 0
    supported_mouse_modes: int = 0
    current_mouse_mode: int = 0
    agent_connected: int = 0
    agent_tokens: int = 0
    multi_media_time: int = 0
    ram_hint: int = 0

    def encode_body(self) -> bytes:
        return pack(
            _MAIN_INIT,
            self.session_id,
            self.display_channels_hint,
            self.supported_mouse_modes,
            self.current_mouse_mode,
            self.agent_connected,
            self.agent_tokens,
            self.multi_media_time,
            self.ram_hint,
            what="MAIN_INIT",
        )

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        if len(body) != _MAIN_INIT.size:
            raise ProtocolError(
                f"{cls.__name__}: body must be {_MAIN_INIT.size} bytes, got {len(body)}"
            )
        return cls(*_MAIN_INIT.unpack(body))


@dataclass(frozen=True, slots=True)
class MigrateConnected(MigrationMessage):
    MSG_TYPE = MainMsgc.MIGRATE_CONNECTED
    DIRECTION = Direction.CLIENT_TO_SERVER


@dataclass(frozen=True, slots=True)
class MigrateConnectError(MigrationMessage):
    MSG_TYPE = MainMsgc.MIGRATE_CONNECT_ERROR
    DIRECTION = Direction.CLIENT_TO_SERVER


@dataclass(frozen=True, slots=True)
class ClientMigrateEnd(MigrationMessage):
    """Semi-seamless: the client tells the destination it has switched."""

    MSG_TYPE = MainMsgc.MIGRATE_END
    DIRECTION = Direction.CLIENT_TO_SERVER


@dataclass(frozen=True, slots=True)
class MigrateDstDoSeamless(MigrationMessage):
    """The client asks the destination for seamless migration from ``src_version``."""

    MSG_TYPE = MainMsgc.MIGRATE_DST_DO_SEAMLESS
    DIRECTION = Direction.CLIENT_TO_SERVER

    src_version: int

    def encode_body(self) -> bytes:
        return pack(_U32, self.src_version, what="src_version")

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        return cls(src_version=_fixed_u32(cls.__name__, body, "src_version"))


@dataclass(frozen=True, slots=True)
class MigrateConnectedSeamless(MigrationMessage):
    MSG_TYPE = MainMsgc.MIGRATE_CONNECTED_SEAMLESS
    DIRECTION = Direction.CLIENT_TO_SERVER


_CLASSES: tuple[type[MigrationMessage], ...] = (
    Migrate,
    MigrateData,
    MigrateFlushMark,
    ClientMigrateData,
    MigrateBegin,
    MigrateCancel,
    MainInit,
    MigrateSwitchHost,
    MigrateEnd,
    MigrateBeginSeamless,
    MigrateDstSeamlessAck,
    MigrateDstSeamlessNack,
    MigrateConnected,
    MigrateConnectError,
    ClientMigrateEnd,
    MigrateDstDoSeamless,
    MigrateConnectedSeamless,
)
_REGISTRY: dict[tuple[Direction, int, bool], type[MigrationMessage]] = {
    (cls.DIRECTION, cls.MSG_TYPE, cls.MAIN_ONLY): cls for cls in _CLASSES
}


def migration_class(
    channel_type: int, direction: Direction, msg_type: int
) -> type[MigrationMessage] | None:
    """The class a message of this channel, direction and type decodes to, if any."""
    common = _REGISTRY.get((direction, msg_type, False))
    if common is not None or channel_type != ChannelType.MAIN:
        return common
    return _REGISTRY.get((direction, msg_type, True))


def decode_migration(
    channel_type: int, direction: Direction, msg_type: int, body: bytes
) -> MigrationMessage | None:
    """Decode a migration message body, or ``None`` for any other message."""
    cls = migration_class(channel_type, direction, msg_type)
    return None if cls is None else cls.decode_body(body)
