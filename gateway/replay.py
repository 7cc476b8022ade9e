"""The single-use guard: an embedded SQLite store of consumed blob ids, kept until they expire.

A blob id is recorded in the same ``BEGIN IMMEDIATE`` transaction that checks it, so two
processes opening the same blob at once cannot both succeed: SQLite's write lock serialises
them and the second finds the row. Rows are kept until the blob could no longer pass the expiry
check anyway, then pruned.

Durability without an fsync per blob. A commit in WAL mode with ``synchronous=NORMAL`` has
reached the kernel when :meth:`ReplayGuard.consume` returns: it survives the death of any
process (SIGKILL included), but not a crash of the operating system, which changes the boot id.
So the guard writes the boot id into the database and, opening a database last written in
another boot and not closed cleanly (below), takes the time as
:attr:`~ReplayGuard.forgotten_before`: a blob issued before then (plus the largest clock skew)
may have been recorded in a commit the crash lost, and is refused as
:class:`~gateway.errors.Replayed`. Every record the database holds is still honoured. A guard
that closes makes every commit so far durable (an fsync) and marks the database clean; the
first commit after that (by another process) clears the mark durably. A database found clean
lost nothing, so a planned restart of the system costs no refusals; only a crash does.

One more way to lose a record remains: a failing disk, on which the kernel drops what it could
not write back and tells only an fsync. A guard asked to (``fsync=True``), and every guard where
the system has no boot id, therefore commits with an fsync each time (``synchronous=FULL``). An
fsync costs about a millisecond, several when other programs write the same disk; the page
cache write costs microseconds, and both are on a migration's critical path.

Threads that call :meth:`~ReplayGuard.consume` while a commit is under way share the next one
(group commit): whoever takes the commit lock records every request queued so far in one
transaction, and each caller returns only once the transaction holding its own record is
committed.

A caller that must not block (an event loop) hands its record to :meth:`ReplayGuard.submit`
instead: one long-lived commit thread per guard takes everything submitted since its last
commit, records it all in one transaction, then reports each request's outcome
through the callback the caller gave (from that thread). :meth:`ReplayGuard.close` lets it
finish what was submitted before it stops.

Whoever can write the database can undo single use, so it is opened like the keyring: never
through a symbolic link, owned by the running user, mode 0600 (created so), in a directory no
other user can write to. A database that fails while checking or recording (locked past the busy
timeout, read-only, full, corrupt) is a :class:`~gateway.errors.ReplayStoreError`: the blob is
refused, and the caller can say why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from gateway.errors import ConfigError, Replayed, ReplayStoreError

__all__ = ["FORGOTTEN_SKEW", "ReplayGuard", "boot_id"]

#: Where the operating system says which boot this is (Linux); it changes at every start.
BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")

#: The largest clock skew any opener may allow (``gateway.envelope.MAX_CLOCK_SKEW``): a blob
#: consumed just before a crash may carry an issued-at this far past the target's clock.
FORGOTTEN_SKEW: Final = 300

#: Bytes of write-ahead log reserved (:meth:`ReplayGuard.reserve_log`): a little more than
#: SQLite's automatic checkpoint lets the log reach (1,000 pages of 4 KiB).
WAL_RESERVE: Final = 5 << 20

#: Blob ids looked up per statement (well below SQLite's limit on bound parameters).
_LOOKUP_CHUNK: Final = 500

#: How long a writer waits for another process's transaction before giving up, in seconds.
DEFAULT_BUSY_TIMEOUT: Final = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consumed (
    blob_id BLOB PRIMARY KEY NOT NULL,
    keep_until INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS consumed_keep_until ON consumed (keep_until);
CREATE TABLE IF NOT EXISTS boot (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    boot_id TEXT NOT NULL,
    forgotten_before INTEGER,
    clean INTEGER NOT NULL DEFAULT 0
);
"""


