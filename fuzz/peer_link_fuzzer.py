#!/usr/bin/env python3
"""The peer link (``gateway.peerlink``): bytes a peer gateway, or anyone who reaches the peer
link's port, sends.

Input: one selector byte, then the bytes. Selector mod 3:

- 0: the target's end, with a fixed keyring, clock and (all-zero) challenge nonce, fed the bytes
  as the source's answer, split at the position the second byte names;
- 1: the source's end, fed the bytes as the target's challenge and verdict;
- 2: the three message decoders on their own (the announcement's, normally reached only after
  its MAC verified, fuzzed directly).

The corpus holds announcements MAC'd over the fixed challenge, so the checks behind the MAC are
reached as a key-holding peer could reach them.

Oracle: only GatewayError escapes, with a short message; an accepted announcement is for this
target, from a trusted source, for a VM served here, within the skew, and its frame is exactly
what encoding it gives; the source answers only a challenge of the host it announces to; every
decoded message re-encodes to the bytes it came from.
"""

import uuid

import _harness

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

__all__ = ["KEYRING", "NOW", "SOURCE", "TARGET", "VMS", "TestOneInput", "announce", "challenge"]

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
        (_target, _source, _decoders)[data[0] % 3](data[1:])
    except GatewayError as error:
        _harness.check_refusal(error, len(data))


if __name__ == "__main__":
    _harness.main(TestOneInput)
