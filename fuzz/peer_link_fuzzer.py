#!/usr/bin/env python3
"""The peer link (``gateway.peerlink``): bytes a peer gateway, or anyone who reaches the peer
link's port, sends.

Input: one selector byte, then the bytes. Selector mod 5:

- 0: the target's end, with a fixed keyring, clock and (all-zero) challenge nonce, fed the bytes
  as the source's answer, split at the position the second byte names;
- 1: the source's end, fed the bytes as the target's challenge and verdict;
- 2: the three message decoders on their own (the announcement's, normally reached only after
  its MAC verified, fuzzed directly);
- 3: the target's end in the identity suite (fixed identities, a hello from all-zero
  randomness), fed the bytes as the source's offer-carrying announcement;
- 4: the source's end in the identity suite, fed the bytes as a hello-carrying challenge.

The corpus holds announcements MAC'd over the fixed challenge, so the checks behind the MAC are
reached as a key-holding peer could reach them, and identity-suite announcements answering the
fixed identity challenge, so the checks behind the offer's signatures are reached too.

Oracle: only GatewayError escapes, with a short message; an accepted announcement is for this
target, from a trusted source, for a VM served here, within the skew, and its frame is exactly
what encoding it gives; in the identity suite it also carries the attempt key of its signer,
who is the source it names; the source answers only a challenge of the host it announces to,
and in the identity suite only with a key for that host; every decoded message re-encodes to
the bytes it came from.
"""

import uuid

import _harness
import _identities

with _harness.instrumented("gateway.peerlink"):
    from gateway import peerlink
    from gateway.errors import GatewayError
    from gateway.keys import Key, Keyring, KeyState
    from gateway.peerlink import (
        MAC_SIZE,
        Announcement,
        ChallengeAnswered,
        SourceLink,
        TargetLink,
    )

__all__ = [
    "KEYRING",
    "NOW",
    "SOURCE",
    "TARGET",
    "VMS",
    "TestOneInput",
    "announce",
    "challenge",
    "identity_announce",
    "identity_target",
]

KEYRING = Keyring([Key(bytes(range(16)), KeyState.ACTIVE, 0, bytes(range(1, 33)))])
NOW = 1_800_000_000
SKEW = 5
SOURCE = "host-a"
TARGET = "host-b"
VMS = (
    uuid.UUID("9b1c1f1e-5a38-4d3f-a3f0-6a2b8d1c7e42"),
    uuid.UUID("0e7d4a55-2c61-4f0e-8f54-3b9d6a1f2c08"),
)
MIGRATION = uuid.UUID("5d0c3c8e-1f55-4b1e-9a7e-0c1d2e3f4a5b")
CHANNELS = ((1, 0), (2, 0), (3, 0), (9, 0))


def target() -> TargetLink:
    return TargetLink(
        TARGET, KEYRING, {SOURCE}, VMS, now=NOW, clock_skew=SKEW, random_bytes=bytes
    )


def identity_target() -> TargetLink:
    """The target's end in the identity suite; its challenge is the same every run."""
    return TargetLink(
        TARGET,
        KEYRING,
        {SOURCE},
        VMS,
        now=NOW,
        clock_skew=SKEW,
        random_bytes=bytes,
        identity=(_identities.TARGET, _identities.TARGET_TRUST),
        identity_sources={SOURCE},
    )


def identity_source(vm: uuid.UUID = VMS[0]) -> SourceLink:
    return SourceLink(
        host_id=SOURCE,
        target_host=TARGET,
        keyring=None,
        vm_id=vm,
        migration_id=MIGRATION,
        channels=CHANNELS,
        now=NOW,
        identity=(_identities.SOURCE, _identities.SOURCE_TRUST),
        clock_skew=SKEW,
    )


def identity_announce(vm: uuid.UUID = VMS[0]) -> bytes:
    """An identity-suite announcement answering :func:`identity_target`'s challenge."""
    (event,) = identity_source(vm).receive(identity_target().start())
    assert isinstance(event, ChallengeAnswered)
    return event.data


def challenge() -> bytes:
    """The target's challenge, the same every run (its nonce is all zero)."""
    return target().start()


