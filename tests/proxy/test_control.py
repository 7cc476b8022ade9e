"""The control socket of a running proxy: health, metrics, and keyring reload with rotation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from gateway.envelope import read_header
from gateway.keys import load_keyring, save_keyring
from gateway.service.control import request
from gateway.spice.constants import ChannelType, Msgc

from .conftest import LogRecords, Proxies, Rig
from .peers import ClientSession


async def control(socket: str | None, command: str) -> dict[str, Any]:
    assert socket is not None
    # The blocking client runs off the loop: the proxy answering it runs on this loop.
    return await asyncio.to_thread(request, socket, {"cmd": command})


async def prepare(session: ClientSession) -> None:
    await session.link_source()
    await session.begin_migration()


async def seal_all(rig: Rig, session: ClientSession) -> dict[tuple[int, int], bytes]:
    return {
        channel: await session.receive_blob(channel, rig.payloads[ChannelType(channel[0])])
        for channel in session.legs
    }


async def relay_all(
    rig: Rig, session: ClientSession, blobs: dict[tuple[int, int], bytes]
) -> list[bool]:
    """Relay every blob; for each channel, whether the target server got its native payload."""
    outcome = []
    for channel, blob in blobs.items():
        await session.relay(channel, blob)
        server = session.leg(channel).server_target
        assert server is not None
        try:
            frame = await server.recv()
        except asyncio.IncompleteReadError as end:
            if end.partial:
                raise AssertionError(f"{channel}: closed inside a message") from None
            outcome.append(False)
            continue
        assert frame.msg_type == Msgc.MIGRATE_DATA
        assert frame.body == rig.payloads[ChannelType(channel[0])]
        outcome.append(True)
    return outcome


async def test_health_and_metrics(proxies: Proxies) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0x10)
        await prepare(session)
        health = await control(rig.source_config.control_socket, "health")
        assert health["ok"] is True
        assert health["status"] == "serving"
        assert health["host_id"] == "source-host"
        assert health["routes"] == {"vm": "{}:{}".format(*rig.vm.source)}
        assert health["connections"] == len(session.legs)
        assert health["sessions"] == 1
        metrics = await control(rig.target_config.control_socket, "metrics")
        assert metrics["metrics"]['smg_connections_total{route="vm"}'] == len(session.legs)
        text = (await control(rig.target_config.control_socket, "prometheus"))["text"]
        assert "# TYPE smg_connections_total counter" in text
        unknown = await asyncio.to_thread(
            request, str(rig.source_config.control_socket), {"cmd": "shutdown"}
        )
        assert unknown["ok"] is False


async def test_reload_after_rotation(
    proxies: Proxies, keyring_path: Path, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        old_key = load_keyring(keyring_path).active.key_id
        in_flight = rig.session(0x20)
        await prepare(in_flight)
        old_blobs = await seal_all(rig, in_flight)
        assert {read_header(b).key_id for b in old_blobs.values()} == {old_key}

        rotated, new = load_keyring(keyring_path).rotated()
        save_keyring(rotated, keyring_path)
        assert (await control(rig.source_config.control_socket, "reload"))["keys"] == 2

        # The source seals with the new key at once; the target, not reloaded yet, cannot open.
        early = rig.session(0x21)
        await prepare(early)
        early_blobs = await seal_all(rig, early)
        assert {read_header(b).key_id for b in early_blobs.values()} == {new.key_id}
        assert await relay_all(rig, early, early_blobs) == [False] * len(early_blobs)
        assert {e["error"] for e in logs.audit("channel_refused")} == {"UnknownKey"}

        assert (await control(rig.target_config.control_socket, "reload"))["keys"] == 2
        # Blobs sealed before the rotation still open (the old key is now decrypt-only)...
        assert await relay_all(rig, in_flight, old_blobs) == [True] * len(old_blobs)
        # ...and so do blobs under the new key.
        late = rig.session(0x22)
        await prepare(late)
        assert await relay_all(rig, late, await seal_all(rig, late)) == [True] * len(late.legs)
        assert len(logs.audit("migration_accepted")) == 2


async def test_failed_reload_keeps_the_keys_in_use(
    proxies: Proxies, keyring_path: Path, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        save_keyring(load_keyring(keyring_path).rotated()[0], keyring_path)
        os.chmod(keyring_path, 0o644)
        answer = await control(rig.source_config.control_socket, "reload")
        assert answer["ok"] is False
        assert answer["error"].startswith("KeyringError")
        assert logs.messages("keyring reload failed; keeping the current keys")
        session = rig.session(0x30)
        await prepare(session)
        assert await relay_all(rig, session, await seal_all(rig, session)) == [True] * len(
            session.legs
        )


async def test_a_failing_replay_store_refuses_the_blob_and_is_counted(
    proxies: Proxies, logs: LogRecords
) -> None:
    async with proxies.pair() as rig:
        session = rig.session(0x40)
        await prepare(session)
        blobs = await seal_all(rig, session)
        # The database gone from under the target proxy: nothing can be recorded as used.
        rig.target_proxy.replay_guard.close()
        assert await relay_all(rig, session, blobs) == [False] * len(blobs)
        metrics = rig.target_proxy.metrics
        assert metrics.get("smg_replay_store_errors_total") == len(blobs)
        refusals = logs.audit("channel_refused")
        reasons = {(e["reason"], e["error"]) for e in refusals}
        assert reasons == {("replay_store", "ReplayStoreError")}
        assert len(refusals) == len(blobs)
