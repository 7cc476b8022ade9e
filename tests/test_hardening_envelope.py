"""Attack catalogue, library level: findings 1, 2, 3 and 9 of the outside review.

1. Post-authentication decode amplification: a key holder's payload of millions of one-byte
   msgpack objects. Bounded by a per-channel payload size (checked before decryption) and a cap
   on the total number of objects (counted before any is built). Memory is measured with
   tracemalloc, never by time.
2. An authentic blob that fails a later check is recorded all the same: used once, whatever the
   outcome. A forged one records nothing.
3. Rows are kept until expiry plus the largest skew any opener may use, so an opener with a
   small skew never prunes a row that one with a larger skew would still need.
9. A replay database that fails while recording is a ReplayStoreError, never a bare sqlite3
   error.
"""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from gateway.envelope import (
    DEFAULT_POLICY,
    MAX_CLOCK_SKEW,
    MAX_OBJECTS,
    MAX_PAYLOAD,
    Context,
    ExpectedContext,
    Policy,
    decode_state,
    max_blob_size,
    open_envelope,
    read_header,
    seal,
    verify,
)
from gateway.errors import (
    AuthenticationFailed,
    ContextMismatch,
    CountOutOfRange,
    Expired,
    GatewayError,
    Replayed,
    ReplayStoreError,
    SchemaViolation,
    TooLarge,
)
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType
from tests import envelope_setup
from tests.envelope_setup import NOW, TTL
from tests.worst_states import worst_state

CHANNELS = (
    ChannelType.MAIN,
    ChannelType.DISPLAY,
    ChannelType.INPUTS,
    ChannelType.SMARTCARD,
    ChannelType.USBREDIR,
    ChannelType.PORT,
    ChannelType.WEBDAV,
)
#: The promise the memory tests check: opening any blob, valid or hostile, peaks below this
#: multiple of the blob's size plus a fixed allowance for the largest structured state (a
#: display of 1,024 surfaces is about 1.5 MiB of Python objects, whatever its blob's size).
MEMORY_FACTOR = 3
MEMORY_ALLOWANCE = 2 * 1024 * 1024


def context_for(channel: ChannelType) -> Context:
    return envelope_setup.context_for(channel, 0)


def raw_context(channel: ChannelType, **changes: object) -> bytes:
    return envelope_setup.raw_context(channel, 0, **changes).encode()


def by_key_holder(
    keyring: Keyring, payload: bytes, context: bytes, salt: bytes = b"\x5a" * 32
) -> bytes:
    """A blob that authenticates: sealed with a valid key over bytes of the holder's choice."""
    return envelope_setup.by_key_holder(keyring, payload, context, salt)


