"""The single-use guard: an embedded SQLite store of consumed blob ids, kept until they expire.

A blob id is recorded in the same ``BEGIN IMMEDIATE`` transaction that checks it, so two
processes opening the same blob at once cannot both succeed: SQLite's write lock serialises
them and the second finds the row. ``synchronous=FULL`` in WAL mode makes the commit durable
before :meth:`ReplayGuard.consume` returns, so a crash (even SIGKILL or power loss) right after
a successful open cannot forget the blob. Rows are kept until the blob could no longer pass the
expiry check anyway, then pruned.
"""

from __future__ import annotations

import os
import sqlite3
import threading
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


class ReplayGuard:
    """Records each accepted blob id once; a second :meth:`consume` of it raises Replayed.

    Safe to share between processes (one file) and between threads (one guard object).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
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

    def consume(self, blob_id: bytes, keep_until: int, *, now: int) -> None:
        """Record ``blob_id`` as used until ``keep_until`` (Unix seconds) or raise Replayed.

        Returns only after the record is durable. Rows whose time has passed at ``now`` are
        pruned in the same transaction.
        """
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM consumed WHERE keep_until < ?", (now,))
                inserted = db.execute(
                    "INSERT OR IGNORE INTO consumed (blob_id, keep_until) VALUES (?, ?)",
                    (blob_id, keep_until),
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if inserted != 1:
            raise Replayed(f"blob {blob_id[:8].hex()}… was already opened")

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