def boot_id() -> str | None:
    """This boot of the operating system, or None where the system does not say."""
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class _Request:
    """One consume call waiting for, or decided by, a commit."""

    __slots__ = (
        "blob_id",
        "claim",
        "done",
        "error",
        "keep_until",
        "now",
        "on_done",
        "recorded",
    )

    def __init__(
        self,
        blob_id: bytes,
        keep_until: int,
        now: int,
        claim: Callable[[], None] | None,
        on_done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.blob_id = blob_id
        self.keep_until = keep_until
        self.now = now
        self.claim = claim
        self.on_done = on_done
        self.done = False
        self.recorded = False
        self.error: BaseException | None = None

    def outcome(self) -> BaseException | None:
        """None once recorded; otherwise the error the caller raises."""
        if self.error is not None:
            return self.error
        if not self.recorded:
            return Replayed(f"blob {self.blob_id[:8].hex()}… was already opened")
        return None


def _copy_error(exc: BaseException) -> BaseException:
    """The error for a caller whose request was in a commit that failed in another thread.

    Each caller raises its own exception object (one shared across threads would collect every
    thread's traceback); anything but a database error or a closed guard (an interruption, a
    bug) becomes a RuntimeError rather than being re-raised in other threads.
    """
    if isinstance(exc, ReplayStoreError | RuntimeError):
        return type(exc)(*exc.args)
    return RuntimeError(f"replay guard: the shared commit failed ({type(exc).__name__})")


class ReplayGuard:
    """Records each accepted blob id once; a second :meth:`consume` of it raises Replayed.

    Safe to share between processes (one file) and between threads (one guard object).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        fsync: bool = False,
    ) -> None:
        """``fsync``: every commit waits for the disk, as where the system has no boot id
        (proof also against a failing disk that drops what the kernel could not write back;
        a millisecond or more per commit)."""
        self.path = Path(path)
        #: Held for each transaction: the leader of a group commit holds it while it commits.
        self._lock = threading.Lock()
        #: Guards the queue of requests waiting for a commit (never held while waiting).
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []
        #: Requests for the commit thread (see :meth:`submit`), and its wake-up.
        self._submitted: deque[_Request] = deque()
        self._submitted_ready = threading.Condition(threading.Lock())
        self._committer: threading.Thread | None = None
        self._closing = False
        self._db: sqlite3.Connection | None = None
        #: Blobs issued before this time (Unix seconds, plus FORGOTTEN_SKEW) may have been
        #: recorded in commits an operating-system crash lost; None when nothing can be lost.
        self.forgotten_before: int | None = None
        #: Whether every commit waits for the disk (asked for, or no boot id to rely on).
        self.fsync_each_commit = True
        self._fsync = fsync
        try:
            # Create it owner-only before SQLite does: whoever can write this file can undo
            # single use. SQLite gives the -wal and -shm files the same mode.
            _check_file(self.path)
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
            self._check_boot(db, boot_id())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if not self.fsync_each_commit:
            db.execute("PRAGMA synchronous = NORMAL")

    def _check_boot(self, db: sqlite3.Connection, boot: str | None) -> None:
        """Note this boot in the database; after another boot, what may have been forgotten."""
        row = db.execute("SELECT boot_id, forgotten_before, clean FROM boot").fetchone()
        forgotten = None if row is None else row[1]
        if boot is not None and row is not None and row[0] != boot and not row[2]:
            # Written in another boot and not closed cleanly: its last commits reached the
            # kernel, maybe not the disk. Only this file's own writers set the mark, so it
            # never moves back.
            forgotten = max(forgotten or 0, int(time.time()))
        self.forgotten_before = forgotten
        self.fsync_each_commit = boot is None or self._fsync
        if boot is not None:
            # This transaction is synced, and so is every earlier commit. Not clean from now
            # on if this guard commits without an fsync, until it closes.
            db.execute(
                "INSERT OR REPLACE INTO boot (one, boot_id, forgotten_before, clean) "
                "VALUES (1, ?, ?, ?)",
                (boot, forgotten, int(self.fsync_each_commit)),
            )

    def _vouch(self, blob_id: bytes, issued_at: int | None) -> None:
        """Raise Replayed for a blob this database cannot vouch for: one issued before an
        operating-system crash that may have lost its record (see forgotten_before)."""
        forgotten = self.forgotten_before
        if (
            issued_at is not None
            and forgotten is not None
            and issued_at <= forgotten + FORGOTTEN_SKEW
        ):
            raise Replayed(
                f"blob {blob_id[:8].hex()}… was issued before, or within the clock skew of, "
                "this host's replay database being reopened after a restart of the system "
                "that followed no clean stop (a record of it may be lost)"
            )

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
        issued_at: int | None = None,
        claim: Callable[[], None] | None = None,
    ) -> None:
        """Record ``blob_id`` as used until ``keep_until`` (Unix seconds) or raise Replayed.

        Returns only after the record is committed (see the module's note on durability).
        Rows whose time has passed at ``now`` are pruned in the same transaction. A blob with an
        ``issued_at`` this database cannot vouch for (issued before a system restart that may
        have lost records) is refused as Replayed, and nothing is recorded.

        ``claim``, if given, is called once the blob id is known to be new, inside the
        transaction that records it and before any later request of the same commit: the place
        for a last decision that must be atomic with single use (the proxy pins a session's
        migration id there). If it raises, the blob is still recorded (an authentic blob is used
        once, accepted or refused) and this call raises that error. It must be quick and must
        not call back into this guard. If the commit itself fails, every request of it fails
        with a :class:`~gateway.errors.ReplayStoreError` (the commit's failure) and records
        nothing, but a claim already made stands.
        """
        self._vouch(blob_id, issued_at)
        request = _Request(blob_id, keep_until, now, claim)
        with self._queue_lock:
            self._queue.append(request)
        with self._lock:
            # A leader that took the lock before us may have committed our request already.
            if not request.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        error = request.outcome()
        if error is not None:
            raise error

    def submit(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        issued_at: int | None = None,
        claim: Callable[[], None] | None = None,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """:meth:`consume` without waiting: the guard's commit thread records the blob.

        Returns at once. ``done`` is called exactly once, from the commit thread, after the
        transaction holding the record is committed: with None when the blob was recorded now,
        otherwise with the error :meth:`consume` would raise (Replayed, the claim's refusal, a
        :class:`~gateway.errors.ReplayStoreError`). Everything submitted while a commit runs
        shares the next one. ``claim`` means what it means for :meth:`consume`. It must be
        quick and must not block, and neither may ``done``: they run on the commit thread
        (an event loop's caller hands the outcome back with ``call_soon_threadsafe``).

        Raises RuntimeError (and never calls ``done``) if the guard is closed or closing, and
        Replayed, at once, for an ``issued_at`` :meth:`consume` would refuse.
        """
        self._vouch(blob_id, issued_at)
        request = _Request(blob_id, keep_until, now, claim, done)
        with self._submitted_ready:
            if self._closing or self._db is None:
                raise RuntimeError("replay guard is closed")
            self._submitted.append(request)
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_loop, name="replay-commit", daemon=True
                )
                self._committer.start()
            else:
                self._submitted_ready.notify()

    def _commit_loop(self) -> None:
        """The commit thread: everything submitted so far in one commit, until closed."""
        while True:
            with self._submitted_ready:
                while not self._submitted and not self._closing:
                    self._submitted_ready.wait()
                if not self._submitted:
                    return  # closing, and nothing left to record
                batch = list(self._submitted)
                self._submitted.clear()
            with self._lock, contextlib.suppress(Exception):
                # A failed commit has set each request's error already.
                self._commit(batch)
            for request in batch:
                if request.on_done is not None:
                    # A failing callback is its caller's bug; it must not stop the others.
                    with contextlib.suppress(Exception):
                        request.on_done(request.outcome())

    def _stop_committer(self) -> None:
        """Let the commit thread record what was submitted, then end it."""
        with self._submitted_ready:
            self._closing = True
            committer = self._committer
            self._submitted_ready.notify()
        if committer is not None and committer is not threading.current_thread():
            committer.join()

    def _commit(self, batch: list[_Request]) -> None:
        """One transaction for ``batch``; called with the commit lock held.

        A fixed number of statements whatever the batch's size (prune, look up every id, insert
        the new ones, commit): each statement lets go of the GIL and must take it back, which
        costs a thread waiting behind a busy event loop far more than the statement itself.
        """
        try:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "DELETE FROM consumed WHERE keep_until < ?",
                    (min(request.now for request in batch),),
                )
                # The write lock is held from BEGIN IMMEDIATE on: what is found here stays true
                # until the commit.
                known = self._known(db, [request.blob_id for request in batch])
                rows: list[tuple[bytes, int]] = []
                for request in batch:
                    if request.blob_id in known:
                        continue  # already consumed, possibly earlier in this very batch
                    known.add(request.blob_id)
                    rows.append((request.blob_id, request.keep_until))
                    self._claim(request)
                self._insert(db, rows)
                # Another process closed the database clean since: clear the mark, and make
                # this commit durable before anyone relies on it.
                reopened = not self.fsync_each_commit and bool(
                    db.execute("UPDATE boot SET clean = 0 WHERE clean = 1").rowcount
                )
                db.execute("COMMIT")
                if reopened:
                    db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            store_error = ReplayStoreError(
                f"replay database {self.path}: {type(exc).__name__}: {exc}"
            )
            for request in batch:
                request.recorded = False
                request.error = _copy_error(store_error)
            raise store_error from None
        except BaseException as exc:
            for request in batch:
                request.recorded = False
                request.error = _copy_error(exc)
            raise
        finally:
            for request in batch:
                request.done = True

    @staticmethod
    def _known(db: sqlite3.Connection, blob_ids: list[bytes]) -> set[bytes]:
        """Which of ``blob_ids`` the database holds (a few statements for any number)."""
        unique = list(dict.fromkeys(blob_ids))
        found: set[bytes] = set()
        for first in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[first : first + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                bytes(row[0])
                for row in db.execute(
                    f"SELECT blob_id FROM consumed WHERE blob_id IN ({marks})",  # noqa: S608
                    chunk,
                )
            )
        return found

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple[bytes, int]]) -> None:
        if rows:
            db.executemany("INSERT INTO consumed (blob_id, keep_until) VALUES (?, ?)", rows)

    @staticmethod
    def _claim(request: _Request) -> None:
        """The new blob's claim, inside the transaction that records it."""
        if request.claim is not None:
            try:
                request.claim()
            except Exception as exc:
                # The blob stays recorded: it was authentic, and an authentic blob is used
                # once, accepted or refused; the caller gets the claim's refusal.
                request.error = exc
                return
        request.recorded = True

    def reserve_log(self, size: int = WAL_RESERVE) -> None:
        """Grow the write-ahead log to about ``size`` bytes now, then checkpoint it.

        The log is reused from its start after a checkpoint and never shrinks, so later commits
        overwrite blocks the file already has instead of extending it. An extending commit's
        fsync must also commit the file system's journal, which other programs' writes (a
        QEMU finishing a migration on the same disk) can hold for milliseconds; an overwriting
        one only flushes its own blocks. Nothing of the reservation stays in the table.
        """
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("CREATE TABLE reserve (filler BLOB NOT NULL)")
                    db.execute("INSERT INTO reserve VALUES (zeroblob(?))", (size,))
                    db.execute("DROP TABLE reserve")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            except sqlite3.Error as exc:
                raise ReplayStoreError(
                    f"replay database {self.path}: {type(exc).__name__}: {exc}"
                ) from None

    def seen(self, blob_id: bytes, now: int) -> bool:
        """Whether ``blob_id`` is recorded and still kept at ``now`` (a read, no write).

        A closed guard cannot answer: that is a store failure to the opener (ReplayStoreError),
        which refuses the blob, not an internal error."""
        with self._lock:
            if self._db is None:
                raise ReplayStoreError(f"replay database {self.path} is closed")
            try:
                row = self._db.execute(
                    "SELECT 1 FROM consumed WHERE blob_id = ? AND keep_until >= ?",
                    (blob_id, now),
                ).fetchone()
            except sqlite3.Error as exc:
                raise ReplayStoreError(
                    f"replay database {self.path}: {type(exc).__name__}: {exc}"
                ) from None
        return row is not None

    def __contains__(self, blob_id: object) -> bool:
        with self._lock:
            try:
                row = self._conn().execute(
                    "SELECT 1 FROM consumed WHERE blob_id = ?", (blob_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise ReplayStoreError(
                    f"replay database {self.path}: {type(exc).__name__}: {exc}"
                ) from None
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
        """Close the database, once the commit thread recorded everything submitted."""
        self._stop_committer()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._mark_clean(self._db)
                self._db.close()
                self._db = None

    def _mark_clean(self, db: sqlite3.Connection) -> None:
        """Every commit so far durable, and the database marked so: after a planned restart of
        the system the next opener knows nothing was lost (see the module's notes)."""
        db.execute("PRAGMA synchronous = FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE boot SET clean = 1")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

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


def _check_owned(info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{what} is owned by uid {info.st_uid}, not by this user")


def _check_file(path: Path) -> None:
    """Create the database owner-only if missing; refuse one that others could change.

    The checks run on the opened descriptor (no symbolic link followed), so the file checked is
    the file SQLite opens next: the directory, checked first, lets nobody else swap it.
    """
    directory = path.parent
    info = os.stat(directory)
    if info.st_mode & 0o022:
        raise ConfigError(
            f"replay database directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); it must not be"
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"replay database directory {directory} is owned by uid {info.st_uid}, "
            "neither this user nor root"
        )
    try:
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"replay database {path} is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    _check_private(info, f"replay database {path}")
    # SQLite opens these itself, following links: check any that exist already.
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        try:
            info = os.lstat(companion)
        except FileNotFoundError:
            continue
        _check_private(info, f"replay database file {companion}")


def _check_private(info: os.stat_result, what: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{what} is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} is not a regular file")
    _check_owned(info, what)
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{what} is accessible to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "it must be 0600"
        )
