"""What every harness shares: project-only instrumentation, the oracle, layout-aware mutation.

A harness is one file, ``<decoder>_fuzzer.py``. It imports the project inside
:func:`instrumented`, defines ``TestOneInput(data: bytes) -> None`` and hands it to :func:`main`.
``TestOneInput`` raises only on a finding: a ``GatewayError`` is the decoder refusing, which is
its job; any other exception escaping, or an :class:`OracleFailure`, is a bug.

Only the project is instrumented, through :func:`instrumented`. This module imports nothing of
the project at load time, so whatever a harness imports inside that block is instrumented.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import random
import re
import struct
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "INSTRUMENT",
    "MAX_MESSAGE",
    "PROJECT_PACKAGES",
    "LayoutMutator",
    "OracleFailure",
    "Pick",
    "build_document",
    "check_codec",
    "check_refusal",
    "edges",
    "fits",
    "instrumented",
    "interesting_ints",
    "libfuzzer_mutate",
    "main",
    "msgpack_depth",
    "schema_modules",
]

#: Chooses one of the options: ``random.Random.choice`` in a mutator, or
#: ``FuzzedDataProvider.PickValueInList`` where the fuzz input itself should decide.
Pick = Callable[[Sequence[Any]], Any]

#: Only these packages are instrumented: coverage of pydantic, msgpack or the standard library
#: would drown the project's own edges and slow every execution.
PROJECT_PACKAGES = ("gateway", "schemas")

#: False runs the harnesses without atheris instrumentation (corpus replay in the tests,
#: coverage measurement): set it before importing a harness, or set SMG_FUZZ_INSTRUMENT=0.
INSTRUMENT = os.environ.get("SMG_FUZZ_INSTRUMENT", "1") != "0"

#: A refusal's message names what and where; a longer one is quoting input.
MAX_MESSAGE = 1024


class OracleFailure(AssertionError):
    """The decoder did something its contract forbids (not merely raised)."""


def instrumented(*focus: str) -> contextlib.AbstractContextManager[object]:
    """Instrument the project's modules that are imported inside the block: all of them, or
    only those under the ``focus`` names (``"gateway.native"``, ``"schemas"``).

    Instrumenting is most of a harness's start-up time, and ``import gateway`` loads the whole
    package, so a harness names the code it tests; the rest runs uninstrumented.
    """
    if not INSTRUMENT:
        return contextlib.nullcontext()
    try:
        import atheris
    except ImportError:  # replaying without the fuzz extra installed
        return contextlib.nullcontext()
    exclude = [m for m in _project_modules() if focus and not _under(m, focus)]
    manager: contextlib.AbstractContextManager[object] = atheris.instrument_imports(
        include=list(PROJECT_PACKAGES), exclude=exclude
    )
    return manager


def _under(module: str, prefixes: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@functools.cache
def _project_modules() -> tuple[str, ...]:
    """Every module of the project packages, found on disk without importing anything."""
    names = []
    for package in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).rglob("*.py")):
                parts = path.relative_to(folder).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                names.append(".".join((package, *parts)))
    return tuple(names)


def main(
    test_one_input: Callable[[bytes], None],
    custom_mutator: Callable[[bytes, int, int], bytes] | None = None,
) -> None:
    """Hand the target to libFuzzer; command-line options are libFuzzer's."""
    import atheris

    if custom_mutator is None:
        atheris.Setup(sys.argv, test_one_input)
    else:
        atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


# --- the oracle ------------------------------------------------------------------------------


def msgpack_depth(payload: bytes) -> int | None:
    """Nesting depth of the containers in ``payload`` (the root container is 1), read by a
    plain unpacker; None when it cannot read it."""
    import msgpack

    try:
        obj = msgpack.unpackb(payload, raw=True, strict_map_key=False, use_list=False)
    except Exception:
        return None
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, tuple):
            children = list(item)
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_refusal(error: Exception, size: int, limit: int | None = None) -> None:
    """A refusal is fine if it is the right one for an oversized input and its message is short."""
    from gateway.errors import TooLarge  # here, not at the top: see instrumented()

    if limit is not None and size > limit and not isinstance(error, TooLarge):
        raise OracleFailure(
            f"{size}-byte input over the {limit}-byte limit refused as "
            f"{type(error).__name__}, not TooLarge: the limit is not checked first"
        )
    message = str(error)
    if not message or len(message) > MAX_MESSAGE:
        raise OracleFailure(f"{type(error).__name__} message of {len(message)} characters")


