"""Bounded reads of one binary message, front to back: the field reader the handshake
(:mod:`gateway.handshake`) and the peer link (:mod:`gateway.peerlink`) decoders share.

Every read names its field and where it starts, every length-prefixed field has its own limit,
and every refusal is an error of the :mod:`gateway.errors` hierarchy that says what and where
(never the bytes themselves).
"""

from __future__ import annotations

from gateway.errors import CountOutOfRange, GatewayError, Truncated, UnaccountedBytes

__all__ = ["FieldReader"]


class FieldReader:
    """Reads ``data`` front to back; ``what`` names the message in every error."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int, name: str) -> bytes:
        """The next ``size`` bytes (Truncated when fewer are left)."""
        end = self.offset + size
        if end > len(self.data):
            raise Truncated(
                f"{self.what}: {name} needs {size} bytes at offset {self.offset}, "
                f"{len(self.data) - self.offset} left"
            )
        out = self.data[self.offset : end]
        self.offset = end
        return out

    def uint(self, size: int, name: str) -> int:
        """A big-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size, name), "big")

    def sized(
        self,
        name: str,
        *,
        width: int,
        low: int,
        high: int,
        unit: int = 1,
        error: type[GatewayError] = CountOutOfRange,
    ) -> bytes:
        """A field after its ``width``-byte big-endian count of ``unit``-byte items: the
        count must lie within ``low``..``high`` (else ``error``, before any item is read)."""
        at = self.offset
        count = self.uint(width, f"{name} length")
        if not low <= count <= high:
            raise error(
                f"{self.what}: {name} length {count} at offset {at} is outside {low}..{high}"
            )
        return self.take(count * unit, name)

    def end(self) -> None:
        """Nothing may follow the last field (UnaccountedBytes)."""
        if self.offset != len(self.data):
            raise UnaccountedBytes(
                f"{self.what}: {len(self.data) - self.offset} bytes after offset {self.offset}"
            )
