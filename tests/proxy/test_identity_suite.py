"""The identity suite through two proxies: per-attempt keys agreed over the peer link.

Each property of the suite is checked against real proxies on 127.0.0.1 with scripted
spice-servers and clients, and scripted third hosts on the peer link:

- a whole migration seals every blob under the attempt's own key, never the shared keyring;
- a third host of the fleet, holding only its own identity, cannot get blobs accepted as
  another source's, nor obtain an attempt key for blobs addressed to another host;
- an attempt key does not open another attempt's blobs;
- a hello, an offer or a signature moved between attempts or hosts is refused;
- a downgrade to the shared keyring is refused both ways for a peer that requires identities.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import native, peerlink
from gateway.envelope import Context, read_header, seal
from gateway.errors import ContextMismatch, IdentityError
from gateway.handshake import ENCAPSULATION_SIZE, AttemptKey
from gateway.identity import (
    SIGNATURE_SIZE,
    HostIdentity,
    TrustStore,
    load_identity,
    load_trust_store,
    save_identity,
    save_trust_store,
)
from gateway.keys import Keyring, load_keyring
from gateway.peerlink import ChallengeAnswered, SourceLink, TargetLink
from gateway.spice.constants import ChannelType, MigrateFlags, Msg
from gateway.spice.messages import Migrate, MigrateFlushMark

from .conftest import SOURCE_HOST, TARGET_HOST, LogRecords, Proxies, Rig
from .peers import ALL_CHANNELS, ClientSession
from .test_attempts import Answer, abandoned_attempt, assert_refused, exchange
from .test_migration import assert_only_sealed, migrate_session
from .test_tamper import assert_outcome, migrate, prepare

THIRD_HOST = "third-host"
Channel = tuple[int, int]
DISPLAY = (ChannelType.DISPLAY, 0)


def identity_pair(
    proxies: Proxies, host: str, trusted: list[str]
) -> tuple[HostIdentity, TrustStore]:
    """``host``'s identity and a trust store of ``trusted`` (the hosts' public identities)."""
    store = TrustStore()
    for other in trusted:
        store, _ = store.with_peer(proxies.identity(other).public)
    return proxies.identity(host), store


def offer_from(
    proxies: Proxies,
    rig: Rig,
    signer: str,
    *,
    claimed_source: str | None = None,
    migration: uuid.UUID | None = None,
    keep: list[AttemptKey] | None = None,
    identity: HostIdentity | None = None,
) -> Answer:
    """The answer of a source gateway holding ``signer``'s identity (or ``identity``) and
    trusting the target, announcing ``claimed_source`` as the source."""

    def answer(challenge: bytes) -> bytes:
        link = SourceLink(
            host_id=claimed_source or signer,
            target_host=TARGET_HOST,
            keyring=None,
            vm_id=rig.vm.vm_id,
            migration_id=migration or uuid.uuid4(),
            channels=ALL_CHANNELS,
            now=rig.target_proxy.state.clock(),
            identity=(
                identity or proxies.identity(signer),
                identity_pair(proxies, signer, [TARGET_HOST])[1],
            ),
        )
        (event,) = link.receive(challenge)
        assert isinstance(event, ChallengeAnswered)
        if keep is not None:
            assert link.attempt_key is not None
            keep.append(link.attempt_key)
        return event.data

    return answer


def recording(answer: Answer) -> tuple[list[bytes], Answer]:
    """``answer``, keeping every frame it gives in the returned list."""
    frames: list[bytes] = []

    def record(challenge: bytes) -> bytes:
        frames.append(answer(challenge))
        return frames[-1]

    return frames, record


def refused_announcement(rig: Rig, logs: LogRecords, verdict: peerlink.Verdict, error: str) -> None:
    assert not verdict.accepted
    assert verdict.reason == error
    assert [e["error"] for e in logs.audit("announcement_refused")] == [error]
    assert rig.target_proxy.metrics.get("smg_peer_link_refused_total", reason=error) == 1


def forged_blob(
    rig: Rig, channel: Channel, key: AttemptKey, migration: uuid.UUID, source: str
) -> bytes:
    """A blob of ``channel`` sealed under ``key`` claiming to come from ``source``."""
    state = native.decode(channel[0], rig.payloads[ChannelType(channel[0])])
    context = Context(
        ChannelType(channel[0]), channel[1], rig.vm.vm_id, migration, source, TARGET_HOST, 1
    )
    return seal(state, context, key.keyring, ttl=60, now=rig.target_proxy.state.clock())


async def assert_nothing_sealed(rig: Rig, session: ClientSession, logs: LogRecords) -> None:
    """The source hands the main channel's state over: the proxy, holding no attempt key for
    an identity peer, refuses to seal it under the shared keyring and closes the channel."""
    main = session.main
    await main.server_source.send_message(
        Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
    )
    await main.client_source.expect(Migrate.MSG_TYPE)
    await main.client_source.send_message(MigrateFlushMark())
    await main.server_source.expect(MigrateFlushMark.MSG_TYPE)
    await main.server_source.send(Msg.MIGRATE_DATA, rig.payloads[ChannelType.MAIN])
    assert await main.client_source.frames_until_closed() == []
    (refused,) = logs.audit("channel_refused", reason="seal")
    assert refused["error"] == "DowngradeRefused"
    assert not logs.audit("blob_sealed")


# --- a whole migration ------------------------------------------------------------------------


async def test_every_channel_migrates_with_identities(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair(suite="identity") as rig:
        session = rig.session(0x1D_0001)
        blobs = await migrate_session(rig, session)
        assert set(blobs) == set(ALL_CHANNELS)
        assert_only_sealed(blobs, rig)

        attempt = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        assert attempt is not None
        assert attempt.key is not None
        assert (attempt.key.source_host, attempt.key.target_host) == (SOURCE_HOST, TARGET_HOST)
        shared = load_keyring(rig.source_config.keyring)
        for blob in blobs.values():
            key_id = read_header(blob).key_id
            assert key_id == attempt.key.key_id
            assert shared.get(key_id) is None
        (announced,) = logs.audit("attempt_announced", source=SOURCE_HOST)
        assert announced["suite"] == "identity"
        (accepted,) = logs.audit("migration_accepted", vm=str(rig.vm.vm_id))
        assert accepted["migration"] == str(attempt.migration_id)
        assert not logs.audit("channel_refused")


async def test_each_attempt_agrees_a_key_of_its_own(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair(suite="identity") as rig:
        keys = []
        for session_id in (0x1D_0002, 0x1D_0003):
            blobs = await migrate_session(rig, rig.session(session_id))
            keys.append({read_header(blob).key_id for blob in blobs.values()})
        assert len(keys[0]) == len(keys[1]) == 1
        assert keys[0] != keys[1]
        assert len(logs.audit("migration_accepted")) == 2


# --- a third host of the fleet ------------------------------------------------------------------


async def test_a_third_host_cannot_announce_as_another_source(
    proxies: Proxies, logs: LogRecords
) -> None:
    """Trusted by the target for its own migrations, it signs an offer announcing the source."""
    async with proxies.pair(suite="identity", target_peers=[THIRD_HOST]) as rig:
        verdict = await exchange(
            rig, offer_from(proxies, rig, THIRD_HOST, claimed_source=SOURCE_HOST)
        )
        refused_announcement(rig, logs, verdict, "ContextMismatch")
        assert rig.target_proxy.state.attempts.current(rig.vm.vm_id) is None


async def test_a_third_host_cannot_sign_with_an_identity_of_its_own_making(
    proxies: Proxies, logs: LogRecords
) -> None:
    """An identity named after the source, made by the third host: not the one trusted."""
    async with proxies.pair(suite="identity", target_peers=[THIRD_HOST]) as rig:
        fake = HostIdentity.create(SOURCE_HOST)
        answer = offer_from(proxies, rig, THIRD_HOST, claimed_source=SOURCE_HOST, identity=fake)
        verdict = await exchange(rig, answer)
        refused_announcement(rig, logs, verdict, "UnknownKey")


async def test_a_third_hosts_attempt_does_not_carry_another_sources_blobs(
    proxies: Proxies, logs: LogRecords
) -> None:
    """The third host announces an attempt of its own for the VM, legitimately: blobs it seals
    under that attempt's key claiming to come from the source are refused, and so are the
    source's genuine blobs, which its attempt key does not open."""
    async with proxies.pair(suite="identity", target_peers=[THIRD_HOST]) as rig:
        session = rig.session(0x1D_0004)
        await prepare(session)
        own: list[AttemptKey] = []
        migration = uuid.uuid4()
        verdict = await exchange(
            rig, offer_from(proxies, rig, THIRD_HOST, migration=migration, keep=own)
        )
        assert verdict.accepted
        attempt = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        assert attempt is not None
        assert attempt.source_host == THIRD_HOST
        logs.records.clear()
        forged = {ch: forged_blob(rig, ch, own[0], migration, SOURCE_HOST) for ch in session.legs}
        inputs = (ChannelType.INPUTS, 0)
        # Display: the third host's forgery; inputs: the source's genuine blob; the rest too.
        await migrate(rig, session, [DISPLAY], lambda channel, blob: forged[channel])
        await migrate(rig, session, [inputs])
        await assert_refused(session, {DISPLAY, inputs})
        refused = {e["channel"]: e for e in logs.audit("channel_refused", reason="open")}
        assert refused["display:0"]["error"] == "ContextMismatch"
        assert "source_host" in refused["display:0"]["detail"]
        assert refused["inputs:0"]["error"] == "UnknownKey"
        # The forgery authenticated under the third host's attempt key: recorded as used; the
        # genuine blob under a key this attempt does not have is not authentic here.
        assert len(rig.target_proxy.replay_guard) == 1


