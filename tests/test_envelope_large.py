"""Large blobs: byte strings of 64 KiB or more are sealed piece by piece, straight into the
blob's buffer. The bytes must be exactly the one-shot path's (and the reference sealer's), and
every refusal of the small path holds for them: same error class, nothing recorded."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from gateway import envelope
from gateway.envelope import (
    HEADER_SIZE,
    MAC_SIZE,
    TAG_SIZE,
    ExpectedContext,
    Policy,
    open_envelope,
    read_header,
    seal,
    verify,
)
from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    CountOutOfRange,
    GatewayError,
    SchemaViolation,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnknownKey,
    UnsupportedVersion,
)
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, CharDeviceState, SmartcardState, SpicevmcState, StateModel
from schemas.chardev import MAX_PENDING_WRITE
from tests import envelope_setup
from tests.envelope_setup import NOW, TTL, by_key_holder
from tests.vectors.envelope import reference
from tests.worst_states import worst_state

THRESHOLD = envelope._STREAM_MIN
SALT = bytes(range(7, 39))
CONTEXT = envelope_setup.context_for(ChannelType.PORT, 0)
EXPECTED = ExpectedContext.of(CONTEXT)


def port_state(size: int, seed: int = 0) -> SpicevmcState:
    data = random.Random(seed).randbytes(size)
    return SpicevmcState(
        device=CharDeviceState(
            connected=True, num_client_tokens=1, num_send_tokens=1, write_size=size,
            write_num_client_tokens=1, write_data=data,
        )
    )


def sealed(state: StateModel, keyring: Keyring, channel: ChannelType = ChannelType.PORT) -> bytes:
    context = envelope_setup.context_for(channel, 0)
    return seal(state, context, keyring, now=NOW, ttl=TTL, random_bytes=lambda n: SALT[:n])


def one_shot(
    state: StateModel, keyring: Keyring, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> bytes:
    """The blob the one-shot path seals (streaming off), same clock and salt."""
    with monkeypatch.context() as patch:
        patch.setattr(envelope, "_STREAM_MIN", 1 << 62)
        assert len(envelope._pack(state)) == 1
        return sealed(state, keyring, **kwargs)


def reference_blob(state: StateModel, keyring: Keyring, channel: ChannelType) -> bytes:
    payload = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    context = envelope_setup.raw_context(channel, 0)
    return by_key_holder(keyring, payload, context, SALT)


# --- the same bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 3 * THRESHOLD + 5, 4 << 20]
)
def test_round_trip_and_bytes_at_the_threshold(
    size: int, keyring: Keyring, guard: ReplayGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = port_state(size)
    # The seam: a byte string from the threshold on is a piece of its own, shorter ones are not.
    assert (len(envelope._pack(state)) > 1) == (size >= THRESHOLD)
    blob = sealed(state, keyring)
    assert blob == one_shot(state, keyring, monkeypatch)
    assert blob == reference_blob(state, keyring, ChannelType.PORT)
    opened = open_envelope(blob, EXPECTED, keyring, guard, now=NOW + 1)
    assert opened.state == state
    assert type(opened.state.device.write_data) is bytes


def test_several_large_fields_at_different_depths(
    keyring: Keyring, guard: ReplayGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A smartcard state: 32 MiB pending writes inside the device, a 64 KiB partial read after."""
    state = worst_state(ChannelType.SMARTCARD)
    assert isinstance(state, SmartcardState)
    pieces = envelope._pack(state)
    assert pieces[2] is state.device.write_data  # by reference, not copied
    assert pieces[5] is state.read_data
    blob = sealed(state, keyring, ChannelType.SMARTCARD)
    assert blob == one_shot(state, keyring, monkeypatch, channel=ChannelType.SMARTCARD)
    assert blob == reference_blob(state, keyring, ChannelType.SMARTCARD)
    context = envelope_setup.context_for(ChannelType.SMARTCARD, 0)
    opened = open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW + 1)
    assert opened.state == state


@pytest.mark.parametrize(
    "obj",
    [
        {"a": b"x" * THRESHOLD, "b": [1, (b"y" * (THRESHOLD + 1), {"c": b"z" * THRESHOLD})]},
        [b"", b"q" * (THRESHOLD - 1), [[[b"r" * THRESHOLD]]], {}, [], None, True, -1, 2.5, "s"],
        (b"w" * (2 * THRESHOLD), b"v" * THRESHOLD),
        {"deep": [[[[{"k": [b"u" * THRESHOLD, 2**64 - 1, "x" * 300]}]]]], "tail": b"t" * 70},
    ],
)
def test_pieces_join_to_msgpack(obj: object) -> None:
    pieces = envelope._pieces(obj)
    assert b"".join(pieces) == msgpack.packb(obj, use_bin_type=True)
    assert len(pieces) > 1


def test_where_states_hold_bytes() -> None:
    """What _pack looks at instead of walking a whole state (a display's is thousands of
    objects): every byte string field, found through the models' annotations."""
    fields = {
        channel: envelope._bytes_fields(type(worst_state(channel)))
        for channel in (ChannelType.DISPLAY, ChannelType.INPUTS, ChannelType.MAIN,
                        ChannelType.SMARTCARD, ChannelType.USBREDIR, ChannelType.PORT)
    }
    assert fields == {
        ChannelType.DISPLAY: (),
        ChannelType.INPUTS: (),
        ChannelType.MAIN: (("agent", "write_data"), ("agent_to_client", "msg_header_partial")),
        ChannelType.SMARTCARD: (("device", "write_data"), ("read_data",)),
        ChannelType.USBREDIR: (("device", "write_data"),),
        ChannelType.PORT: (("device", "write_data"),),
    }


