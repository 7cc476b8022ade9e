"""One small engine for spice-server's migration payload layouts.

Every payload is the same shape: an 8-byte header (magic, version), a packed little-endian
fixed part, then tail blocks addressed by u32 offsets measured from the first byte of the body.
A channel module describes its fixed part once, as a list of :class:`Field`, and its tail as a
list of blocks; the engine compiles that into a :class:`struct.Struct` and does the decoding,
encoding and every offset check in one place.

Strictness is the point: the engine accepts exactly the layouts a real spice-server writes
(tail blocks contiguous, in creation order, zero offsets for empty blocks, nothing left over), so
whatever decodes re-encodes to the very same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import (
    BadMagic,
    CountOutOfRange,
    NonCanonical,
    OffsetIntoFixedPart,
    OffsetOutOfRange,
    OverlappingBlocks,
    SchemaViolation,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnsupportedVersion,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "HEADER",
    "BytesBlock",
    "Field",
    "Layout",
    "TailBlock",
    "schema_error",
]

#: Largest payload any decoder accepts unless told otherwise; checked before anything is read.
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024

HEADER = struct.Struct("<4sI")

Kind = Literal["int", "bool", "const", "ptr"]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Field:
    """One packed field of the fixed part.

    ``path`` addresses the model attribute (dotted for nested models, a numeric part for a
    tuple element). ``const`` fields are checked on decode and written on encode but not
    modelled (the char-device version); ``ptr`` fields are computed from the tail layout.
    """

    path: str
    code: str
    kind: Kind = "int"
    const: int = 0

    @property
    def name(self) -> str:
        return self.path


@dataclass(frozen=True)
class BytesBlock:
    """Raw bytes whose length is a size field of the fixed part (pending writes, partial reads).

    Empty blocks have offset 0, as spice-server leaves them.
    """

    path: str
    ptr: str
    size: str

    def encode(self, state: BaseModel) -> bytes:
        value = _getter(self.path)(state)
        assert isinstance(value, bytes)
        return value


class TailBlock(Protocol):
    """A block with a structure of its own (the display surface list); never empty."""

    @property
    def ptr(self) -> str: ...

    def decode(self, layout: Layout[Any], data: bytes, start: int) -> tuple[dict[str, Any], int]:
        """Decode the block at ``start`` (checked to lie inside ``data``); return the model
        values by path and the offset just past the block."""

    def encode(self, state: Any) -> bytes:
        """The block's bytes for ``state``."""


def _getter(path: str) -> Callable[[Any], Any]:
    parts = path.split(".")

    def get(obj: Any) -> Any:
        for part in parts:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    return get


