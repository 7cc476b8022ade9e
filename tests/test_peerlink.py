"""The peer link's sans-I/O protocol: framing, the transcript MAC, and every refusal."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from gateway import peerlink
from gateway.errors import (
    AuthenticationFailed,
    BadMagic,
    ContextMismatch,
    DowngradeRefused,
    Expired,
    GatewayError,
    MalformedInput,
    NotYetValid,
    ProtocolError,
    TooLarge,
    Truncated,
    UnaccountedBytes,
    UnknownKey,
    UnsupportedVersion,
)
from gateway.identity import HostIdentity, TrustStore
from gateway.keys import KEY_ID_SIZE, Keyring
from gateway.peerlink import (
    HEADER_SIZE,
    MAC_SIZE,
    MAX_BODY,
    AnnouncementVerified,
    Challenge,
    ChallengeAnswered,
    FrameReader,
    SourceLink,
    TargetLink,
    Verdict,
    VerdictReceived,
)

SOURCE = "source-host"
TARGET = "target-host"
VM = uuid.UUID("0e7d4a55-2c61-4f0e-8f54-3b9d6a1f2c08")
OTHER_VM = uuid.UUID("9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42")
NOW = 1_800_000_000.0
CHANNELS = [(1, 0), (2, 0), (3, 0), (9, 0)]


def target_link(keyring: Keyring, *, host: str = TARGET, now: float = NOW) -> TargetLink:
    return TargetLink(host, keyring, {SOURCE}, {VM}, now=now, clock_skew=5)


def source_link(
    keyring: Keyring,
    *,
    target: str = TARGET,
    vm: uuid.UUID = VM,
    now: float = NOW,
    host: str = SOURCE,
    migration: uuid.UUID | None = None,
) -> SourceLink:
    return SourceLink(
        host_id=host,
        target_host=target,
        keyring=keyring,
        vm_id=vm,
        migration_id=migration or uuid.uuid4(),
        channels=CHANNELS,
        now=now,
    )


def answer(source: SourceLink, challenge: bytes) -> bytes:
    (event,) = source.receive(challenge)
    assert isinstance(event, ChallengeAnswered)
    return event.data


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.create()


def test_an_announcement_crosses_the_link(keyring: Keyring) -> None:
    target = target_link(keyring)
    source = source_link(keyring)
    frame = answer(source, target.start())
    # Any split of the bytes gives the same result.
    events: list[AnnouncementVerified] = []
    for index in range(0, len(frame), 7):
        events += target.receive(frame[index : index + 7])
    (event,) = events
    assert event.announcement == source.announcement
    assert event.announcement.channels == tuple(sorted(CHANNELS))
    (verdict,) = source.receive(target.verdict(True))
    assert isinstance(verdict, VerdictReceived)
    assert verdict.verdict == Verdict(True, "")
    with pytest.raises(ProtocolError):
        source.receive(target.verdict(True))


def test_a_refusal_verdict_reaches_the_source(keyring: Keyring) -> None:
    source = source_link(keyring)
    answer(source, target_link(keyring).start())
    (event,) = source.receive(TargetLink.verdict(False, "AuthenticationFailed"))
    assert isinstance(event, VerdictReceived)
    assert event.verdict == Verdict(False, "AuthenticationFailed")


def test_an_announcement_under_another_keyring_is_forged(keyring: Keyring) -> None:
    target = target_link(keyring)
    stranger = Keyring.create()
    with pytest.raises(UnknownKey):
        target.receive(answer(source_link(stranger), target.start()))


def test_an_announcement_with_a_known_key_id_and_another_secret_is_forged(
    keyring: Keyring,
) -> None:
    target = target_link(keyring)
    forger = Keyring.create()
    frame = bytearray(answer(source_link(forger), target.start()))
    frame[HEADER_SIZE : HEADER_SIZE + KEY_ID_SIZE] = keyring.active.key_id
    with pytest.raises(AuthenticationFailed):
        target.receive(bytes(frame))


def test_a_recorded_announcement_fails_on_another_connection(keyring: Keyring) -> None:
    """The fresh challenge binds each transcript: a replay meets another nonce."""
    first = target_link(keyring)
    frame = answer(source_link(keyring), first.start())
    assert first.receive(frame)
    second = target_link(keyring)
    second.start()
    with pytest.raises(AuthenticationFailed):
        second.receive(frame)


@pytest.mark.parametrize("offset", range(0, 200, 3))
def test_every_flipped_bit_is_refused(keyring: Keyring, offset: int) -> None:
    target = target_link(keyring)
    frame = bytearray(answer(source_link(keyring), target.start()))
    offset %= len(frame)
    frame[offset] ^= 0x10
    with pytest.raises(GatewayError):
        target.receive(bytes(frame))


def test_an_announcement_for_another_target_is_refused(keyring: Keyring) -> None:
    """A key holder answering this target's challenge with another target's announcement."""
    target = target_link(keyring)
    challenge = target.start()
    announcement = peerlink.Announcement(
        keyring.active.key_id, SOURCE, "elsewhere", VM, uuid.uuid4(), int(NOW), ((1, 0),)
    )
    prefix = peerlink._announce_prefix(announcement)
    frame = prefix + peerlink._mac(peerlink.link_key(keyring.active.secret), challenge, prefix)
    with pytest.raises(ContextMismatch) as caught:
        target.receive(frame)
    assert caught.value.field == "target_host"


def test_an_announcement_made_to_another_target_fails_here(keyring: Keyring) -> None:
    """A transcript with another target (its challenge, its host id) does not verify here."""
    elsewhere = target_link(keyring, host="elsewhere")
    frame = answer(source_link(keyring, target="elsewhere"), elsewhere.start())
    assert elsewhere.receive(frame)  # where it was made, it verifies
    target = target_link(keyring)
    target.start()
    with pytest.raises(AuthenticationFailed):
        target.receive(frame)


def test_the_source_answers_only_the_target_it_seals_for(keyring: Keyring) -> None:
    with pytest.raises(ContextMismatch):
        source_link(keyring).receive(target_link(keyring, host="impostor").start())


def test_an_announcement_for_another_vm_is_refused(keyring: Keyring) -> None:
    target = target_link(keyring)
    with pytest.raises(ContextMismatch) as caught:
        target.receive(answer(source_link(keyring, vm=OTHER_VM), target.start()))
    assert caught.value.field == "vm_id"


def test_an_announcement_from_an_untrusted_host_is_refused(keyring: Keyring) -> None:
    target = target_link(keyring)
    with pytest.raises(ContextMismatch) as caught:
        target.receive(answer(source_link(keyring, host="rogue"), target.start()))
    assert caught.value.field == "source_host"


@pytest.mark.parametrize(
    ("issued", "error"), [(NOW - 6, Expired), (NOW + 6, NotYetValid), (NOW - 5, None)]
)
def test_the_announcement_time_is_checked(
    keyring: Keyring, issued: float, error: type[GatewayError] | None
) -> None:
    target = target_link(keyring)
    frame = answer(source_link(keyring, now=issued), target.start())
    if error is None:
        assert target.receive(frame)
    else:
        with pytest.raises(error):
            target.receive(frame)


def test_one_announcement_per_connection(keyring: Keyring) -> None:
    target = target_link(keyring)
    frame = answer(source_link(keyring), target.start())
    with pytest.raises(ProtocolError):
        target.receive(frame + frame)


@pytest.mark.parametrize("cut", [1, HEADER_SIZE, HEADER_SIZE + 8, -MAC_SIZE, -1])
def test_a_truncated_announcement_waits_then_is_refused_whole(keyring: Keyring, cut: int) -> None:
    target = target_link(keyring)
    frame = answer(source_link(keyring), target.start())
    assert target.receive(frame[:cut]) == []
    # Re-framed as a whole frame of that shorter length, it is refused.
    short = frame[:cut]
    if len(short) >= HEADER_SIZE:
        body = short[HEADER_SIZE:]
        whole = short[:8] + struct.pack(">I", len(body)) + body
        with pytest.raises(GatewayError):
            target_link(keyring).receive(whole)


def test_an_extended_announcement_is_refused(keyring: Keyring) -> None:
    target = target_link(keyring)
    frame = answer(source_link(keyring), target.start())
    body = frame[HEADER_SIZE:] + b"\0"
    with pytest.raises(AuthenticationFailed):
        target.receive(frame[:8] + struct.pack(">I", len(body)) + body)


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    header = peerlink.MAGIC + bytes((1, 2, 1, 0)) + struct.pack(">I", MAX_BODY + 1)
    with pytest.raises(TooLarge):
        FrameReader().feed(header)
    with pytest.raises(BadMagic):
        FrameReader().feed(b"SMGX")
    reader = FrameReader()
    assert reader.feed(header[: HEADER_SIZE - 1]) == []
    assert reader.pending == HEADER_SIZE - 1


@pytest.mark.parametrize(
    ("index", "value", "error"),
    [
        (4, 2, UnsupportedVersion),
        (5, 3, ProtocolError),
        (6, 9, UnsupportedVersion),
        (7, 1, MalformedInput),
    ],
)
def test_header_fields_are_checked(
    keyring: Keyring, index: int, value: int, error: type[GatewayError]
) -> None:
    target = target_link(keyring)
    frame = bytearray(answer(source_link(keyring), target.start()))
    frame[index] = value
    with pytest.raises(error):
        target.receive(bytes(frame))


def test_challenge_decoding_bounds() -> None:
    good = peerlink.encode_challenge(Challenge(TARGET, bytes(32)))
    assert peerlink.decode_challenge(good) == Challenge(TARGET, bytes(32))
    with pytest.raises(Truncated):
        peerlink.decode_challenge(good[:-1])
    body = good[HEADER_SIZE:] + b"x"
    with pytest.raises(UnaccountedBytes):
        peerlink.decode_challenge(good[:8] + struct.pack(">I", len(body)) + body)
    oversized = bytearray(good)
    oversized[-2:] = struct.pack(">H", peerlink.MAX_SUITE_DATA + 1)
    with pytest.raises(TooLarge):
        peerlink.decode_challenge(bytes(oversized))
    empty_host = good[:HEADER_SIZE] + b"\0" + good[HEADER_SIZE + 1 + len(TARGET) :]
    with pytest.raises(GatewayError):
        peerlink.decode_challenge(empty_host)


def test_verdict_decoding_bounds() -> None:
    good = peerlink.encode_verdict(Verdict(False, "Expired"))
    assert peerlink.decode_verdict(good) == Verdict(False, "Expired")
    bad = bytearray(good)
    bad[HEADER_SIZE] = 7
    with pytest.raises(MalformedInput):
        peerlink.decode_verdict(bytes(bad))


def test_no_secret_in_messages_or_reprs(keyring: Keyring) -> None:
    secret = keyring.active.secret
    derived = peerlink.link_key(secret)
    target = target_link(keyring)
    source = source_link(keyring)
    frame = answer(source, target.start())
    texts = [repr(target.receive(frame)), repr(source.announcement), repr(source)]
    bad = bytearray(frame)
    bad[-1] ^= 1
    try:
        target_link(keyring).receive(bytes(bad))
    except GatewayError as error:
        texts.append(str(error))
    for text in texts:
        for value in (secret, derived):
            assert value.hex() not in text
            assert repr(value) not in text
    assert secret not in frame
    assert derived not in frame


# --- the identity suite (suite 2) -----------------------------------------------------------


@pytest.fixture(scope="module")
def identities() -> dict[str, tuple[HostIdentity, TrustStore]]:
    """source-host and target-host, each trusting the other; a third host trusted by both."""
    made = {host: HostIdentity.create(host) for host in (SOURCE, TARGET, "third-host")}
    pairs = {}
    for host, identity in made.items():
        store = TrustStore()
        for other, theirs in made.items():
            if other != host:
                store, _ = store.with_peer(theirs.public)
        pairs[host] = (identity, store)
    return pairs


IdentityPairs = dict[str, tuple[HostIdentity, TrustStore]]


def identity_target(
    keyring: Keyring, identities: IdentityPairs, *, sources: frozenset[str] = frozenset({SOURCE})
) -> TargetLink:
    return TargetLink(
        TARGET,
        keyring,
        {SOURCE, "third-host"},
        {VM},
        now=NOW,
        clock_skew=5,
        identity=identities[TARGET],
        identity_sources=sources,
    )


def identity_source(
    identities: IdentityPairs, *, host: str = SOURCE, signer: str | None = None
) -> SourceLink:
    return SourceLink(
        host_id=host,
        target_host=TARGET,
        keyring=None,
        vm_id=VM,
        migration_id=uuid.uuid4(),
        channels=CHANNELS,
        now=NOW,
        identity=identities[signer or host],
    )


def test_the_identity_suite_agrees_one_attempt_key(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    target = identity_target(keyring, identities)
    challenge = target.start()
    assert peerlink.decode_challenge(challenge).suite is peerlink.Suite.IDENTITY
    source = identity_source(identities)
    frame = answer(source, challenge)
    (event,) = target.receive(frame)
    assert event.announcement == source.announcement
    assert event.announcement.suite is peerlink.Suite.IDENTITY
    assert source.attempt_key is not None
    assert event.key is not None
    assert event.key.key_id == source.attempt_key.key_id == event.announcement.key_id
    assert event.key.keyring.active.secret == source.attempt_key.keyring.active.secret
    assert (event.key.source_host, event.key.target_host) == (SOURCE, TARGET)
    # Nothing of the shared keyring is in the frame, nor the attempt's secret.
    assert keyring.active.key_id not in frame
    assert event.key.keyring.active.secret not in frame
    for text in (repr(event), repr(source), repr(event.key)):
        assert event.key.keyring.active.secret.hex() not in text


@pytest.mark.parametrize("offset", [*range(0, 120, 7), 300, 1500, 3000, 4500, -40, -1])
def test_every_flipped_byte_of_an_identity_announcement_is_refused(
    keyring: Keyring, identities: IdentityPairs, offset: int
) -> None:
    target = identity_target(keyring, identities)
    frame = bytearray(answer(identity_source(identities), target.start()))
    frame[offset % len(frame)] ^= 0x10
    with pytest.raises(GatewayError):
        target.receive(bytes(frame))


@pytest.mark.parametrize("cut", [1, 32, 3373, 5000])
def test_a_truncated_or_extended_identity_announcement_is_refused(
    keyring: Keyring, identities: IdentityPairs, cut: int
) -> None:
    frame = answer(identity_source(identities), identity_target(keyring, identities).start())
    body = frame[HEADER_SIZE:-cut]
    short = frame[:8] + struct.pack(">I", len(body)) + body
    long = frame[:8] + struct.pack(">I", len(frame) - HEADER_SIZE + 1) + frame[HEADER_SIZE:] + b"\0"
    for changed in (short, long):
        with pytest.raises(GatewayError):
            identity_target(keyring, identities).receive(changed)


def test_an_identity_announcement_naming_another_source_is_refused(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    """The third host signs, the announcement names the source."""
    target = identity_target(keyring, identities)
    frame = answer(identity_source(identities, signer="third-host"), target.start())
    with pytest.raises(ContextMismatch, match="another source than its signer"):
        target.receive(frame)


def test_a_shared_keyring_announcement_from_an_identity_source_is_a_downgrade(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    target = identity_target(keyring, identities)
    with pytest.raises(DowngradeRefused):
        target.receive(answer(source_link(keyring), target.start()))
    # A source that does not require identities may still answer in suite 1.
    other = identity_target(keyring, identities, sources=frozenset())
    (event,) = other.receive(answer(source_link(keyring), other.start()))
    assert event.key is None


def test_an_identity_source_refuses_a_challenge_without_a_hello(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    source = identity_source(identities)
    with pytest.raises(DowngradeRefused):
        source.receive(target_link(keyring).start())
    assert source.attempt_key is None


def test_a_target_without_an_identity_refuses_the_identity_suite(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    with_identity = identity_target(keyring, identities)
    frame = answer(identity_source(identities), with_identity.start())
    with pytest.raises(UnsupportedVersion):
        target_link(keyring).receive(frame)


def test_identity_suite_known_answers() -> None:
    """The key-confirmation key and MAC, as SECURITY.md quotes them."""
    from gateway.handshake import AttemptKey
    from gateway.keys import Key, KeyState

    ring = Keyring([Key(bytes(16), KeyState.ACTIVE, 0, bytes(range(32)))])
    key = AttemptKey(SOURCE, TARGET, bytes(16), bytes(16), b"x", bytes(32), ring)
    confirmation = peerlink.confirmation_key(key)
    mac = peerlink._mac(confirmation, b"challenge", b"announce", peerlink._LABEL_IDENTITY)
    expected_key = "b3c483615f4afc69335238e74bbffadc029aa00e95aa9ad7a70bf7fe0b1e03b0"
    expected_mac = "ab018fde3688ab7cebe80b6400e811727e5cba93e6eee48d166dac6ff2754596"
    assert confirmation.hex() == expected_key
    assert mac.hex() == expected_mac
    security = (Path(__file__).resolve().parents[1] / "SECURITY.md").read_text()
    assert expected_key in security
    assert expected_mac in security


def test_a_key_share_moved_into_another_hello_is_not_answered(
    keyring: Keyring, identities: IdentityPairs
) -> None:
    """The challenge's hello carrying another hello's ephemeral KEM key: its signature fails."""
    from gateway.handshake import parse_hello

    first = peerlink.decode_challenge(identity_target(keyring, identities).start())
    second = peerlink.decode_challenge(identity_target(keyring, identities).start())
    one, two = parse_hello(first.suite_data), parse_hello(second.suite_data)
    swapped = one.signed[: -len(one.kem_public)] + two.kem_public + one.signature
    challenge = peerlink.encode_challenge(
        Challenge(TARGET, first.nonce, peerlink.Suite.IDENTITY, swapped)
    )
    source = identity_source(identities)
    with pytest.raises(AuthenticationFailed):
        source.receive(challenge)
    assert source.attempt_key is None


def test_a_verdict_is_refused_under_any_suite_but_the_one_it_is_written_in() -> None:
    """Verdicts are written as suite 1 whatever the link's suite: one encoding, so a frame
    naming suite 2 is not a verdict (it was decoded as one before)."""
    frame = bytearray(peerlink.encode_verdict(peerlink.Verdict(True, "ok")))
    assert peerlink.decode_verdict(bytes(frame)) == peerlink.Verdict(True, "ok")
    frame[peerlink.HEADER_SIZE - 6] = peerlink.Suite.IDENTITY
    with pytest.raises(MalformedInput, match="suite 2"):
        peerlink.decode_verdict(bytes(frame))