def announce(**changes: object) -> bytes:
    """An announcement MAC'd over :func:`challenge`, with ``changes`` to its fields."""
    fields: dict[str, object] = {
        "key_id": KEYRING.active.key_id,
        "source_host": SOURCE,
        "target_host": TARGET,
        "vm_id": VMS[0],
        "migration_id": MIGRATION,
        "issued_at": NOW,
        "channels": CHANNELS,
    }
    fields |= changes
    prefix = peerlink._announce_prefix(Announcement(**fields))  # type: ignore[arg-type]
    key = peerlink.link_key(KEYRING.active.secret)
    return prefix + peerlink._mac(key, challenge(), prefix)


def _target(data: bytes) -> None:
    split = data[0] if data else 0
    body = data[1:]
    link = target()
    link.start()
    events = link.receive(body[:split]) + link.receive(body[split:])
    for event in events:
        found = event.announcement
        if (
            found.target_host != TARGET
            or found.source_host != SOURCE
            or found.vm_id not in VMS
            or abs(found.issued_at - NOW) > SKEW
        ):
            raise _harness.OracleFailure(f"accepted a mis-bound announcement: {found!r}")
        frame = peerlink._announce_prefix(found)
        if body[: len(frame)] != frame:
            raise _harness.OracleFailure("an accepted announcement does not re-encode")


def _identity_target(data: bytes) -> None:
    link = identity_target()
    for event in link.receive(data):
        found = event.announcement
        if (
            event.key is None
            or event.key.source_host != found.source_host
            or found.source_host != SOURCE
            or found.target_host != TARGET
            or found.vm_id not in VMS
            or found.suite is not peerlink.Suite.IDENTITY
        ):
            raise _harness.OracleFailure(f"accepted a mis-bound identity announcement: {found!r}")


def _identity_source(data: bytes) -> None:
    link = identity_source()
    for event in link.receive(data):
        if isinstance(event, ChallengeAnswered):
            key = link.attempt_key
            if key is None or key.target_host != TARGET or key.source_host != SOURCE:
                raise _harness.OracleFailure("the source answered without a key for its target")


def _source(data: bytes) -> None:
    link = SourceLink(
        host_id=SOURCE,
        target_host=TARGET,
        keyring=KEYRING,
        vm_id=VMS[1],
        migration_id=MIGRATION,
        channels=CHANNELS,
        now=NOW,
    )
    for event in link.receive(data):
        if isinstance(event, ChallengeAnswered):
            got = peerlink.decode_challenge(data[: peerlink.HEADER_SIZE + _length(data)])
            if got.target_host != TARGET:
                raise _harness.OracleFailure("the source answered another host's challenge")
            if peerlink.decode_announcement(event.data) != link.announcement:
                raise _harness.OracleFailure("the source's announcement does not decode back")


def _length(data: bytes) -> int:
    return int.from_bytes(data[peerlink.HEADER_SIZE - 4 : peerlink.HEADER_SIZE], "big")


def _decoders(data: bytes) -> None:
    for decode in (peerlink.decode_challenge, peerlink.decode_verdict):
        try:
            message = decode(data)
        except GatewayError as error:
            _harness.check_refusal(error, len(data))
            continue
        if isinstance(message, peerlink.Challenge):
            again = peerlink.encode_challenge(message)
        else:
            again = peerlink.encode_verdict(message)
            if not message.reason.isascii() or "?" in message.reason:
                continue  # unprintable reason bytes are shown as "?"
        if again != data:
            raise _harness.OracleFailure(f"{decode.__name__} does not round-trip")
    try:
        found = peerlink.decode_announcement(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        return
    if peerlink._announce_prefix(found) != data[:-MAC_SIZE]:
        raise _harness.OracleFailure("decode_announcement does not round-trip")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    try:
        handlers = (_target, _source, _decoders, _identity_target, _identity_source)
        handlers[data[0] % len(handlers)](data[1:])
    except GatewayError as error:
        _harness.check_refusal(error, len(data))


if __name__ == "__main__":
    _harness.main(TestOneInput)
