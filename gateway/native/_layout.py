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
    schema_violation,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "HEADER",
    "BytesBlock",
    "Field",
    "Layout",
    "TailBlock",
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
        value = _attribute(state, self.path)
        assert isinstance(value, bytes)
        return value


class TailBlock(Protocol):
    """A block with a structure of its own (the display surface list); never empty."""

    @property
    def path(self) -> str: ...

    @property
    def ptr(self) -> str: ...

    def decode(self, layout: Layout[Any], data: bytes, start: int) -> tuple[Any, int]:
        """Decode the block at ``start`` (checked to lie inside ``data``); return the value of
        the model attribute ``path`` and the offset just past the block."""

    def encode(self, state: Any) -> bytes:
        """The block's bytes for ``state``."""


def _attribute(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _expression(path: str, root: str) -> str:
    """Python source reading ``path`` from ``root`` (attributes, and indexes for numeric parts)."""
    source = root
    for part in path.split("."):
        if part.isdigit():
            source += f"[{int(part)}]"
        elif part.isidentifier():
            source += f".{part}"
        else:
            raise ValueError(f"bad field path {path!r}")
    return source


def _compile(name: str, source: str) -> Callable[..., Any]:
    # Like dataclasses and namedtuple: the layouts are the project's own declarations, turned
    # into straight-line functions once, so each decode and encode costs a single call.
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<layout {name}>", "exec"), namespace)  # noqa: S102
    function: Callable[..., Any] = namespace[name]
    return function


def _compile_builder(paths: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A function turning the flat value list into the nested input of the model.

    Dotted paths nest dicts; numeric parts are tuple elements.
    """
    tree: dict[str, Any] = {}
    for index, path in enumerate(paths):
        _expression(path, "v")  # validates the path
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = index

    def source(node: Any) -> str:
        if isinstance(node, int):
            return f"v[{node}]"
        if all(key.isdigit() for key in node):
            return "(" + "".join(source(node[str(i)]) + ", " for i in range(len(node))) + ")"
        return "{" + ", ".join(f"{key!r}: {source(child)}" for key, child in node.items()) + "}"

    return _compile("build", f"def build(v):\n    return {source(tree)}\n")


def _compile_getter(fields: Sequence[Field]) -> Callable[[Any, Sequence[int]], tuple[Any, ...]]:
    """A function returning the values to pack for a model, given the tail blocks' offsets."""
    items, ptr = [], 0
    for f in fields:
        if f.kind == "ptr":
            items.append(f"p[{ptr}]")
            ptr += 1
        elif f.kind == "const":
            items.append(str(int(f.const)))
        elif f.kind == "bool":
            items.append(f"int({_expression(f.path, 's')})")
        else:
            items.append(_expression(f.path, "s"))
    return _compile("get", "def get(s, p):\n    return (" + ", ".join(items) + ",)\n")


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
        self.offsets: dict[str, int] = {}
        offset = HEADER.size
        for f in self.fields:
            self.offsets[f.path] = offset
            offset += struct.calcsize("<" + f.code)
        # Index of each field in the unpacked tuple (magic and version come first).
        self._raw_index = {f.path: i + 2 for i, f in enumerate(self.fields)}
        modelled = [f for f in self.fields if f.kind in ("int", "bool")]
        self._modelled = tuple(self._raw_index[f.path] for f in modelled)
        self._bools = tuple(i for i, f in enumerate(modelled) if f.kind == "bool")
        self._consts = tuple(f for f in self.fields if f.kind == "const")
        self._build = _compile_builder([f.path for f in modelled] + [b.path for b in self.blocks])
        self._get = _compile_getter(self.fields)
        ptr_order = [f.path for f in self.fields if f.kind == "ptr"]
        self._block_slots = tuple(ptr_order.index(b.ptr) for b in self.blocks)

    # --- decoding ---------------------------------------------------------------------------

    def fail(self, error: type[Exception], message: str) -> Exception:
        return error(f"{self.channel}: {message}")

    def decode(self, data: bytes | bytearray | memoryview) -> M:
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
        for f in self._consts:
            value = raw[self._raw_index[f.path]]
            if value != f.const:
                raise self.fail(
                    UnsupportedVersion,
                    f"{f.name} at offset {self.offsets[f.path]} is {value}, "
                    f"only {f.const} is supported",
                )
        values = [raw[i] for i in self._modelled]
        for position in self._bools:
            value = values[position]
            if value not in (0, 1):
                f = self.fields[self._modelled[position] - 2]
                raise self.fail(
                    SchemaViolation,
                    f"{f.name} at offset {self.offsets[f.path]} is {value}, must be 0 or 1",
                )
            values[position] = value == 1
        cursor = self.fixed_size
        for block in self.blocks:
            value, cursor = self._decode_block(block, data, raw, cursor)
            values.append(value)
        if cursor != size:
            raise self.fail(
                UnaccountedBytes,
                f"{size - cursor} trailing bytes at offset {cursor} ({size} bytes)",
            )
        try:
            return self.model.model_validate(self._build(values))
        except ValidationError as error:
            raise schema_violation(self.channel, error) from None

    def _decode_block(
        self, block: BytesBlock | TailBlock, data: bytes, raw: tuple[Any, ...], cursor: int
    ) -> tuple[Any, int]:
        """Check the block's offset against the layout so far, then decode it."""
        size = len(data)
        ptr: int = raw[self._raw_index[block.ptr]]
        length: int = raw[self._raw_index[block.size]] if isinstance(block, BytesBlock) else -1
        if length == 0:
            if ptr != 0:
                raise self.fail(NonCanonical, f"{block.ptr} is {ptr} for an empty block, must be 0")
            return b"", cursor
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
            if length > size - ptr:
                raise self.fail(
                    CountOutOfRange,
                    f"{block.size} {length} (at offset {self.offsets[block.size]}) for the "
                    f"block at offset {ptr} runs past the end ({size} bytes)",
                )
            return data[ptr : ptr + length], ptr + length
        return block.decode(self, data, ptr)

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, state: M) -> bytes:
        """Validated model -> the exact bytes spice-server writes."""
        if not isinstance(state, self.model):
            raise TypeError(f"{self.channel}: expected {self.model.__name__}")
        tails = [block.encode(state) for block in self.blocks]
        ptrs = [0] * len(tails)
        cursor = self.fixed_size
        for slot, payload in zip(self._block_slots, tails, strict=True):
            ptrs[slot] = cursor if payload else 0
            cursor += len(payload)
        fixed = self.struct.pack(self.magic, self.version, *self._get(state, ptrs))
        return fixed + b"".join(tails) if tails else fixed