#: Key ids are 32 hex digits and may be named; a longer hex run in a message is secret material.
_SECRET_LIKE = re.compile(rb"[0-9a-fA-F]{33,}")


def check_quotes_no_secret(error: Exception, data: bytes) -> None:
    """A refusal of a file that holds secrets must not quote any long hex run of it."""
    message = str(error).lower()
    for run in _SECRET_LIKE.findall(data):
        if run.decode().lower()[:33] in message:
            raise OracleFailure(
                f"{type(error).__name__} quotes a {len(run)}-digit hex run of the input: "
                f"{message[:80]!r}..."
            ) from error


def check_codec(
    data: bytes,
    decode: Callable[[bytes], Any],
    encode: Callable[[Any], bytes],
    limit: int,
) -> None:
    """Refuse with a GatewayError, or decode to something that re-encodes to ``data`` exactly."""
    from gateway.errors import GatewayError

    try:
        state = decode(data)
    except GatewayError as error:
        check_refusal(error, len(data), limit)
        return
    if len(data) > limit:
        raise OracleFailure(f"accepted {len(data)} bytes, over the {limit}-byte limit")
    again = encode(state)
    if again != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(data, again, strict=False)) if a != b),
            min(len(data), len(again)),
        )
        raise OracleFailure(
            f"round trip changed the bytes: {len(data)} in, {len(again)} out, first difference "
            f"at offset {at}"
        )


# --- structure-aware mutation ----------------------------------------------------------------


def interesting_ints(modules: Iterable[types.ModuleType]) -> list[int]:
    """The integer limits the schemas declare (UPPER_CASE module constants), each with its
    neighbours: the values where a bound check flips."""
    values: set[int] = set()
    for module in modules:
        for name, value in vars(module).items():
            if name.isupper() and type(value) is int:
                values.update((value - 1, value, value + 1))
    return sorted(v for v in values if v >= 0)


def schema_modules(model: type) -> list[types.ModuleType]:
    """The schema module of ``model`` and of every model class or rule it imports."""
    home = sys.modules[model.__module__]
    found = {home.__name__: home}
    for value in vars(home).values():
        owner = getattr(value, "__module__", None)
        if (isinstance(value, type) or callable(value)) and owner and owner.startswith("schemas."):
            found.setdefault(owner, sys.modules[owner])
    return [found[name] for name in sorted(found)]


