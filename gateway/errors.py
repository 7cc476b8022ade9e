"""One exception hierarchy for everything the gateway refuses.

Every error a caller can act on has its own class, rooted in :class:`GatewayError`.
Messages say what was wrong and where (channel, field, byte offset) and never echo
large inputs or secret material: callers may log them verbatim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AuthenticationFailed",
    "BadMagic",
    "ConfigError",
    "ContextMismatch",
    "CountOutOfRange",
    "DowngradeRefused",
    "Expired",
    "GatewayError",
    "HookRefused",
    "IdentityError",
    "KeyringError",
    "MalformedInput",
    "NonCanonical",
    "NotYetValid",
    "OffsetIntoFixedPart",
    "OffsetOutOfRange",
    "OverlappingBlocks",
    "ProtocolError",
    "ReplayStoreError",
    "Replayed",
    "SchemaViolation",
    "TooLarge",
    "Truncated",
    "UnaccountedBytes",
    "UnknownKey",
    "UnsupportedVersion",
    "schema_violation",
    "shorten",
]


class GatewayError(Exception):
    """Root of every refusal. Anything else escaping the gateway is a bug."""

    #: On the refusal of a blob whose signature had verified: its single-use id, how long to
    #: keep it and the clock of the check (see ``gateway.envelope.spend``), so the caller can
    #: record it although it was refused. None for every other error.
    authentic_blob: tuple[bytes, int, int] | None = None


# --- structure of outside bytes -------------------------------------------------------------


class MalformedInput(GatewayError):
    """The bytes do not have the structure their format requires."""


class Truncated(MalformedInput):
    """The input ends before a fixed-size part does."""


class BadMagic(MalformedInput):
    """The magic bytes do not name the expected format or channel."""


class OffsetOutOfRange(MalformedInput):
    """A body-relative offset, or the block it addresses, reaches past the end."""


class OffsetIntoFixedPart(MalformedInput):
    """A tail-block offset points into the fixed part of the payload."""


class OverlappingBlocks(MalformedInput):
    """A tail block starts inside an earlier one."""


class UnaccountedBytes(MalformedInput):
    """Bytes that no field or block accounts for (a gap, or trailing data)."""


class CountOutOfRange(MalformedInput):
    """A declared count or length is larger than its limit or than the data present."""


class NonCanonical(MalformedInput):
    """Bytes no real spice-server produces although a lenient reader could use them.

    Refused so that whatever decodes also re-encodes to the very same bytes.
    """


class ProtocolError(MalformedInput):
    """SPICE framing (link stage or data headers) that does not follow the protocol."""


# --- meaning -------------------------------------------------------------------------------


class SchemaViolation(GatewayError):
    """Well-formed bytes whose values break the schema's bounds or invariants."""


class UnsupportedVersion(GatewayError):
    """A format, payload or schema version this gateway does not speak."""


class TooLarge(GatewayError):
    """The input is larger than the configured or protocol limit; refused before parsing."""


# --- the sealed envelope -------------------------------------------------------------------


class AuthenticationFailed(GatewayError):
    """The envelope's signature or tag does not verify: altered, truncated or forged."""


class UnknownKey(GatewayError):
    """The envelope names a key id that the keyring does not hold (or holds as retired)."""


class ContextMismatch(GatewayError):
    """An authenticated context field differs from what the opener expects."""

    def __init__(self, field: str, message: str | None = None) -> None:
        self.field = field
        super().__init__(message or f"context field {field!r} does not match")


class Expired(GatewayError):
    """The envelope's lifetime has passed."""


class NotYetValid(GatewayError):
    """The envelope was issued in the future, beyond the allowed clock skew."""


class Replayed(GatewayError):
    """The envelope was already opened once; blobs are single-use."""


class ReplayStoreError(GatewayError):
    """The replay database could not check or record a blob (locked, read-only, full, corrupt).

    The blob is refused: single use cannot be promised without the record.
    """


class DowngradeRefused(GatewayError):
    """A format or schema version below the accepted minimum."""


# --- local files ---------------------------------------------------------------------------


class KeyringError(GatewayError):
    """A keyring file that is unsafe or invalid (permissions, short or zero secrets, ids)."""


class IdentityError(GatewayError):
    """A host identity or trust store file that is unsafe or invalid, or a trust decision it
    cannot support (an unknown peer, a retired identity used to sign)."""


class ConfigError(GatewayError):
    """A configuration file that cannot be used."""


class HookRefused(GatewayError):
    """The libvirt hook refuses a domain the gateway cannot protect (SPICE not on loopback,
    no port yet, a Unix socket), or cannot register its route."""


def schema_violation(channel: str, error: ValidationError) -> SchemaViolation:
    """A pydantic ValidationError as a SchemaViolation: the failing fields, never the input,
    and short (locations and messages are cut, at most three problems are named)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(shorten(str(part), 40) for part in item["loc"]) or "state"
        problems.append(f"{where}: {shorten(item['msg'], 160)}")
    more = error.error_count() - len(problems)
    suffix = f" (+{more} more)" if more > 0 else ""
    return SchemaViolation(f"{channel}: " + "; ".join(problems) + suffix)


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters: error messages never grow with input."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
