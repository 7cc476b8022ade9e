"""The target's open path with the replay guard's commit thread: the native bytes exist only
after the blob's record is durable, a failed commit is a ``replay_store`` refusal, and the
acceptance is audited once the bytes are on their way."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.envelope import read_header
from gateway.errors import ReplayStoreError
from gateway.replay import ReplayGuard
from gateway.spice.constants import ChannelType, HeaderKind, Msgc
from gateway.spice.messages import encode_data_message

from .conftest import LogRecords
from .test_open_path import PAYLOADS, Target, migrate_data, target_state


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    with target_state(tmp_path, peer_link_down="first-blob") as found:
        yield found


async def test_the_native_bytes_wait_for_the_durable_record(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = target.guard
    entered, release = threading.Event(), threading.Event()
    commit = guard._commit
    committed: list[bytes] = []

    def held(batch: list[Any]) -> None:
        entered.set()
        assert release.wait(30)
        commit(batch)
        committed.extend(request.blob_id for request in batch)

    monkeypatch.setattr(guard, "_commit", held)
    blob = target.blob(ChannelType.DISPLAY, uuid.uuid4())
    handler = target.handler(ChannelType.DISPLAY, 0x61)
    task = asyncio.create_task(handler.rewrite(migrate_data(blob)))
    await asyncio.to_thread(entered.wait, 30)
    # The commit has the record and has not finished: nothing may be released yet, however
    # long the loop runs meanwhile.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    assert committed == []
    release.set()
    result = await task
    assert committed == [read_header(blob).salt]
    assert result == encode_data_message(
        HeaderKind.MINI, Msgc.MIGRATE_DATA, PAYLOADS[ChannelType.DISPLAY]
    )


async def test_a_failed_commit_is_a_replay_store_refusal(
    target: Target, monkeypatch: pytest.MonkeyPatch, logs: LogRecords
) -> None:
    def failing(db: sqlite3.Connection, rows: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ReplayGuard, "_insert", staticmethod(failing))
    blob = target.blob(ChannelType.INPUTS, uuid.uuid4())
    handler = target.handler(ChannelType.INPUTS, 0x62)
    with pytest.raises(ReplayStoreError, match="disk I/O error"):
        await handler.rewrite(migrate_data(blob))
    assert handler.refused
    metrics = target.state.metrics
    assert metrics.get("smg_refused_total", reason="replay_store", channel="inputs") == 1
    assert metrics.get("smg_replay_store_errors_total") == 1
    assert logs.audit("channel_refused", reason="replay_store", channel="inputs:0")
    assert read_header(blob).salt not in target.guard


async def test_acceptances_are_audited_after_the_bytes_are_handed_on(
    target: Target, logs: LogRecords
) -> None:
    handler = target.handler(ChannelType.INPUTS, 0x63)
    await handler.rewrite(migrate_data(target.blob(ChannelType.INPUTS, uuid.uuid4())))
    # Written on the loop's next turn, not before the caller had the bytes.
    assert logs.audit("blob_accepted", channel="inputs:0") == []
    await asyncio.sleep(0)
    assert len(logs.audit("blob_accepted", channel="inputs:0")) == 1
    assert len(logs.audit("migration_accepted")) == 1
