"""Attack catalogue, proxy level: the hardening findings shown with real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway import native
from gateway.envelope import HEADER_SIZE, read_header
from gateway.errors import ConfigError
from gateway.keys import load_keyring
from gateway.proxy import channel as channel_module
from gateway.proxy.server import ProxyServer
from gateway.service.control import ControlServer, request
from gateway.spice.constants import ChannelType
from gateway.spice.messages import encode_data_message
from gateway.spice.scripted import client_link
from schemas import CharDeviceState, UsbredirState
from schemas.streams import usbredir_packet
from tests.vectors.envelope import reference

from .conftest import LogRecords, Proxies, Rig, free_port
from .peers import ClientSession, bounded, link_client

MAIN = (ChannelType.MAIN, 0)
DISPLAY = (ChannelType.DISPLAY, 0)
USBREDIR = (ChannelType.USBREDIR, 0)


async def control(path: str | Path, command: str) -> dict[str, Any]:
    return await asyncio.to_thread(request, path, {"cmd": command})


# --- finding 10: one control socket, one proxy ---------------------------------------------------


async def test_second_proxy_on_a_live_control_socket_refuses_to_start(
    proxies: Proxies, tmp_path: Path
) -> None:
    async with proxies.pair() as rig:
        first = rig.source_config
        assert first.control_socket is not None
        route = first.routes[0].model_copy(update={"listen": f"127.0.0.1:{free_port()}"})
        second_config = first.model_copy(
            update={"routes": (route,), "replay_db": str(tmp_path / "second.sqlite")}
        )
        second = ProxyServer(second_config)
        try:
            with pytest.raises(ConfigError, match="in use by a running process"):
                await second.start()
            # It opened no port before refusing.
            assert second.addresses == {}
        finally:
            await second.stop()
        # The first proxy still owns and answers its socket.
        assert os.path.exists(first.control_socket)
        health = await control(first.control_socket, "health")
        assert health["ok"] is True
        assert health["host_id"] == first.host_id


async def test_control_server_never_removes_a_socket_it_does_not_own(socket_dir: Path) -> None:
    path = socket_dir / "c.sock"
    first = ControlServer(path, {"who": lambda _: {"me": "first"}})
    await first.start()
    # Someone removes the first server's path; a successor then binds the same path.
    os.unlink(path)
    second = ControlServer(path, {"who": lambda _: {"me": "second"}})
    await second.start()
    try:
        await first.close()
        # The first server's stop left the successor's socket alone.
        assert path.exists()
        assert (await control(path, "who"))["me"] == "second"
    finally:
        await second.close()
    assert not path.exists()


async def test_stale_control_socket_of_a_dead_process_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, then closed: a crashed server's leftover
    server = ControlServer(path, {"ping": lambda _: {"pong": True}})
    await server.start()
    try:
        assert (await control(path, "ping"))["pong"] is True
    finally:
        await server.close()


async def test_a_regular_file_at_the_control_path_is_never_removed(socket_dir: Path) -> None:
    path = socket_dir / "file.sock"
    path.write_text("not a socket")
    server = ControlServer(path, {})
    refusal = r"control_socket .*: cannot listen: Address already in use"
    with pytest.raises(ConfigError, match=refusal):
        await server.start()
    await server.close()
    assert path.read_text() == "not a socket"


# --- helpers --------------------------------------------------------------------------------------


async def prepare(session: ClientSession) -> None:
    await session.link_source()
    await session.begin_migration()


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy still sends before it closes the connection."""
    try:
        return await bounded(reader.read(), "the proxy to close the connection")
    except ConnectionError:
        return b""


def hostile_twin(keyring_path: Path, genuine: bytes, payload: bytes) -> bytes:
    """What a compromised source holding the key can send: the genuine blob's context, sealed
    over ``payload`` under a fresh salt."""
    keyring = load_keyring(keyring_path)
    header = read_header(genuine)
    context = genuine[HEADER_SIZE : HEADER_SIZE + header.context_length]
    return reference.seal_raw(
        payload,
        context,
        key_id=keyring.active.key_id,
        secret=keyring.active.secret,
        salt=os.urandom(32),
    )


