"""The replay guard across restarts of the operating system: commits reach the kernel, not the
disk, so a database last written in another boot and not closed cleanly vouches only for blobs
issued after it was reopened (plus the largest clock skew); one closed cleanly lost nothing;
without a boot id, every commit is an fsync.

A crash is a real one: the writer is a process killed with SIGKILL, which leaves the database
as an operating-system crash would find it marked (not clean), whatever reached the disk."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from gateway import envelope, replay
from gateway.envelope import Context, ExpectedContext, open_envelope, seal
from gateway.errors import Replayed
from gateway.keys import Keyring
from gateway.replay import FORGOTTEN_SKEW, ReplayGuard
from schemas.inputs import InputsState

NOW = int(time.time())
BLOB = b"b" * 32


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A boot id file of the test's own, first naming boot "one"."""
    path = tmp_path / "boot_id"
    path.write_text("one\n")
    monkeypatch.setattr(replay, "BOOT_ID_FILE", path)
    return path


def crashed_writer(db: Path, boot: Path, *blob_ids: bytes, fsync: bool = False) -> None:
    """A process of boot ``boot`` opens ``db`` (with an fsync per commit if ``fsync``), records
    ``blob_ids`` and dies without closing."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from pathlib import Path
        from gateway import replay
        replay.BOOT_ID_FILE = Path(sys.argv[2])
        guard = replay.ReplayGuard(sys.argv[1], fsync=sys.argv[3] == "fsync")
        now = int(time.time())
        for blob_id in sys.argv[4:]:
            guard.consume(bytes.fromhex(blob_id), now + 600, now=now, issued_at=now)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(db),
            str(boot),
            "fsync" if fsync else "kernel",
            *(b.hex() for b in blob_ids),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def clean_mark(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        (clean,) = connection.execute("SELECT clean FROM boot").fetchone()
    connection.close()
    return int(clean)


def synchronous(db: Path) -> int:
    """The synchronous level a guard's own connection runs at (1 NORMAL, 2 FULL)."""
    with ReplayGuard(db) as guard:
        assert guard._db is not None
        return int(guard._db.execute("PRAGMA synchronous").fetchone()[0])


def test_the_skew_allowance_is_the_envelopes_largest_skew() -> None:
    assert FORGOTTEN_SKEW == envelope.MAX_CLOCK_SKEW


def test_with_a_boot_id_commits_reach_the_kernel_without_an_fsync(
    tmp_path: Path, boot: Path
) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        assert not guard.fsync_each_commit
        assert guard.forgotten_before is None
    assert synchronous(tmp_path / "r.db") == 1


def test_without_a_boot_id_every_commit_is_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "BOOT_ID_FILE", tmp_path / "missing")
    assert replay.boot_id() is None
    with ReplayGuard(tmp_path / "r.db") as guard:
        assert guard.fsync_each_commit
        guard.consume(BLOB, NOW + 60, now=NOW, issued_at=NOW - 3600)
    assert synchronous(tmp_path / "r.db") == 2


def test_reopened_in_the_same_boot_nothing_is_forgotten(tmp_path: Path, boot: Path) -> None:
    with ReplayGuard(tmp_path / "r.db") as guard:
        guard.consume(BLOB, NOW + 60, now=NOW, issued_at=NOW)
    with ReplayGuard(tmp_path / "r.db") as guard:
        assert guard.forgotten_before is None
        with pytest.raises(Replayed, match="already opened"):
            guard.consume(BLOB, NOW + 60, now=NOW, issued_at=NOW)
        guard.consume(b"c" * 32, NOW + 60, now=NOW, issued_at=NOW - 3600)


def test_after_another_boot_older_blobs_are_refused_and_newer_ones_taken(
    tmp_path: Path, boot: Path
) -> None:
    db = tmp_path / "r.db"
    crashed_writer(db, boot, BLOB)
    boot.write_text("two\n")
    before = int(time.time())
    with ReplayGuard(db) as guard:
        forgotten = guard.forgotten_before
        assert forgotten is not None
        assert before <= forgotten <= int(time.time())
        # What the database holds is still honoured.
        with pytest.raises(Replayed, match="already opened"):
            guard.consume(BLOB, NOW + 600, now=NOW, issued_at=forgotten + FORGOTTEN_SKEW + 1)
        # Issued up to the mark plus the skew: its record may have been lost. Refused, and
        # nothing recorded.
        for issued_at in (forgotten - 1, forgotten, forgotten + FORGOTTEN_SKEW):
            with pytest.raises(Replayed, match="restart of the system"):
                guard.consume(b"c" * 32, NOW + 600, now=NOW, issued_at=issued_at)
        assert b"c" * 32 not in guard
        # The commit thread's path refuses at once, before anything is queued.
        outcomes: list[BaseException | None] = []
        with pytest.raises(Replayed, match="restart of the system"):
            guard.submit(
                b"d" * 32, NOW + 600, now=NOW, issued_at=forgotten, done=outcomes.append
            )
        assert outcomes == []
        assert b"d" * 32 not in guard
        # Issued after it: taken.
        guard.consume(b"e" * 32, NOW + 600, now=NOW, issued_at=forgotten + FORGOTTEN_SKEW + 1)
    # The mark is kept in the database: a later opener in the same boot sees it.
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before == forgotten