@contextlib.asynccontextmanager
async def impostor_link(identity: HostIdentity, host_id: str) -> AsyncIterator[tuple[str, int]]:
    """A third host's peer-link listener answering as ``host_id`` with ``identity``."""
    frames: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = TargetLink(
            host_id,
            Keyring.create(),
            {SOURCE_HOST},
            (),
            now=0,
            clock_skew=5,
            identity=(identity, TrustStore()),
        )
        writer.write(link.start())
        await writer.drain()
        frames.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        bound = server.sockets[0].getsockname()
        yield bound[0], bound[1]
    finally:
        server.close()
        await server.wait_closed()
    assert frames, "the source never connected"
    assert all(frame == b"" for frame in frames), "the source answered an impostor's hello"


async def test_a_third_host_in_the_middle_gets_no_blob(proxies: Proxies, logs: LogRecords) -> None:
    """The third host takes the target's place on the peer link (its own identity, or one it
    made under the target's name): the source refuses its hello, agrees no key, and seals
    nothing for the target, so there is nothing the third host could open."""
    async with proxies.pair(suite="identity", target_peers=[THIRD_HOST]) as rig:
        for impostor in (proxies.identity(THIRD_HOST), HostIdentity.create(TARGET_HOST)):
            logs.records.clear()
            async with impostor_link(impostor, TARGET_HOST) as address:
                (peer,) = rig.source_config.peers
                moved = rig.source_config.model_copy(
                    update={
                        "peers": (
                            peer.model_copy(update={"peer_address": f"{address[0]}:{address[1]}"}),
                        )
                    }
                )
                # As a reload would: the announcer reads the config in force.
                rig.source_proxy.state.config = moved
                session = rig.session(0x1D_0010 + len(rig.sessions))
                await prepare(session)
            (down,) = logs.audit("peer_link_down")
            assert down["reason"] == "protocol"
            await assert_nothing_sealed(rig, session, logs)


