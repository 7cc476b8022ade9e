"""The attack catalogue: everything a client, the network or a compromised source may try.

Each refusal is checked for its exact error class and for leaving nothing in the replay
database. A "compromised source" holds a valid key and seals whatever bytes it likes; it is
played by the plain reference sealer in tests/vectors/envelope/reference.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import random
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

import gateway
from gateway import native
from gateway.envelope import (
    ANY_MIGRATION,
    HEADER_SIZE,
    MAC_SIZE,
    MAX_CLOCK_SKEW,
    MAX_PAYLOAD,
    TAG_SIZE,
    Context,
    Direction,
    ExpectedContext,
    Policy,
    open_envelope,
    read_header,
    seal,
)
from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ContextMismatch,
    CountOutOfRange,
    DowngradeRefused,
    Expired,
    GatewayError,
    MalformedInput,
    NotYetValid,
    Replayed,
    SchemaViolation,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnknownKey,
    UnsupportedVersion,
)
from gateway.keys import Key, Keyring, KeyState, save_keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, CharDeviceState, SpicevmcState, StateModel
from tests import envelope_setup
from tests.envelope_setup import MIGRATION, NOW, TTL, VM, by_key_holder
from tests.vectors.envelope import reference

SAMPLES = Path(gateway.__file__).parent / "samples"
CHANNEL_NAMES = sorted(native.CHANNEL_NAMES)
SKEW = 30
SALT = bytes(range(100, 132))


def sample_state(name: str) -> tuple[ChannelType, StateModel]:
    channel = native.channel_by_name(name)
    return channel, native.decode(channel, (SAMPLES / f"{name}.bin").read_bytes())


def context_for(channel: ChannelType, **changes: Any) -> Context:
    return envelope_setup.context_for(channel, 1, **changes)


def raw_context_for(channel: ChannelType, **changes: Any) -> reference.RawContext:
    return envelope_setup.raw_context(channel, 1, **changes)


def opener(
    keyring: Keyring, guard: ReplayGuard, expected: ExpectedContext, policy: Policy | None = None
) -> Any:
    def attempt(blob: bytes, now: int = NOW + 1) -> object:
        return open_envelope(blob, expected, keyring, guard, policy=policy or Policy(), now=now)

    return attempt


def assert_spent(guard: ReplayGuard, blob: bytes) -> None:
    """An authentic blob that was refused is recorded all the same: it is used once."""
    assert read_header(blob).salt in guard
    assert len(guard) == 1


def refused(open_blob: Any, blob: bytes, error: type[GatewayError], **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        open_blob(blob, **kwargs)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    return caught.value


def sealed_sample(name: str, keyring: Keyring) -> tuple[bytes, ExpectedContext]:
    channel, state = sample_state(name)
    context = context_for(channel)
    blob = seal(state, context, keyring, now=NOW, ttl=TTL, random_bytes=lambda n: SALT[:n])
    return blob, ExpectedContext.of(context)


def by_compromised_source(
    keyring: Keyring, payload: bytes, context: reference.RawContext | bytes
) -> bytes:
    """A blob that authenticates: sealed with the real key over arbitrary bytes."""
    return by_key_holder(keyring, payload, context, SALT)


def expected_for_flip(offset: int) -> tuple[type[GatewayError], ...]:
    """What a flipped bit at ``offset`` must be refused as."""
    if offset < 4:
        return (BadMagic,)
    if offset < 6:  # format version, suite
        return (UnsupportedVersion,)
    if offset < 8:  # context length: out of bounds, or the total no longer adds up
        return (CountOutOfRange, Truncated, UnaccountedBytes)
    if offset < 12:  # body length
        return (Truncated, UnaccountedBytes)
    if offset < 28:  # key id
        return (UnknownKey,)
    return (AuthenticationFailed,)  # salt, context, ciphertext, tag, signature


def flip(blob: bytes, bit: int) -> bytes:
    data = bytearray(blob)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CHANNEL_NAMES)
def test_every_single_bit_flip_is_refused(name: str, keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample(name, keyring)
    attempt = opener(keyring, guard, expected)
    assert len(blob) < 4096  # small enough to try every bit
    for bit in range(len(blob) * 8):
        with pytest.raises(GatewayError) as caught:
            attempt(flip(blob, bit))
        assert isinstance(caught.value, expected_for_flip(bit // 8)), (bit, caught.value)
    assert len(guard) == 0
    attempt(blob)  # the untouched blob still opens: nothing above consumed it
    assert len(guard) == 1


def test_bit_flips_in_a_large_blob_are_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    data = random.Random(1).randbytes(256 * 1024)
    state = SpicevmcState(
        device=CharDeviceState(
            connected=True, num_client_tokens=1, num_send_tokens=1, write_size=len(data),
            write_num_client_tokens=1, write_data=data,
        )
    )
    context = context_for(ChannelType.PORT)
    blob = seal(state, context, keyring, now=NOW)
    attempt = opener(keyring, guard, ExpectedContext.of(context))
    size = len(blob) * 8
    rng = random.Random(2)
    # Every bit of the header, context and trailer; a bounded sample of the ciphertext.
    context_end = (HEADER_SIZE + read_header(blob).context_length) * 8
    trailer = size - (TAG_SIZE + MAC_SIZE) * 8
    sampled = rng.sample(range(context_end, trailer), 300)
    bits = [*range(context_end), *range(trailer, size), *sampled]
    for bit in bits:
        with pytest.raises(GatewayError) as caught:
            attempt(flip(blob, bit))
        assert isinstance(caught.value, expected_for_flip(bit // 8)), (bit, caught.value)
    assert len(guard) == 0


@pytest.mark.parametrize("name", CHANNEL_NAMES)
def test_every_truncation_is_refused(name: str, keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample(name, keyring)
    attempt = opener(keyring, guard, expected)
    for length in range(len(blob)):
        refused(attempt, blob[:length], Truncated)
    assert len(guard) == 0


@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 16, os.urandom(1000)])
def test_appended_bytes_are_refused(extra: bytes, keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("display", keyring)
    refused(opener(keyring, guard, expected), blob + extra, UnaccountedBytes)
    assert len(guard) == 0


def test_too_large_is_refused_before_anything_else(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("display", keyring)
    small = Policy(max_blob_size=len(blob) - 1)
    refused(opener(keyring, guard, expected, small), blob, TooLarge)
    garbage = b"\x00" * len(blob)  # bad magic too: size is checked first
    refused(opener(keyring, guard, expected, small), garbage, TooLarge)
    assert len(guard) == 0


def test_swapped_tag_or_signature_from_another_blob_is_refused(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    first, expected = sealed_sample("inputs", keyring)
    channel, state = sample_state("inputs")
    # Same salt and state, one second later: only the context (issued-at) differs.
    second = seal(state, context_for(channel), keyring, now=NOW + 1,
                  random_bytes=lambda n: SALT[:n])
    attempt = opener(keyring, guard, expected)
    refused(attempt, first[:-MAC_SIZE] + second[-MAC_SIZE:], AuthenticationFailed)
    cut = len(first) - MAC_SIZE - TAG_SIZE
    refused(attempt, first[:cut] + second[cut:], AuthenticationFailed)
    refused(attempt, second[:HEADER_SIZE + 60] + first[HEADER_SIZE + 60:], AuthenticationFailed)
    assert len(guard) == 0


# --- keys ----------------------------------------------------------------------------------


def test_wrong_secret_under_the_same_key_id_is_refused(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    blob, expected = sealed_sample("main", keyring)
    impostor = Keyring([Key(keyring.active.key_id, KeyState.ACTIVE, NOW, b"\x42" * 32)])
    refused(opener(impostor, guard, expected), blob, AuthenticationFailed)
    assert len(guard) == 0


def test_unknown_key_id_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("main", keyring)
    error = refused(opener(Keyring.create(), guard, expected), blob, UnknownKey)
    assert keyring.active.id_hex in str(error)
    assert len(guard) == 0


@pytest.mark.parametrize("state", [KeyState.PENDING, KeyState.DECRYPT_ONLY])
def test_pending_and_decrypt_only_keys_open(state: KeyState, guard: ReplayGuard) -> None:
    sealer = Keyring.create(now=NOW)
    blob, expected = sealed_sample("smartcard", sealer)
    shared = sealer.active
    opener_ring = Keyring(
        [Key.generate(KeyState.ACTIVE), Key(shared.key_id, state, shared.created, shared.secret)]
    )
    opener(opener_ring, guard, expected)(blob)
    assert len(guard) == 1


def test_retired_key_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("smartcard", keyring)
    rotated, _ = keyring.rotated()
    retired = rotated.retired(keyring.active.key_id)
    error = refused(opener(retired, guard, expected), blob, UnknownKey)
    assert "retired" in str(error)
    assert len(guard) == 0


def test_rotation_keeps_blobs_in_flight_open(guard: ReplayGuard) -> None:
    """generate (pending) -> rotate -> blobs sealed under either key open -> retire."""
    ring = Keyring.create(now=NOW)
    old_blob, expected = sealed_sample("port", ring)
    with_pending, _ = ring.with_new_key()
    # A host that already has the pending key but not the rotation seals under the old key;
    # a host that rotated seals under the new one. Every host opens both.
    rotated, _ = with_pending.rotated()
    channel, state = sample_state("port")
    new_blob = seal(state, context_for(channel), rotated, now=NOW)
    for ring_now in (with_pending, rotated):
        assert read_header(new_blob).key_id in {k.key_id for k in ring_now.keys}
    opener(with_pending, guard, expected)(new_blob)
    opener(rotated, guard, expected)(old_blob)
    assert len(guard) == 2
    again = seal(state, context_for(channel), rotated, now=NOW)
    retired = rotated.retired(ring.active.key_id)
    opener(retired, guard, expected)(again)


# --- single use ----------------------------------------------------------------------------


def test_replay_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("webdav", keyring)
    attempt = opener(keyring, guard, expected)
    attempt(blob)
    refused(attempt, blob, Replayed)
    assert len(guard) == 1


def test_replay_is_refused_even_after_sigkill_right_after_open(
    keyring: Keyring, tmp_path: Path
) -> None:
    blob, expected = sealed_sample("usbredir", keyring)
    ring_path = tmp_path / "keyring.json"
    save_keyring(keyring, ring_path)
    blob_path = tmp_path / "blob"
    blob_path.write_bytes(blob)
    db = tmp_path / "replay.db"
    script = textwrap.dedent(
        """
        import json, os, signal, sys, uuid
        from pathlib import Path
        from gateway.envelope import ExpectedContext, open_envelope
        from gateway.keys import load_keyring
        from gateway.replay import ReplayGuard
        from schemas import ChannelType

        ring_path, blob_path, db, spec = sys.argv[1:5]
        spec = json.loads(spec)
        expected = ExpectedContext(
            channel_type=ChannelType(spec["channel"]), channel_id=spec["channel_id"],
            vm_id=uuid.UUID(spec["vm"]), migration_id=uuid.UUID(spec["migration"]),
            sources=frozenset(spec["sources"]), target_host=spec["target"], schema_version=1,
        )
        guard = ReplayGuard(db)
        open_envelope(Path(blob_path).read_bytes(), expected, load_keyring(ring_path), guard,
                      now=spec["now"])
        sys.stdout.write("opened\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no atexit, no cleanup
        """
    )
    spec = json.dumps(
        {
            "channel": int(expected.channel_type), "channel_id": expected.channel_id,
            "vm": str(VM), "migration": str(MIGRATION), "sources": sorted(expected.sources),
            "target": expected.target_host, "now": NOW + 1,
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(ring_path), str(blob_path), str(db), spec],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.stdout == "opened\n", done.stderr
    assert done.returncode == -9
    with ReplayGuard(db) as restarted:
        refused(opener(keyring, restarted, expected), blob, Replayed)


# --- lifetime ------------------------------------------------------------------------------


def test_expiry_and_future_are_refused_with_the_allowed_skew(
    keyring: Keyring, tmp_path: Path
) -> None:
    blob, expected = sealed_sample("main", keyring)
    refusals = [(NOW + TTL + SKEW + 1, Expired), (NOW - SKEW - 1, NotYetValid),
                (NOW + 10 * TTL, Expired)]
    for index, (now, error) in enumerate(refusals):
        # Each attempt on its own target: a refused authentic blob is spent where it was tried.
        with ReplayGuard(tmp_path / f"target-{index}.db") as guard:
            refused(opener(keyring, guard, expected), blob, error, now=now)
            assert_spent(guard, blob)
    with ReplayGuard(tmp_path / "fresh.db") as guard:
        opener(keyring, guard, expected)(blob, now=NOW + TTL + SKEW)  # the last accepted second


def test_future_blob_within_skew_opens(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("main", keyring)
    opener(keyring, guard, expected)(blob, now=NOW - SKEW)


def test_the_replay_record_outlives_the_blob(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("main", keyring)
    attempt = opener(keyring, guard, expected)
    attempt(blob, now=NOW)
    # Another blob opened at the last second the first is valid prunes expired rows, but not
    # the first blob's: a replay at that second is still refused.
    channel, state = sample_state("main")
    other = seal(state, context_for(channel), keyring, now=NOW + TTL)
    attempt(other, now=NOW + TTL + SKEW)
    refused(attempt, blob, Replayed, now=NOW + TTL + SKEW)
    # The row stays until no opener, whatever its skew, could accept the blob; then it may go,
    # and the blob is refused as expired anyway.
    refused(attempt, blob, Replayed, now=NOW + TTL + MAX_CLOCK_SKEW)
    refused(attempt, blob, Expired, now=NOW + TTL + MAX_CLOCK_SKEW + 1)


def test_lifetime_longer_than_policy_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    channel, state = sample_state("inputs")
    payload = msgpack.packb(state.model_dump(), use_bin_type=True)
    blob = by_compromised_source(
        keyring, payload, raw_context_for(channel, expires_at=NOW + 10 * 365 * 86400)
    )
    error = refused(
        opener(keyring, guard, ExpectedContext.of(context_for(channel))), blob, ContextMismatch
    )
    assert isinstance(error, ContextMismatch)
    assert error.field == "expires_at"
    assert_spent(guard, blob)


# --- context -------------------------------------------------------------------------------

MISMATCHES: list[tuple[str, dict[str, Any]]] = [
    ("channel_type", {"channel_type": ChannelType.DISPLAY}),
    ("channel_id", {"channel_id": 2}),
    ("vm_id", {"vm_id": uuid.UUID(int=VM.int ^ 1)}),
    ("migration_id", {"migration_id": uuid.UUID(int=MIGRATION.int ^ 1)}),
    ("source_host", {"sources": frozenset({"other.example"})}),
    ("target_host", {"target_host": "elsewhere.example"}),
    ("direction", {"direction": Direction.TARGET_TO_SOURCE}),
    ("schema_version", {"schema_version": 2}),
]


@pytest.mark.parametrize(("field", "change"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_each_context_field_must_match(
    field: str, change: dict[str, Any], keyring: Keyring, guard: ReplayGuard
) -> None:
    blob, expected = sealed_sample("main", keyring)
    wrong = dataclasses.replace(expected, **change)
    error = refused(opener(keyring, guard, wrong), blob, ContextMismatch)
    assert isinstance(error, ContextMismatch)
    assert error.field == field
    assert_spent(guard, blob)


def test_any_migration_still_checks_every_other_field(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    blob, expected = sealed_sample("main", keyring)
    loose = dataclasses.replace(expected, migration_id=ANY_MIGRATION, target_host="x.example")
    error = refused(opener(keyring, guard, loose), blob, ContextMismatch)
    assert isinstance(error, ContextMismatch)
    assert error.field == "target_host"


# --- versions ------------------------------------------------------------------------------


def test_schema_version_below_minimum_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("display", keyring)
    refused(opener(keyring, guard, expected, Policy(min_schema_version=2)), blob, DowngradeRefused)
    assert_spent(guard, blob)


def test_format_version_below_minimum_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    blob, expected = sealed_sample("display", keyring)
    refused(opener(keyring, guard, expected, Policy(min_format_version=2)), blob, DowngradeRefused)
    assert_spent(guard, blob)


@pytest.mark.parametrize(("version", "suite"), [(0, 1), (2, 1), (1, 0), (1, 2), (1, 255)])
def test_unknown_format_or_suite_is_refused_before_authentication(
    version: int, suite: int, keyring: Keyring, guard: ReplayGuard
) -> None:
    channel, state = sample_state("inputs")
    payload = msgpack.packb(state.model_dump(), use_bin_type=True)
    blob = reference.seal_raw(
        payload, raw_context_for(channel).encode(), key_id=keyring.active.key_id,
        secret=keyring.active.secret, salt=SALT, format_version=version, suite=suite,
    )
    expected = ExpectedContext.of(context_for(channel))
    refused(opener(keyring, guard, expected), blob, UnsupportedVersion)


def test_unknown_schema_version_is_refused(keyring: Keyring, guard: ReplayGuard) -> None:
    channel, state = sample_state("inputs")
    payload = msgpack.packb(state.model_dump(), use_bin_type=True)
    blob = by_compromised_source(keyring, payload, raw_context_for(channel, schema_version=9))
    expected = ExpectedContext.of(context_for(channel, schema_version=9))
    refused(opener(keyring, guard, expected), blob, UnsupportedVersion)
    assert_spent(guard, blob)


# --- a compromised source: valid key, hostile bytes ----------------------------------------


#: A valid inputs state as its dict; the bombs below alter it.
INPUTS: dict[str, Any] = {"motion_count": 3}


def packed_map_with_duplicate() -> bytes:
    """INPUTS with its first key repeated: msgpack alone would keep the last value silently."""
    first = next(iter(INPUTS))
    body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in INPUTS.items())
    return bytes([0x80 | (len(INPUTS) + 1)]) + body + msgpack.packb(first) + msgpack.packb(60)


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


BOMBS: dict[str, tuple[bytes, type[GatewayError]]] = {
    "empty": (b"", MalformedInput),
    "nesting just over the limit": (nested(17), CountOutOfRange),
    "nesting past msgpack's own stack": (nested(5000), MalformedInput),
    "bin32 declaring 4 GiB": (b"\xc6\xff\xff\xff\xff" + b"x" * 16, MalformedInput),
    "str32 declaring 4 GiB": (b"\xdb\xff\xff\xff\xff" + b"x" * 16, MalformedInput),
    "array32 declaring 4G items": (b"\xdd\xff\xff\xff\xff" + b"\xc0" * 16, MalformedInput),
    "map32 declaring 4G pairs": (b"\xdf\xff\xff\xff\xff" + b"\xc0" * 16, MalformedInput),
    "array over max_array_len": (msgpack.packb([None] * 1025), MalformedInput),
    "map over max_map_len": (msgpack.packb({f"k{i}": 0 for i in range(65)}), MalformedInput),
    "key over max_str_len": (msgpack.packb({"k" * 65: 0}), MalformedInput),
    "fixext1": (b"\xd4\x01\x00", MalformedInput),
    "ext8 of length 0": (b"\xc7\x00\x05", MalformedInput),
    "ext32 declaring 4 GiB": (b"\xc9\xff\xff\xff\xff\x01" + b"x" * 16, MalformedInput),
    "timestamp": (b"\xd6\xff\x00\x00\x00\x00", MalformedInput),
    "ext inside the state": (
        msgpack.packb({**INPUTS, "x": msgpack.ExtType(3, b"abc")}), MalformedInput
    ),
    "duplicate key": (packed_map_with_duplicate(), MalformedInput),
    "trailing bytes": (msgpack.packb(INPUTS, use_bin_type=True) + b"\xc0",
                       MalformedInput),
    "invalid UTF-8 key": (b"\x81\xa2\xff\xfe\x00", MalformedInput),
    "integer key": (b"\x81\x01\x00", MalformedInput),
    "reserved type byte": (b"\xc1", MalformedInput),
    "cut short": (msgpack.packb(INPUTS, use_bin_type=True)[:-1], MalformedInput),
    "bytes keys": (msgpack.packb({k.encode(): v for k, v in INPUTS.items()},
                                 use_bin_type=True), SchemaViolation),
    "not a map": (msgpack.packb([1, 2, 3]), SchemaViolation),
    "nil": (b"\xc0", SchemaViolation),
    "nesting at the limit": (nested(16), SchemaViolation),
    "wrong type: str for int": (
        msgpack.packb({**INPUTS, "motion_count": "1"}), SchemaViolation
    ),
    "wrong type: bool for int": (
        msgpack.packb({**INPUTS, "motion_count": True}), SchemaViolation
    ),
    "wrong type: float for int": (
        msgpack.packb({**INPUTS, "motion_count": 1.0}), SchemaViolation
    ),
    "out of range": (msgpack.packb({**INPUTS, "motion_count": 1 << 40}),
                     SchemaViolation),
    "extra field": (msgpack.packb({**INPUTS, "extra": 1}), SchemaViolation),
    "missing field": (msgpack.packb(dict(list(INPUTS.items())[1:])), SchemaViolation),
    "another channel's state": (
        msgpack.packb(
            SpicevmcState(
                device=CharDeviceState(
                    connected=True, num_client_tokens=0, num_send_tokens=0, write_size=0,
                    write_num_client_tokens=0, write_data=b"",
                )
            ).model_dump(),
            use_bin_type=True,
        ),
        SchemaViolation,
    ),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_hostile_payload_from_a_key_holder_is_refused(
    case: str, keyring: Keyring, guard: ReplayGuard
) -> None:
    payload, error = BOMBS[case]
    # Inputs state is at most 256 bytes: a larger bomb goes to the display channel, whose
    # bound lets it through to the msgpack limits it aims at (they come before the schema).
    channel = ChannelType.INPUTS if len(payload) <= MAX_PAYLOAD[ChannelType.INPUTS] else (
        ChannelType.DISPLAY
    )
    blob = by_compromised_source(keyring, payload, raw_context_for(channel))
    refused(opener(keyring, guard, ExpectedContext.of(context_for(channel))), blob, error)
    assert_spent(guard, blob)


def test_the_state_the_bombs_alter_is_valid(keyring: Keyring, guard: ReplayGuard) -> None:
    """Without a bomb the same route opens: each refusal above is the bomb's doing."""
    channel = ChannelType.INPUTS
    blob = by_compromised_source(keyring, msgpack.packb(INPUTS), raw_context_for(channel))
    opened = opener(keyring, guard, ExpectedContext.of(context_for(channel)))(blob)
    assert opened.state.model_dump() == INPUTS


def _context_bytes(**changes: Any) -> bytes:
    return raw_context_for(ChannelType.INPUTS, **changes).encode()


HOSTILE_CONTEXTS: dict[str, tuple[bytes, type[GatewayError]]] = {
    "unknown channel type": (_context_bytes(channel_type=99), MalformedInput),
    "channel without migration data": (_context_bytes(channel_type=4), UnsupportedVersion),
    "unknown direction": (_context_bytes(direction=7), MalformedInput),
    "schema version 0": (_context_bytes(schema_version=0), MalformedInput),
    "expires before issued": (_context_bytes(expires_at=NOW - 1), MalformedInput),
    "invalid UTF-8 host": (_context_bytes()[:-12] + b"\x0b" + b"\xff" * 11, MalformedInput),
    "control character in host": (_context_bytes(target_host="dst\x00example"), MalformedInput),
    "empty source host": (_context_bytes(source_host=""), MalformedInput),
    "empty target host": (_context_bytes(target_host=""), MalformedInput),
    "host length past the end": (_context_bytes()[:-12] + b"\x0c" + b"d" * 11, Truncated),
    "bytes after the target host": (_context_bytes() + b"\x00", UnaccountedBytes),
    "target host missing": (_context_bytes()[:-12], Truncated),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONTEXTS))
