"""The replay guard: single use, durability, pruning, group commit, several processes, one file."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, ContextMismatch, Replayed
from gateway.replay import ReplayGuard

NOW = 1_800_000_000


def test_second_consume_is_refused(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
        with pytest.raises(Replayed, match="already opened"):
            guard.consume(b"a" * 32, NOW + 60, now=NOW)
        guard.consume(b"b" * 32, NOW + 60, now=NOW)
        assert len(guard) == 2
        assert b"a" * 32 in guard
        assert b"c" * 32 not in guard


def test_record_survives_reopening(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
    with ReplayGuard(tmp_path / "r.db") as guard, pytest.raises(Replayed):
        guard.consume(b"a" * 32, NOW + 60, now=NOW + 1)


def test_rows_are_kept_until_their_time_then_pruned(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.consume(b"a" * 32, NOW + 10, now=NOW)
        guard.consume(b"b" * 32, NOW + 100, now=NOW)
        # At exactly keep_until the row is still needed.
        guard.consume(b"c" * 32, NOW + 200, now=NOW + 10)
        assert b"a" * 32 in guard
        guard.consume(b"d" * 32, NOW + 200, now=NOW + 11)
        assert b"a" * 32 not in guard
        assert len(guard) == 3
        assert guard.prune(NOW + 150) == 1
        assert b"b" * 32 not in guard
        assert len(guard) == 2


def test_database_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReplayGuard(path) as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
        assert path.stat().st_mode & 0o777 == 0o600
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("SELECT count(*) FROM consumed").fetchone()[0] == 1
        finally:
            other.close()


def test_closed_guard_cannot_be_used(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "r.db")
    guard.close()
    guard.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        guard.consume(b"a" * 32, NOW + 60, now=NOW)


def test_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="replay database"):
        ReplayGuard(tmp_path / "no-such-dir" / "r.db")


def _racer(path: str, blob_id: bytes, start: Any, results: Any) -> None:
    """Child process: wait for the start signal, try to consume, report whether it won."""
    start.wait(10)
    with ReplayGuard(path) as guard:
        try:
            guard.consume(blob_id, NOW + 60, now=NOW)
        except Replayed:
            results.put(False)
            return
    results.put(True)


def _writer(path: str, prefix: bytes, count: int) -> None:
    with ReplayGuard(path) as guard:
        for i in range(count):
            guard.consume(prefix + i.to_bytes(4, "big"), NOW + 60, now=NOW)


def test_only_one_of_several_processes_opens_the_same_blob(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    ReplayGuard(path).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(path, b"x" * 32, start, results)) for _ in range(6)]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert sorted(outcomes) == [False] * 5 + [True]


def test_concurrent_writers_lose_no_record(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, bytes([n]) * 28, 40)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    with ReplayGuard(path) as guard:
        assert len(guard) == 160


# --- group commit ----------------------------------------------------------------------------


class Interrupted(BaseException):
    """Not an Exception: a claim raising it aborts the whole commit, as an interruption would."""


def _consume_in_thread(
    guard: ReplayGuard,
    blob_id: bytes,
    outcomes: dict[bytes | str, object],
    key: bytes | str,
    claim: Callable[[], None] | None = None,
) -> threading.Thread:
    def run() -> None:
        try:
            guard.consume(blob_id, NOW + 60, now=NOW, claim=claim)
        except BaseException as exc:  # the test inspects whatever each caller got
            outcomes[key] = exc
        else:
            outcomes[key] = "recorded"

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.001)


def _blocked_leader(
    guard: ReplayGuard, outcomes: dict[bytes | str, object]
) -> tuple[threading.Thread, threading.Event]:
    """A consume whose claim waits for the returned event: its caller leads a commit and holds
    it open, so every consume started meanwhile queues for the next one."""
    inside, release = threading.Event(), threading.Event()

    def claim() -> None:
        inside.set()
        assert release.wait(30)

    thread = _consume_in_thread(guard, b"L" * 32, outcomes, "leader", claim)
    assert inside.wait(30)
    return thread, release


def test_requests_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    """One leader records every queued request in one transaction, duplicates included."""
    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.consume(b"old" * 8, NOW + 60, now=NOW)
        outcomes: dict[bytes | str, object] = {}
        leader, release = _blocked_leader(guard, outcomes)
        committers: dict[bytes | str, int] = {}

        def claim_for(key: str) -> Callable[[], None]:
            return lambda: committers.__setitem__(key, threading.get_ident())

        blob_ids = {"a": b"a" * 32, "b": b"b" * 32, "b again": b"b" * 32, "old": b"old" * 8}
        threads = [
            _consume_in_thread(guard, blob_id, outcomes, key, claim_for(key))
            for key, blob_id in blob_ids.items()
        ]
        _wait_until(lambda: len(guard._queue) == len(threads))
        release.set()
        for thread in [leader, *threads]:
            thread.join(30)

        assert outcomes["leader"] == outcomes["a"] == "recorded"
        recorded = [key for key in ("b", "b again") if outcomes[key] == "recorded"]
        refused = [key for key in ("b", "b again") if isinstance(outcomes[key], Replayed)]
        assert len(recorded) == len(refused) == 1
        assert isinstance(outcomes["old"], Replayed)
        # Claims run only for new blob ids, all on the one thread that committed the batch.
        assert set(committers) == {"a", recorded[0]}
        assert len(set(committers.values())) == 1
        assert len(guard) == 4


def test_a_claim_decides_in_queue_order_within_a_commit(tmp_path: Path) -> None:
    """The first claim of a batch sees no pin and sets it; the later ones see it."""
    with ReplayGuard(tmp_path / "r.db") as guard:
        outcomes: dict[bytes | str, object] = {}
        leader, release = _blocked_leader(guard, outcomes)
        pinned: list[str] = []

        def pin(value: str) -> Callable[[], None]:
            def claim() -> None:
                if pinned and pinned[0] != value:
                    raise ContextMismatch("migration_id", "another migration is pinned")
                pinned.append(value)

            return claim

        first = _consume_in_thread(guard, b"1" * 32, outcomes, "first", pin("x"))
        _wait_until(lambda: len(guard._queue) == 1)
        second = _consume_in_thread(guard, b"2" * 32, outcomes, "second", pin("y"))
        _wait_until(lambda: len(guard._queue) == 2)
        third = _consume_in_thread(guard, b"3" * 32, outcomes, "third", pin("x"))
        _wait_until(lambda: len(guard._queue) == 3)
        release.set()
        for thread in (leader, first, second, third):
            thread.join(30)

        assert outcomes["first"] == outcomes["third"] == "recorded"
        assert isinstance(outcomes["second"], ContextMismatch)
        assert pinned == ["x", "x"]
        # Refused by its claim, yet recorded: an authentic blob is used once, whatever the
        # outcome.
        assert b"2" * 32 in guard
        assert len(guard) == 4


def test_a_refusing_claim_still_records_the_blob(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        calls: list[int] = []

        def refuse() -> None:
            calls.append(1)
            raise ContextMismatch("migration_id", "refused by the claim")

        with pytest.raises(ContextMismatch, match="refused by the claim"):
            guard.consume(b"a" * 32, NOW + 60, now=NOW, claim=refuse)
        # Recorded in the same transaction as the refusal: it cannot be offered again, and a
        # replay never reaches the claim.
        assert b"a" * 32 in guard
        with pytest.raises(Replayed):
            guard.consume(b"a" * 32, NOW + 60, now=NOW, claim=lambda: calls.append(2))
        assert calls == [1]


def test_a_failed_commit_records_nothing_and_the_next_one_works(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        outcomes: dict[bytes | str, object] = {}
        inside, release = threading.Event(), threading.Event()

        def interrupt() -> None:
            inside.set()
            assert release.wait(30)
            raise Interrupted

        leader = _consume_in_thread(guard, b"L" * 32, outcomes, "leader", interrupt)
        assert inside.wait(30)
        # Queued behind the leader's commit: the next commit.
        follower = _consume_in_thread(guard, b"f" * 32, outcomes, "follower")
        _wait_until(lambda: len(guard._queue) == 1)
        release.set()
        leader.join(30)
        follower.join(30)
        assert isinstance(outcomes["leader"], Interrupted)
        assert outcomes["follower"] == "recorded"
        assert b"L" * 32 not in guard


def test_a_failed_commit_fails_every_request_in_it(tmp_path: Path) -> None:
    """An interruption inside a commit that also holds another caller's request."""
    with ReplayGuard(tmp_path / "r.db") as guard:
        outcomes: dict[bytes | str, object] = {}
        blocker, release = _blocked_leader(guard, outcomes)
        inside2 = threading.Event()

        def interrupt_later() -> None:
            inside2.set()
            raise Interrupted

        victim = _consume_in_thread(guard, b"v" * 32, outcomes, "victim")
        _wait_until(lambda: len(guard._queue) == 1)
        culprit = _consume_in_thread(guard, b"c" * 32, outcomes, "culprit", interrupt_later)
        _wait_until(lambda: len(guard._queue) == 2)
        release.set()
        for thread in (blocker, victim, culprit):
            thread.join(30)
        assert inside2.is_set()
        assert outcomes["leader"] == "recorded"
        # Both were queued, so one commit held both. Whoever led it re-raises the interruption;
        # the other caller gets a RuntimeError of its own, never a success.
        assert {type(outcomes["victim"]), type(outcomes["culprit"])} == {Interrupted, RuntimeError}
        assert b"v" * 32 not in guard
        assert b"c" * 32 not in guard
        # The guard still works after a failed commit.
        guard.consume(b"v" * 32, NOW + 60, now=NOW)
        assert b"v" * 32 in guard


def test_many_threads_lose_no_record_and_admit_each_blob_once(tmp_path: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        outcomes: dict[bytes | str, object] = {}
        threads = [
            _consume_in_thread(guard, bytes([n % 20]) * 32, outcomes, f"{n}") for n in range(60)
        ]
        for thread in threads:
            thread.join(60)
        recorded = [key for key, outcome in outcomes.items() if outcome == "recorded"]
        replayed = [key for key, outcome in outcomes.items() if isinstance(outcome, Replayed)]
        assert len(recorded) == 20
        assert len(replayed) == 40
        assert sorted({int(key) % 20 for key in recorded}) == list(range(20))
        assert len(guard) == 20
