"""seal / open: round trips for every channel, context binding, pinning, derivation, inputs,
verify-then-consume, and the context decoder against Context's own checks.

The refusals (tampering, replay, expiry, bombs...) are in test_envelope_attacks.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway
from gateway import native
from gateway.envelope import (
    ANY_MIGRATION,
    DEFAULT_TTL,
    HEADER_SIZE,
    MAX_CLOCK_SKEW,
    MAX_TTL,
    Context,
    Direction,
    ExpectedContext,
    Policy,
    _decode_context,
    _derive,
    open_envelope,
    read_header,
    seal,
    verify,
)
from gateway.errors import ConfigError, ContextMismatch, MalformedInput, Replayed
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import (
    ChannelType,
    CharDeviceState,
    DisplayState,
    MainState,
    SpicevmcState,
    StateModel,
    UsbredirState,
)
from schemas.streams import usbredir_packet
from tests.strategies import budget, channel_states
from tests.vectors.envelope import reference

SAMPLES = Path(gateway.__file__).parent / "samples"
NOW = 1_800_000_000
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")


def sample(name: str) -> tuple[ChannelType, bytes, StateModel]:
    channel = native.channel_by_name(name)
    data = (SAMPLES / f"{name}.bin").read_bytes()
    return channel, data, native.decode(channel, data)


def context_for(channel: ChannelType, **changes: object) -> Context:
    fields: dict[str, object] = {
        "channel_type": channel,
        "channel_id": 0,
        "vm_id": VM,
        "migration_id": MIGRATION,
        "source_host": "src.example",
        "target_host": "dst.example",
        "schema_version": 1,
    }
    fields.update(changes)
    return Context(**fields)  # type: ignore[arg-type]


def counter_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def device(data: bytes) -> CharDeviceState:
    return CharDeviceState(
        connected=True,
        num_client_tokens=3,
        num_send_tokens=4,
        write_size=len(data),
        write_num_client_tokens=min(1, len(data)),
        write_data=data,
    )


@pytest.mark.parametrize("name", sorted(native.CHANNEL_NAMES))
def test_every_sample_round_trips_to_the_same_native_bytes(
    name: str, keyring: Keyring, guard: ReplayGuard
) -> None:
    channel, data, state = sample(name)
    context = context_for(channel, channel_id=3)
    blob = seal(state, context, keyring, now=NOW)
    opened = open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW + 1)
    assert opened.state == state
    assert type(opened.state) is type(state)
    assert opened.context == context
    assert opened.issued_at == NOW
    assert opened.expires_at == NOW + DEFAULT_TTL
    assert opened.key_id == keyring.active.key_id
    assert opened.blob_id == read_header(blob).salt
    assert native.encode(opened.state, channel) == data
    assert opened.blob_id in guard


@given(item=channel_states())
@budget(60)
def test_any_valid_state_round_trips(item: tuple[ChannelType, StateModel]) -> None:
    channel, state = item
    ring = Keyring.create(now=NOW)
    context = context_for(channel, channel_id=7)
    blob = seal(state, context, ring, now=NOW)
    with tempfile.TemporaryDirectory() as tmp, ReplayGuard(Path(tmp) / "r.db") as fresh:
        opened = open_envelope(blob, ExpectedContext.of(context), ring, fresh, now=NOW)
    assert opened.state == state
    assert native.encode(opened.state, channel) == native.encode(state, channel)


def test_first_channel_learns_the_migration_id_and_the_others_are_pinned(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    _, _, main_state = sample("main")
    _, _, display_state = sample("display")
    main_ctx = context_for(ChannelType.MAIN)
    display_ctx = context_for(ChannelType.DISPLAY)
    first = open_envelope(
        seal(main_state, main_ctx, keyring, now=NOW),
        ExpectedContext.of(main_ctx, migration_id=ANY_MIGRATION),
        keyring,
        guard,
        now=NOW,
    )
    pinned = first.context.migration_id
    assert pinned == MIGRATION
    expected = ExpectedContext.of(display_ctx, migration_id=pinned)
    open_envelope(seal(display_state, display_ctx, keyring, now=NOW), expected, keyring, guard,
                  now=NOW)

    other = context_for(ChannelType.DISPLAY, migration_id=uuid.uuid4())
    with pytest.raises(ContextMismatch) as caught:
        open_envelope(seal(display_state, other, keyring, now=NOW), expected, keyring, guard,
                      now=NOW)
    assert caught.value.field == "migration_id"


def test_any_trusted_source_is_accepted(keyring: Keyring, guard: ReplayGuard) -> None:
    _, _, state = sample("inputs")
    context = context_for(ChannelType.INPUTS, source_host="b.example")
    expected = ExpectedContext.of(context, sources={"a.example", "b.example", "c.example"})
    assert open_envelope(seal(state, context, keyring, now=NOW), expected, keyring, guard,
                         now=NOW).context.source_host == "b.example"


def test_spicevmc_state_seals_for_each_of_its_channels(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    state = SpicevmcState(device=device(b"pending bytes"))
    for channel in (ChannelType.PORT, ChannelType.WEBDAV):
        context = context_for(channel)
        opened = open_envelope(seal(state, context, keyring, now=NOW),
                               ExpectedContext.of(context), keyring, guard, now=NOW)
        assert opened.context.channel_type is channel
    # usbredir has its own model (the pending bytes are usbredir packets).
    with pytest.raises(ContextMismatch):
        seal(state, context_for(ChannelType.USBREDIR), keyring, now=NOW)
    packet = usbredir_packet(2, b"", packet_id=7)  # device_disconnect
    usbredir = UsbredirState(device=device(packet))
    context = context_for(ChannelType.USBREDIR)
    opened = open_envelope(seal(usbredir, context, keyring, now=NOW),
                           ExpectedContext.of(context), keyring, guard, now=NOW)
    assert opened.state == usbredir


@given(secret=st.binary(min_size=32, max_size=32), salt=st.binary(min_size=32, max_size=32))
@budget(100)
def test_derivation_is_hkdf_sha256_with_one_label_per_purpose(secret: bytes, salt: bytes) -> None:
    assert _derive(secret, salt) == reference.derive(secret, salt)


def test_seal_writes_the_documented_bytes(keyring: Keyring) -> None:
    """The gateway's blob equals one built from SECURITY.md by the plain reference sealer."""
    _, _, state = sample("display")
    context = context_for(ChannelType.DISPLAY, channel_id=1)
    blob = seal(state, context, keyring, now=NOW, ttl=120, random_bytes=counter_random())
    raw_context = reference.RawContext(
        channel_type=2, channel_id=1, direction=1, schema_version=1, vm_id=VM,
        migration_id=MIGRATION, issued_at=NOW, expires_at=NOW + 120,
        source_host="src.example", target_host="dst.example",
    )
    payload = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    assert blob == reference.seal_raw(
        payload,
        raw_context.encode(),
        key_id=keyring.active.key_id,
        secret=keyring.active.secret,
        salt=(1).to_bytes(32, "big"),
    )