@functools.cache
def edges(code: str) -> tuple[int, ...]:
    """Boundary values of a struct code: its ends, the sign bit, and the points where
    ``count * size`` wraps for small entry sizes."""
    bits = 8 * struct.calcsize("<" + code)
    if code.islower():
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return (low, low + 1, -2, -1, 0, 1, 2, high - 1, high)
    top = (1 << bits) - 1
    wraps = {(1 << bits) // size + extra for size in (2, 4, 8, 12, 16, 20, 24) for extra in (0, 1)}
    return tuple(sorted({0, 1, 2, 3, 4, 7, 8, top >> 1, (top >> 1) + 1, top - 1, top, *wraps}))


def libfuzzer_mutate(data: bytes, max_size: int) -> bytes:
    """libFuzzer's own byte-level mutation (with its dictionary), for use in custom mutators."""
    # Looked up on each call: atheris binds Mutate to libFuzzer only once Fuzz() runs.
    import atheris

    mutated: bytes = atheris.Mutate(data, max_size)
    return mutated


def fits(code: str, value: int) -> bool:
    bits = 8 * struct.calcsize("<" + code)
    if code.islower():
        return -(1 << (bits - 1)) <= value < 1 << (bits - 1)
    return 0 <= value < 1 << bits


#: Inputs above this many bytes are usually shrunk before they are mutated (see _shrink).
_LARGE = 4096


class LayoutMutator:
    """libFuzzer custom mutator for one native layout, derived from its field list.

    Keeps the magic and version right (almost always), then moves one field, offset, count or
    size to a boundary, or lays the tail out as a real source would so that the schema checks
    behind the engine's are reached, or falls back to libFuzzer's own byte mutations.
    """

    def __init__(
        self,
        layout: Any,
        mutate: Callable[[bytes, int], bytes] | None = None,
        stream: Any = None,
    ) -> None:
        self.magic: bytes = layout.magic
        self.version: int = layout.version
        self.fixed: int = layout.fixed_size
        self.fields: list[tuple[int, str, str, int]] = [
            (layout.offsets[f.path], f.code, f.kind, f.const) for f in layout.fields
        ]
        self._offset = {f.path: (layout.offsets[f.path], f.code) for f in layout.fields}
        #: Tail blocks in order: (ptr field, size field or None for a structured block).
        self.blocks: list[tuple[tuple[int, str], tuple[int, str] | None]] = [
            (self._offset[block.ptr], self._offset.get(getattr(block, "size", ""), None))
            for block in layout.blocks
        ]
        self.limits = interesting_ints(schema_modules(layout.model))
        #: The pending-write block's inner stream (``_streams.Stream``): laid out well-formed
        #: most of the time, so that the schema's stream rules are passed and what lies behind
        #: them is reached.
        self.stream = stream
        self._stream_block = next(
            (
                i
                for i, block in enumerate(layout.blocks)
                if getattr(block, "path", "").endswith("write_data")
            ),
            None,
        )
        self._tokens = self._offset.get(stream.tokens) if stream and stream.tokens else None
        window = stream.window if stream else None
        self._window = (self._offset[window[0]], window[1]) if window else None
        self._mutate = mutate or libfuzzer_mutate
        self._operations: Sequence[tuple[int, Callable[[bytearray, random.Random, int], None]]] = (
            (30, self._field),
            (12, self._size),
            (10, self._pointer),
            (8, self._tail_int),
            (6, self._length),
            (6, self._lay_out),
        )
        self._weight = sum(weight for weight, _ in self._operations)

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        buf = self._plausible(data, rng)
        if len(buf) > _LARGE and rng.random() < 0.9:
            self._shrink(buf, rng)
        if rng.random() < 0.25:
            buf = bytearray(self._mutate(bytes(buf), max_size))
            if len(buf) >= 8 and rng.random() < 0.9:
                struct.pack_into("<4sI", buf, 0, self.magic, self.version)
            return bytes(buf[:max_size])
        for _ in range(1 + (rng.random() < 0.3)):
            pick = rng.randrange(self._weight)
            for weight, operation in self._operations:
                if pick < weight:
                    operation(buf, rng, max_size)
                    break
                pick -= weight
        return bytes(buf[:max_size])

    # --- helpers ---

    def _plausible(self, data: bytes, rng: random.Random) -> bytearray:
        buf = bytearray(data)
        if len(buf) < self.fixed:
            buf.extend(bytes(self.fixed - len(buf)))
        if rng.random() < 0.98:
            struct.pack_into("<4sI", buf, 0, self.magic, self.version)
        elif rng.random() < 0.5:
            struct.pack_into("<I", buf, 4, rng.choice((0, self.version + 1, 0xFFFFFFFF)))
        return buf

    def _read(self, buf: bytearray, where: tuple[int, str]) -> int:
        value: int = struct.unpack_from("<" + where[1], buf, where[0])[0]
        return value

    def _write(self, buf: bytearray, where: tuple[int, str], value: int) -> None:
        offset, code = where
        bits = 8 * struct.calcsize("<" + code)
        if not fits(code, value):
            value &= (1 << bits) - 1
            if code.islower() and value >= 1 << (bits - 1):
                value -= 1 << bits
        struct.pack_into("<" + code, buf, offset, value)

    def _value(self, code: str, rng: random.Random, current: int) -> int:
        roll = rng.random()
        if roll < 0.4:
            return rng.choice(edges(code))
        if roll < 0.7 and self.limits:
            return rng.choice(self.limits)
        if roll < 0.85:
            return current + rng.choice((-2, -1, 1, 2))
        return rng.randrange(0, 64)

    # --- operations ---

    def _field(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        offset, code, kind, const = rng.choice(self.fields)
        if kind == "ptr":
            self._pointer(buf, rng, max_size)
            return
        current = self._read(buf, (offset, code))
        if kind == "bool":
            value = rng.choice((0, 1)) if rng.random() < 0.9 else rng.choice((2, 0x7F, 0x80, 0xFF))
        elif kind == "const":
            value = const if rng.random() < 0.8 else rng.choice((0, const - 1, const + 1))
        else:
            value = self._value(code, rng, current)
        self._write(buf, (offset, code), value)

    def _size(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        sized = [size for _, size in self.blocks if size is not None]
        if not sized:
            self._tail_int(buf, rng, max_size)
            return
        where = rng.choice(sized)
        current = self._read(buf, where)
        room = max(0, max_size - self.fixed)
        roll = rng.random()
        if roll < 0.05:  # all the room there is, and past it: rare, since large inputs are slow
            value = rng.choice((room, room + 1))
        elif roll < 0.25:
            value = rng.choice([v for v in self.limits if v <= room] or [0])
        else:
            value = rng.choice((0, 1, 2, current - 1, current + 1, min(2 * current, 4096)))
        self._write(buf, where, max(0, value))
        if rng.random() < 0.8:
            self._lay_out(buf, rng, max_size)

    def _pointer(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        if not self.blocks:
            self._field(buf, rng, max_size) if rng.random() < 0.5 else self._length(
                buf, rng, max_size
            )
            return
        index = rng.randrange(len(self.blocks))
        ptr, _ = self.blocks[index]
        cursor = self._cursor(buf, index)
        self._write(
            buf,
            ptr,
            rng.choice(
                (
                    0,
                    1,
                    self.fixed - 1,
                    self.fixed,
                    self.fixed + 1,
                    cursor - 1,
                    cursor,
                    cursor + 1,
                    len(buf) - 1,
                    len(buf),
                    len(buf) + 1,
                    0xFFFFFFFF,
                )
            ),
        )

    def _cursor(self, buf: bytearray, index: int) -> int:
        """Where block ``index`` starts when every block before it is laid out canonically."""
        cursor = self.fixed
        for _, size in self.blocks[:index]:
            cursor += self._read(buf, size) if size is not None else 0
        return cursor

    def _tail_int(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        """A count inside a structured block: a boundary, or the count the bytes left imply."""
        if len(buf) < self.fixed + 4:
            buf.extend(bytes(self.fixed + 4 - len(buf)))
        structured = [ptr for ptr, size in self.blocks if size is None]
        start = self._read(buf, structured[0]) if structured else self.fixed
        if not self.fixed <= start <= len(buf) - 4:
            start = self.fixed
        if rng.random() < 0.5:
            offset = start
        else:
            offset = start + 4 * rng.randrange(max(1, (len(buf) - start) // 4))
            offset = min(offset, len(buf) - 4)
        room = len(buf) - start - 4
        unit = rng.choice((1, 2, 4, 8, 12, 16, 20, 24))
        value = rng.choice((room // unit, room // unit + 1, *edges("I"), *self.limits))
        self._write(buf, (offset, "I"), value)
        if rng.random() < 0.3:
            # Or make the room fit the count instead.
            count = self._read(buf, (start, "I"))
            wanted = start + 4 + count * unit
            if wanted <= max_size:
                del buf[wanted:]
                buf.extend(rng.randbytes(max(0, wanted - len(buf))))

    def _shrink(self, buf: bytearray, rng: random.Random) -> None:
        """Cut a large input's tail down. Large inputs are kept for the limits they reach, but
        each costs milliseconds: without this they crowd out everything else."""
        keep = self.fixed + rng.randrange(_LARGE)
        del buf[keep:]

    def _length(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        delta = rng.choice((-4, -2, -1, 1, 2, 4))
        if delta < 0:
            del buf[max(self.fixed, len(buf) + delta) :]
        else:
            buf.extend(rng.randbytes(delta))

    def _lay_out(self, buf: bytearray, rng: random.Random, max_size: int) -> None:
        """Rebuild the tail as a source writes it: blocks in order, each where the previous one
        ended, sized as the size fields say (shrunk to fit ``max_size``), empty ones at 0."""
        tail = bytes(buf[self.fixed :])
        del buf[self.fixed :]
        taken = 0
        for index, (ptr, size) in enumerate(self.blocks):
            stream = self.stream is not None and index == self._stream_block
            if stream and size is not None and rng.random() < 0.6:
                room = min(max_size - len(buf), rng.choice((64, 1024, 70_000)))
                data, count = self.stream.fill(rng, max(0, room))
                self._write(buf, size, len(data))
                if self._tokens is not None:
                    self._write(buf, self._tokens, count)
                if self._window is not None:
                    held, window = self._window
                    if self._read(buf, held) + count > window:
                        self._write(buf, held, max(0, window - count))
                self._write(buf, ptr, len(buf) if data else 0)
                buf.extend(data)
                continue
            if size is None:
                rest = tail[taken:] or bytes(4)
                self._write(buf, ptr, len(buf))
                buf.extend(rest)
                taken = len(tail)
                continue
            length = self._read(buf, size)
            if length > max_size - len(buf):
                length = rng.choice((0, 1, max(0, min(64, max_size - len(buf)))))
                self._write(buf, size, length)
            chunk = tail[taken : taken + length]
            taken += len(chunk)
            self._write(buf, ptr, len(buf) if length else 0)
            buf.extend(chunk + rng.randbytes(length - len(chunk)))


# --- documents from fuzz data ----------------------------------------------------------------

#: The widest integers a document may carry (msgpack's range).
_INT_RANGE = (-(1 << 63), (1 << 64) - 1)
_WRONG: tuple[Any, ...] = (None, "x", -1, 1 << 63, b"", (), {}, 1.5, True)


def build_document(fdp: Any, model: type) -> Any:
    """A document for a pydantic ``model`` drawn from a ``FuzzedDataProvider``: the model's
    shape, each value at or next to a bound the schema declares (or drawn between them), and
    now and then a missing member, an extra one or a value of the wrong type."""
    return _build(fdp, model, (), 0)


def _bound(metadata: Sequence[Any], name: str) -> int | None:
    for item in metadata:
        value = getattr(item, name, None)
        if isinstance(value, int):
            return value
    return None


def _build(fdp: Any, annotation: Any, metadata: Sequence[Any], depth: int) -> Any:
    if depth > 8 or fdp.ConsumeProbability() < 0.01:
        return fdp.PickValueInList(list(_WRONG))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        extra = [m for item in args[1:] for m in (getattr(item, "metadata", None) or [item])]
        return _build(fdp, args[0], (*metadata, *extra), depth)
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        document = {}
        for name, info in annotation.model_fields.items():
            if fdp.ConsumeProbability() >= 0.01:
                document[name] = _build(fdp, info.annotation, tuple(info.metadata), depth + 1)
        if fdp.ConsumeProbability() < 0.01:
            document["extra"] = 0
        return document
    if origin in (typing.Union, types.UnionType):
        return _build(fdp, fdp.PickValueInList(list(args)), metadata, depth)
    if origin is typing.Literal:
        return fdp.PickValueInList([*args, "other"])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            most = _bound(metadata, "max_length") or 16
            count = fdp.PickValueInList([0, 1, 2, 3, 4, min(most, 64), min(most + 1, 65)])
            return [_build(fdp, args[0], (), depth + 1) for _ in range(count)]
        return [_build(fdp, arg, (), depth + 1) for arg in args]
    if annotation is bool:
        return fdp.ConsumeBool()
    if annotation is int:
        low = _bound(metadata, "ge")
        if low is None and (above := _bound(metadata, "gt")) is not None:
            low = above + 1
        high = _bound(metadata, "le")
        if high is None and (below := _bound(metadata, "lt")) is not None:
            high = below - 1
        low = _INT_RANGE[0] if low is None else low
        high = _INT_RANGE[1] if high is None else high
        if low > high or fdp.ConsumeProbability() < 0.05:  # just outside, now and then
            value = fdp.PickValueInList([low - 1, high + 1])
        else:  # inside, mostly at an edge, so that whole documents are often valid
            inside = [low, low + 1, high - 1, high, *(v for v in (0, 1) if low <= v <= high)]
            value = fdp.PickValueInList([*inside, fdp.ConsumeIntInRange(low, high)])
        return max(_INT_RANGE[0], min(_INT_RANGE[1], value))
    if annotation is bytes:
        most = _bound(metadata, "max_length") or 64
        sizes = [0, 1, 2, 8, 12, 19, 20, 32, min(most, 1024)]
        size = most + 1 if fdp.ConsumeProbability() < 0.05 else fdp.PickValueInList(sizes)
        return fdp.ConsumeBytes(min(size, 1 << 16))
    if annotation is str:
        return fdp.ConsumeUnicode(8)
    return None
