#!/usr/bin/env python3
"""Generate each harness's committed seed corpus and dictionary, reproducibly.

    fuzz/make_corpus.py [HARNESS ...] [--fresh] [--keep-all]

Seeds come from the project itself: valid states of every channel (shaped like what a real
source sends, hypothesis' derandomized examples from tests/strategies.py, the payloads captured
from real sources in gateway/samples/ and the known-answer vectors of the tests), encoded
natively, then varied field by field from the layout (every boundary of every field, each
pointer and size one off, every truncation, the size limit and one past it); for the envelope,
real sealed blobs and what a key holder could seal around a bad context or payload.

Every candidate is first replayed in-process: one that makes a harness fail is reported and
left out (a finding belongs in a regression test, not in the corpus). libFuzzer's ``-merge=1``
then keeps the smallest set with the same coverage; the existing committed corpus takes part
unless ``--fresh`` is given, so inputs merged back from fuzzing runs are kept.

Dictionaries are derived the same way: magics, versions, fixed sizes and every field's boundary
values from the layouts; field names and markers for msgpack; members and states for keyrings.

Harnesses without a generator here (the SPICE ones keep hand-written seeds) are left alone;
``fuzz/run --merge-back`` adds grown inputs to any corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("SMG_FUZZ_INSTRUMENT", "0")  # generating needs no coverage feedback

import _harness
import _table

from gateway import native, peerlink
from gateway.envelope import DEFAULT_POLICY, DEFAULT_TTL, MAGIC
from gateway.keys import FILE_KIND, Key, Keyring, KeyState, dump_keyring
from gateway.native._layout import BytesBlock, Field, Layout
from schemas import (
    AgentReadState,
    AgentWriteState,
    ChannelType,
    CharDeviceState,
    DisplayState,
    GlzDictionary,
    InputsState,
    LossyRect,
    LossySurface,
    MainState,
    SmartcardState,
    SpicevmcState,
    StateModel,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
)
from schemas.display import NUM_SURFACES
from schemas.smartcard import MAX_VSC_LENGTH, TARGET_READ_BUFFER
from schemas.streams import usbredir_bulk_in, usbredir_packet

__all__ = ["Seeds", "generate", "main"]


@dataclass
class Seeds:
    inputs: list[bytes] = field(default_factory=list)
    words: list[bytes] = field(default_factory=list)


# --- valid states, shaped like a real source's ----------------------------------------------

_VDI = struct.Struct("<II")
_VSC = struct.Struct(">III")


def _pattern(size: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(size))


def _vdi(*sizes: int) -> bytes:
    return b"".join(_VDI.pack(1, n) + _pattern(n, n) for n in sizes)


def _device(data: bytes = b"", tokens: int = 0, *, client: int = 0xFFFFFFFF) -> CharDeviceState:
    return CharDeviceState(
        connected=True,
        num_client_tokens=client,
        num_send_tokens=0xFFFFFFF0,
        write_size=len(data),
        write_num_client_tokens=tokens,
        write_data=data,
    )


_NO_DEVICE = CharDeviceState(
    connected=False,
    num_client_tokens=0,
    num_send_tokens=0,
    write_size=0,
    write_num_client_tokens=0,
    write_data=b"",
)


def _read(**changes: Any) -> AgentReadState:
    values: dict[str, Any] = {
        "chunk_header_size": 0,
        "chunk_port": 0,
        "chunk_size": 0,
        "msg_header_done": False,
        "msg_header_partial_len": 0,
        "msg_header_partial": b"",
        "msg_remaining": 0,
        "msg_filter_result": 0,
    }
    values.update(changes)
    return AgentReadState(**values)


def main_states() -> list[StateModel]:
    idle_write = AgentWriteState(msg_remaining=0, msg_filter_result=0)
    return [
        MainState(
            agent=_NO_DEVICE,
            client_agent_started=False,
            agent_to_client=_read(),
            client_to_agent=idle_write,
        ),
        MainState(  # seen: chunk header port and size left over from the last chunk
            agent=_device(client=10),
            client_agent_started=True,
            agent_to_client=_read(chunk_port=1, chunk_size=33_554_460),
            client_to_agent=idle_write,
        ),
        MainState(
            agent=_device(_vdi(33, 100), 2, client=7),
            client_agent_started=True,
            agent_to_client=_read(
                chunk_header_size=8,
                chunk_port=1,
                chunk_size=1234,
                msg_header_done=True,
                msg_remaining=1234,
                msg_filter_result=1,
            ),
            client_to_agent=AgentWriteState(msg_remaining=50, msg_filter_result=3),
        ),
        MainState(  # a partial VDAgentMessage header (the off-by-2 quirk's case)
            agent=_device(_vdi(8), 1, client=0),
            client_agent_started=True,
            agent_to_client=_read(
                chunk_header_size=8,
                chunk_port=1,
                chunk_size=40,
                msg_header_partial_len=5,
                msg_header_partial=b"\x01\x00\x00\x00\x05",
            ),
            client_to_agent=idle_write,
        ),
        MainState(  # seen: ten 2048-byte agent messages, what the client window allows
            agent=_device(_vdi(*[2048] * 10), 10, client=0),
            client_agent_started=True,
            agent_to_client=_read(),
            client_to_agent=idle_write,
        ),
    ]


def display_states() -> list[StateModel]:
    def state(surfaces: SurfacesLossless | SurfacesLossy) -> DisplayState:
        return DisplayState(
            message_serial=4242,
            low_bandwidth=False,
            pixmap_cache_id=1,
            pixmap_cache_size=20 * 1024 * 1024,
            pixmap_cache_freezer=True,
            pixmap_cache_clients=(17, 0, 0, 0),
            glz_dict_id=1,
            glz_dict=GlzDictionary(window_size=1 << 24, max_encoders=4, last_image_id=77),
            surfaces=surfaces,
        )

    def lossy(ids: Iterable[int], rect: tuple[int, int, int, int]) -> SurfacesLossy:
        left, top, right, bottom = rect
        box = LossyRect(left=left, top=top, right=right, bottom=bottom)
        return SurfacesLossy(surfaces=tuple(LossySurface(id=i, lossy_rect=box) for i in ids))

    return [
        state(SurfacesLossless(ids=())),
        state(SurfacesLossless(ids=(0, 1, 5, NUM_SURFACES - 1))),
        state(lossy((0, 7), (0, 0, 1024, 768))),
        state(SurfacesLossless(ids=tuple(range(NUM_SURFACES)))),
        state(lossy(range(NUM_SURFACES), (1, 2, 3, 4))),
    ]


def inputs_states() -> list[StateModel]:
    return [InputsState(motion_count=n) for n in (0, 3, 64)]


def smartcard_states() -> list[StateModel]:
    def card(device: CharDeviceState, read: bytes = b"", reader: bool = True) -> SmartcardState:
        return SmartcardState(
            device=device, reader_added=reader, read_size=len(read), read_data=read
        )

    return [
        card(_NO_DEVICE, reader=False),
        card(_device()),
        card(_device(_VSC.pack(1, 0, 4) + b"abcd", 1), b"\x00\x00\x00\x01\x00"),
        card(_device(), _VSC.pack(3, 0, 100) + _pattern(20)),
        card(_device(), _VSC.pack(3, 0, 8) + _pattern(8)),
        card(_device(), _VSC.pack(3, 0, MAX_VSC_LENGTH) + _pattern(MAX_VSC_LENGTH)),
    ]


def spicevmc_states() -> list[StateModel]:
    """usbredir (the harness's channel): whole usbredir packets pending."""
    return [
        UsbredirState(device=_device()),
        UsbredirState(device=_device(usbredir_bulk_in(_pattern(84), 1), 1)),
        UsbredirState(
            device=_device(
                b"".join(usbredir_bulk_in(_pattern(21_829, n), n) for n in range(3))
                + usbredir_packet(2, b"", b"", 4),
                4,
            )
        ),
    ]


STATES: dict[ChannelType, Callable[[], list[StateModel]]] = {
    ChannelType.MAIN: main_states,
    ChannelType.DISPLAY: display_states,
    ChannelType.INPUTS: inputs_states,
    ChannelType.SMARTCARD: smartcard_states,
    ChannelType.USBREDIR: spicevmc_states,
}


_VMC = (ChannelType.USBREDIR, *SpicevmcState.channel_types)


def hypothesis_states(channel: ChannelType, count: int = 25) -> list[StateModel]:
    """Derandomized examples of tests/strategies.py: the same ones on every run."""
    sys.path.insert(0, str(_table.ROOT))
    try:
        from hypothesis import HealthCheck, Phase, given, settings

        from tests.strategies import states
    except ImportError:
        return []
    finally:
        sys.path.remove(str(_table.ROOT))
    found: list[StateModel] = []

    @settings(
        derandomize=True,
        database=None,
        max_examples=count,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(states(channel))
    def collect(state: StateModel) -> None:
        found.append(state)

    collect()
    return found


def vectors(channel: ChannelType) -> list[bytes]:
    """The native known-answer vectors of the tests (tests/test_native_vectors.py)."""
    sys.path.insert(0, str(_table.ROOT))
    try:
        module = importlib.import_module("tests.test_native_vectors")
    except ImportError:
        return []
    finally:
        sys.path.remove(str(_table.ROOT))
    family = (ChannelType.USBREDIR, *SpicevmcState.channel_types) if channel in _VMC else (channel,)
    return [v.data for v in module.VECTORS if v.channel in family]


def samples(channel: ChannelType) -> list[bytes]:
    """Payloads captured from real sources that the package ships (gateway/samples/)."""
    folder = _table.ROOT / "gateway" / "samples"
    family = (ChannelType.USBREDIR, *SpicevmcState.channel_types) if channel in _VMC else (channel,)
    names = [f"{c.name.lower()}.bin" for c in family]
    return [(folder / n).read_bytes() for n in names if (folder / n).is_file()]


# --- native: variants derived from the layout ------------------------------------------------


def split(layout: Layout[Any], data: bytes) -> tuple[list[Any], list[bytes]]:
    """A canonical payload's packed values (header included) and its tail blocks."""
    raw = list(layout.struct.unpack_from(data))
    index = {f.path: 2 + i for i, f in enumerate(layout.fields)}
    tails = []
    for block in layout.blocks:
        ptr = raw[index[block.ptr]]
        if isinstance(block, BytesBlock):
            size = raw[index[block.size]]
            tails.append(data[ptr : ptr + size] if size else b"")
        else:
            tails.append(data[ptr:])
    return raw, tails


def join(layout: Layout[Any], raw: list[Any], tails: list[bytes]) -> bytes:
    """Pack ``raw`` with the tails laid out as a source does (pointers and sizes recomputed)."""
    raw = list(raw)
    index = {f.path: 2 + i for i, f in enumerate(layout.fields)}
    cursor = layout.fixed_size
    for block, tail in zip(layout.blocks, tails, strict=True):
        if isinstance(block, BytesBlock):
            raw[index[block.size]] = len(tail)
            raw[index[block.ptr]] = cursor if tail else 0
        else:
            raw[index[block.ptr]] = cursor
        cursor += len(tail)
    return layout.struct.pack(*raw) + b"".join(tails)


def _resized(tail: bytes, size: int) -> bytes:
    return (tail * (size // max(1, len(tail)) + 1))[:size] if tail else _pattern(size)


def field_values(
    layout: Layout[Any], f: Field, raw: list[Any], size: int, limits: list[int]
) -> list[int]:
    current = raw[2 + layout.fields.index(f)]
    fixed = layout.fixed_size
    if f.kind == "bool":
        return [0, 1, 2, 0xFF]
    if f.kind == "const":
        return [0, f.const - 1, f.const + 1, 0xFFFFFFFF]
    if f.kind == "ptr":
        cursor = current or fixed
        return [
            0,
            1,
            fixed - 1,
            fixed,
            fixed + 1,
            cursor - 1,
            cursor + 1,
            size - 1,
            size,
            size + 1,
            0xFFFFFFFF,
        ]
    return sorted({*_harness.edges(f.code), *limits, current - 1, current + 1})


def native_variants(layout: Layout[Any], base: bytes, limits: list[int]) -> Iterator[bytes]:
    raw, tails = split(layout, base)
    for i, f in enumerate(layout.fields):
        for value in field_values(layout, f, raw, len(base), limits):
            changed = list(raw)
            changed[2 + i] = value
            try:
                yield layout.struct.pack(*changed) + b"".join(tails)
            except struct.error:
                continue
    for j, block in enumerate(layout.blocks):
        if isinstance(block, BytesBlock):
            tail = tails[j]
            for size in sorted({0, 1, max(0, len(tail) - 1), len(tail) + 1, 2 * len(tail) + 1}):
                yield join(layout, raw, [*tails[:j], _resized(tail, size), *tails[j + 1 :]])
    cuts = {
        0,
        1,
        4,
        7,
        8,
        9,
        *layout.offsets.values(),
        layout.fixed_size - 1,
        layout.fixed_size,
        layout.fixed_size + 1,
        len(base) - 1,
    }
    yield from (base[:n] for n in sorted(cuts) if n < len(base))
    yield layout.magic.lower() + base[4:]
    yield b"XCMD" + base[4:]
    for version in (0, 2, 0xFFFFFFFF):
        yield base[:4] + struct.pack("<I", version) + base[8:]
    yield base + b"\x00"
    yield base + bytes(4)
    # The empty record a source writes with nothing attached: every field zero.
    empty = [0 if f.kind != "const" else f.const for f in layout.fields]
    yield join(layout, [*raw[:2], *empty], [b"" for _ in tails])


def sized_to_limit(layout: Layout[Any], base: bytes, max_len: int) -> Iterator[bytes]:
    """The payload at its size limit and one past it: the first sized block grown to reach it,
    or padding when there is none."""
    limit = layout.max_size
    if limit + 1 > max_len:
        return
    raw, tails = split(layout, base)
    sized = [j for j, b in enumerate(layout.blocks) if isinstance(b, BytesBlock)]
    for total in (limit - 3, limit - 2, limit - 1, limit, limit + 1):
        if not sized:
            yield base + bytes(max(0, total - len(base)))
            continue
        j = sized[0]
        grown = len(tails[j]) + total - len(base)
        if grown >= 0:
            yield join(layout, raw, [*tails[:j], _resized(tails[j], grown), *tails[j + 1 :]])


def display_tails(layout: Layout[Any], base: bytes) -> Iterator[bytes]:
    """Surface lists a source never writes: counts against the room left, order, id and
    rectangle bounds."""
    raw, _ = split(layout, base)

    def ids(*values: int) -> bytes:
        return b"".join(struct.pack("<I", v) for v in values)

    def lossy(*entries: tuple[int, int, int, int, int]) -> bytes:
        return b"".join(struct.pack("<Iiiii", *e) for e in entries)

    def listed(count: int, entries: bytes) -> bytes:
        return join(layout, raw, [struct.pack("<I", count) + entries])

    yield listed(NUM_SURFACES + 1, ids(*range(NUM_SURFACES + 1)))
    yield listed(0x4000_0000, b"")
    yield listed(0x4000_0001, ids(1))
    yield listed(2, ids(1))
    yield listed(1, ids(1) + b"\x00")
    yield listed(1, ids(1) + bytes(12))
    yield listed(0, ids(1))
    yield listed(2, ids(5, 3))
    yield listed(2, ids(3, 3))
    yield listed(1, ids(NUM_SURFACES))
    yield listed(1, lossy((1, 5, 0, 4, 9)))
    yield listed(1, lossy((1, 0, 5, 9, 4)))
    yield listed(1, lossy((1, 0, 0, 65_537, 9)))
    yield listed(1, lossy((1, -1, 0, 4, 9)))
    yield listed(2, lossy((5, 0, 0, 1, 1), (3, 0, 0, 1, 1)))
    yield listed(1, lossy((NUM_SURFACES, 0, 0, 1, 1)))
    for extra in (1, 2, 3):
        yield join(layout, raw, [b""])[: layout.fixed_size] + bytes(extra)


def smartcard_reads(layout: Layout[Any], base: bytes) -> Iterator[bytes]:
    """Partial VSC reads around the header's announced length and the target's read buffer."""
    raw, tails = split(layout, base)
    buffer = TARGET_READ_BUFFER
    for length, size in ((buffer, buffer), (buffer, buffer + 1), (buffer + 1, buffer + 13)):
        yield join(layout, raw, [tails[0], _VSC.pack(3, 0, length) + _pattern(size - 12)])
    for read in (
        _VSC.pack(3, 0, MAX_VSC_LENGTH + 1),
        _VSC.pack(3, 0, 4) + _pattern(5),
        _VSC.pack(3, 0, 4) + _pattern(4),
        _VSC.pack(3, 0, 0),
        _pattern(11),
        _VSC.pack(3, 0, 0xFFFFFFFF) + b"x",
    ):
        yield join(layout, raw, [tails[0], read])


def native_seeds(channel: ChannelType, max_len: int) -> Seeds:
    layout = native.layout_for(channel)
    limits = _harness.interesting_ints(_harness.schema_modules(layout.model))
    bases = [layout.encode(state) for state in STATES[channel]()]
    extra = [layout.encode(s) for s in hypothesis_states(channel)]
    extra += samples(channel) + vectors(channel)
    seeds = Seeds(inputs=bases + extra)
    for base in bases:
        seeds.inputs.extend(sized_to_limit(layout, base, max_len))
        if len(base) > 4096:  # the large ones are there for their size, not their fields
            continue
        seeds.inputs.extend(native_variants(layout, base, limits))
        if channel is ChannelType.DISPLAY:
            seeds.inputs.extend(display_tails(layout, base))
        if channel is ChannelType.SMARTCARD and base[layout.offsets["device.connected"]]:
            seeds.inputs.extend(smartcard_reads(layout, base))
    seeds.words = native_words(layout, limits, bases)
    return seeds


def native_words(layout: Layout[Any], limits: list[int], bases: list[bytes]) -> list[bytes]:
    words = [
        layout.magic,
        layout.magic + struct.pack("<I", layout.version),
        struct.pack("<I", layout.version),
        struct.pack("<I", layout.fixed_size),
    ]
    for base in bases:
        raw, _ = split(layout, base)
        words.extend(
            struct.pack("<I", raw[2 + i]) for i, f in enumerate(layout.fields) if f.kind == "ptr"
        )
    for code in sorted({f.code for f in layout.fields}):
        words.extend(struct.pack("<" + code, v) for v in _harness.edges(code))
        words.extend(struct.pack("<" + code, v) for v in limits if _harness.fits(code, v))
    return words


# --- the envelope ----------------------------------------------------------------------------


def _payload(state: StateModel) -> bytes:
    import msgpack

    packed: bytes = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    return packed


def representative(channel: ChannelType) -> StateModel:
    """A connected, non-trivial state of ``channel``."""
    return STATES.get(channel, spicevmc_states)()[1]


def bad_payloads() -> list[bytes]:
    """msgpack that breaks each limit of the opener, or is not msgpack at all."""
    import msgpack

    depth = DEFAULT_POLICY.max_depth
    return [
        b"",
        b"\xc1",
        b"\x81\xa1a",
        b"\x91" * depth + b"\xc0",
        b"\x91" * (depth + 1) + b"\xc0",
        b"\x81\xa1a" * (depth + 1) + b"\xc0",
        b"\x82\xa1a\x01\xa1a\x02",
        b"\xd4\x01\x00",
        b"\x81\xc4\x01a\x01",
        b"\x81\x01\x01",
        msgpack.packb({"x" * (DEFAULT_POLICY.max_str_len + 1): 1}),
        b"\xdc\xff\xff",
        b"\xdd\x7f\xff\xff\xff",
        b"\xde\xff\xff",
        b"\xc6\x7f\xff\xff\xff",
        b"\x92\x01",
        b"\xcb" + struct.pack(">d", 1.5),
    ]


def model_variants(state: StateModel) -> Iterator[bytes]:
    """A valid state's msgpack with one member removed, retyped, out of range, or added."""
    import msgpack

    document = state.model_dump(mode="python")

    def walk(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, (*path, key))
        elif isinstance(node, (list, tuple)) and node and path:
            yield from walk(node[0], (*path, 0))
        if path:
            yield path

    def replaced(path: tuple[Any, ...], value: Any, drop: bool = False) -> bytes:
        def rebuild(node: Any, rest: tuple[Any, ...]) -> Any:
            if not rest:
                return value
            head, tail = rest[0], rest[1:]
            if isinstance(node, dict):
                copy = dict(node)
                if drop and not tail:
                    copy.pop(head)
                else:
                    copy[head] = rebuild(node[head], tail)
                return copy
            items = list(node)
            items[head] = rebuild(items[head], tail)
            return items

        packed: bytes = msgpack.packb(rebuild(document, path), use_bin_type=True)
        return packed

    for path in walk(document, ()):
        yield replaced(path, None, drop=True)
        wrong: tuple[Any, ...] = (None, "x", -1, 2**64 - 1, True, b"\x00", [], {})
        for value in wrong:
            yield replaced(path, value)
    yield msgpack.packb({**document, "extra": 1}, use_bin_type=True)


def payload_seeds() -> Seeds:
    payload_harness = _table.load(_table.discover(["envelope_payload"])[0])
    seeds = Seeds()
    for index, (channel, _version, _model) in enumerate(payload_harness.SCHEMAS):
        prefix = bytes([index])
        states = STATES.get(channel, spicevmc_states)() + hypothesis_states(channel, 10)
        seeds.inputs.extend(prefix + _payload(s) for s in states)
        seeds.inputs.extend(prefix + p for p in bad_payloads())
        for state in states[:2]:
            seeds.inputs.extend(prefix + p for p in model_variants(state))
    seeds.words = payload_words()
    return seeds


def payload_words() -> list[bytes]:
    import msgpack

    names: set[str] = {"lossless", "lossy"}
    for channel in STATES:
        for state in STATES[channel]()[:2]:
            stack = [state.model_dump(mode="python")]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    names.update(node)
                    stack.extend(node.values())
                elif isinstance(node, (list, tuple)):
                    stack.extend(node)
    words = [msgpack.packb(name) for name in sorted(names)]
    words += [
        b"\xc0",
        b"\xc2",
        b"\xc3",
        b"\xc4",
        b"\xc5",
        b"\xce",
        b"\xcf",
        b"\xd3",
        b"\xdc",
        b"\xde",
        b"\x91",
        b"\x81",
        b"\xce\xff\xff\xff\xff",
        b"\xcf" + b"\xff" * 8,
    ]
    return words


def builder_seeds() -> Seeds:
    """Fuzz data for the document builder: any bytes make a document, so many fixed random
    ones, for the merge to keep those that reach the schemas' own checks."""
    rng = random.Random(0)
    return Seeds(inputs=[rng.randbytes(rng.randrange(16, 1024)) for _ in range(20_000)])


def caps_seeds() -> Seeds:
    """Fuzz data for the tree builder of the caps harness: random bytes (any bytes build a
    tree), plus inputs that repeat a one-byte leaf at the widest fan-out, which build trees
    just under and over the object cap."""
    rng = random.Random(1)
    inputs = [rng.randbytes(rng.randrange(8, 512)) for _ in range(1_000)]
    for fill in range(0, 256, 17):
        inputs.append(bytes([fill]) * 64)
        inputs.append(bytes([0xFF, fill]) * 32)
    return Seeds(inputs=inputs)


def open_seeds() -> Seeds:
    opener = _table.load(_table.discover(["envelope_open"])[0])
    active = next(k for k in opener.KEYRING.keys if k.state is KeyState.ACTIVE)
    salts = (hashlib.sha256(b"salt %d" % i).digest() for i in range(1_000_000))
    seeds = Seeds()

    def sealed(selector: int, context: bytes, payload: bytes, **header: Any) -> bytes:
        key_id = header.pop("key_id", active.key_id)
        blob: bytes = opener.seal_raw(context, payload, key_id=key_id, salt=next(salts), **header)
        return bytes([selector]) + blob

    def exact(expected: Any, issued: int = opener.NOW, ttl: int = DEFAULT_TTL) -> bytes:
        pick: Callable[[Any], Any] = lambda options: options[0]  # noqa: E731
        context: bytes = opener.build_context(pick, expected)
        fixed = bytearray(context)
        struct.pack_into(">QQ", fixed, 37, issued, issued + ttl)
        return bytes(fixed)

    for selector in range(len(opener.EXPECTATIONS) * len(opener.POLICIES)):
        expected, _ = opener.choose(selector)
        state = representative(expected.channel_type)
        seeds.inputs.append(sealed(selector, exact(expected), _payload(state)))
    display = next(
        i for i, e in enumerate(opener.EXPECTATIONS) if e.channel_type is ChannelType.DISPLAY
    )
    expected = opener.EXPECTATIONS[display]
    payload = _payload(representative(ChannelType.DISPLAY))
    good = sealed(display, exact(expected), payload)
    blob = good[1:]
    prefix = good[:1]
    for key in opener.KEYRING.keys:
        if key.secret:
            seeds.inputs.append(sealed(display, exact(expected), payload, key_id=key.key_id))
        else:
            seeds.inputs.append(prefix + blob[:12] + key.key_id + blob[28:])
    seeds.inputs.append(prefix + blob[:12] + bytes(16) + blob[28:])
    for version, suite in ((0, 1), (2, 1), (1, 0), (1, 2)):
        seeds.inputs.append(prefix + blob[:4] + bytes([version, suite]) + blob[6:])
        seeds.inputs.append(
            sealed(display, exact(expected), payload, format_version=version, suite=suite)
        )
    seeds.inputs.append(prefix + b"XMGE" + blob[4:])
    for context_length in (0, 47, 48, 558, 559, 0xFFFF):
        seeds.inputs.append(prefix + blob[:6] + struct.pack(">H", context_length) + blob[8:])
    for delta in (-1, 1, 0x10000):
        (body,) = struct.unpack_from(">I", blob, 8)
        seeds.inputs.append(
            prefix + blob[:8] + struct.pack(">I", (body + delta) % 2**32) + blob[12:]
        )
    for cut in (0, 1, 59, 60, 61, len(blob) - 33, len(blob) - 32, len(blob) - 1):
        seeds.inputs.append(prefix + blob[:cut])
    seeds.inputs.append(good + b"\x00")
    tight = next(i for i in range(64) if opener.choose(i)[1].max_blob_size < 4096)
    big = _payload(STATES[ChannelType.MAIN]()[-1])  # over the tight policy's size limit
    seeds.inputs.append(sealed(tight, exact(opener.choose(tight)[0]), big))
    for position in (-1, -40, -49):  # the MAC, the GCM tag, the ciphertext (the MAC still holds)
        flipped = bytearray(blob)
        flipped[position] ^= 1
        seeds.inputs.append(prefix + bytes(flipped))
    context = exact(expected)
    source_end = opener.CONTEXT.size + 1 + context[opener.CONTEXT.size]
    for cut in (opener.CONTEXT.size + 2, source_end, len(context) - 1):
        seeds.inputs.append(sealed(display, context[:cut], payload))
    for seed in range(80):
        context = opener.build_context(random.Random(seed).choice, expected)
        seeds.inputs.append(sealed(display, context, payload))
    for issued, ttl in (
        (opener.NOW - 10_000, DEFAULT_TTL),
        (opener.NOW + 10_000, DEFAULT_TTL),
        (opener.NOW, DEFAULT_POLICY.max_ttl + 1),
        (opener.NOW, -1),
    ):
        seeds.inputs.append(sealed(display, exact(expected, issued, ttl), payload))
    for bad in bad_payloads():
        seeds.inputs.append(sealed(display, exact(expected), bad))
    seeds.inputs.extend(
        sealed(display, exact(expected), p)
        for p in list(model_variants(representative(ChannelType.DISPLAY)))[:40]
    )
    seeds.inputs.extend(vector_blobs())
    seeds.words = [MAGIC, MAGIC + b"\x01\x01", b"\x01\x01"]
    seeds.words += [k.key_id for k in opener.KEYRING.keys]
    seeds.words += [struct.pack(">Q", opener.NOW + d) for d in (0, DEFAULT_TTL)]
    seeds.words += [struct.pack(">H", n) for n in (48, 558)]
    seeds.words += [b"\x05src-1", b"\x05dst-1"]
    return seeds


def vector_blobs() -> list[bytes]:
    """The envelope's known-answer vectors (their key is not the harness's: header paths)."""
    folder = _table.ROOT / "tests" / "vectors" / "envelope"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        document = json.loads(path.read_text())
        if isinstance(document.get("blob"), str):
            found.append(b"\x00" + bytes.fromhex(document["blob"]))
    return found


# --- keyrings --------------------------------------------------------------------------------


def keyring_seeds() -> Seeds:
    def key(first: int, state: KeyState, created: int = 1_700_000_000) -> Key:
        secret = b"" if state is KeyState.RETIRED else bytes(range(first + 0x80, first + 0xA0))
        return Key(bytes(range(first, first + 16)), state, created, secret)

    single = dump_keyring(Keyring([key(0x10, KeyState.ACTIVE, 0)]))
    full = dump_keyring(
        Keyring(
            [
                key(0x10, KeyState.ACTIVE),
                key(0x20, KeyState.DECRYPT_ONLY),
                key(0x30, KeyState.PENDING),
                key(0x40, KeyState.RETIRED),
            ]
        )
    )
    seeds = Seeds(inputs=[single, full])
    document = json.loads(full)
    entry = document["keys"][0]

    def with_entry(**changes: Any) -> bytes:
        changed = {**entry, **changes}
        for name, value in changes.items():
            if value is _DROP:
                del changed[name]
        return json.dumps({**document, "keys": [changed]}).encode()

    for name in ("id", "state", "created", "secret"):
        seeds.inputs.append(with_entry(**{name: _DROP}))
        wrong: tuple[Any, ...] = (None, 1, "", "zz", [], "0" * 31, "0" * 33, "g" * 32, "0" * 64)
        for value in wrong:
            seeds.inputs.append(with_entry(**{name: value}))
    seeds.inputs.append(with_entry(extra=1))
    seeds.inputs.append(with_entry(secret="00" * 32))
    for created in (
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01 00:00:00",
    ):
        seeds.inputs.append(with_entry(created=created))
    retired = document["keys"][3]
    seeds.inputs.append(
        json.dumps({**document, "keys": [entry, {**retired, "secret": "11" * 32}]}).encode()
    )
    seeds.inputs.append(json.dumps({**document, "keys": [entry, entry]}).encode())
    seeds.inputs.append(
        json.dumps({**document, "keys": [entry, {**entry, "id": "ab" * 16}]}).encode()
    )
    seeds.inputs.append(json.dumps({**document, "keys": []}).encode())
    seeds.inputs.append(json.dumps({**document, "keys": [1]}).encode())
    seeds.inputs.append(json.dumps({**document, "keys": {}}).encode())
    for name in ("kind", "version", "keys"):
        seeds.inputs.append(json.dumps({k: v for k, v in document.items() if k != name}).encode())
    for version in (2, "1", True, 1.0):
        seeds.inputs.append(json.dumps({**document, "version": version}).encode())
    seeds.inputs.append(json.dumps({**document, "extra": 1}).encode())
    seeds.inputs.append(json.dumps({**document, "kind": "keyring"}).encode())
    seeds.inputs.append(single.replace(b'"kind"', b'"kind": 1, "kind"', 1))
    seeds.inputs += [
        b"",
        b"[]",
        b"null",
        b"{",
        b"\xff",
        b"[" * 3000,
        b"1" * 4400,
        b"NaN",
        single.decode().encode("utf-16"),
        b"\xef\xbb\xbf" + single,
    ]
    seeds.words = [
        b'"kind"',
        FILE_KIND.encode(),
        b'"version"',
        b'"keys"',
        b'"id"',
        b'"state"',
        b'"created"',
        b'"secret"',
        b'"2024-01-01T00:00:00Z"',
        b"\\u0000",
    ]
    seeds.words += [f'"{s.value}"'.encode() for s in KeyState]
    return seeds


# --- proxy configs ---------------------------------------------------------------------------


_CONFIG = """host_id = "host-a"
keyring = "/etc/spice-migration-gateway/keyring.json"
replay_db = "/var/lib/spice-migration-gateway/replay.sqlite"
control_socket = "/run/spice-migration-gateway/control.sock"

[limits]
max_connections = 64
max_message_size = 1048576
max_buffered_bytes = 65536
link_timeout = 5.0
shutdown_grace = 0
blob_ttl = 300
clock_skew = 5

[[peers]]
host_id = "host-b"
addresses = ["192.0.2.12:5901", "[2001:db8::2]:5901"]

[[routes]]
name = "web01"
listen = "192.0.2.11:5901"
upstream = "127.0.0.1:15901"
vm_id = "9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42"
tls_cert = "/etc/pki/cert.pem"
tls_key = "/etc/pki/key.pem"
upstream_tls = true
upstream_ca = "/etc/pki/ca.pem"
upstream_server_name = "localhost"
"""


def proxy_config_seeds() -> Seeds:
    full = _CONFIG.encode()
    minimal = b"\n".join(
        line
        for line in full.splitlines()
        if not line.startswith((b"tls_", b"upstream_", b"control_socket"))
    )
    seeds = Seeds(inputs=[full, minimal])
    route = full[full.index(b"[[routes]]") :]
    seeds.inputs += [
        full + b"\n" + route,
        full + b"\n" + route.replace(b"web01", b"db01"),
        full + b"\n" + route.replace(b"web01", b"db01").replace(b"192.0.2.11", b"192.0.2.13"),
        full.replace(b"upstream_tls = true", b"upstream_tls = false"),
        full + b"#" * (1024 * 1024),
        full.replace(b'host_id = "host-b"', b'host_id = "host-a"'),
        full.replace(b"192.0.2.11:5901", b"192.0.2.11:0"),
        full.replace(b"9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42", b"not-a-uuid"),
        full.replace(b"blob_ttl = 300", b"blob_ttl = 0"),
        full.replace(b'tls_key = "/etc/pki/key.pem"\n', b""),
        full + b"unknown = 1\n",
        full.replace(
            b'control_socket = "/run',
            b'peer_listen = "192.0.2.11:5999"\npeer_link_down = "refuse"\ncontrol_socket = "/run',
        ).replace(b'5901"]\n', b'5901"]\npeer_address = "192.0.2.12:5999"\n'),
        b'peer_listen = "192.0.2.11:5901"\n' + full,
        b'peer_link_down = "accept"\n' + full,
        b"",
        b"host_id = 1",
        b"[" * 2000,
        b"\xff",
    ]
    seeds.words = [
        b"host_id",
        b"keyring",
        b"replay_db",
        b"control_socket",
        b"[limits]",
        b"[[peers]]",
        b"[[routes]]",
        b"addresses",
        b"listen",
        b"upstream",
        b"vm_id",
        b"tls_cert",
        b"tls_key",
        b"upstream_tls",
        b"upstream_ca",
        b"peer_listen",
        b"peer_address",
        b"peer_link_down",
        b'"refuse"',
        b'"first-blob"',
        b"peer_timeout",
        b"127.0.0.1:5900",
        b"[::1]:5900",
        b":65535",
        b":65536",
        b"true",
        b"1e308",
    ]
    return seeds


def peer_link_seeds() -> Seeds:
    link = _table.load(_table.discover(["peer_link"])[0])
    good = link.announce()
    other_vm = link.announce(vm_id=link.VMS[1])
    challenge = link.challenge()
    accepted = peerlink.encode_verdict(peerlink.Verdict(True, ""))
    refused = peerlink.encode_verdict(peerlink.Verdict(False, "AuthenticationFailed"))
    foreign = peerlink.encode_challenge(peerlink.Challenge("host-c", bytes(32)))
    seeds = Seeds()
    # 0: the target's end, split somewhere.
    for split in (0, 12, 40, 255):
        seeds.inputs.append(bytes((0, split)) + good)
    for variant in (
        other_vm,
        link.announce(vm_id=uuid.UUID(int=7)),
        link.announce(target_host="host-c"),
        link.announce(source_host="host-z"),
        link.announce(issued_at=link.NOW - 60),
        link.announce(issued_at=link.NOW + 60),
        link.announce(channels=()),
        link.announce(channels=tuple((t, 0) for t in range(1, 65))),
        link.announce(suite_data=b"\x01" * 40),
        good[:-1],
        good + good,
        good[:-1] + bytes((good[-1] ^ 1,)),
    ):
        seeds.inputs.append(bytes((0, 0)) + variant)
    # 1: the source's end.
    seeds.inputs += [
        b"\x01" + challenge + accepted,
        b"\x01" + challenge + refused,
        b"\x01" + challenge,
        b"\x01" + foreign,
        b"\x01" + challenge[:-3],
        b"\x01" + challenge + challenge,
    ]
    # 2: the decoders alone.
    seeds.inputs += [
        b"\x02" + frame for frame in (challenge, accepted, refused, good, other_vm, foreign)
    ]
    # 3 and 4: the identity suite's two ends.
    signed = link.identity_announce()
    identity_challenge = link.identity_target().start()
    seeds.inputs += [
        b"\x03" + signed,
        b"\x03" + link.identity_announce(link.VMS[1]),
        b"\x03" + signed[:-1] + bytes((signed[-1] ^ 1,)),
        b"\x03" + good,
        b"\x04" + identity_challenge + accepted,
        b"\x04" + challenge,
        b"\x04" + identity_challenge[:-1],
    ]
    seeds.inputs += [b"\x02" + good[:12], b"\x02SMGP\x01\x02\x01\x00\xff\xff\xff\xff"]
    seeds.words = [
        peerlink.MAGIC,
        b"\x01\x01\x01\x00",
        b"\x01\x02\x01\x00",
        b"\x01\x03\x01\x00",
        link.TARGET.encode(),
        link.SOURCE.encode(),
        link.VMS[0].bytes,
        link.KEYRING.active.key_id,
    ]
    return seeds


_DOMAIN = """<domain type='qemu' id='3'>
  <name>web01</name>
  <uuid>9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <graphics type='vnc' port='5900' autoport='no' listen='127.0.0.1'/>
    <graphics type='spice' port='15901' tlsPort='15902' autoport='no' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
      <image compression='off'/>
    </graphics>
    <video><model type='qxl' ram='65536' vram='65536' heads='1' primary='yes'/></video>
  </devices>
</domain>
"""


def libvirt_domain_seeds() -> Seeds:
    full = _DOMAIN.encode()
    seeds = Seeds(inputs=[full])
    spice = full[full.index(b"<graphics type='spice'") : full.index(b"</graphics>") + 11]
    seeds.inputs += [
        full.replace(spice, b""),
        full.replace(spice, spice + spice.replace(b"15901", b"15911")),
        full.replace(b" tlsPort='15902'", b""),
        full.replace(b"port='15901' tlsPort='15902' autoport='no'", b"autoport='yes'"),
        full.replace(b"127.0.0.1", b"0.0.0.0"),
        full.replace(b"address='127.0.0.1'", b"address='::1'").replace(b" listen='127.0.0.1'", b""),
        full.replace(
            b"<listen type='address' address='127.0.0.1'/>",
            b"<listen type='socket' socket='/run/spice.sock'/>",
        ).replace(b" listen='127.0.0.1'", b""),
        full.replace(
            b"<listen type='address' address='127.0.0.1'/>",
            b"<listen type='network' address='192.168.122.1' network='default'/>",
        ),
        b'<!DOCTYPE d [<!ENTITY a "a">]><domain><name>&a;</name></domain>',
        full.replace(b"9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42", b"x"),
        full[: len(full) // 2],
        b"",
        b"<domain/>",
    ]
    seeds.words = [
        b"<domain>",
        b"</domain>",
        b"<name>",
        b"<uuid>",
        b"<devices>",
        b"<graphics type='spice'",
        b"</graphics>",
        b"<listen type='address' address='",
        b"type='socket'",
        b"type='network'",
        b"port='",
        b"tlsPort='",
        b"autoport='yes'",
        b"listen='",
        b"127.0.0.1",
        b"::1",
        b"0.0.0.0",
        b"localhost",
        b"-1",
        b"65535",
        b"<!DOCTYPE",
        b"<![CDATA[",
        b"&amp;",
    ]
    return seeds


def monitoring_request_seeds() -> Seeds:
    get = b"GET /metrics HTTP/1.1\r\nHost: 192.0.2.11:9864\r\nAccept: text/plain\r\n\r\n"
    seeds = Seeds(
        inputs=[
            get,
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            b"GET http://x/metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            get[:-2],
            get.replace(b"Accept: text/plain", b"X: " + b"a" * 8200),
            b"\r\n\r\n",
            b"",
        ]
    )
    seeds.words = [b"GET", b"HEAD", b"/metrics", b"/healthz", b"HTTP/1.1", b"HTTP/1.0",
                   b"\r\n", b"\r\n\r\n", b"?", b" "]  # fmt: skip
    return seeds


_DROP = object()


# --- host identities and the handshake -------------------------------------------------------


def _json_variants(document: dict[str, Any], list_name: str) -> list[bytes]:
    """Near misses of a JSON document: each top member dropped or mistyped, extra members,
    duplicates, an empty and a mistyped list, and a few non-documents."""
    out = [json.dumps(document).encode()]
    for name in document:
        out.append(json.dumps({k: v for k, v in document.items() if k != name}).encode())
        for value in (None, 1, "", [], {}):
            out.append(json.dumps({**document, name: value}).encode())
    out.append(json.dumps({**document, "extra": 1}).encode())
    out.append(json.dumps({**document, "version": 2}).encode())
    out.append(json.dumps({**document, list_name: [1]}).encode())
    first = json.dumps(document).encode()
    out.append(first.replace(b'"kind"', b'"kind": 1, "kind"', 1))
    out += [b"", b"[]", b"null", b"{", b"\xff", b"[" * 3000, b"\xef\xbb\xbf" + first]
    return out


def _entry_variants(
    document: dict[str, Any], list_name: str, index: int, members: dict[str, list[Any]]
) -> list[bytes]:
    out = []
    items = document[list_name]
    for name, values in members.items():
        for value in values:
            entry = {**items[index]}
            if value is _DROP:
                entry.pop(name, None)
            else:
                entry[name] = value
            changed = [entry if i == index else item for i, item in enumerate(items)]
            out.append(json.dumps({**document, list_name: changed}).encode())
    return out


_CREATED = ["1969-12-31T23:59:59Z", "9999-12-31T23:59:59Z", "2024-02-30T00:00:00Z", 5, _DROP]


def identity_seeds() -> Seeds:
    import _identities

    from gateway.identity import dump_identity

    single = _identities.SOURCE
    rotated, _ = single.with_new_generation(now=_identities.NOW, random_bytes=lambda n: b"\x07" * n)
    rotated, _ = rotated.rotated()
    rotated, _ = rotated.with_new_generation(
        now=_identities.NOW, random_bytes=lambda n: b"\x09" * n
    )
    seeds = Seeds(inputs=[dump_identity(single), dump_identity(rotated)])
    document = json.loads(dump_identity(rotated))
    seeds.inputs += _json_variants(document, "keys")
    seed_hex = document["keys"][1]["seeds"]
    seeds.inputs += _entry_variants(
        document,
        "keys",
        1,
        {
            "id": ["ab" * 16, "zz" * 16, "0" * 31, _DROP],
            "state": ["retired", "pending", "on", _DROP],
            "created": _CREATED,
            "seeds": ["00" * 160, "07" + seed_hex[2:], seed_hex[:-2], "zz" * 160, _DROP],
            "extra": [1],
        },
    )
    seeds.inputs.append(json.dumps({**document, "keys": document["keys"] * 2}).encode())
    seeds.inputs.append(json.dumps({**document, "keys": document["keys"] * 22}).encode())
    seeds.inputs.append(json.dumps({**document, "host_id": "host a"}).encode())
    seeds.words = [
        b'"kind"',
        b'"version"',
        b'"host_id"',
        b'"keys"',
        b'"id"',
        b'"state"',
        b'"created"',
        b'"seeds"',
        b'"pending"',
        b'"active"',
        b'"retired"',
        b'"2024-01-01T00:00:00Z"',
        b"spice-migration-gateway host identity",
    ]
    return seeds


def public_identity_seeds() -> Seeds:
    import _identities

    from gateway.identity import dump_public

    text = dump_public(_identities.SOURCE.active)
    document = json.loads(text)
    seeds = Seeds(inputs=[text, dump_public(_identities.TARGET.active)])
    for name in ("ed25519", "mldsa65", "kem", "self_signature"):
        value = document[name]
        flipped = ("B" if value[8] == "A" else "A").join((value[:8], value[9:]))
        for changed in (flipped, value[:-4], value + "AAAA", "!" * len(value), _DROP):
            doc = {**document, name: changed}
            if changed is _DROP:
                del doc[name]
            seeds.inputs.append(json.dumps(doc).encode())
    for fingerprint in ("sha256:" + "00" * 32, "sha256:00", document["fingerprint"].upper(), 1):
        seeds.inputs.append(json.dumps({**document, "fingerprint": fingerprint}).encode())
    for host in ("host-z", "", "host a", "h" * 129):
        seeds.inputs.append(json.dumps({**document, "host_id": host}).encode())
    for created in _CREATED[:-1]:
        seeds.inputs.append(json.dumps({**document, "created": created}).encode())
    seeds.inputs += _json_variants(document, "kem")[1:20]
    seeds.words = [
        b'"kind"',
        b'"version"',
        b'"host_id"',
        b'"id"',
        b'"created"',
        b'"ed25519"',
        b'"mldsa65"',
        b'"kem"',
        b'"self_signature"',
        b'"fingerprint"',
        b"sha256:",
        b"spice-migration-gateway public host identity",
    ]
    return seeds


def trust_store_seeds() -> Seeds:
    import _identities

    from gateway.identity import TrustStore, dump_trust_store

    store = TrustStore()
    store, _ = store.with_peer(_identities.SOURCE.public)
    store, _ = store.with_peer(_identities.TARGET.public)
    retired, _ = store.retired(_identities.SOURCE.active.key_id)
    pending = _identities.identity("host-b", 3)
    rotating, _ = store.with_peer(pending.public)
    seeds = Seeds(inputs=[dump_trust_store(s) for s in (TrustStore(), store, retired, rotating)])
    document = json.loads(dump_trust_store(rotating))
    seeds.inputs += _json_variants(document, "peers")
    seeds.inputs += _entry_variants(
        document,
        "peers",
        2,
        {
            "state": ["active", "retired", "on", _DROP],
            "host_id": ["host-a", "host a", _DROP],
            "id": ["ab" * 16, _DROP],
            "created": _CREATED,
            "kem": [document["peers"][0]["kem"], "AAAA", _DROP],
            "extra": [1],
        },
    )
    seeds.inputs.append(json.dumps({**document, "peers": document["peers"][:1] * 2}).encode())
    seeds.words = [
        b'"kind"',
        b'"version"',
        b'"peers"',
        b'"host_id"',
        b'"id"',
        b'"state"',
        b'"created"',
        b'"ed25519"',
        b'"mldsa65"',
        b'"kem"',
        b'"pending"',
        b'"active"',
        b'"retired"',
        b"spice-migration-gateway trust store",
    ]
    return seeds


def _message_variants(message: bytes, boundaries: Iterable[int]) -> list[bytes]:
    """Truncations at and flips around each field boundary, one extra byte, oversized."""
    out = [message, message + b"\x00", message[:-1]]
    for at in boundaries:
        out.append(message[:at])
        for delta in (-1, 0, 1):
            position = at + delta
            if 0 <= position < len(message):
                out.append(
                    message[:position] + bytes([message[position] ^ 0x01]) + message[position + 1 :]
                )
    return out


def handshake_hello_seeds() -> Seeds:
    import _identities

    from gateway import handshake

    hellos = [
        handshake.hello(_identities.TARGET, now=_identities.NOW + delta)[0]
        for delta in (0, -30, -91, 60)
    ]
    hello = hellos[0]
    host = len(_identities.TARGET.host_id)
    boundaries = [4, 5, 6, 7, 7 + host, 23 + host, 31 + host, 63 + host, 1279 + host]
    seeds = Seeds(inputs=[*hellos, *_message_variants(hello, boundaries)])
    seeds.inputs.append(hello[:6] + b"\x00" + hello[7:])
    seeds.inputs.append(hello[:6] + b"\xff" + hello[7:])
    seeds.inputs.append(hello + bytes(handshake.MAX_HELLO - len(hello) + 1))
    seeds.inputs.append(handshake.hello(_identities.SOURCE, now=_identities.NOW)[0])
    seeds.words = [handshake.MAGIC, b"SMGK\x01\x01", b"\x06host-b", b"\x06host-a"]
    return seeds


def handshake_offer_seeds() -> Seeds:
    import _identities

    from gateway import handshake

    def offer(announcement: bytes) -> bytes:
        return handshake._answer(
            _identities.FIXED_HELLO,
            announcement,
            _identities.SOURCE,
            b"\x5a" * 32,
            now=_identities.NOW,
        )[0]

    offers = [
        offer(_identities.ANNOUNCEMENT),
        offer(b"x"),
        offer(b"y" * handshake.MAX_ANNOUNCEMENT),
    ]
    message = offers[0]
    size = len(_identities.ANNOUNCEMENT)
    at = 6 + 32 + 7 + 16 + 7 + 16
    boundaries = [4, 5, 6, 38, 39, 45, 61, 62, 68, at, at + 2, at + 2 + size, at + 2 + size + 1120]
    seeds = Seeds(inputs=[*offers, *_message_variants(message, boundaries)])
    seeds.inputs.append(message[:at] + b"\x00\x00" + message[at + 2 :])
    seeds.inputs.append(message[:at] + b"\x10\x01" + message[at + 2 :])
    seeds.inputs.append(message + bytes(handshake.MAX_OFFER - len(message) + 1))
    seeds.inputs.append(message[:38] + b"\x06host-b" + message[45:])  # from the target itself
    seeds.inputs.append(message[:38] + b"\x00" + message[39:])
    seeds.inputs.append(message[:38] + b"\x81" + message[39:])
    seeds.words = [handshake.MAGIC, b"SMGK\x01\x02", b"\x06host-b", b"\x06host-a"]
    return seeds


def handshake_direct_seeds() -> Seeds:
    import _identities

    from gateway import handshake

    def direct(announcement: bytes, now: int = _identities.NOW) -> bytes:
        return handshake.direct_offer(
            announcement,
            _identities.SOURCE,
            _identities.SOURCE_TRUST,
            _identities.TARGET.host_id,
            now=now,
        )[0]

    messages = [
        direct(_identities.ANNOUNCEMENT),
        direct(b"x"),
        direct(b"y" * handshake.MAX_ANNOUNCEMENT),
        direct(_identities.ANNOUNCEMENT, _identities.NOW - 91),
        direct(_identities.ANNOUNCEMENT, _identities.NOW + 31),
    ]
    message = messages[0]
    size = len(_identities.ANNOUNCEMENT)
    at = 6 + 7 + 16 + 7 + 16 + 8 + 32  # the announcement length
    boundaries = [4, 5, 6, 7, 13, 29, 36, 52, 60, at, at + 2, at + 2 + size]
    seeds = Seeds(inputs=[*messages, *_message_variants(message, boundaries)])
    seeds.inputs.append(message[:6] + b"\x06host-b" + message[13:])  # from the target itself
    seeds.inputs.append(message[:29] + b"\x06host-c" + message[36:])  # for another host
    seeds.inputs.append(message[:at] + b"\x00\x00" + message[at + 2 :])
    seeds.inputs.append(message + bytes(handshake.MAX_DIRECT - len(message) + 1))
    seeds.words = [handshake.MAGIC, b"SMGK\x01\x03", b"\x06host-b", b"\x06host-a"]
    return seeds


# --- driving it ------------------------------------------------------------------------------


def generate(harness: _table.Harness) -> Seeds | None:
    """Seeds and dictionary words for ``harness``; None when it keeps hand-written seeds."""
    name = harness.name
    if name.startswith("native_"):
        name = name.removesuffix("_structured")
        kind = name.removeprefix("native_")
        channel = ChannelType.USBREDIR if kind == "spicevmc" else native.channel_by_name(kind)
        return native_seeds(channel, harness.max_len)
    generators: dict[str, Callable[[], Seeds]] = {
        "envelope_open": open_seeds,
        "envelope_payload": payload_seeds,
        "envelope_payload_structured": builder_seeds,
        "envelope_caps_structured": caps_seeds,
        "keyring": keyring_seeds,
        "proxy_config": proxy_config_seeds,
        "identity": identity_seeds,
        "public_identity": public_identity_seeds,
        "trust_store": trust_store_seeds,
        "handshake_hello": handshake_hello_seeds,
        "handshake_offer": handshake_offer_seeds,
        "handshake_direct": handshake_direct_seeds,
        "peer_link": peer_link_seeds,
        "libvirt_domain": libvirt_domain_seeds,
        "monitoring_request": monitoring_request_seeds,
    }
    generator = generators.get(name)
    return generator() if generator else None


def dictionary_text(words: Iterable[bytes]) -> str:
    """libFuzzer's dictionary format: one quoted entry per line, \\xNN for anything else."""
    lines = ["# Generated by fuzz/make_corpus.py: do not edit."]
    for number, word in enumerate(dict.fromkeys(w for w in words if w), 1):
        text = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in word
        )
        lines.append(f'w{number}="{text}"')
    return "\n".join(lines) + "\n"


def replay(harness: _table.Harness, inputs: list[bytes]) -> tuple[list[bytes], list[str]]:
    """Run every input through the harness in-process; split off those that fail it."""
    target = _table.load(harness).TestOneInput
    kept, findings = [], []
    for data in inputs:
        try:
            target(data)
        except Exception as error:
            findings.append(f"{type(error).__name__}: {error} <- {data[:64].hex()}")
        else:
            kept.append(data)
    return kept, findings


def merge(harness: _table.Harness, folders: list[Path]) -> None:
    """libFuzzer -merge=1 of ``folders`` into a fresh committed corpus."""
    with tempfile.TemporaryDirectory(prefix=f"{harness.name}-merge-") as tmp:
        merged = Path(tmp) / "merged"
        merged.mkdir()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        env.pop("SMG_FUZZ_INSTRUMENT", None)
        command = [
            sys.executable,
            str(harness.path),
            "-merge=1",
            *harness.options(),
            f"-artifact_prefix={tmp}/",
            str(merged),
            *map(str, folders),
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            raise SystemExit(f"{harness.name}: merge failed ({result.returncode})")
        shutil.rmtree(harness.corpus, ignore_errors=True)
        harness.corpus.mkdir(parents=True)
        for path in sorted(merged.iterdir()):
            shutil.copyfile(path, harness.corpus / path.name)


def write_all(folder: Path, inputs: Iterable[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)  # libFuzzer's own naming


def make(harness: _table.Harness, *, fresh: bool, keep_all: bool) -> int:
    seeds = generate(harness)
    if seeds is None:
        print(f"{harness.name}: hand-written seeds, left as they are")
        return 0
    candidates = list(dict.fromkeys(d for d in seeds.inputs if len(d) <= harness.max_len))
    kept, findings = replay(harness, candidates)
    for finding in findings:
        print(f"{harness.name}: FINDING {finding}")
    if seeds.words:
        harness.dictionary.parent.mkdir(parents=True, exist_ok=True)
        harness.dictionary.write_text(dictionary_text(seeds.words))
    with tempfile.TemporaryDirectory(prefix=f"{harness.name}-seeds-") as tmp:
        generated = Path(tmp) / "generated"
        write_all(generated, kept)
        if not fresh:
            # One folder without duplicates: libFuzzer's merge is then the same whether or not
            # the committed corpus already holds these seeds (so re-running changes nothing).
            known = {hashlib.sha1(data).digest() for data in kept}
            for path in harness.seeds():
                if hashlib.sha1(path.read_bytes()).digest() not in known:
                    shutil.copyfile(path, generated / path.name)
        if keep_all:
            shutil.rmtree(harness.corpus, ignore_errors=True)
            write_all(harness.corpus, kept)
        else:
            merge(harness, [generated])
    size = sum(p.stat().st_size for p in harness.seeds())
    print(
        f"{harness.name}: {len(candidates)} candidates -> {len(harness.seeds())} seeds "
        f"({size} bytes), {len(findings)} findings"
    )
    return len(findings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", help="names (default: every harness)")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start from the generated seeds only, dropping merged-back inputs",
    )
    parser.add_argument(
        "--keep-all",
        action="store_true",
        help="commit every candidate, without merging (for debugging)",
    )
    args = parser.parse_args(argv)
    findings = 0
    for harness in _table.discover(args.harnesses):
        findings += make(harness, fresh=args.fresh, keep_all=args.keep_all)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
