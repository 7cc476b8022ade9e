"""The replay guard's commit thread (``ReplayGuard.submit``): records are durable before their
callback runs, single use holds, submissions share commits, failures reach every caller, a
closing guard records what it was given first."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ContextMismatch, Replayed, ReplayStoreError
from gateway.replay import WAL_RESERVE, ReplayGuard

NOW = 1_800_000_000


class Outcomes:
    """The outcome of each submitted request, in the order their callbacks ran."""

    def __init__(self) -> None:
        self.results: list[tuple[bytes, BaseException | None]] = []
        self._changed = threading.Condition()

    def done(self, blob_id: bytes) -> Callable[[BaseException | None], None]:
        def callback(error: BaseException | None) -> None:
            with self._changed:
                self.results.append((blob_id, error))
                self._changed.notify_all()

        return callback

    def wait(self, count: int) -> list[tuple[bytes, BaseException | None]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.results) >= count, timeout=30)
            return list(self.results)


def submit(
    guard: ReplayGuard,
    outcomes: Outcomes,
    blob_id: bytes,
    claim: Callable[[], None] | None = None,
) -> None:
    guard.submit(blob_id, NOW + 60, now=NOW, claim=claim, done=outcomes.done(blob_id))


def test_the_record_is_durable_before_the_callback(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    seen_by_another_connection: list[bool] = []

    def done(error: BaseException | None) -> None:
        # A second connection sees only committed rows: the record must be one already.
        other = sqlite3.connect(path)
        try:
            row = other.execute("SELECT 1 FROM consumed WHERE blob_id = ?", (b"a" * 32,))
            seen_by_another_connection.append(error is None and row.fetchone() is not None)
        finally:
            other.close()
        finished.set()

    finished = threading.Event()
    with ReplayGuard(path) as guard:
        guard.submit(b"a" * 32, NOW + 60, now=NOW, done=done)
        assert finished.wait(30)
    assert seen_by_another_connection == [True]


def test_single_use_holds_across_submit_and_consume(tmp_path: Path) -> None:
    outcomes = Outcomes()
    with ReplayGuard(tmp_path / "r.db") as guard:
        submit(guard, outcomes, b"a" * 32)
        submit(guard, outcomes, b"a" * 32)
        first, second = outcomes.wait(2)
        assert first == (b"a" * 32, None)
        assert isinstance(second[1], Replayed)
        with pytest.raises(Replayed):
            guard.consume(b"a" * 32, NOW + 60, now=NOW)
        guard.consume(b"b" * 32, NOW + 60, now=NOW)
        submit(guard, outcomes, b"b" * 32)
        assert isinstance(outcomes.wait(3)[2][1], Replayed)
        assert len(guard) == 2


def test_what_is_submitted_during_a_commit_shares_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = Outcomes()
    entered, release = threading.Event(), threading.Event()
    batches: list[int] = []
    with ReplayGuard(tmp_path / "r.db") as guard:
        commit = guard._commit

        def counting(batch: list[Any]) -> None:
            batches.append(len(batch))
            commit(batch)

        monkeypatch.setattr(guard, "_commit", counting)

        def hold() -> None:
            entered.set()
            assert release.wait(30)

        submit(guard, outcomes, b"0" * 32, claim=hold)
        assert entered.wait(30)
        for index in range(1, 6):
            submit(guard, outcomes, bytes([index]) * 32)
        release.set()
        results = outcomes.wait(6)
    assert batches == [1, 5]
    assert [error for _, error in results] == [None] * 6


def test_a_failed_commit_is_a_store_error_for_each_request_and_the_thread_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    outcomes = Outcomes()
    with ReplayGuard(path, busy_timeout=0.05) as guard:
        # Another process holds the write lock past the busy timeout.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            submit(guard, outcomes, b"a" * 32)
            (result,) = outcomes.wait(1)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert isinstance(result[1], ReplayStoreError)
        assert "locked" in str(result[1])
        assert b"a" * 32 not in guard
        # The same commit thread records the next one.
        submit(guard, outcomes, b"a" * 32)
        assert outcomes.wait(2)[1] == (b"a" * 32, None)


def test_a_refusing_claim_leaves_the_blob_recorded(tmp_path: Path) -> None:
    outcomes = Outcomes()

    def refuse() -> None:
        raise ContextMismatch("migration_id", "not this one")

    with ReplayGuard(tmp_path / "r.db") as guard:
        submit(guard, outcomes, b"a" * 32, claim=refuse)
        ((_, error),) = outcomes.wait(1)
        assert isinstance(error, ContextMismatch)
        assert b"a" * 32 in guard


def test_a_failing_callback_does_not_stop_the_others(tmp_path: Path) -> None:
    outcomes = Outcomes()

    def broken(error: BaseException | None) -> None:
        raise ValueError("a caller's bug")

    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.submit(b"a" * 32, NOW + 60, now=NOW, done=broken)
        submit(guard, outcomes, b"b" * 32)
        assert outcomes.wait(1) == [(b"b" * 32, None)]
        assert b"a" * 32 in guard


def test_close_records_everything_submitted_first(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    outcomes = Outcomes()
    entered, release = threading.Event(), threading.Event()
    guard = ReplayGuard(path)

    def hold() -> None:
        entered.set()
        assert release.wait(30)

    submit(guard, outcomes, b"0" * 32, claim=hold)
    assert entered.wait(30)
    ids = [bytes([index]) * 32 for index in range(1, 11)]
    for blob_id in ids:
        submit(guard, outcomes, blob_id)
    closer = threading.Thread(target=guard.close)
    closer.start()
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    # Every callback ran before close returned, each with its blob recorded.
    assert sorted(outcomes.results) == sorted((b, None) for b in [b"0" * 32, *ids])
    with pytest.raises(RuntimeError, match="closed"):
        guard.submit(b"z" * 32, NOW + 60, now=NOW, done=outcomes.done(b"z" * 32))
    with ReplayGuard(path) as reopened:
        assert len(reopened) == 11


def test_a_commit_runs_the_same_few_statements_for_any_number_of_blobs(tmp_path: Path) -> None:
    """Each statement hands the GIL back and forth: a batch must not cost one per blob."""
    outcomes = Outcomes()
    entered, release = threading.Event(), threading.Event()
    statements: list[str] = []
    with ReplayGuard(tmp_path / "r.db") as guard:

        def hold() -> None:
            entered.set()
            assert release.wait(30)

        submit(guard, outcomes, b"0" * 32, claim=hold)
        assert entered.wait(30)
        ids = [index.to_bytes(2, "big") * 16 for index in range(1, 1201)]
        for blob_id in ids:
            submit(guard, outcomes, blob_id)
        submit(guard, outcomes, ids[0])  # a duplicate within the batch
        assert guard._db is not None
        guard._db.set_trace_callback(statements.append)
        release.set()
        results = outcomes.wait(len(ids) + 2)
        assert len(guard) == len(ids) + 1
    recorded = [blob_id for blob_id, error in results[1:] if error is None]
    assert sorted(recorded) == sorted(ids)
    assert isinstance(results[-1][1], Replayed)
    # The second commit: BEGIN, prune, three lookups of 500 ids at most, one insert of them all
    # (which the trace shows row by row), the clean mark's check, COMMIT. (Closing the guard
    # then runs a transaction of its own, without inserts.)
    kinds = [statement.split()[0].upper() for statement in statements]
    last_insert = len(kinds) - 1 - kinds[::-1].index("INSERT")
    begin = last_insert - kinds[last_insert::-1].index("BEGIN")
    second = kinds[begin:]
    second = second[: second.index("COMMIT") + 1]
    assert second.count("SELECT") == 3
    assert second.count("DELETE") == second.count("COMMIT") == second.count("UPDATE") == 1
    assert second.count("INSERT") == len(ids)


def test_the_reserved_log_is_overwritten_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    wal = tmp_path / "r.db-wal"
    with ReplayGuard(path) as guard:
        guard.reserve_log()
        reserved = wal.stat().st_size
        assert reserved >= WAL_RESERVE
        # Nothing of the reservation is left in the database.
        assert len(guard) == 0
        other = sqlite3.connect(path)
        try:
            tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            assert sorted(row[0] for row in tables) == ["boot", "consumed"]
        finally:
            other.close()
        for index in range(300):
            guard.consume(index.to_bytes(2, "big") * 16, NOW + 60, now=NOW)
        # Three hundred commits later the log file has not grown: each commit wrote into
        # blocks it already had.
        assert wal.stat().st_size == reserved
        assert len(guard) == 300
