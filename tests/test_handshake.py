"""The identity suite's handshake: the properties of issue "host identities", at library level.

Three hosts: A (source), B (target) and C, a third host that B and A both trust as a peer and
that an attacker fully controls (its identity file, its gateway). Whatever C does with its own
identity and with every message it sees, it must not produce what B accepts as coming from A,
nor open what A seals for B.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import handshake as hs
from gateway.envelope import Context, ExpectedContext, seal, verify
from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ConfigError,
    ContextMismatch,
    CountOutOfRange,
    DowngradeRefused,
    Expired,
    GatewayError,
    MalformedInput,
    NotYetValid,
    Replayed,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnknownKey,
    UnsupportedVersion,
)
from gateway.identity import HostIdentity, TrustStore
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType
from schemas.inputs import InputsState

NOW = 1_800_000_000
VM = uuid.UUID("9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42")
MIGRATION = uuid.UUID("0e7d4a55-2c61-4f0e-8f54-3b9d6a1f2c08")
ANNOUNCEMENT = b"vm=9b1c1f1e migration=0e7d4a55 host-a->host-b channels=6"


def seeded(fill: int) -> Any:
    state = {"n": fill * 1000}

    def random_bytes(size: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 7 + i) % 251 + 1 for i in range(size))

    return random_bytes


class Fleet:
    def __init__(self) -> None:
        self.a = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(1))
        self.b = HostIdentity.create("host-b", now=NOW, random_bytes=seeded(2))
        self.c = HostIdentity.create("host-c", now=NOW, random_bytes=seeded(3))
        self.trust = {
            name: self._store([other for other in (self.a, self.b, self.c) if other is not own])
            for name, own in (("a", self.a), ("b", self.b), ("c", self.c))
        }

    @staticmethod
    def _store(peers: list[HostIdentity]) -> TrustStore:
        store = TrustStore()
        for peer in peers:
            store, _ = store.with_peer(peer.public)
        return store

    def run(
        self, source: str = "a", target: str = "b", announcement: bytes = ANNOUNCEMENT
    ) -> tuple[bytes, hs.PendingHello, bytes, hs.AttemptKey]:
        own_s, own_t = getattr(self, source), getattr(self, target)
        hello, pending = hs.hello(own_t, now=NOW)
        offer, key = hs.offer(
            hello, announcement, own_s, self.trust[source], own_t.host_id, now=NOW
        )
        return hello, pending, offer, key


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def state() -> InputsState:
    return InputsState(motion_count=3)


def context(source: str = "host-a", target: str = "host-b") -> Context:
    return Context(ChannelType.INPUTS, 0, VM, MIGRATION, source, target, 1)


def expected_for(key: hs.AttemptKey) -> ExpectedContext:
    """What a target expects of an attempt's blobs: the source the handshake authenticated."""
    return key.expect(ChannelType.INPUTS, 0, VM, MIGRATION, 1)


def test_attempt_contexts_name_the_authenticated_hosts(fleet: Fleet) -> None:
    _, pending, offer, source_key = fleet.run()
    _, target_key = hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    assert source_key.context(ChannelType.INPUTS, 0, VM, MIGRATION, 1) == context()
    expected = target_key.expect(ChannelType.INPUTS, 0, VM, MIGRATION, 1)
    assert expected.sources == frozenset({"host-a"})
    assert expected.target_host == "host-b"
    assert expected.migration_id == MIGRATION


# --- the happy path ------------------------------------------------------------------------


def test_both_sides_agree_and_blobs_open(fleet: Fleet) -> None:
    hello, pending, offer, source_key = fleet.run()
    announcement, target_key = hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    assert announcement == ANNOUNCEMENT
    assert source_key.key_id == target_key.key_id
    assert source_key.keyring.active.secret == target_key.keyring.active.secret
    assert source_key.transcript_hash == target_key.transcript_hash
    assert (target_key.source_host, target_key.target_host) == ("host-a", "host-b")
    blob = seal(state(), context(), source_key.keyring, now=NOW)
    opened = verify(blob, expected_for(target_key), target_key.keyring, now=NOW)
    assert opened.context.source_host == "host-a"
    assert len(hello) <= hs.MAX_HELLO
    assert len(offer) <= hs.MAX_OFFER


