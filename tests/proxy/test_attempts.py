"""The target accepts only the attempt it runs: the newest one its source announced over the
peer link, with blobs issued after the target-side session began.

The attack: a client keeps every blob of an attempt it let fail (sealed and sent to it, never
delivered) and relays them in the next attempt of the same VM to the same target instead of
that attempt's own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from gateway import peerlink
from gateway.envelope import Context, seal
from gateway.errors import ContextMismatch, Expired
from gateway.keys import Keyring, load_keyring
from gateway.peerlink import ChallengeAnswered, SourceLink, TargetLink
from gateway.proxy import lifecycle, peer
from gateway.proxy.config import Route
from gateway.proxy.sessions import Attempt, Session
from gateway.spice.constants import ChannelType, Msgc

from .conftest import SOURCE_HOST, TARGET_HOST, LogRecords, Proxies, Rig, free_port
from .peers import ALL_CHANNELS, TIMEOUT, ClientSession
from .test_open_path import CHANNELS, VM, Target, migrate_data, target_state
from .test_tamper import assert_outcome, migrate, prepare

Channel = tuple[int, int]


def channel_name(channel: Channel) -> str:
    return f"{ChannelType(channel[0]).name.lower()}:{channel[1]}"


async def abandoned_attempt(rig: Rig, session_id: int) -> dict[Channel, bytes]:
    """An attempt the client lets fail after every channel's blob was sealed and sent to it."""
    session = rig.session(session_id)
    await prepare(session)
    stale = {
        channel: await session.receive_blob(channel, rig.payloads[ChannelType(channel[0])])
        for channel in session.legs
    }
    await session.close()
    return stale


async def assert_refused(session: ClientSession, channels: set[Channel]) -> None:
    for channel in channels:
        legs = session.leg(channel)
        assert legs.server_target is not None
        assert legs.client_target is not None
        assert await legs.server_target.frames_until_closed() == [], channel
        assert await legs.client_target.frames_until_closed() == [], channel


async def test_every_blob_of_an_earlier_attempt_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        stale = await abandoned_attempt(rig, 0xE1)
        (first,) = logs.audit("attempt_announced", source=SOURCE_HOST)
        logs.records.clear()

        retry = rig.session(0xE2)
        await prepare(retry)
        (second,) = logs.audit("attempt_announced", source=SOURCE_HOST)
        assert second["superseded"] == first["migration"]
        # The whole earlier set, instead of the retry's own blobs.
        await migrate(rig, retry, retry.legs, lambda channel, blob: stale[channel])
        await assert_refused(retry, set(retry.legs))

        refused = logs.audit("channel_refused", reason="open")
        assert sorted(e["channel"] for e in refused) == sorted(map(channel_name, ALL_CHANNELS))
        assert {e["error"] for e in refused} == {"ContextMismatch"}
        assert all("'migration_id'" in e["detail"] for e in refused)
        assert not logs.audit("blob_accepted")
        # Each refused blob was authentic, so it is recorded as used all the same: relaying the
        # stale set again gets Replayed at once, never another full check.
        assert len(rig.target_proxy.replay_guard) == len(ALL_CHANNELS)


@pytest.mark.parametrize("stale_channel", ALL_CHANNELS, ids=channel_name)
async def test_one_blob_of_an_earlier_attempt_is_refused(
    proxies: Proxies, logs: LogRecords, stale_channel: Channel
) -> None:
    async with proxies.pair() as rig:
        stale = await abandoned_attempt(rig, 0xE3)
        logs.records.clear()
        retry = rig.session(0xE4)
        await prepare(retry)
        await migrate(
            rig,
            retry,
            retry.legs,
            lambda channel, blob: stale[channel] if channel == stale_channel else blob,
        )
        await assert_outcome(rig, retry, {stale_channel}, logs, "ContextMismatch")
        (refused,) = logs.audit("channel_refused")
        assert "'migration_id'" in refused["detail"]