def test_hostile_context_from_a_key_holder_is_refused(
    case: str, keyring: Keyring, guard: ReplayGuard
) -> None:
    context, error = HOSTILE_CONTEXTS[case]
    blob = by_compromised_source(keyring, msgpack.packb(INPUTS), context)
    refused(opener(keyring, guard, ExpectedContext.of(context_for(ChannelType.INPUTS))), blob,
            error)
    assert_spent(guard, blob)


# --- check order ---------------------------------------------------------------------------


def test_checks_run_in_the_documented_order(
    keyring: Keyring, guard: ReplayGuard, tmp_path: Path
) -> None:
    blob, expected = sealed_sample("display", keyring)
    # Refusals of the authentic blob spend it: those before its open go to another target.
    other = ReplayGuard(tmp_path / "other-target.db")
    wrong_vm = dataclasses.replace(expected, vm_id=uuid.uuid4())
    # Key lookup before the signature: an unknown key wins over tampering.
    refused(opener(Keyring.create(), guard, expected), flip(blob, len(blob) * 8 - 1), UnknownKey)
    # Comparison before lifetime, lifetime before versions.
    refused(opener(keyring, other, wrong_vm), blob, ContextMismatch, now=NOW + 10 * TTL)
    refused(opener(keyring, other, expected, Policy(min_schema_version=2)), blob, Expired,
            now=NOW + 10 * TTL)
    # Schema before comparison: a hostile state for the wrong VM is a schema violation.
    bad = by_compromised_source(keyring, msgpack.packb({"x": 1}), raw_context_for(
        ChannelType.DISPLAY, vm_id=uuid.uuid4()))
    with ReplayGuard(tmp_path / "third-target.db") as third:
        refused(opener(keyring, third, expected), bad, SchemaViolation)
    other.close()
    opener(keyring, guard, expected)(blob)
    # A used blob is refused right after its signature, before every later check...
    refused(opener(keyring, guard, wrong_vm), blob, Replayed)
    refused(opener(keyring, guard, expected), bad, Replayed)  # same salt: the same blob id
    # ...for as long as any opener could accept it; after that its lifetime refuses it.
    refused(opener(keyring, guard, expected), blob, Expired, now=NOW + 10 * TTL)
    assert len(guard) == 1