def empty_maps(size: int) -> bytes:
    """Arrays of 1,024 one-byte empty maps inside one array: ~``size`` bytes, every container
    within its limit, about one object per byte."""
    inner = b"\xdc\x04\x00" + b"\x80" * 1024
    count = min(1024, size // len(inner))
    return b"\xdc" + struct.pack(">H", count) + inner * count


async def relay_display(rig: Rig, session: ClientSession, blob: bytes) -> bytes:
    """The source seals the display state; the client relays ``blob`` instead (or the genuine
    one when ``blob`` is empty). Returns the genuine blob."""
    genuine = await session.receive_blob(DISPLAY, rig.payloads[ChannelType.DISPLAY])
    await session.relay(DISPLAY, blob or genuine)
    return genuine


# --- finding 2: an authentic blob refused later is used once --------------------------------------


async def test_refused_authentic_blob_is_recorded_and_refused_as_replayed_next_time(
    proxies: Proxies, keyring_path: Path, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        first = rig.session(0x1A01, channels=[MAIN, DISPLAY])
        await prepare(first)
        genuine = await first.receive_blob(DISPLAY, rig.payloads[ChannelType.DISPLAY])
        hostile = hostile_twin(keyring_path, genuine, empty_maps(100 * 1024))
        await first.relay(DISPLAY, hostile)
        legs = first.leg(DISPLAY)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []
        guard = rig.target_proxy.replay_guard
        assert read_header(hostile).salt in guard

        # The same blob again, on another session: refused before it is decrypted or decoded.
        second = rig.session(0x1A02, channels=[MAIN, DISPLAY])
        await prepare(second)
        await second.receive_blob(DISPLAY, rig.payloads[ChannelType.DISPLAY])
        await second.relay(DISPLAY, hostile)
        legs = second.leg(DISPLAY)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []

        errors = [e["error"] for e in logs.audit("channel_refused", route="vm")]
        assert errors == ["CountOutOfRange", "Replayed"]
        metrics = rig.target_proxy.metrics
        assert metrics.get("smg_refused_by_route_total", route="vm") == 2
        assert metrics.get("smg_refused_by_client_total", client="127.0.0.1") == 2
        assert len(guard) == 1


# --- finding 9: replay store failures are audited refusals ------------------------------------


async def test_read_only_replay_database_is_an_audited_counted_refusal(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0x9A01, channels=[MAIN, DISPLAY])
        await prepare(session)
        rig.target_proxy.replay_guard._conn().execute("PRAGMA query_only = 1")
        await relay_display(rig, session, b"")
        legs = session.leg(DISPLAY)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []
        (event,) = logs.audit("channel_refused", route="vm")
        assert event["reason"] == "replay_store"
        assert event["error"] == "ReplayStoreError"
        assert "readonly" in event["detail"]
        metrics = rig.target_proxy.metrics
        assert metrics.get("smg_refused_total", reason="replay_store", channel="display") == 1


async def test_a_refused_blob_the_replay_store_cannot_record_is_still_a_clean_refusal(
    proxies: Proxies, keyring_path: Path, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0x9A02, channels=[MAIN, DISPLAY])
        await prepare(session)
        genuine = await session.receive_blob(DISPLAY, rig.payloads[ChannelType.DISPLAY])
        # Authentic (the key holder sealed it) but no display state: refused after
        # authentication, so the target records it as used, which the closed store cannot.
        rig.target_proxy.replay_guard.close()
        await session.relay(DISPLAY, hostile_twin(keyring_path, genuine, b"\x80"))
        legs = session.leg(DISPLAY)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []
        (event,) = logs.audit("channel_refused", route="vm")
        assert event["reason"] == "open"
        # The refusal stands and closes the channel as any refusal does; that the blob could
        # not be recorded is logged beside it, not turned into an internal error.
        assert not logs.messages("internal error; closing channel")
        (unrecorded,) = logs.messages("a refused authentic blob could not be recorded as used")
        assert unrecorded["error"] == "RuntimeError"
        (closing,) = logs.messages("closing channel")
        assert closing["error"] == event["error"]


async def test_a_large_blob_the_closed_replay_store_cannot_look_up_is_a_clean_refusal(
    proxies: Proxies, logs: LogRecords
) -> None:
    """A blob past the inline limit is looked up in the guard before it is decrypted; a closed
    guard is a replay-store refusal there too, not an internal error."""
    data = bytes(range(256)) * 240
    pending = b"".join(
        usbredir_packet(101, struct.pack("<BBHIH", 0x81, 0, len(data), 0, 0), data, i)
        for i in range(2)
    )
    state = UsbredirState(
        device=CharDeviceState(
            connected=True,
            num_client_tokens=1,
            num_send_tokens=1,
            write_size=len(pending),
            write_num_client_tokens=2,
            write_data=pending,
        )
    )
    payload = native.encode(state, ChannelType.USBREDIR)
    assert len(payload) > channel_module.INLINE_SEAL_LIMIT
    async with proxies.pair() as rig:
        session = rig.session(0x9A03, channels=[MAIN, USBREDIR])
        await prepare(session)
        blob = await session.receive_blob(USBREDIR, payload)
        rig.target_proxy.replay_guard.close()
        await session.relay(USBREDIR, blob)
        legs = session.leg(USBREDIR)
        assert legs.server_target is not None
        assert await legs.server_target.frames_until_closed() == []
        (event,) = logs.audit("channel_refused", route="vm")
        assert event["reason"] == "replay_store"
        assert event["error"] == "ReplayStoreError"
        assert not logs.messages("internal error; closing channel")
        metrics = rig.target_proxy.metrics
        assert metrics.get("smg_refused_total", reason="replay_store", channel="usbredir") == 1


# --- finding 6: connection limits per route and per client, one memory budget -------------------


async def test_idle_connections_to_one_route_leave_the_others_alone(
    proxies: Proxies, logs: LogRecords
) -> None:
    limits = {"max_connections_per_route": 3, "max_connections_per_client": 100}
    async with proxies.pair(vms=("vm", "other"), source_limits=limits) as rig:
        idle = [
            await bounded(asyncio.open_connection(*rig.vms["vm"].source), "an idle connection")
            for _ in range(3)
        ]

        async def held() -> None:
            while rig.source_proxy.health()["connections"] < 3:
                await asyncio.sleep(0.01)

        await bounded(held(), "the idle connections to be accepted")
        reader, writer = await asyncio.open_connection(*rig.vms["vm"].source)
        assert await closed(reader) == b""
        writer.close()
        metrics = rig.source_proxy.metrics
        assert metrics.get(
            "smg_connection_limits_total", route="vm", limit="max_connections_per_route"
        ) == 1
        assert [e["limit"] for e in logs.messages("connection rejected")] == [
            "max_connections_per_route"
        ]
        # Another VM's clients still get in.
        session = rig.session(0x6A01, vm="other", channels=[MAIN, DISPLAY])
        await session.link_source()
        for _, idle_writer in idle:
            idle_writer.close()


async def test_one_client_address_cannot_take_every_slot(
    proxies: Proxies, logs: LogRecords
) -> None:
    limits = {"max_connections_per_client": 2}
    async with proxies.pair(vms=("vm", "other"), source_limits=limits) as rig:
        idle = [
            await bounded(asyncio.open_connection(*rig.vms[name].source), "an idle connection")
            for name in ("vm", "other")
        ]

        async def held() -> None:
            while rig.source_proxy.health()["connections"] < 2:
                await asyncio.sleep(0.01)

        await bounded(held(), "the idle connections to be accepted")
        reader, writer = await asyncio.open_connection(*rig.vms["other"].source)
        assert await closed(reader) == b""
        writer.close()
        assert rig.source_proxy.metrics.get(
            "smg_connection_limits_total", route="other", limit="max_connections_per_client"
        ) == 1
        # Another client address is not affected.
        host, port = rig.vms["other"].source
        reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
        writer.write(client_link(ChannelType.MAIN, 0))
        assert (await bounded(reader.readexactly(4), "the link reply")) == b"REDQ"
        writer.close()
        for _, idle_writer in idle:
            idle_writer.close()


async def test_partial_messages_share_one_memory_budget(
    proxies: Proxies, logs: LogRecords
) -> None:
    budget = 256 * 1024
    async with proxies.pair(source_limits={"max_buffered_total": budget}) as rig:
        session = rig.session(0x6B01, channels=[MAIN, DISPLAY])
        await session.link_source()
        legs = session.leg(DISPLAY)
        # A message announcing 8 MiB (under max_message_size), of which 300 KiB arrive.
        frame = encode_data_message(legs.client_source.kind, 101, bytes(8 * 1024 * 1024))
        legs.client_source.writer.write(frame[: 300 * 1024])
        await legs.client_source.writer.drain()
        assert await legs.client_source.frames_until_closed() == []
        assert rig.source_proxy.metrics.get(
            "smg_connection_limits_total", route="vm", limit="memory"
        ) == 1
        assert logs.messages("memory budget for partial messages exhausted; closing channel")
        # What the closed connection held is released: the budget is whole again.

        async def released() -> None:
            while rig.source_proxy.buffered_total:
                await asyncio.sleep(0.01)

        await bounded(released(), "the budget to be released")
        again = await link_client(rig.vm.source, ChannelType.DISPLAY, 1, connection_id=0x6B01)
        await again.close()


def test_link_stage_deadline_is_short_by_default() -> None:
    from gateway.proxy.config import Limits

    limits = Limits()
    assert limits.link_timeout <= 10
    assert limits.max_connections_per_route < limits.max_connections
    assert limits.max_buffered_total < limits.max_connections * limits.max_message_size