# --- attempts and moved messages ----------------------------------------------------------------


async def test_an_attempt_key_does_not_open_another_attempts_blobs(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair(suite="identity") as rig:
        stale = await abandoned_attempt(rig, 0x1D_0020)
        logs.records.clear()
        retry = rig.session(0x1D_0021)
        await prepare(retry)
        await migrate(rig, retry, [DISPLAY], lambda channel, blob: stale[channel])
        await migrate(rig, retry, [ch for ch in retry.legs if ch != DISPLAY])
        await assert_outcome(rig, retry, {DISPLAY}, logs, "UnknownKey")
        (refused,) = logs.audit("channel_refused")
        assert "not this attempt's key" in refused["detail"]


async def test_a_recorded_offer_is_refused_on_another_connection(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair(suite="identity") as rig:
        recorded, record = recording(offer_from(proxies, rig, SOURCE_HOST))
        assert (await exchange(rig, record)).accepted
        first = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        logs.records.clear()
        verdict = await exchange(rig, lambda challenge: recorded[0])
        refused_announcement(rig, logs, verdict, "ContextMismatch")
        assert "another hello" in logs.audit("announcement_refused")[0]["detail"]
        assert rig.target_proxy.state.attempts.current(rig.vm.vm_id) == first


async def test_an_offer_made_for_another_targets_hello_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """The source's offer to another target of the fleet, relayed to this one."""
    async with proxies.pair(suite="identity") as rig:
        elsewhere = TargetLink(
            THIRD_HOST,
            load_keyring(rig.source_config.keyring),
            {SOURCE_HOST},
            {rig.vm.vm_id},
            now=rig.target_proxy.state.clock(),
            clock_skew=5,
            identity=identity_pair(proxies, THIRD_HOST, [SOURCE_HOST]),
        )
        link = SourceLink(
            host_id=SOURCE_HOST,
            target_host=THIRD_HOST,
            keyring=None,
            vm_id=rig.vm.vm_id,
            migration_id=uuid.uuid4(),
            channels=ALL_CHANNELS,
            now=rig.target_proxy.state.clock(),
            identity=identity_pair(proxies, SOURCE_HOST, [THIRD_HOST]),
        )
        (event,) = link.receive(elsewhere.start())
        assert isinstance(event, ChallengeAnswered)
        verdict = await exchange(rig, lambda challenge: event.data)
        refused_announcement(rig, logs, verdict, "ContextMismatch")


def test_a_hello_of_another_host_is_not_answered(proxies: Proxies) -> None:
    """A challenge carrying a hello signed by a host other than the expected target."""
    now = 1_800_000_000
    elsewhere = TargetLink(
        THIRD_HOST,
        Keyring.create(),
        {SOURCE_HOST},
        (),
        now=now,
        clock_skew=5,
        identity=identity_pair(proxies, THIRD_HOST, [SOURCE_HOST]),
    )
    challenge = peerlink.decode_challenge(elsewhere.start())
    relabelled = peerlink.encode_challenge(
        peerlink.Challenge(TARGET_HOST, challenge.nonce, challenge.suite, challenge.suite_data)
    )
    link = SourceLink(
        host_id=SOURCE_HOST,
        target_host=TARGET_HOST,
        keyring=None,
        vm_id=uuid.uuid4(),
        migration_id=uuid.uuid4(),
        channels=ALL_CHANNELS,
        now=now,
        identity=identity_pair(proxies, SOURCE_HOST, [TARGET_HOST, THIRD_HOST]),
    )
    with pytest.raises(ContextMismatch, match="another host"):
        link.receive(relabelled)
    assert link.attempt_key is None


async def test_a_signature_or_encapsulation_moved_from_another_offer_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair(suite="identity") as rig:
        honest = offer_from(proxies, rig, SOURCE_HOST)
        donors, record = recording(honest)
        assert (await exchange(rig, record)).accepted
        donor = peerlink.decode_announcement(donors[0]).suite_data
        # The offer ends with the encapsulation, then the signature.
        for start, size in (
            (-SIGNATURE_SIZE, SIGNATURE_SIZE),
            (-SIGNATURE_SIZE - ENCAPSULATION_SIZE, ENCAPSULATION_SIZE),
        ):

            def splice(challenge: bytes, start: int = start, size: int = size) -> bytes:
                frame = peerlink.decode_announcement(honest(challenge))
                offer = bytearray(frame.suite_data)
                at = len(offer) + start
                offer[at : at + size] = donor[len(donor) + start : len(donor) + start + size]
                assert bytes(offer) != frame.suite_data
                return rebuild(frame, bytes(offer))

            verdict = await exchange(rig, splice)
            assert not verdict.accepted
            assert verdict.reason == "AuthenticationFailed", size


def rebuild(frame: peerlink.Announcement, offer: bytes) -> bytes:
    """``frame`` with another offer, its MAC left as zeros (the offer is refused first)."""
    return peerlink._announce_prefix(replace(frame, suite_data=offer)) + bytes(peerlink.MAC_SIZE)


async def test_an_announcement_changed_after_the_offer_signed_it_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """Even with a valid MAC under the attempt key (which only the signer holds), a frame whose
    fields differ from the announcement the offer signs is refused."""
    async with proxies.pair(suite="identity") as rig:
        kept: list[AttemptKey] = []
        honest = offer_from(proxies, rig, SOURCE_HOST, keep=kept)

        def altered(challenge: bytes) -> bytes:
            frame = replace(peerlink.decode_announcement(honest(challenge)), channels=((1, 0),))
            prefix = peerlink._announce_prefix(frame)
            key = peerlink.confirmation_key(kept[-1])
            return prefix + peerlink._mac(key, challenge, prefix, peerlink._LABEL_IDENTITY)

        verdict = await exchange(rig, altered)
        refused_announcement(rig, logs, verdict, "AuthenticationFailed")
        assert "signs another announcement" in logs.audit("announcement_refused")[0]["detail"]


# --- downgrade --------------------------------------------------------------------------------


async def test_a_shared_keyring_announcement_from_an_identity_source_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair(suite="identity") as rig:

        def shared(challenge: bytes) -> bytes:
            link = SourceLink(
                host_id=SOURCE_HOST,
                target_host=TARGET_HOST,
                keyring=load_keyring(rig.source_config.keyring),
                vm_id=rig.vm.vm_id,
                migration_id=uuid.uuid4(),
                channels=ALL_CHANNELS,
                now=rig.target_proxy.state.clock(),
            )
            (event,) = link.receive(challenge)
            assert isinstance(event, ChallengeAnswered)
            return event.data

        verdict = await exchange(rig, shared)
        refused_announcement(rig, logs, verdict, "DowngradeRefused")
        assert rig.target_proxy.state.attempts.current(rig.vm.vm_id) is None


async def test_a_shared_keyring_blob_for_an_identity_attempt_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """The client swaps in a blob sealed under the shared keyring, which both hosts hold."""
    async with proxies.pair(suite="identity") as rig:
        session = rig.session(0x1D_0030)
        await prepare(session)
        attempt = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        assert attempt is not None
        assert attempt.key is not None
        state = native.decode(DISPLAY[0], rig.payloads[ChannelType.DISPLAY])
        context = attempt.key.context(ChannelType.DISPLAY, 0, rig.vm.vm_id, attempt.migration_id, 1)
        shared = seal(state, context, load_keyring(rig.source_config.keyring), ttl=60)
        await migrate(rig, session, [DISPLAY], lambda channel, blob: shared)
        await migrate(rig, session, [ch for ch in session.legs if ch != DISPLAY])
        await assert_outcome(rig, session, {DISPLAY}, logs, "DowngradeRefused")


async def test_a_target_without_a_hello_gets_no_blob_from_an_identity_source(
    proxies: Proxies, logs: LogRecords
) -> None:
    """The target's side configured for the shared keyring only (no hello in its challenge):
    the source, which requires identities for it, refuses to fall back."""
    async with proxies.pair(suite="identity", target_suite="shared-key") as rig:
        assert rig.target_proxy.state.identity is None
        session = rig.session(0x1D_0040)
        await prepare(session)
        (down,) = logs.audit("peer_link_down")
        assert down["reason"] == "protocol"
        assert "DowngradeRefused" in down["detail"]
        await assert_nothing_sealed(rig, session, logs)


# --- rotation ---------------------------------------------------------------------------------


async def test_identities_rotate_with_overlap_and_reload(
    proxies: Proxies, logs: LogRecords, tmp_path: Path
) -> None:
    """The source makes a new generation, the target trusts it (pending), the source switches
    to it, both reload (SIGHUP's path): the next migration runs under the new generation."""
    async with proxies.pair(suite="identity") as rig:
        await migrate_session(rig, rig.session(0x1D_0050))
        source_file = tmp_path / SOURCE_HOST / "identity.json"
        target_trust = tmp_path / TARGET_HOST / "trust.json"
        identity, new = load_identity(source_file).with_new_generation()
        save_identity(identity, source_file)
        store, _ = load_trust_store(target_trust).with_peer(new.public)
        save_trust_store(store, target_trust)
        rig.target_proxy.reload()
        rotated, _ = identity.rotated()
        save_identity(rotated, source_file)
        rig.source_proxy.reload()
        logs.records.clear()
        await migrate_session(rig, rig.session(0x1D_0051))
        attempt = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        assert attempt is not None
        assert attempt.key is not None
        assert attempt.key.source_key_id == new.key_id
        assert len(logs.audit("migration_accepted")) == 1


async def test_a_bad_identity_file_on_reload_keeps_the_current_one(
    proxies: Proxies, logs: LogRecords, tmp_path: Path
) -> None:
    async with proxies.pair(suite="identity") as rig:
        (tmp_path / TARGET_HOST / "trust.json").write_text("{")
        with pytest.raises(IdentityError):
            rig.target_proxy.reload()
        assert logs.messages("identity reload failed; keeping the current identity and trust store")
        await migrate_session(rig, rig.session(0x1D_0060))
        assert len(logs.audit("migration_accepted")) == 1