def test_the_mark_never_moves_back(
    tmp_path: Path, boot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.db"
    crashed_writer(db, boot)
    boot.write_text("two\n")
    with ReplayGuard(db) as guard:
        first = guard.forgotten_before
    assert first is not None
    # A third boot, after another crash, whose clock starts behind the second's.
    crashed_writer(db, boot)
    boot.write_text("three\n")
    monkeypatch.setattr(replay.time, "time", lambda: float(first - 3600))
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before == first


def test_a_database_of_an_earlier_version_is_taken_as_it_is(tmp_path: Path, boot: Path) -> None:
    # Written with an fsync per commit, before the boot table existed: nothing can be lost.
    db = tmp_path / "r.db"
    with ReplayGuard(db) as guard:
        guard.consume(BLOB, NOW + 60, now=NOW)
    with sqlite3.connect(db) as connection:
        connection.execute("DROP TABLE boot")
    connection.close()
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before is None
        assert BLOB in guard


def test_open_envelope_refuses_a_blob_issued_before_the_restart(
    tmp_path: Path, boot: Path
) -> None:
    """The envelope hands the blob's issued-at to the guard (the library's path; the proxy's
    is in tests/proxy/test_open_path.py)."""
    keyring = Keyring.create()
    vm, migration = uuid.uuid4(), uuid.uuid4()
    context = Context(3, 0, vm, migration, "source", "target", 1)
    expected = ExpectedContext.of(context)
    db = tmp_path / "r.db"
    crashed_writer(db, boot)
    boot.write_text("two\n")
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before is not None
        now = guard.forgotten_before
        blob = seal(InputsState(motion_count=0), context, keyring, now=now - 1)
        with pytest.raises(Replayed, match="restart of the system"):
            open_envelope(blob, expected, keyring, guard, now=now)
        later = guard.forgotten_before + FORGOTTEN_SKEW + 1
        fresh = seal(InputsState(motion_count=0), context, keyring, now=later)
        opened = open_envelope(fresh, expected, keyring, guard, now=later)
        assert opened.state == InputsState(motion_count=0)


def test_a_database_closed_cleanly_lost_nothing(tmp_path: Path, boot: Path) -> None:
    # A planned restart: the proxy stops (closing its guard), the system restarts.
    db = tmp_path / "r.db"
    with ReplayGuard(db) as guard:
        assert clean_mark(db) == 0
        guard.consume(BLOB, NOW + 600, now=NOW, issued_at=NOW)
    assert clean_mark(db) == 1
    boot.write_text("two\n")
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before is None
        assert clean_mark(db) == 0
        with pytest.raises(Replayed, match="already opened"):
            guard.consume(BLOB, NOW + 600, now=NOW, issued_at=NOW)
        guard.consume(b"c" * 32, NOW + 600, now=NOW, issued_at=NOW)


def test_a_writer_still_at_work_when_another_closes_clears_the_mark(
    tmp_path: Path, boot: Path
) -> None:
    # Two processes on one file: the first closes (clean), the second records on, then the
    # system crashes. The second's first commit after the close cleared the mark, durably.
    db = tmp_path / "r.db"
    first, second = ReplayGuard(db), ReplayGuard(db)
    first.close()
    assert clean_mark(db) == 1
    second.consume(BLOB, NOW + 600, now=NOW, issued_at=NOW)
    assert clean_mark(db) == 0
    second.consume(b"c" * 32, NOW + 600, now=NOW, issued_at=NOW)
    assert clean_mark(db) == 0
    # The crash: the second never closes (its connection is dropped, nothing marked).
    assert second._db is not None
    second._db.close()
    second._db = None
    boot.write_text("two\n")
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before is not None


def test_a_guard_asked_to_fsyncs_every_commit_and_its_crash_costs_nothing(
    tmp_path: Path, boot: Path
) -> None:
    db = tmp_path / "r.db"
    with ReplayGuard(db, fsync=True) as guard:
        assert guard.fsync_each_commit
        assert clean_mark(db) == 1  # every commit of this guard is durable: always clean
    assert synchronous(db) == 1  # the next guard, not asked to, relies on the boot id again
    crashed_writer(db, boot, BLOB, fsync=True)
    boot.write_text("two\n")
    with ReplayGuard(db) as guard:
        assert guard.forgotten_before is None
        with pytest.raises(Replayed, match="already opened"):
            guard.consume(BLOB, NOW + 600, now=NOW, issued_at=NOW)
