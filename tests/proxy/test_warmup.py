"""The start-up warm-up: it exercises the migration path once, leaves nothing a real blob could
meet in the replay database, and never stops a proxy from starting."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway import envelope
from gateway.errors import Replayed
from gateway.proxy import server, warmup
from gateway.proxy.sessions import DATA_CHANNELS
from gateway.replay import ReplayGuard

from .conftest import Proxies


def test_every_data_channel_with_a_sample_runs_the_whole_path() -> None:
    # Seven data channels, seven bundled samples: a missing sample would leave its channel cold.
    assert warmup.warm_codecs() == len(DATA_CHANNELS)


def test_the_warm_up_record_cannot_stand_for_a_blob() -> None:
    assert warmup.WARM_UP_BLOB_ID_SIZE != envelope.SALT_SIZE


async def test_warm_up_leaves_the_replay_database_empty_and_single_use_intact(
    tmp_path: Path,
) -> None:
    guard = ReplayGuard(tmp_path / "replay.sqlite")
    try:
        await warmup.warm_up(guard)
        assert len(guard) == 0
        now = int(time.time())
        blob_id = bytes(envelope.SALT_SIZE)
        guard.consume(blob_id, now + 60, now=now)
        assert len(guard) == 1
        with pytest.raises(Replayed):
            guard.consume(blob_id, now + 60, now=now)
    finally:
        guard.close()


async def test_the_warm_up_goes_through_a_real_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = ReplayGuard(tmp_path / "replay.sqlite")
    committed: list[tuple[bytes, int, int]] = []
    consume = guard.consume

    def recording(blob_id: bytes, keep_until: int, *, now: int) -> None:
        consume(blob_id, keep_until, now=now)
        committed.append((blob_id, keep_until, now))

    monkeypatch.setattr(guard, "consume", recording)
    try:
        await warmup.warm_up(guard)
    finally:
        guard.close()
    ((blob_id, keep_until, now),) = committed
    assert len(blob_id) == warmup.WARM_UP_BLOB_ID_SIZE
    assert keep_until < now


async def test_worker_threads_are_started_for_a_whole_migration() -> None:
    before = threading.active_count()
    await warmup.warm_threads(len(DATA_CHANNELS))
    started = threading.active_count() - before
    # The default pool holds min(32, CPUs + 4) >= 5 threads; all are started when fewer than
    # the channels, one per channel otherwise.
    assert started >= min(5, len(DATA_CHANNELS))
    # The threads are reused: a second warm-up starts none.
    await warmup.warm_threads(len(DATA_CHANNELS))
    assert threading.active_count() - before == started


async def test_a_failing_warm_up_is_logged_and_the_proxy_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = ReplayGuard(tmp_path / "replay.sqlite")
    guard.close()  # every commit now fails
    with caplog.at_level("WARNING"):
        await warmup.warm_up(guard)
    assert any("warm-up failed" in record.getMessage() for record in caplog.records)


async def test_a_database_error_is_logged_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = ReplayGuard(tmp_path / "replay.sqlite")

    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(guard, "consume", broken)
    try:
        with caplog.at_level("WARNING"):
            await warmup.warm_up(guard)
    finally:
        guard.close()
    assert any("warm-up failed" in record.getMessage() for record in caplog.records)


async def test_both_proxies_warm_up_before_they_serve(
    proxies: Proxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[bool] = []
    real = server.warm_up

    async def recording(guard: ReplayGuard) -> None:
        await real(guard)
        warmed.append(True)

    monkeypatch.setattr(server, "warm_up", recording)
    async with proxies.pair() as rig:
        assert warmed == [True, True]
        for proxy in (rig.source_proxy, rig.target_proxy):
            assert len(proxy.replay_guard) == 0