def test_no_secret_in_reprs(fleet: Fleet) -> None:
    _, pending, offer, key = fleet.run()
    _, target_key = hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    secret = key.keyring.active.secret.hex()
    for text in (repr(key), str(target_key), repr(pending), repr(key.keyring)):
        assert secret not in text
        assert secret[:16] not in text


def test_each_attempt_has_its_own_key(fleet: Fleet) -> None:
    _, pending1, offer1, key1 = fleet.run()
    _, pending2, offer2, key2 = fleet.run()
    hs.accept(offer1, pending1, fleet.trust["b"], now=NOW)
    _, target2 = hs.accept(offer2, pending2, fleet.trust["b"], now=NOW)
    assert key1.key_id != key2.key_id
    blob = seal(state(), context(), key1.keyring, now=NOW)
    # A per-attempt key does not open another attempt's blobs.
    with pytest.raises(UnknownKey):
        verify(blob, expected_for(target2), target2.keyring, now=NOW)
    # Not even under the other attempt's secret with this attempt's key id.
    forged = Keyring(
        [
            type(key2.keyring.active)(
                key1.key_id, key2.keyring.active.state, NOW, key2.keyring.active.secret
            )
        ]
    )
    with pytest.raises(AuthenticationFailed):
        verify(blob, expected_for(target2), forged, now=NOW)


# --- a third host ---------------------------------------------------------------------------


def _signed_offer(fleet: Fleet, hello: bytes, signer: HostIdentity, **fields: Any) -> bytes:
    """An offer built field by field and signed by ``signer``: what a compromised host can
    send. ``fields`` overrides the source host, the source key id and the announcement."""
    parsed = hs.parse_hello(hello)
    source = fields.get("source_host", signer.host_id).encode()
    source_key_id = fields.get("source_key_id", signer.active.key_id)
    announcement = fields.get("announcement", ANNOUNCEMENT)
    before = b"".join(
        (
            b"SMGK\x01\x02",
            hashlib.sha256(hello).digest(),
            bytes([len(source)]),
            source,
            source_key_id,
            bytes([len(parsed.target_host)]),
            parsed.target_host.encode(),
            parsed.target_key_id,
            len(announcement).to_bytes(2, "big"),
            announcement,
        )
    )
    kem = hs._kem_public(parsed.kem_public)
    encapsulation = fields.get(
        "encapsulation", hs._SUITE.encrypt(b"\x42" * 32, kem, info=hs.LABEL_HPKE + before)
    )
    signed = before + encapsulation
    return signed + signer.active.sign(hs.LABEL_OFFER, signed)


def test_third_host_cannot_pose_as_the_source(fleet: Fleet) -> None:
    hello, pending = hs.hello(fleet.b, now=NOW)
    trust = fleet.trust["b"]
    # Claiming A with A's key id, signed by C: the signature does not verify.
    offer = _signed_offer(
        fleet, hello, fleet.c, source_host="host-a", source_key_id=fleet.a.active.key_id
    )
    with pytest.raises(AuthenticationFailed):
        hs.accept(offer, pending, trust, now=NOW)
    # Claiming A with C's own key id: that identity belongs to another host.
    offer = _signed_offer(fleet, hello, fleet.c, source_host="host-a")
    with pytest.raises(ContextMismatch, match="another host"):
        hs.accept(offer, pending, trust, now=NOW)
    assert not pending.used
    # As itself, C is accepted, but as C: its blobs claiming A are refused.
    offer = _signed_offer(fleet, hello, fleet.c)
    _, key = hs.accept(offer, pending, trust, now=NOW)
    assert key.source_host == "host-c"
    blob = seal(state(), context(source="host-a"), key.keyring, now=NOW)
    with pytest.raises(ContextMismatch, match="source_host"):
        verify(blob, expected_for(key), key.keyring, now=NOW)