# --- secrets never leak --------------------------------------------------------------------


def test_no_secret_in_any_error_log_or_repr(
    keyring: Keyring, guard: ReplayGuard, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    blob, expected = sealed_sample("main", keyring)
    secret = keyring.active.secret
    enc_key, mac_key = reference.derive(secret, SALT)
    forms = []
    for value in (secret, enc_key, mac_key):
        forms += [value.hex(), value.hex().upper(), base64.b64encode(value).decode(),
                  repr(value)[2:-1], value.decode("latin-1")]

    shown: list[str] = []
    attempt = opener(keyring, guard, expected)
    candidates = [flip(blob, bit) for bit in range(0, len(blob) * 8, 5)]
    candidates += [blob[:n] for n in range(0, len(blob), 7)] + [blob + b"!"]
    candidates += [by_compromised_source(keyring, payload, raw_context_for(ChannelType.INPUTS))
                   for payload, _ in BOMBS.values()]
    for candidate in candidates:
        with pytest.raises(GatewayError) as caught:
            attempt(candidate)
        shown += [str(caught.value), repr(caught.value), repr(caught.value.args)]
    # The hostile blobs share the sample's salt and spent it: open the sample on a fresh target.
    with ReplayGuard(tmp_path / "fresh.db") as fresh:
        opened = opener(keyring, fresh, expected)(blob)
    shown += [repr(opened), str(opened), repr(keyring), str(keyring), repr(guard)]
    shown += [repr(k) for k in keyring.keys]
    shown += [record.getMessage() for record in caplog.records]
    text = "\n".join(shown)
    assert len(candidates) > 100
    for form in forms:
        assert form not in text
