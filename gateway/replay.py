"""The single-use guard: an embedded SQLite store of consumed blob ids, kept until they expire.

A blob id is recorded in the same ``BEGIN IMMEDIATE`` transaction that checks it, so two
processes opening the same blob at once cannot both succeed: SQLite's write lock serialises
them and the second finds the row. ``synchronous=FULL`` in WAL mode makes the commit durable
before :meth:`ReplayGuard.consume` returns, so a crash (even SIGKILL or power loss) right after
a successful open cannot forget the blob. Rows are kept until the blob could no longer pass the
expiry check anyway, then pruned.

The commit waits for the disk (an fsync, about a millisecond), which would make the channels of
one migration wait for each other. Threads that call :meth:`~ReplayGuard.consume` while a commit
is under way therefore share the next one (group commit): whoever takes the commit lock records
every request queued so far in one transaction, and each caller returns only once the
transaction holding its own record is durable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from gateway.errors import ConfigError, Replayed

__all__ = ["ReplayGuard"]

#: How long a writer waits for another process's transaction before giving up, in seconds.
DEFAULT_BUSY_TIMEOUT: Final = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consumed (
    blob_id BLOB PRIMARY KEY NOT NULL,
    keep_until INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS consumed_keep_until ON consumed (keep_until);
"""


class _Request:
    """One consume call waiting for, or decided by, a commit."""

    __slots__ = ("blob_id", "claim", "done", "error", "keep_until", "now", "recorded")

    def __init__(
        self, blob_id: bytes, keep_until: int, now: int, claim: Callable[[], None] | None
    ) -> None:
        self.blob_id = blob_id
        self.keep_until = keep_until
        self.now = now
        self.claim = claim
        self.done = False
        self.recorded = False
        self.error: BaseException | None = None


def _copy_error(exc: BaseException) -> BaseException:
    """The error for a caller whose request was in a commit that failed in another thread.

    Each caller raises its own exception object (one shared across threads would collect every
    thread's traceback); anything but a database error or a closed guard (an interruption, a
    bug) becomes a RuntimeError rather than being re-raised in other threads.
    """
    if isinstance(exc, sqlite3.Error | RuntimeError):
        return type(exc)(*exc.args)
    return RuntimeError(f"replay guard: the shared commit failed ({type(exc).__name__})")


class ReplayGuard:
    """Records each accepted blob id once; a second :meth:`consume` of it raises Replayed.

    Safe to share between processes (one file) and between threads (one guard object).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(path)
        #: Held for each transaction: the leader of a group commit holds it while it commits.
        self._lock = threading.Lock()
        #: Guards the queue of requests waiting for a commit (never held while waiting).
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._db: sqlite3.Connection | None = None
        try:
            # Create it owner-only before SQLite does: whoever can write this file can undo
            # single use. SQLite gives the -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._setup(self._db, busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"replay database {self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _setup(self, db: sqlite3.Connection, busy_timeout: float) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"replay database {self.path}: cannot use WAL (mode {mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("replay guard is closed")
        return self._db

    def consume(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        claim: Callable[[], None] | None = None,
    ) -> None:
        """Record ``blob_id`` as used until ``keep_until`` (Unix seconds) or raise Replayed.

        Returns only after the record is durable. Rows whose time has passed at ``now`` are
        pruned in the same transaction.

        ``claim``, if given, is called once the blob id is known to be new, inside the
        transaction that records it and before any later request of the same commit: the place
        for a last decision that must be atomic with single use (the proxy pins a session's
        migration id there). If it raises, the blob is not recorded and this call raises that
        error. It must be quick and must not call back into this guard. If the commit itself
        fails, every request of it fails with the commit's error and records nothing, but a
        claim already made stands.
        """
        request = _Request(blob_id, keep_until, now, claim)
        with self._queue_lock:
            self._queue.append(request)
        with self._lock:
            # A leader that took the lock before us may have committed our request already.
            if not request.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if request.error is not None:
            raise request.error
        if not request.recorded:
            raise Replayed(f"blob {blob_id[:8].hex()}… was already opened")

    def _commit(self, batch: list[_Request]) -> None:
        """One transaction and one fsync for ``batch``; called with the commit lock held."""
        try:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM consumed WHERE keep_until < ?",
                    (min(request.now for request in batch),),
                )
                for request in batch:
                    self._record(db, request)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException as exc:
            for request in batch:
                request.recorded = False
                request.error = _copy_error(exc)
            raise
        finally:
            for request in batch:
                request.done = True

    @staticmethod
    def _record(db: sqlite3.Connection, request: _Request) -> None:
        inserted = db.execute(
            "INSERT OR IGNORE INTO consumed (blob_id, keep_until) VALUES (?, ?)",
            (request.blob_id, request.keep_until),
        ).rowcount
        if inserted != 1:
            return  # already consumed, possibly earlier in this very batch
        if request.claim is not None:
            try:
                request.claim()
            except Exception as exc:
                # Undone inside the transaction, so the row never becomes visible.
                db.execute("DELETE FROM consumed WHERE blob_id = ?", (request.blob_id,))
                request.error = exc
                return
        request.recorded = True

    def __contains__(self, blob_id: object) -> bool:
        with self._lock:
            row = self._conn().execute(
                "SELECT 1 FROM consumed WHERE blob_id = ?", (blob_id,)
            ).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn().execute("SELECT count(*) FROM consumed").fetchone()
        return int(count)

    def prune(self, now: int) -> int:
        """Forget blobs whose time has passed; returns how many rows went."""
        with self._lock:
            return self._conn().execute(
                "DELETE FROM consumed WHERE keep_until < ?", (now,)
            ).rowcount

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ReplayGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReplayGuard({str(self.path)!r})"