def test_third_host_cannot_open_what_a_seals_for_b(fleet: Fleet) -> None:
    _, pending, offer, source_key = fleet.run()
    blob = seal(state(), context(), source_key.keyring, now=NOW)
    # C saw hello and offer: it holds no key that can open them.
    c_hello, c_pending = hs.hello(fleet.c, now=NOW)
    with pytest.raises(ContextMismatch):
        hs.accept(offer, c_pending, fleet.trust["c"], now=NOW)
    parsed = hs.parse_offer(offer)
    for private in (c_pending._kem, fleet.c.active.kem_private_key):
        with pytest.raises(Exception):  # noqa: B017, PT011 - cryptography's own error
            hs._SUITE.decrypt(
                parsed.encapsulation, private, info=hs.LABEL_HPKE + parsed.before_encapsulation
            )
    # Its own attempts with A and with B give keys that do not open the blob.
    for source, target in (("c", "b"), ("a", "c"), ("c", "a")):
        _, p, o, _ = fleet.run(source, target)
        _, key = hs.accept(o, p, fleet.trust[target], now=NOW)
        with pytest.raises(UnknownKey):
            verify(blob, ExpectedContext.of(context()), key.keyring, now=NOW)
    hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    assert c_hello


def test_third_host_cannot_answer_a_hello_as_the_target(fleet: Fleet) -> None:
    # C sends A a hello naming B: C cannot sign as B.
    hello, _ = hs.hello(fleet.c, now=NOW)
    with pytest.raises(ContextMismatch, match="another host"):
        hs.offer(hello, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    parsed = hs.parse_hello(hello)
    relabelled = b"SMGK\x01\x01" + b"\x06host-b" + parsed.signed[6 + 7 :] + parsed.signature
    with pytest.raises((AuthenticationFailed, ContextMismatch)):
        hs.offer(relabelled, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    b_key = fleet.b.active.key_id
    claimed = b"SMGK\x01\x01\x06host-b" + b_key + parsed.signed[6 + 7 + 16 :]
    forged = claimed + fleet.c.active.sign(hs.LABEL_HELLO, claimed)
    with pytest.raises(AuthenticationFailed):
        hs.offer(forged, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)


# --- messages moved between attempts or hosts -----------------------------------------------


def test_offer_for_another_hello_is_refused(fleet: Fleet) -> None:
    _, pending1, _, _ = fleet.run()
    _, pending2, offer2, _ = fleet.run()
    with pytest.raises(ContextMismatch, match="another hello"):
        hs.accept(offer2, pending1, fleet.trust["b"], now=NOW)
    hs.accept(offer2, pending2, fleet.trust["b"], now=NOW)


def test_offer_answers_once(fleet: Fleet) -> None:
    _, pending, offer, _ = fleet.run()
    hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    with pytest.raises(Replayed):
        hs.accept(offer, pending, fleet.trust["b"], now=NOW)


def test_hello_for_another_target_is_refused(fleet: Fleet) -> None:
    hello, _ = hs.hello(fleet.b, now=NOW)
    with pytest.raises(ContextMismatch, match="another host"):
        hs.offer(hello, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-c", now=NOW)


def test_signatures_and_key_shares_do_not_move(fleet: Fleet) -> None:
    hello1, _ = hs.hello(fleet.b, now=NOW)
    hello2, _ = hs.hello(fleet.b, now=NOW)
    p1, p2 = hs.parse_hello(hello1), hs.parse_hello(hello2)
    # hello 2's fields under hello 1's signature
    with pytest.raises(AuthenticationFailed):
        hs.offer(
            p2.signed + p1.signature, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW
        )
    # hello 1 with hello 2's ephemeral key share
    swapped = p1.signed[: -len(p1.kem_public)] + p2.kem_public + p1.signature
    with pytest.raises(AuthenticationFailed):
        hs.offer(swapped, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)


def test_encapsulations_do_not_move(fleet: Fleet) -> None:
    _, pending1, offer1, _ = fleet.run()
    hello2, pending2, offer2, _ = fleet.run()
    o1, o2 = hs.parse_offer(offer1), hs.parse_offer(offer2)
    # Spliced without re-signing: the signature no longer covers it.
    spliced = o2.before_encapsulation + o1.encapsulation + o2.signature
    with pytest.raises(AuthenticationFailed):
        hs.accept(spliced, pending2, fleet.trust["b"], now=NOW)
    # Re-signed by the (compromised) source itself: the encapsulation was made for another
    # ephemeral key and another transcript, so it does not open.
    resigned = _signed_offer(fleet, hello2, fleet.a, encapsulation=o1.encapsulation)
    with pytest.raises(AuthenticationFailed, match="does not open"):
        hs.accept(resigned, pending2, fleet.trust["b"], now=NOW)
    hs.accept(offer1, pending1, fleet.trust["b"], now=NOW)


def test_announcement_is_authenticated(fleet: Fleet) -> None:
    _, pending, offer, _ = fleet.run()
    at = offer.index(ANNOUNCEMENT)
    altered = offer[:at] + b"V" + offer[at + 1 :]
    with pytest.raises(AuthenticationFailed):
        hs.accept(altered, pending, fleet.trust["b"], now=NOW)


def test_stale_and_future_hellos_are_refused(fleet: Fleet) -> None:
    hello, _ = hs.hello(fleet.b, now=NOW)
    args = (hello, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b")
    hs.offer(*args, now=NOW + hs.DEFAULT_MAX_HELLO_AGE + hs.DEFAULT_CLOCK_SKEW)
    with pytest.raises(Expired):
        hs.offer(*args, now=NOW + hs.DEFAULT_MAX_HELLO_AGE + hs.DEFAULT_CLOCK_SKEW + 1)
    with pytest.raises(NotYetValid):
        hs.offer(*args, now=NOW - hs.DEFAULT_CLOCK_SKEW - 1)


def test_retired_and_unknown_identities_are_refused(fleet: Fleet) -> None:
    hello, pending, offer, _ = fleet.run()
    store, _ = fleet.trust["b"].retired(fleet.a.active.key_id)
    with pytest.raises(UnknownKey, match="retired"):
        hs.accept(offer, pending, store, now=NOW)
    with pytest.raises(UnknownKey, match="not in the trust store"):
        hs.accept(offer, pending, TrustStore(), now=NOW)
    with pytest.raises(UnknownKey):
        hs.offer(hello, ANNOUNCEMENT, fleet.a, TrustStore(), "host-b", now=NOW)


def test_rotation_overlap(fleet: Fleet) -> None:
    """A rotates: B learns the pending generation first, so neither side's order matters."""
    a_next, pending_gen = fleet.a.with_new_generation(now=NOW, random_bytes=seeded(7))
    a_rotated, _ = a_next.rotated()
    b_trust, _ = fleet.trust["b"].with_peer(pending_gen.public)
    for source in (fleet.a, a_rotated):  # before and after A switched
        hello, pending = hs.hello(fleet.b, now=NOW)
        offer, _ = hs.offer(hello, ANNOUNCEMENT, source, fleet.trust["a"], "host-b", now=NOW)
        _, key = hs.accept(offer, pending, b_trust, now=NOW)
        assert key.source_key_id == source.active.key_id
    done, promoted = b_trust.retired(fleet.a.active.key_id)
    assert promoted is not None
    hello, pending = hs.hello(fleet.b, now=NOW)
    old_offer, _ = hs.offer(hello, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    with pytest.raises(UnknownKey, match="retired"):
        hs.accept(old_offer, pending, done, now=NOW)


# --- downgrade -------------------------------------------------------------------------------


def test_identity_policy_refuses_the_shared_key_suite(fleet: Fleet) -> None:
    shared = Keyring.create(now=NOW)
    _, pending, offer, source_key = fleet.run()
    _, target_key = hs.accept(offer, pending, fleet.trust["b"], now=NOW)
    shared_blob = seal(state(), context(), shared, now=NOW)
    attempt_blob = seal(state(), context(), source_key.keyring, now=NOW)
    identity = hs.policy_for("identity")
    with pytest.raises(DowngradeRefused, match="shared keyring"):
        identity.opening_keyring(shared_blob, target_key, shared)
    with pytest.raises(DowngradeRefused):
        identity.opening_keyring(shared_blob, None, shared)
    with pytest.raises(DowngradeRefused):
        identity.sealing_keyring(None, shared)
    assert identity.opening_keyring(attempt_blob, target_key, shared) is target_key.keyring
    assert identity.sealing_keyring(source_key, shared) is source_key.keyring
    other = seal(state(), context(), Keyring.create(now=NOW), now=NOW)
    with pytest.raises(UnknownKey, match="not this attempt's key"):
        identity.opening_keyring(other, target_key, shared)
    # The shared-key suite keeps today's behaviour, and still prefers an agreed attempt key.
    plain = hs.policy_for("shared-key")
    assert plain.opening_keyring(shared_blob, None, shared) is shared
    assert plain.opening_keyring(attempt_blob, target_key, shared) is target_key.keyring
    assert plain.sealing_keyring(None, shared) is shared
    with pytest.raises(ConfigError):
        hs.policy_for("none")


# --- malformed messages ----------------------------------------------------------------------


def test_hello_structure_refusals(fleet: Fleet) -> None:
    hello, _ = hs.hello(fleet.b, now=NOW)
    cases: list[tuple[bytes, type[GatewayError]]] = [
        (hello[:5], Truncated),
        (hello[:-1], Truncated),
        (hello + b"\x00", UnaccountedBytes),
        (b"XMGK" + hello[4:], BadMagic),
        (hello[:4] + b"\x02" + hello[5:], UnsupportedVersion),
        (hello[:5] + b"\x02" + hello[6:], MalformedInput),
        (hello[:6] + b"\x00" + hello[7:], CountOutOfRange),
        (hello[:6] + b"\xff" + hello[7:], CountOutOfRange),
        (hello[:7] + b" " + hello[8:], MalformedInput),
        (hello + bytes(hs.MAX_HELLO), TooLarge),
    ]
    for data, error in cases:
        with pytest.raises(error):
            hs.offer(data, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)


def test_offer_structure_refusals(fleet: Fleet) -> None:
    _, pending, offer, _ = fleet.run()
    at = 6 + 32 + 1 + 6 + 16 + 1 + 6 + 16  # the announcement length
    cases: list[tuple[bytes, type[GatewayError]]] = [
        (offer[:3], Truncated),
        (offer[:-1], Truncated),
        (offer + b"\x00", UnaccountedBytes),
        (b"SMGE" + offer[4:], BadMagic),
        (offer[:5] + b"\x01" + offer[6:], MalformedInput),
        (offer[:at] + b"\x00\x00" + offer[at + 2 :], CountOutOfRange),
        (offer[:at] + b"\x10\x01" + offer[at + 2 :], CountOutOfRange),
        (offer + bytes(hs.MAX_OFFER), TooLarge),
    ]
    for data, error in cases:
        with pytest.raises(error):
            hs.accept(data, pending, fleet.trust["b"], now=NOW)
    hs.accept(offer, pending, fleet.trust["b"], now=NOW)


def test_every_flipped_bit_region_is_refused(fleet: Fleet) -> None:
    hello, _ = hs.hello(fleet.b, now=NOW)
    step = 97
    for position in range(0, len(hello), step):
        for bit in (0x01, 0x80):
            flipped = bytearray(hello)
            flipped[position] ^= bit
            with pytest.raises(GatewayError):
                hs.offer(bytes(flipped), ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    _, pending, offer, _ = fleet.run()
    for position in range(0, len(offer), step):
        flipped = bytearray(offer)
        flipped[position] ^= 0x04
        with pytest.raises(GatewayError):
            hs.accept(bytes(flipped), pending, fleet.trust["b"], now=NOW)
    hs.accept(offer, pending, fleet.trust["b"], now=NOW)


def test_offer_refuses_bad_caller_input(fleet: Fleet) -> None:
    hello, _ = hs.hello(fleet.b, now=NOW)
    with pytest.raises(ConfigError, match="announcement"):
        hs.offer(hello, b"", fleet.a, fleet.trust["a"], "host-b", now=NOW)
    with pytest.raises(ConfigError, match="announcement"):
        hs.offer(hello, b"x" * (hs.MAX_ANNOUNCEMENT + 1), fleet.a, fleet.trust["a"], "host-b")
    with pytest.raises(ConfigError, match="itself"):
        hs.offer(hello, ANNOUNCEMENT, fleet.b, fleet.trust["b"], "host-b", now=NOW)


def test_target_refuses_an_offer_for_a_stale_hello(fleet: Fleet) -> None:
    _, pending, offer, _ = fleet.run()
    late = NOW + hs.DEFAULT_MAX_HELLO_AGE + hs.DEFAULT_CLOCK_SKEW + 1
    with pytest.raises(Expired, match="offer"):
        hs.accept(offer, pending, fleet.trust["b"], now=late)
    with pytest.raises(Replayed):  # the ephemeral key is gone
        hs.accept(offer, pending, fleet.trust["b"], now=NOW)


def test_a_low_order_key_share_is_refused_cleanly(fleet: Fleet) -> None:
    """Even a signed hello (a compromised target) gets a GatewayError, nothing else."""
    hello, _ = hs.hello(fleet.b, now=NOW)
    parsed = hs.parse_hello(hello)
    signed = parsed.signed[:-32] + bytes(32)  # X25519 share of order 1
    bad = signed + fleet.b.active.sign(hs.LABEL_HELLO, signed)
    with pytest.raises(MalformedInput, match="not usable"):
        hs.offer(bad, ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)


# --- without a peer link: the direct offer ---------------------------------------------------


@pytest.fixture
def guard(tmp_path: Path) -> ReplayGuard:
    return ReplayGuard(tmp_path / "replay.sqlite")


def test_direct_offer_agrees_a_key_once(fleet: Fleet, guard: ReplayGuard) -> None:
    message, source_key = hs.direct_offer(
        ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW
    )
    assert len(message) <= hs.MAX_DIRECT
    announcement, target_key = hs.direct_accept(message, fleet.b, fleet.trust["b"], guard, now=NOW)
    assert announcement == ANNOUNCEMENT
    assert source_key.keyring.active.secret == target_key.keyring.active.secret
    assert (target_key.source_host, target_key.target_host) == ("host-a", "host-b")
    blob = seal(
        state(),
        source_key.context(ChannelType.INPUTS, 0, VM, MIGRATION, 1),
        source_key.keyring,
        now=NOW,
    )
    verify(blob, expected_for(target_key), target_key.keyring, now=NOW)
    with pytest.raises(Replayed):
        hs.direct_accept(message, fleet.b, fleet.trust["b"], guard, now=NOW)
    other, other_key = hs.direct_offer(ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    assert other_key.key_id != source_key.key_id
    hs.direct_accept(other, fleet.b, fleet.trust["b"], guard, now=NOW)


def test_direct_offer_third_host(fleet: Fleet, guard: ReplayGuard) -> None:
    message, _ = hs.direct_offer(ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    # C is not the target: refused, and its own KEM key does not open the encapsulation.
    with pytest.raises(ContextMismatch, match="another host"):
        hs.direct_accept(message, fleet.c, fleet.trust["c"], guard, now=NOW)
    parsed = hs.parse_direct(message)
    with pytest.raises(Exception):  # noqa: B017, PT011 - cryptography's own error
        hs._SUITE.decrypt(
            parsed.encapsulation,
            fleet.c.active.kem_private_key,
            info=hs.LABEL_DIRECT_HPKE + parsed.before_encapsulation,
        )
    # C re-signs A's message as itself after changing the source: another host's identity.
    signed = b"SMGK\x01\x03\x06host-a" + fleet.c.active.key_id + parsed.signed[7 + 6 + 16 :]
    forged = signed + fleet.c.active.sign(hs.LABEL_DIRECT, signed)
    with pytest.raises(ContextMismatch, match="another host"):
        hs.direct_accept(forged, fleet.b, fleet.trust["b"], guard, now=NOW)
    # ... or keeps A's identity with its own signature.
    spliced = parsed.signed + fleet.c.active.sign(hs.LABEL_DIRECT, parsed.signed)
    with pytest.raises(AuthenticationFailed):
        hs.direct_accept(spliced, fleet.b, fleet.trust["b"], guard, now=NOW)
    # Nothing refused was recorded: the genuine message still opens once.
    hs.direct_accept(message, fleet.b, fleet.trust["b"], guard, now=NOW)


def test_direct_offer_age_and_structure(fleet: Fleet, guard: ReplayGuard) -> None:
    message, _ = hs.direct_offer(ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    args = (message, fleet.b, fleet.trust["b"], guard)
    with pytest.raises(Expired):
        hs.direct_accept(*args, now=NOW + hs.DEFAULT_MAX_HELLO_AGE + hs.DEFAULT_CLOCK_SKEW + 1)
    with pytest.raises(NotYetValid):
        hs.direct_accept(*args, now=NOW - hs.DEFAULT_CLOCK_SKEW - 1)
    cases: list[tuple[bytes, type[GatewayError]]] = [
        (message[:-1], Truncated),
        (message + b"\x00", UnaccountedBytes),
        (message[:5] + b"\x02" + message[6:], MalformedInput),
        (message + bytes(hs.MAX_DIRECT), TooLarge),
    ]
    for data, error in cases:
        with pytest.raises(error):
            hs.direct_accept(data, fleet.b, fleet.trust["b"], guard, now=NOW)
    for position in range(0, len(message), 89):
        flipped = bytearray(message)
        flipped[position] ^= 0x10
        with pytest.raises(GatewayError):
            hs.direct_accept(bytes(flipped), fleet.b, fleet.trust["b"], guard, now=NOW)
    hs.direct_accept(message, fleet.b, fleet.trust["b"], guard, now=NOW)


def test_direct_offer_through_a_target_rotation(fleet: Fleet, guard: ReplayGuard) -> None:
    """B adds a generation and its peers learn it: sources encrypt to it at once, and B, which
    made it first, opens it before and after it rotates."""
    b_next, new = fleet.b.with_new_generation(now=NOW + 1, random_bytes=seeded(9))
    a_trust, _ = fleet.trust["a"].with_peer(new.public)
    assert a_trust.newest_for("host-b").key_id == new.key_id
    for target in (b_next, b_next.rotated()[0]):
        message, _ = hs.direct_offer(ANNOUNCEMENT, fleet.a, a_trust, "host-b", now=NOW)
        assert hs.parse_direct(message).target_key_id == new.key_id
        hs.direct_accept(message, target, fleet.trust["b"], guard, now=NOW)
    # An offer to the old generation fails once B has retired it.
    old, _ = hs.direct_offer(ANNOUNCEMENT, fleet.a, fleet.trust["a"], "host-b", now=NOW)
    with pytest.raises(UnknownKey, match="not a live one"):
        hs.direct_accept(old, b_next.rotated()[0], fleet.trust["b"], guard, now=NOW)


# --- properties ------------------------------------------------------------------------------

_FLEET = Fleet()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(announcement=st.binary(min_size=1, max_size=hs.MAX_ANNOUNCEMENT))
def test_any_announcement_round_trips(announcement: bytes) -> None:
    _, pending, offer, key = _FLEET.run(announcement=announcement)
    got, target_key = hs.accept(offer, pending, _FLEET.trust["b"], now=NOW)
    assert got == announcement
    assert target_key.key_id == key.key_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_changed_byte_is_accepted(data: st.DataObject) -> None:
    _, pending, offer, _ = _FLEET.run()
    position = data.draw(st.integers(0, len(offer) - 1), label="position")
    xor = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(offer)
    changed[position] ^= xor
    with pytest.raises(GatewayError):
        hs.accept(bytes(changed), pending, _FLEET.trust["b"], now=NOW)
    assert not pending.used