def test_header_names_the_active_key_and_a_fresh_salt_each_time(keyring: Keyring) -> None:
    _, _, state = sample("smartcard")
    context = context_for(ChannelType.SMARTCARD)
    first = read_header(seal(state, context, keyring, now=NOW))
    second = read_header(seal(state, context, keyring, now=NOW))
    assert first.key_id == second.key_id == keyring.active.key_id
    assert first.salt != second.salt
    assert (first.format_version, first.suite) == (1, 1)


def test_new_seals_use_the_new_active_key_after_rotation(keyring: Keyring) -> None:
    _, _, state = sample("inputs")
    rotated, promoted = keyring.rotated()
    blob = seal(state, context_for(ChannelType.INPUTS), rotated, now=NOW)
    assert read_header(blob).key_id == promoted.key_id != keyring.active.key_id


def test_the_state_is_encrypted(keyring: Keyring) -> None:
    marker = b"MARKER-" * 10
    state = SpicevmcState(device=device(marker))
    blob = seal(state, context_for(ChannelType.PORT), keyring, now=NOW)
    assert marker[:8] not in blob
    assert b"write_data" not in blob
    header = read_header(blob)
    assert header.body_length == len(msgpack.packb(state.model_dump(), use_bin_type=True))
    assert len(blob) == header.total_length
    # The context travels in the clear (authenticated, not secret): the host ids are visible.
    assert b"src.example" in blob[HEADER_SIZE:]


# --- what seal refuses ---------------------------------------------------------------------


def test_seal_refuses_a_state_of_another_channel(keyring: Keyring) -> None:
    _, _, state = sample("display")
    with pytest.raises(ContextMismatch) as caught:
        seal(state, context_for(ChannelType.MAIN), keyring, now=NOW)
    assert caught.value.field == "channel_type"