async def test_an_earlier_attempt_is_refused_even_as_the_sessions_first_blob(
    proxies: Proxies, logs: LogRecords
) -> None:
    """Nothing is pinned in the retry's session yet: the announcement alone decides."""
    async with proxies.pair() as rig:
        stale = await abandoned_attempt(rig, 0xE5)
        logs.records.clear()
        retry = rig.session(0xE6)
        await prepare(retry)
        display = (ChannelType.DISPLAY, 0)
        await migrate(rig, retry, [display], lambda channel, blob: stale[channel])
        await migrate(rig, retry, [ch for ch in retry.legs if ch != display])
        await assert_outcome(rig, retry, {display}, logs, "ContextMismatch")


async def test_a_link_down_refuses_the_migration_and_says_why(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        assert rig.target_proxy.peer_link is not None
        await rig.target_proxy.peer_link.close()
        session = rig.session(0xE7)
        await prepare(session)
        (down,) = logs.audit("peer_link_down")
        assert down["reason"] == "unreachable"
        assert [
            r.levelno for r in logs.records if logs.fields(r).get("event") == "peer_link_down"
        ] == [logging.WARNING]
        assert down["target"] == TARGET_HOST
        assert rig.source_proxy.metrics.get("smg_peer_link_down_total", reason="unreachable") == 1
        await migrate(rig, session, session.legs)
        await assert_refused(session, set(session.legs))
        refused = logs.audit("channel_refused", reason="peer_link_down")
        assert len(refused) == len(ALL_CHANNELS)
        assert all("announced over the peer link" in e["detail"] for e in refused)
        for channel in ALL_CHANNELS:
            name = ChannelType(channel[0]).name.lower()
            assert (
                rig.target_proxy.metrics.get(
                    "smg_refused_total", reason="peer_link_down", channel=name
                )
                == 1
            )


async def test_without_peer_link_settings_the_target_refuses(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair(peer_link=False) as rig:
        assert rig.target_proxy.peer_link is None
        session = rig.session(0xE8)
        await prepare(session)
        assert logs.audit("peer_link_down", reason="unconfigured")
        await migrate(rig, session, session.legs)
        await assert_refused(session, set(session.legs))
        assert len(logs.audit("channel_refused", reason="peer_link_down")) == len(ALL_CHANNELS)


async def test_first_blob_mode_migrates_without_a_peer_link(
    proxies: Proxies, logs: LogRecords
) -> None:
    """The documented alternative: without an announcement the first blob pins, as before."""
    async with proxies.pair(
        peer_link=False, target_settings={"peer_link_down": "first-blob"}
    ) as rig:
        session = rig.session(0xE9)
        await prepare(session)
        await migrate(rig, session, session.legs)
        for legs in session.legs.values():
            assert legs.server_target is not None
            await legs.server_target.expect(Msgc.MIGRATE_DATA)
        assert len(logs.audit("migration_accepted")) == 1
        assert logs.audit("peer_link_down", reason="unconfigured")


# --- announcements sent straight to the target's peer link -----------------------------------

Answer = Callable[[bytes], bytes]


async def exchange(rig: Rig, answer: Answer) -> peerlink.Verdict:
    """Connect to the target's peer link, read its challenge, send ``answer(challenge)``,
    return the target's verdict."""
    peer_link = rig.target_proxy.peer_link
    assert peer_link is not None
    assert peer_link.address is not None
    reader, writer = await asyncio.open_connection(*peer_link.address)
    try:
        frames = peerlink.FrameReader()
        challenge = await _frame(reader, frames)
        writer.write(answer(challenge))
        await writer.drain()
        return peerlink.decode_verdict(await _frame(reader, frames))
    finally:
        writer.close()


async def _frame(reader: asyncio.StreamReader, frames: peerlink.FrameReader) -> bytes:
    while True:
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert data, "the peer link closed"
        found = frames.feed(data)
        if found:
            return found[0]


def announce_with(
    rig: Rig,
    keyring: Keyring | None = None,
    *,
    vm: uuid.UUID | None = None,
    source: str = SOURCE_HOST,
) -> Answer:
    """What a source holding ``keyring`` (the shared one by default) answers."""

    def answer(challenge: bytes) -> bytes:
        link = SourceLink(
            host_id=source,
            target_host=TARGET_HOST,
            keyring=keyring or load_keyring(rig.source_config.keyring),
            vm_id=vm or rig.vm.vm_id,
            migration_id=uuid.uuid4(),
            channels=ALL_CHANNELS,
            now=rig.target_proxy.state.clock(),
        )
        (event,) = link.receive(challenge)
        assert isinstance(event, ChallengeAnswered)
        return event.data

    return answer


def assert_announcement_refused(
    rig: Rig, logs: LogRecords, verdict: peerlink.Verdict, error: str
) -> None:
    assert not verdict.accepted
    assert verdict.reason == error
    (refused,) = logs.audit("announcement_refused")
    assert refused["error"] == error
    assert rig.target_proxy.metrics.get("smg_peer_link_refused_total", reason=error) == 1
    assert rig.target_proxy.state.attempts.current(rig.vm.vm_id) is None
    assert not logs.audit("attempt_announced")


async def test_a_legitimate_announcement_over_the_socket(proxies: Proxies) -> None:
    async with proxies.pair() as rig:
        verdict = await exchange(rig, announce_with(rig))
        assert verdict.accepted
        attempt = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        assert attempt is not None
        assert attempt.source_host == SOURCE_HOST
        assert attempt.channels == frozenset(ALL_CHANNELS)


async def test_a_forged_announcement_is_refused(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        verdict = await exchange(rig, announce_with(rig, Keyring.create()))
        assert_announcement_refused(rig, logs, verdict, "UnknownKey")


async def test_a_forged_mac_is_refused(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        honest = announce_with(rig)

        def forged(challenge: bytes) -> bytes:
            frame = bytearray(honest(challenge))
            frame[-1] ^= 0x01
            return bytes(frame)

        verdict = await exchange(rig, forged)
        assert_announcement_refused(rig, logs, verdict, "AuthenticationFailed")


async def test_a_replayed_announcement_is_refused(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        recorded: list[bytes] = []
        honest = announce_with(rig)

        def record(challenge: bytes) -> bytes:
            recorded.append(honest(challenge))
            return recorded[-1]

        assert (await exchange(rig, record)).accepted
        first = rig.target_proxy.state.attempts.current(rig.vm.vm_id)
        logs.records.clear()
        verdict = await exchange(rig, lambda challenge: recorded[0])
        assert not verdict.accepted
        assert verdict.reason == "AuthenticationFailed"
        assert [e["error"] for e in logs.audit("announcement_refused")] == ["AuthenticationFailed"]
        assert rig.target_proxy.state.attempts.current(rig.vm.vm_id) == first


async def test_an_announcement_for_another_vm_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        verdict = await exchange(rig, announce_with(rig, vm=uuid.uuid4()))
        assert_announcement_refused(rig, logs, verdict, "ContextMismatch")
        assert "VM" in logs.audit("announcement_refused")[0]["detail"]


async def test_an_announcement_made_for_another_target_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    """A transcript recorded with another target gateway, relayed to this one."""
    async with proxies.pair() as rig:
        keyring = load_keyring(rig.source_config.keyring)
        elsewhere = TargetLink(
            "elsewhere",
            keyring,
            {SOURCE_HOST},
            {rig.vm.vm_id},
            now=rig.target_proxy.state.clock(),
            clock_skew=5,
        )
        link = SourceLink(
            host_id=SOURCE_HOST,
            target_host="elsewhere",
            keyring=keyring,
            vm_id=rig.vm.vm_id,
            migration_id=uuid.uuid4(),
            channels=ALL_CHANNELS,
            now=rig.target_proxy.state.clock(),
        )
        (event,) = link.receive(elsewhere.start())
        assert isinstance(event, ChallengeAnswered)
        verdict = await exchange(rig, lambda challenge: event.data)
        assert_announcement_refused(rig, logs, verdict, "AuthenticationFailed")


async def test_an_announcement_from_an_untrusted_source_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        verdict = await exchange(rig, announce_with(rig, source="rogue-host"))
        assert_announcement_refused(rig, logs, verdict, "ContextMismatch")


async def test_an_announcement_for_a_route_added_at_runtime_is_taken(proxies: Proxies) -> None:
    """A VM served through the control API (the libvirt hook's way) can be announced."""
    async with proxies.pair() as rig:
        vm = uuid.uuid4()
        live = Route(
            name="live",
            listen=f"127.0.0.1:{free_port()}",
            upstream=f"127.0.0.1:{free_port()}",
            vm_id=vm,
        )
        await rig.target_proxy.routes.add(live, "control")
        verdict = await exchange(rig, announce_with(rig, vm=vm))
        assert verdict.accepted, verdict.reason
        attempt = rig.target_proxy.state.attempts.current(vm)
        assert attempt is not None


async def test_an_announcement_for_a_removed_route_is_refused(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        await rig.target_proxy.routes.remove("vm")
        verdict = await exchange(rig, announce_with(rig))
        assert_announcement_refused(rig, logs, verdict, "ContextMismatch")


async def test_a_source_no_longer_trusted_after_a_reload_cannot_announce(
    proxies: Proxies, logs: LogRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator drops a compromised source from ``peers`` and reloads: its announcements
    (which would supersede the attempts of the VM's real source) are refused from then on."""
    async with proxies.pair() as rig:
        proxy = rig.target_proxy
        revoked = rig.target_config.model_copy(update={"peers": ()})
        monkeypatch.setattr(lifecycle, "load_config", lambda path: revoked)
        proxy.lifecycle.config_path = Path("reloaded.toml")
        await proxy.lifecycle.reload()
        assert proxy.state.config.trusted_sources == frozenset()
        verdict = await exchange(rig, announce_with(rig))
        assert_announcement_refused(rig, logs, verdict, "ContextMismatch")


async def test_the_source_announces_to_the_peer_address_of_the_config_in_force(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's peer_address changed by a reload is where the next attempt is announced."""
    async with proxies.pair() as rig:
        proxy = rig.source_proxy
        announcer = proxy.state.announcer
        assert announcer is not None
        route = proxy.routes.routes["vm"]

        def attempt() -> Session:
            session = Session(route.name, 7, migration_id=uuid.uuid4(), target_host=TARGET_HOST)
            session.link((ChannelType.MAIN, 0))
            return session

        assert await announcer(route, attempt())
        (target,) = rig.source_config.peers
        moved = target.model_copy(update={"peer_address": f"127.0.0.1:{free_port()}"})
        reloaded = rig.source_config.model_copy(update={"peers": (moved,)})
        monkeypatch.setattr(lifecycle, "load_config", lambda path: reloaded)
        proxy.lifecycle.config_path = Path("reloaded.toml")
        await proxy.lifecycle.reload()
        assert not await announcer(route, attempt())
        assert proxy.metrics.get("smg_peer_link_down_total", reason="unreachable") == 1


async def test_silent_connections_do_not_lock_a_source_out(proxies: Proxies) -> None:
    """Anyone who reaches the peer link can open connections and say nothing, or trickle a few
    bytes; a full table of them must not refuse the real source's announcement."""
    async with proxies.pair() as rig:
        peer_link = rig.target_proxy.peer_link
        assert peer_link is not None
        assert peer_link.address is not None
        silent = []
        try:
            for index in range(peer.MAX_PEER_CONNECTIONS):
                reader, writer = await asyncio.open_connection(*peer_link.address)
                await _frame(reader, peerlink.FrameReader())  # served: the challenge came
                if index % 2:
                    writer.write(peerlink.MAGIC)  # a trickle: the start of a header, no more
                    await writer.drain()
                silent.append(writer)
            verdict = await exchange(rig, announce_with(rig))
            assert verdict.accepted, verdict.reason
            evicted = rig.target_proxy.metrics.get(
                "smg_peer_link_refused_total", reason="evicted"
            )
            assert evicted == 1
        finally:
            for writer in silent:
                writer.close()


async def test_garbage_on_the_peer_link_is_refused(proxies: Proxies, logs: LogRecords) -> None:
    async with proxies.pair() as rig:
        verdict = await exchange(rig, lambda challenge: b"GET / HTTP/1.0\r\n\r\n")
        assert_announcement_refused(rig, logs, verdict, "BadMagic")


# --- the target's decisions without sockets ---------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def target(tmp_path: Path, clock: Clock) -> Iterator[Target]:
    with target_state(tmp_path, peer_link_down="refuse", clock=clock) as found:
        yield found


def blob(target: Target, channel: ChannelType, migration: uuid.UUID, now: float) -> bytes:
    context = Context(channel, 0, VM, migration, SOURCE_HOST, TARGET_HOST, 1)
    return seal(target.states[channel], context, target.keyring, ttl=3600, now=now)


def announce(
    target: Target, migration: uuid.UUID, channels: Iterable[ChannelType] = CHANNELS
) -> None:
    target.state.attempts.announce(
        Attempt(
            VM,
            migration,
            SOURCE_HOST,
            frozenset((int(channel), 0) for channel in channels),
            int(target.state.clock()),
        )
    )


async def test_a_blob_issued_before_the_session_began_is_refused(
    target: Target, clock: Clock
) -> None:
    """Not-before: even of the announced attempt, a blob older than the session (beyond the
    skew) was sealed for an earlier one."""
    migration = uuid.uuid4()
    skew = target.state.config.limits.clock_skew
    old = blob(target, ChannelType.DISPLAY, migration, clock.now)
    clock.now += skew + 1
    announce(target, migration)
    with pytest.raises(Expired, match="before this session began"):
        await target.handler(ChannelType.DISPLAY, 0x61).rewrite(migrate_data(old))
    # Within the skew, it passes.
    fresh = blob(target, ChannelType.INPUTS, migration, clock.now - skew)
    await target.handler(ChannelType.INPUTS, 0x62).rewrite(migrate_data(fresh))
    assert len(target.guard) == 2  # the refused (authentic) blob is recorded too


async def test_an_attempt_superseded_after_verification_is_refused_at_the_record(
    target: Target, clock: Clock
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    announce(target, first)
    display = target.handler(ChannelType.DISPLAY, 0x63)
    verified = display._verify(blob(target, ChannelType.DISPLAY, first, clock.now))
    announce(target, second)
    with pytest.raises(ContextMismatch, match="superseded"):
        await asyncio.to_thread(display._accept, *verified)
    assert len(target.guard) == 1  # refused at its record, and recorded: used once


async def test_a_channel_the_source_did_not_announce_is_refused(
    target: Target, clock: Clock
) -> None:
    migration = uuid.uuid4()
    announce(target, migration, [ChannelType.MAIN])
    display = target.handler(ChannelType.DISPLAY, 0x64)
    with pytest.raises(ContextMismatch) as caught:
        await display.rewrite(migrate_data(blob(target, ChannelType.DISPLAY, migration, clock.now)))
    assert caught.value.field == "channel_id"
    assert len(target.guard) == 1  # authentic: recorded although refused


async def test_no_announced_attempt_is_refused_and_counted(target: Target, clock: Clock) -> None:
    display = target.handler(ChannelType.DISPLAY, 0x65)
    with pytest.raises(ContextMismatch) as caught:
        await display.rewrite(
            migrate_data(blob(target, ChannelType.DISPLAY, uuid.uuid4(), clock.now))
        )
    assert caught.value.field == "attempt"
    assert (
        target.state.metrics.get("smg_refused_total", reason="peer_link_down", channel="display")
        == 1
    )
