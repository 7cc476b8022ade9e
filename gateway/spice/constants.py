"""SPICE protocol numbers, as in spice-protocol's ``enums.h`` and ``protocol.h``.

Only what the gateway needs to frame every channel and to recognise the migration messages.
Message type numbers are per channel and per direction: the common ones (below 101) mean the
same on every channel, everything from 101 up means something else on each channel.
"""

from __future__ import annotations

import enum

from schemas import ChannelType

__all__ = [
    "AUTH_MECHANISM_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FULL_HEADER_SIZE",
    "LINK_HEADER_SIZE",
    "LINK_MAGIC",
    "LINK_MESS_SIZE",
    "LINK_REPLY_SIZE",
    "LINK_RESULT_SIZE",
    "MAX_CAPS_WORDS",
    "MAX_LINK_SIZE",
    "MINI_HEADER_SIZE",
    "PUB_KEY_SIZE",
    "TICKET_SIZE",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "AuthMechanism",
    "ChannelType",
    "CommonCap",
    "Direction",
    "HeaderKind",
    "LinkError",
    "MainCap",
    "MainMsg",
    "MainMsgc",
    "MigrateFlags",
    "Msg",
    "Msgc",
]


class Direction(enum.Enum):
    """Which way a unit travels through the proxy."""

    CLIENT_TO_SERVER = "client->server"
    SERVER_TO_CLIENT = "server->client"

    @property
    def sender(self) -> str:
        return "client" if self is Direction.CLIENT_TO_SERVER else "server"


# --- link stage ----------------------------------------------------------------------------

LINK_MAGIC = b"REDQ"
VERSION_MAJOR = 2
VERSION_MINOR = 2

LINK_HEADER_SIZE = 16
#: ``SpiceLinkMess`` without its capability words.
LINK_MESS_SIZE = 18
#: ``SpiceLinkReply`` without its capability words.
LINK_REPLY_SIZE = 178
#: DER ``SubjectPublicKeyInfo`` of an RSA-1024 key (1024 / 8 + 34).
PUB_KEY_SIZE = 162
#: RSA-OAEP ciphertext of the password under the link's RSA-1024 key.
TICKET_SIZE = 128
AUTH_MECHANISM_SIZE = 4
LINK_RESULT_SIZE = 4

#: spice-server refuses link messages larger than this, to bound its allocation.
MAX_LINK_SIZE = 4096
#: spice-server's limit on each of the two capability word counts.
MAX_CAPS_WORDS = 1024


class LinkError(enum.IntEnum):
    """``SpiceLinkErr``: the error field of the link reply and the u32 link result."""

    OK = 0
    ERROR = 1
    INVALID_MAGIC = 2
    INVALID_DATA = 3
    VERSION_MISMATCH = 4
    NEED_SECURED = 5
    NEED_UNSECURED = 6
    PERMISSION_DENIED = 7
    BAD_CONNECTION_ID = 8
    CHANNEL_NOT_AVAILABLE = 9


class CommonCap(enum.IntEnum):
    """Capabilities shared by every channel (bit numbers in the common caps words)."""

    PROTOCOL_AUTH_SELECTION = 0
    AUTH_SPICE = 1
    AUTH_SASL = 2
    MINI_HEADER = 3


class MainCap(enum.IntEnum):
    """Main-channel capabilities (bit numbers in the channel caps words)."""

    SEMI_SEAMLESS_MIGRATE = 0
    NAME_AND_UUID = 1
    AGENT_CONNECTED_TOKENS = 2
    SEAMLESS_MIGRATE = 3


class AuthMechanism(enum.IntEnum):
    """The u32 a client sends after the link reply when both sides have AUTH_SELECTION.

    The values are the numbers of the corresponding common capabilities.
    """

    SPICE = 1
    SASL = 2


# --- data messages -------------------------------------------------------------------------

MINI_HEADER_SIZE = 6
FULL_HEADER_SIZE = 18
#: Default bound on one data message body; whole messages are buffered, so this bounds memory.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


class HeaderKind(enum.Enum):
    """The data header a connection uses after the link stage."""

    MINI = "mini"
    FULL = "full"

    @property
    def size(self) -> int:
        return MINI_HEADER_SIZE if self is HeaderKind.MINI else FULL_HEADER_SIZE


class Msg(enum.IntEnum):
    """Server-to-client message types common to every channel."""

    MIGRATE = 1
    MIGRATE_DATA = 2
    SET_ACK = 3
    PING = 4
    WAIT_FOR_CHANNELS = 5
    DISCONNECTING = 6
    NOTIFY = 7
    LIST = 8


class Msgc(enum.IntEnum):
    """Client-to-server message types common to every channel."""

    ACK_SYNC = 1
    ACK = 2
    PONG = 3
    MIGRATE_FLUSH_MARK = 4
    MIGRATE_DATA = 5
    DISCONNECTING = 6


class MainMsg(enum.IntEnum):
    """Server-to-client message types of the main channel."""

    MIGRATE_BEGIN = 101
    MIGRATE_CANCEL = 102
    INIT = 103
    CHANNELS_LIST = 104
    MOUSE_MODE = 105
    MULTI_MEDIA_TIME = 106
    AGENT_CONNECTED = 107
    AGENT_DISCONNECTED = 108
    AGENT_DATA = 109
    AGENT_TOKEN = 110
    MIGRATE_SWITCH_HOST = 111
    MIGRATE_END = 112
    NAME = 113
    UUID = 114
    AGENT_CONNECTED_TOKENS = 115
    MIGRATE_BEGIN_SEAMLESS = 116
    MIGRATE_DST_SEAMLESS_ACK = 117
    MIGRATE_DST_SEAMLESS_NACK = 118


class MainMsgc(enum.IntEnum):
    """Client-to-server message types of the main channel."""

    CLIENT_INFO = 101
    MIGRATE_CONNECTED = 102
    MIGRATE_CONNECT_ERROR = 103
    ATTACH_CHANNELS = 104
    MOUSE_MODE_REQUEST = 105
    AGENT_START = 106
    AGENT_DATA = 107
    AGENT_TOKEN = 108
    MIGRATE_END = 109
    MIGRATE_DST_DO_SEAMLESS = 110
    MIGRATE_CONNECTED_SEAMLESS = 111
    QUALITY_INDICATOR = 112


class MigrateFlags(enum.IntFlag):
    """The u32 body of ``SPICE_MSG_MIGRATE``."""

    NEED_FLUSH = 1
    NEED_DATA_TRANSFER = 2