def test_seal_refuses_another_schema_version(keyring: Keyring) -> None:
    _, _, state = sample("main")
    assert isinstance(state, MainState)
    with pytest.raises(ContextMismatch) as caught:
        seal(state, context_for(ChannelType.MAIN, schema_version=2), keyring, now=NOW)
    assert caught.value.field == "schema_version"


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, True])
def test_seal_refuses_a_lifetime_out_of_range(keyring: Keyring, ttl: int) -> None:
    _, _, state = sample("inputs")
    with pytest.raises(ConfigError, match="ttl"):
        seal(state, context_for(ChannelType.INPUTS), keyring, ttl=ttl, now=NOW)


def test_seal_refuses_a_random_source_that_gives_the_wrong_size(keyring: Keyring) -> None:
    _, _, state = sample("inputs")
    with pytest.raises(ConfigError, match="16-byte salt"):
        seal(state, context_for(ChannelType.INPUTS), keyring, random_bytes=lambda n: b"r" * 16)


def test_seal_refuses_a_clock_before_the_epoch(keyring: Keyring) -> None:
    _, _, state = sample("inputs")
    with pytest.raises(ConfigError, match="now"):
        seal(state, context_for(ChannelType.INPUTS), keyring, now=-5)


@pytest.mark.parametrize(
    "changes",
    [
        {"channel_id": 256},
        {"channel_id": -1},
        {"channel_id": True},
        {"schema_version": 0},
        {"schema_version": 1 << 16},
        {"source_host": ""},
        {"target_host": "x" * 256},
        {"target_host": "é" * 128},
        {"source_host": "bad\nhost"},
        {"vm_id": "6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1"},
        {"channel_type": 99},
        {"direction": 3},
    ],
)
def test_context_refuses_values_it_cannot_encode(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        context_for(ChannelType.MAIN, **changes)


def test_context_accepts_the_longest_host_id_and_plain_ints() -> None:
    context = context_for(2, target_host="é" * 127 + "x", direction=1)  # type: ignore[arg-type]
    assert context.channel_type is ChannelType.DISPLAY
    assert context.direction is Direction.SOURCE_TO_TARGET


def test_expected_context_needs_a_trusted_source() -> None:
    with pytest.raises(ConfigError, match="empty"):
        ExpectedContext.of(context_for(ChannelType.MAIN), sources=[])
    with pytest.raises(ConfigError):
        ExpectedContext.of(context_for(ChannelType.MAIN), sources=["ok", ""])


@pytest.mark.parametrize(
    "changes",
    [
        {"max_blob_size": 0},
        {"clock_skew": -1},
        {"clock_skew": 601},
        {"max_ttl": 0},
        {"max_depth": 0},
        {"min_schema_version": 0},
        {"min_format_version": 0},
    ],
)
def test_policy_refuses_nonsense(changes: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(Policy(), **changes)


def test_display_state_with_surfaces_round_trips(keyring: Keyring, guard: ReplayGuard) -> None:
    """The deepest model (lossy surfaces) fits the default nesting limit."""
    _, _, base = sample("display")
    assert isinstance(base, DisplayState)
    lossy = {
        "kind": "lossy",
        "surfaces": tuple(
            {"id": i, "lossy_rect": {"left": 0, "top": 0, "right": 10, "bottom": 20}}
            for i in range(0, 40, 3)
        ),
    }
    state = DisplayState.model_validate({**base.model_dump(), "surfaces": lossy})
    context = context_for(ChannelType.DISPLAY)
    opened = open_envelope(seal(state, context, keyring, now=NOW), ExpectedContext.of(context),
                           keyring, guard, now=NOW)
    assert opened.state == state


# --- verify, then consume ------------------------------------------------------------------


def test_verify_records_nothing_and_consume_records_once(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    _, _, state = sample("display")
    context = context_for(ChannelType.DISPLAY)
    blob = seal(state, context, keyring, now=NOW, ttl=120)
    policy = Policy(clock_skew=7)
    verified = verify(blob, ExpectedContext.of(context), keyring, policy=policy, now=NOW + 1)
    again = verify(blob, ExpectedContext.of(context), keyring, policy=policy, now=NOW + 1)
    assert len(guard) == 0
    assert verified.context == context
    assert verified.blob_id == read_header(blob).salt
    # Kept until expiry plus the largest skew any opener may use, not this opener's 7 s.
    assert (verified.keep_until, verified.checked_at) == (NOW + 120 + MAX_CLOCK_SKEW, NOW + 1)

    opened = verified.consume(guard)
    assert opened.state == state
    assert (opened.context, opened.blob_id) == (context, verified.blob_id)
    assert (opened.issued_at, opened.expires_at) == (NOW, NOW + 120)
    assert verified.blob_id in guard
    # A second verification of the same blob passes; its record does not.
    with pytest.raises(Replayed):
        again.consume(guard)
    with pytest.raises(Replayed):
        open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW + 1)
    assert len(guard) == 1


def test_a_refusing_claim_consumes_the_blob(keyring: Keyring, guard: ReplayGuard) -> None:
    _, _, state = sample("inputs")
    context = context_for(ChannelType.INPUTS)
    blob = seal(state, context, keyring, now=NOW)
    verified = verify(blob, ExpectedContext.of(context), keyring, now=NOW)

    def refuse() -> None:
        raise ContextMismatch("migration_id", "another migration is pinned")

    with pytest.raises(ContextMismatch):
        verified.consume(guard, claim=refuse)
    # Authentic, so used once even though refused: offering it again is a replay.
    assert verified.blob_id in guard
    claimed: list[uuid.UUID] = []
    with pytest.raises(Replayed):
        verified.consume(guard, claim=lambda: claimed.append(verified.context.migration_id))
    assert claimed == []


def test_verified_does_not_show_the_state(keyring: Keyring) -> None:
    _, _, state = sample("main")
    context = context_for(ChannelType.MAIN)
    verified = verify(seal(state, context, keyring, now=NOW), ExpectedContext.of(context),
                      keyring, now=NOW)
    assert "state" not in repr(verified)
    assert "_opened" not in repr(verified)


# --- the context decoder's own checks --------------------------------------------------------


class RawFields(NamedTuple):
    """A context's wire fields, valid or not."""

    channel: int
    channel_id: int
    direction: int
    schema: int
    vm: bytes
    migration: bytes
    source: bytes
    target: bytes

    def encode(self) -> bytes:
        fixed = struct.pack(
            ">BBBH16s16sQQ", self.channel, self.channel_id, self.direction, self.schema,
            self.vm, self.migration, NOW, NOW + 60,
        )
        return b"".join(
            (fixed, bytes([len(self.source)]), self.source, bytes([len(self.target)]), self.target)
        )

    def checked(self) -> Context | None:
        """What the checked constructor makes of these fields, or None where it refuses them."""
        try:
            return Context(
                ChannelType(self.channel),
                self.channel_id,
                uuid.UUID(bytes=self.vm),
                uuid.UUID(bytes=self.migration),
                self.source.decode(),
                self.target.decode(),
                self.schema,
                Direction(self.direction),
            )
        except (ValueError, ConfigError):  # UnicodeDecodeError is a ValueError
            return None


def _mostly(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> (
    st.SearchStrategy[Any]
):
    """``valid`` three times in four: one_of alone would pick it only half the time."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda pick: valid if pick else anything
    )


_HOSTS = _mostly(
    st.one_of(
        st.sampled_from([b"src.example", b"dst.example", "h\u00f4te".encode(), b"x" * 255]),
        st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1).map(
            str.encode
        ),
    ),
    st.one_of(
        st.sampled_from([b"", b"a\x00b", b"tab\there", b"\xff", "\u2028".encode()]),
        st.binary(max_size=12),
        st.text(max_size=12).map(lambda text: text.encode("utf-8", "surrogatepass")),
    ),
)
_RAW_FIELDS = st.builds(
    RawFields,
    channel=_mostly(st.sampled_from([int(c) for c in ChannelType]), st.integers(0, 255)),
    channel_id=st.integers(0, 255),
    direction=_mostly(st.sampled_from([int(d) for d in Direction]), st.integers(0, 255)),
    schema=_mostly(st.just(1), st.integers(0, 0xFFFF)),
    vm=st.one_of(st.just(VM.bytes), st.binary(min_size=16, max_size=16)),
    migration=st.one_of(st.just(MIGRATION.bytes), st.binary(min_size=16, max_size=16)),
    source=_HOSTS,
    target=_HOSTS,
)


@given(fields=_RAW_FIELDS, lend=st.booleans())
@budget(300)
def test_context_decoder_accepts_exactly_what_context_accepts(
    fields: RawFields, lend: bool
) -> None:
    """The decoder builds contexts without re-running Context's checks: it must make every one
    of them itself, whether or not an expected context lends its objects."""
    expected = ExpectedContext.of(context_for(ChannelType.MAIN)) if lend else None
    want = fields.checked()
    if want is None:
        with pytest.raises(MalformedInput):
            _decode_context(fields.encode(), expected)
        return
    got, issued, expires = _decode_context(fields.encode(), expected)
    assert (got, issued, expires) == (want, NOW, NOW + 60)
    for name in ("channel_type", "direction", "vm_id", "migration_id", "source_host"):
        assert type(getattr(got, name)) is type(getattr(want, name))