def empty_map_bomb(size: int) -> bytes:
    """The review's payload: nested arrays (at most 1,024 items, depth 3) of one-byte empty
    maps, as close to ``size`` bytes as fits. Every per-container limit holds."""
    if size < 1033:
        count = min(size - 3, 1024)
        return b"\xdc" + count.to_bytes(2, "big") + b"\x80" * count
    inner = b"\xdc\x04\x00" + b"\x80" * 1024
    full = (size - 3) // len(inner)
    while 3 + 3 * (-(-full // 1024)) + full * len(inner) > size:
        full -= 1
    groups = [min(1024, full - start) for start in range(0, full, 1024)]
    payload = b"\xdc" + len(groups).to_bytes(2, "big")
    for count in groups:
        payload += b"\xdc" + count.to_bytes(2, "big") + inner * count
    return payload


def peak_of(action: object) -> tuple[int, BaseException | None]:
    """Peak traced memory while ``action()`` runs, and what it raised."""
    assert callable(action)
    tracemalloc.start()
    try:
        action()
        raised: BaseException | None = None
    except GatewayError as error:
        raised = error
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


def within_budget(peak: int, blob: bytes) -> bool:
    return peak <= MEMORY_FACTOR * len(blob) + MEMORY_ALLOWANCE


# --- finding 1: decode amplification -----------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name.lower())
def test_the_largest_valid_state_of_each_channel_fits_its_bound_and_opens(
    channel: ChannelType, keyring: Keyring
) -> None:
    state = worst_state(channel)
    payload = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    assert len(payload) <= MAX_PAYLOAD[channel]
    context = context_for(channel)
    blob = seal(state, context, keyring, now=NOW)
    assert len(blob) <= max_blob_size(channel)
    peak, raised = peak_of(lambda: verify(blob, ExpectedContext.of(context), keyring, now=NOW))
    assert raised is None
    assert within_budget(peak, blob), f"{peak} bytes to open a {len(blob)}-byte blob"


@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: c.name.lower())
def test_empty_map_bomb_at_each_channels_bound_is_refused_within_memory(
    channel: ChannelType, keyring: Keyring
) -> None:
    payload = empty_map_bomb(MAX_PAYLOAD[channel])
    assert MAX_PAYLOAD[channel] - 1100 < len(payload) <= MAX_PAYLOAD[channel]
    blob = by_key_holder(keyring, payload, raw_context(channel))
    expected = ExpectedContext.of(context_for(channel))
    peak, raised = peak_of(lambda: verify(blob, expected, keyring, now=NOW))
    # Too many objects where the bound allows more bytes than objects, else the schema.
    assert isinstance(raised, CountOutOfRange | SchemaViolation), raised
    assert within_budget(peak, blob), f"{peak} bytes to refuse a {len(blob)}-byte blob"


def test_the_reviews_32_mib_blob_is_refused_before_decryption_on_a_display_channel(
    keyring: Keyring,
) -> None:
    payload = empty_map_bomb(32 * 1024 * 1024)
    blob = by_key_holder(keyring, payload, raw_context(ChannelType.DISPLAY))
    expected = ExpectedContext.of(context_for(ChannelType.DISPLAY))
    peak, raised = peak_of(lambda: verify(blob, expected, keyring, now=NOW))
    assert isinstance(raised, TooLarge)
    assert "display" in str(raised)
    assert peak < 64 * 1024  # not even a copy of the blob


def test_payload_bound_of_the_authenticated_channel_is_checked_before_decryption(
    keyring: Keyring,
) -> None:
    """Expecting a char device (a large bound) but handed a 200 KiB display blob whose
    ciphertext is damaged: refused as too large, so decryption never ran."""
    blob = bytearray(
        by_key_holder(keyring, b"\x80" * (200 * 1024), raw_context(ChannelType.DISPLAY))
    )
    blob[-60] ^= 1  # inside the ciphertext, which the signature does not cover
    expected = ExpectedContext.of(context_for(ChannelType.USBREDIR))
    with pytest.raises(TooLarge, match="display") as caught:
        verify(bytes(blob), expected, keyring, now=NOW)
    assert caught.value.authentic_blob is not None


def test_object_cap_counts_every_object_before_building_any() -> None:
    inner = b"\xdc\x04\x00" + b"\x80" * 1024  # an array of 1,024 empty maps: 1,025 objects
    over = b"\xdc\x00\x10" + inner * 16  # 1 + 16 * 1,025 = 16,401 objects
    assert MAX_OBJECTS < 1 + 16 * 1025
    with pytest.raises(CountOutOfRange, match=f"more than {MAX_OBJECTS} msgpack objects"):
        decode_state(over, ChannelType.USBREDIR, 1)
    # Under the cap the count passes and the schema decides.
    under = b"\xdc\x00\x0f" + inner * 15
    objects = 1 + 15 * 1025
    assert objects <= MAX_OBJECTS
    with pytest.raises(SchemaViolation):
        decode_state(under, ChannelType.USBREDIR, 1)
    with pytest.raises(CountOutOfRange):
        decode_state(under, ChannelType.USBREDIR, 1, policy=Policy(max_objects=objects - 1))
    with pytest.raises(SchemaViolation):  # exactly at the cap: counted, then the schema
        decode_state(under, ChannelType.USBREDIR, 1, policy=Policy(max_objects=objects))


def test_object_cap_skips_large_byte_strings_whole() -> None:
    """A char device's megabytes are one object: the count costs nothing for real states."""
    state = worst_state(ChannelType.USBREDIR)
    payload = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    assert decode_state(payload, ChannelType.USBREDIR, 1, policy=Policy(max_objects=16)) == state


def test_default_policy_accepts_the_largest_blob_of_any_channel() -> None:
    largest = max(max_blob_size(channel) for channel in CHANNELS)
    assert DEFAULT_POLICY.max_blob_size == largest
    assert max_blob_size(ChannelType.INPUTS) < 1024
    assert max_blob_size(ChannelType.DISPLAY) < 256 * 1024


# --- finding 2: an authentic blob is used once, accepted or refused --------------------------


def test_refused_authentic_blob_cannot_be_delivered_again(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    payload = empty_map_bomb(MAX_PAYLOAD[ChannelType.MAIN])
    blob = by_key_holder(keyring, payload, raw_context(ChannelType.MAIN))
    expected = ExpectedContext.of(context_for(ChannelType.MAIN))
    with pytest.raises(CountOutOfRange):
        open_envelope(blob, expected, keyring, guard, now=NOW)
    assert read_header(blob).salt in guard
    # The second delivery costs a signature check and a lookup: never decrypted or decoded.
    peak, raised = peak_of(lambda: open_envelope(blob, expected, keyring, guard, now=NOW))
    assert isinstance(raised, Replayed)
    assert raised.authentic_blob is None
    assert peak < len(payload) // 4
    assert len(guard) == 1


def test_a_blob_refused_for_its_context_is_spent_for_the_right_one(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    state = worst_state(ChannelType.INPUTS)
    context = context_for(ChannelType.INPUTS)
    blob = seal(state, context, keyring, now=NOW)
    wrong = ExpectedContext.of(context, sources=["elsewhere.example"])
    with pytest.raises(ContextMismatch):
        open_envelope(blob, wrong, keyring, guard, now=NOW)
    with pytest.raises(Replayed):
        open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW)


def test_an_expired_blob_is_spent(keyring: Keyring, guard: ReplayGuard) -> None:
    context = context_for(ChannelType.INPUTS)
    blob = seal(worst_state(ChannelType.INPUTS), context, keyring, now=NOW, ttl=TTL)
    with pytest.raises(Expired):
        open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW + TTL + 31)
    assert read_header(blob).salt in guard


def test_a_forged_blob_spends_nothing(keyring: Keyring, guard: ReplayGuard) -> None:
    context = context_for(ChannelType.INPUTS)
    blob = bytearray(seal(worst_state(ChannelType.INPUTS), context, keyring, now=NOW))
    blob[-49] ^= 1  # the last ciphertext byte: the signature verifies, GCM does not
    with pytest.raises(AuthenticationFailed, match="ciphertext") as caught:
        open_envelope(bytes(blob), ExpectedContext.of(context), keyring, guard, now=NOW)
    assert caught.value.authentic_blob is None
    assert len(guard) == 0


# --- finding 3: one replay database, openers with different skews ----------------------------


def test_small_skew_opener_never_prunes_a_row_a_larger_skew_still_needs(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    """The review's sequence: a proxy (skew 5) opens a blob at its expiry; an unrelated open
    10 s later prunes; a CLI open (skew 30) 20 s after expiry must still find it used."""
    proxy, cli = Policy(clock_skew=5), Policy(clock_skew=30)
    context = context_for(ChannelType.INPUTS)
    expected = ExpectedContext.of(context)
    blob = seal(worst_state(ChannelType.INPUTS), context, keyring, now=NOW, ttl=TTL)
    expiry = NOW + TTL
    open_envelope(blob, expected, keyring, guard, policy=proxy, now=expiry)
    other = seal(worst_state(ChannelType.INPUTS), context, keyring, now=expiry)
    open_envelope(other, expected, keyring, guard, policy=proxy, now=expiry + 10)
    assert read_header(blob).salt in guard
    with pytest.raises(Replayed):
        open_envelope(blob, expected, keyring, guard, policy=cli, now=expiry + 20)


def test_rows_go_only_once_no_opener_could_accept_the_blob(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    context = context_for(ChannelType.INPUTS)
    blob = seal(worst_state(ChannelType.INPUTS), context, keyring, now=NOW, ttl=TTL)
    open_envelope(blob, ExpectedContext.of(context), keyring, guard, now=NOW)
    assert guard.prune(NOW + TTL + MAX_CLOCK_SKEW) == 0
    assert guard.prune(NOW + TTL + MAX_CLOCK_SKEW + 1) == 1
    with pytest.raises(GatewayError, match=f"0 to {MAX_CLOCK_SKEW}"):
        Policy(clock_skew=MAX_CLOCK_SKEW + 1)


# --- finding 9: replay store failures ----------------------------------------------------------


def _sealed(keyring: Keyring) -> tuple[bytes, ExpectedContext]:
    context = context_for(ChannelType.INPUTS)
    return seal(worst_state(ChannelType.INPUTS), context, keyring, now=NOW), (
        ExpectedContext.of(context)
    )


def test_locked_database_is_a_replay_store_error(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    blob, expected = _sealed(keyring)
    with ReplayGuard(path, busy_timeout=0.05) as guard:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(ReplayStoreError, match="locked"):
                open_envelope(blob, expected, keyring, guard, now=NOW)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Nothing was recorded; once the lock is gone the blob opens.
        open_envelope(blob, expected, keyring, guard, now=NOW)


def _fill(db: sqlite3.Connection) -> None:
    """Grow the database up to its page limit, so the next write finds it full."""
    message = ""
    for index in range(100_000):
        try:
            db.execute("INSERT INTO consumed VALUES (?, ?)", (index.to_bytes(32, "big"), 1 << 62))
        except sqlite3.OperationalError as error:
            message = str(error)
            break
    assert "full" in message, "the database never filled up"


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_unwritable_database_is_a_replay_store_error(
    keyring: Keyring, guard: ReplayGuard, failure: str
) -> None:
    blob, expected = _sealed(keyring)
    db = guard._conn()
    if failure == "read-only":
        db.execute("PRAGMA query_only = 1")
        reason = "readonly"
    else:
        db.execute("PRAGMA max_page_count = 1")  # SQLite keeps it at the current size
        _fill(db)
        reason = "full"
    with pytest.raises(ReplayStoreError, match=reason) as caught:
        open_envelope(blob, expected, keyring, guard, now=NOW)
    assert "replay database" in str(caught.value)


def test_corrupt_database_is_refused(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "replay.db"
    with ReplayGuard(path):
        pass
    path.write_bytes(b"not a database at all" * 512)
    with pytest.raises(GatewayError, match="replay database"):
        ReplayGuard(path)