def _assign(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _tuples(node: Any) -> Any:
    """Turn dicts keyed "0".."n-1" (tuple elements addressed by path) into tuples."""
    if not isinstance(node, dict):
        return node
    converted = {key: _tuples(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return tuple(converted[str(i)] for i in range(len(converted)))
    return converted


def schema_error(channel: str, error: ValidationError) -> SchemaViolation:
    """A SchemaViolation naming the failing fields, never the input."""
    problems = []
    for item in error.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "state"
        problems.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(problems)
    suffix = f" (+{more} more)" if more > 0 else ""
    return SchemaViolation(f"{channel}: " + "; ".join(problems) + suffix)


class Layout(Generic[M]):
    """A payload layout: header, packed fixed part, tail blocks in creation order."""

    def __init__(
        self,
        *,
        channel: str,
        magic: bytes,
        version: int,
        fields: Sequence[Field],
        blocks: Sequence[BytesBlock | TailBlock],
        model: type[M],
        max_size: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.channel = channel
        self.magic = magic
        self.version = version
        self.fields = tuple(fields)
        self.blocks = tuple(blocks)
        self.model = model
        self.max_size = max_size
        self.struct = struct.Struct("<4sI" + "".join(f.code for f in self.fields))
        self.fixed_size = self.struct.size
        offsets, offset = {}, HEADER.size
        for f in self.fields:
            offsets[f.path] = offset
            offset += struct.calcsize("<" + f.code)
        self.offsets: dict[str, int] = offsets
        self._getters = {f.path: _getter(f.path) for f in self.fields if f.kind in ("int", "bool")}
        self._ptr_index = {f.path: i for i, f in enumerate(self.fields) if f.kind == "ptr"}

    # --- decoding ---------------------------------------------------------------------------

    def fail(self, error: type[Exception], message: str) -> Exception:
        return error(f"{self.channel}: {message}")

    def decode(self, data: bytes) -> M:
        """Native payload -> validated model, or a GatewayError naming field and offset."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        data = bytes(data)
        size = len(data)
        if size > self.max_size:
            raise self.fail(
                TooLarge, f"payload of {size} bytes exceeds the {self.max_size}-byte limit"
            )
        if size < HEADER.size:
            raise self.fail(Truncated, f"{size} bytes, shorter than the 8-byte header")
        magic, version = HEADER.unpack_from(data)
        if magic != self.magic:
            raise self.fail(BadMagic, f"magic {magic!r} at offset 0, expected {self.magic!r}")
        if version != self.version:
            raise self.fail(
                UnsupportedVersion,
                f"version {version} at offset 4, only {self.version} is supported",
            )
        if size < self.fixed_size:
            raise self.fail(
                Truncated, f"{size} bytes, shorter than the {self.fixed_size}-byte fixed part"
            )
        raw = self.struct.unpack_from(data)
        tree: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for f, value in zip(self.fields, raw[2:], strict=True):
            values[f.path] = value
            if f.kind == "int":
                _assign(tree, f.path, value)
            elif f.kind == "bool":
                if value not in (0, 1):
                    raise self.fail(
                        SchemaViolation,
                        f"{f.name} at offset {self.offsets[f.path]} is {value}, must be 0 or 1",
                    )
                _assign(tree, f.path, bool(value))
            elif f.kind == "const" and value != f.const:
                raise self.fail(
                    UnsupportedVersion,
                    f"{f.name} at offset {self.offsets[f.path]} is {value}, "
                    f"only {f.const} is supported",
                )
        cursor = self.fixed_size
        for block in self.blocks:
            cursor = self._decode_block(block, data, values, tree, cursor)
        if cursor != size:
            raise self.fail(
                UnaccountedBytes,
                f"{size - cursor} trailing bytes at offset {cursor} ({size} bytes)",
            )
        try:
            return self.model.model_validate(_tuples(tree))
        except ValidationError as error:
            raise schema_error(self.channel, error) from None

    def _decode_block(
        self,
        block: BytesBlock | TailBlock,
        data: bytes,
        values: dict[str, Any],
        tree: dict[str, Any],
        cursor: int,
    ) -> int:
        size = len(data)
        ptr = int(values[block.ptr])
        if isinstance(block, BytesBlock) and values[block.size] == 0:
            if ptr != 0:
                raise self.fail(NonCanonical, f"{block.ptr} is {ptr} for an empty block, must be 0")
            _assign(tree, block.path, b"")
            return cursor
        if ptr < self.fixed_size:
            raise self.fail(
                OffsetIntoFixedPart,
                f"{block.ptr} {ptr} points into the {self.fixed_size}-byte fixed part",
            )
        if ptr >= size:
            raise self.fail(
                OffsetOutOfRange, f"{block.ptr} {ptr} points past the end ({size} bytes)"
            )
        if ptr < cursor:
            raise self.fail(
                OverlappingBlocks,
                f"{block.ptr} {ptr} starts inside the previous block (ends at {cursor})",
            )
        if ptr > cursor:
            raise self.fail(
                UnaccountedBytes,
                f"{ptr - cursor} unaccounted bytes at offset {cursor} before {block.ptr}",
            )
        if isinstance(block, BytesBlock):
            length = int(values[block.size])
            if length > size - ptr:
                raise self.fail(
                    CountOutOfRange,
                    f"{block.size} {length} at offset {ptr} runs past the end ({size} bytes)",
                )
            _assign(tree, block.path, data[ptr : ptr + length])
            return ptr + length
        items, end = block.decode(self, data, ptr)
        for path, item in items.items():
            _assign(tree, path, item)
        return end

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, state: M) -> bytes:
        """Validated model -> the exact bytes spice-server writes."""
        if not isinstance(state, self.model):
            raise TypeError(f"{self.channel}: expected {self.model.__name__}")
        tails: list[bytes] = []
        ptrs: dict[str, int] = {}
        cursor = self.fixed_size
        for block in self.blocks:
            payload = block.encode(state)
            ptrs[block.ptr] = cursor if payload else 0
            cursor += len(payload)
            tails.append(payload)
        values: list[Any] = [self.magic, self.version]
        for f in self.fields:
            if f.kind == "ptr":
                values.append(ptrs[f.path])
            elif f.kind == "const":
                values.append(f.const)
            else:
                values.append(int(self._getters[f.path](state)))
        return self.struct.pack(*values) + b"".join(tails)
