"""The replay guard: single use, durability, pruning, and several processes on one file."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, Replayed
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