def test_bytes_in_a_container_or_union_are_looked_for_everywhere() -> None:
    class Inner(BaseModel):
        data: bytes

    class Listed(BaseModel):
        items: tuple[Inner, ...]

    class Either(BaseModel):
        value: int | bytes

    class Plain(BaseModel):
        inner: Inner
        numbers: list[int]

    assert envelope._bytes_fields(Listed) is None
    assert envelope._bytes_fields(Either) is None
    assert envelope._bytes_fields(Plain) == (("inner", "data"),)


# --- refusals ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large() -> tuple[Keyring, bytes]:
    keyring = Keyring.create(now=NOW)
    return keyring, sealed(port_state(3 * THRESHOLD, seed=5), keyring)


Refusal = type[GatewayError] | tuple[type[GatewayError], ...]


def refused(keyring: Keyring, guard: ReplayGuard, blob: bytes, error: Refusal) -> None:
    with pytest.raises(GatewayError) as caught:
        open_envelope(blob, EXPECTED, keyring, guard, now=NOW + 1)
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {caught.value}"


def boundaries(blob: bytes) -> list[int]:
    context_end = HEADER_SIZE + read_header(blob).context_length
    tag = len(blob) - MAC_SIZE - TAG_SIZE
    mac = len(blob) - MAC_SIZE
    middle = (context_end + tag) // 2
    return sorted(
        {
            0, 4, 6, 8, 12, 28, HEADER_SIZE - 1, HEADER_SIZE, context_end - 1, context_end,
            context_end + 40,  # the payload's small prefix and the bin32 header
            middle, tag - 1, tag, tag + 8, mac, mac + 16, len(blob) - 1,
        }
    )


def test_every_truncation_class_is_refused(
    large: tuple[Keyring, bytes], guard: ReplayGuard
) -> None:
    keyring, blob = large
    for length in boundaries(blob):
        refused(keyring, guard, blob[:length], Truncated)
    refused(keyring, guard, blob + b"\x00", UnaccountedBytes)
    assert len(guard) == 0


def test_every_bit_flip_class_is_refused(
    large: tuple[Keyring, bytes], guard: ReplayGuard
) -> None:
    keyring, blob = large
    expected: dict[int, tuple[type[GatewayError], ...]] = {
        0: (BadMagic,),
        4: (UnsupportedVersion,),
        5: (UnsupportedVersion,),
        6: (CountOutOfRange, Truncated, UnaccountedBytes),
        8: (Truncated, UnaccountedBytes),
        11: (Truncated, UnaccountedBytes),
        12: (UnknownKey,),
    }
    for offset in boundaries(blob):
        for bit in (0, 7):
            data = bytearray(blob)
            data[offset] ^= 1 << bit
            refused(keyring, guard, bytes(data), expected.get(offset, (AuthenticationFailed,)))
    assert len(guard) == 0
    open_envelope(blob, EXPECTED, keyring, guard, now=NOW + 1)  # nothing above consumed it


def test_swapped_ciphertext_blocks_are_refused(
    large: tuple[Keyring, bytes], guard: ReplayGuard
) -> None:
    keyring, blob = large
    start = HEADER_SIZE + read_header(blob).context_length + 64
    swapped = blob[:start] + blob[start + 16 : start + 32] + blob[start : start + 16]
    swapped += blob[start + 32 :]
    refused(keyring, guard, swapped, AuthenticationFailed)
    assert len(guard) == 0


def test_size_limits_still_hold(large: tuple[Keyring, bytes], guard: ReplayGuard) -> None:
    keyring, blob = large
    with pytest.raises(TooLarge):
        open_envelope(
            blob, EXPECTED, keyring, guard, policy=Policy(max_blob_size=len(blob) - 1), now=NOW
        )
    # A key holder's port state one byte over the schema's bound: it authenticates, so it is
    # decrypted and refused by the schema (and spent), not by a shortcut of the large path.
    fields = port_state(1).model_dump(mode="python")
    over = MAX_PENDING_WRITE + 1
    fields["device"].update(write_size=over, write_data=bytes(over))
    payload = msgpack.packb(fields, use_bin_type=True)
    forged = by_key_holder(keyring, payload, envelope_setup.raw_context(ChannelType.PORT, 0), SALT)
    with pytest.raises(SchemaViolation):
        verify(forged, EXPECTED, keyring, now=NOW + 1)
    # The same bytes labelled as a display blob are over the display bound: refused before
    # decryption.
    display = reference.seal_raw(
        payload,
        envelope_setup.raw_context(ChannelType.DISPLAY, 0).encode(),
        key_id=keyring.active.key_id,
        secret=keyring.active.secret,
        salt=SALT,
    )
    with pytest.raises(TooLarge):
        verify(display, EXPECTED, keyring, now=NOW + 1)
    assert len(guard) == 0


# --- memory: what "without copies" means ---------------------------------------------------


def peak_during(action: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_sealing_a_large_state_allocates_only_the_blob(keyring: Keyring) -> None:
    """The one-shot path holds the packed payload, the ciphertext and the joined blob at once
    (three times the state); the streaming path writes the blob and nothing else that large."""
    state = port_state(4 << 20)
    size = len(sealed(state, keyring))
    assert peak_during(lambda: sealed(state, keyring)) < size + 64 * 1024


def test_opening_a_large_blob_holds_the_payload_and_the_state_only(keyring: Keyring) -> None:
    blob = sealed(port_state(4 << 20), keyring)
    peak = peak_during(lambda: verify(blob, EXPECTED, keyring, now=NOW + 1))
    assert peak < 2 * len(blob) + 64 * 1024
