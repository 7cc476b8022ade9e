"""Client sessions: which connections belong together, and which migration they are part of.

A SPICE client session is one main channel plus the other channels that link with the main
channel's session id as their ``connection_id``. The gateway binds every blob of one migration to
one migration id, shared by all channels of the session:

- on the source host the id is created when the main channel tells the client where to go
  (``MIGRATE_BEGIN_SEAMLESS``), together with the target host learned from the peers table;
- on the target host the client links every channel with the source's session id; the first blob
  opened there pins the migration id and every other channel must carry the same one.

On top of that the target accepts blobs only of the attempt it runs: the source announces every
attempt over the peer link (``gateway/peerlink.py``), and :class:`AttemptTable` keeps the newest
announced attempt of each VM, which supersedes every earlier one.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas import ChannelType

if TYPE_CHECKING:
    from gateway.handshake import AttemptKey

__all__ = ["Attempt", "AttemptTable", "Session", "SessionTable"]

#: Channels whose migration carries a MIGRATE_DATA payload.
DATA_CHANNELS = frozenset(
    {
        ChannelType.MAIN,
        ChannelType.DISPLAY,
        ChannelType.INPUTS,
        ChannelType.SMARTCARD,
        ChannelType.USBREDIR,
        ChannelType.PORT,
        ChannelType.WEBDAV,
    }
)

ChannelKey = tuple[int, int]


@dataclass
class Session:
    """One client session on one route, seen from this host."""

    route: str
    session_id: int
    #: When this host first saw the session (Unix seconds): on a target, a blob issued before
    #: then (beyond the allowed skew) belongs to an earlier attempt.
    began_at: float = 0.0
    # Source side: where the client was sent, and the migration id of that attempt.
    migration_id: uuid.UUID | None = None
    target_host: str | None = None
    target_address: tuple[str, int] | None = None
    #: Source side, identity suite: the key agreed with the target for ``migration_id``.
    attempt_key: AttemptKey | None = field(default=None, repr=False)
    # Target side: the channels linked here, and those whose blob was accepted.
    linked: set[ChannelKey] = field(default_factory=set)
    accepted: set[ChannelKey] = field(default_factory=set)
    sealed: set[ChannelKey] = field(default_factory=set)
    #: This host's part of the current migration is done (see ``in_flight``).
    completed: bool = False
    #: Target side: blobs verified and handed to the replay guard's commit thread, not yet
    #: decided (each may pin the migration id when it is recorded).
    recording: int = 0
    connections: int = 0
    #: Guards the sets and flags above; held only briefly, also on the event loop.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def link(self, channel: ChannelKey) -> None:
        """Count ``channel`` in; under the lock, as the sealing and opening threads read it."""
        with self.lock:
            self.linked.add(channel)

    @property
    def expected_channels(self) -> set[ChannelKey]:
        """Linked channels that carry migration data (read it with ``lock`` held)."""
        return {key for key in self.linked if key[0] in DATA_CHANNELS}

    @property
    def in_flight(self) -> bool:
        """A migration started here (as source or target) and not yet finished.

        ``completed`` is set on the source once every linked data channel was sealed, on the
        target once every one was accepted. On the target a blob being recorded counts: its
        commit may pin the migration id at any moment.
        """
        if self.completed:
            return False
        return self.migration_id is not None or bool(self.accepted) or self.recording > 0


class SessionTable:
    """Sessions by (route, session id); a session lives while any of its connections does."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int], Session] = {}
        self._lock = threading.Lock()

    def attach(self, route: str, session_id: int, now: float = 0.0) -> Session:
        with self._lock:
            session = self._sessions.get((route, session_id))
            if session is None:
                session = self._sessions[(route, session_id)] = Session(
                    route, session_id, began_at=now
                )
            session.connections += 1
            return session

    def detach(self, session: Session) -> None:
        with self._lock:
            session.connections -= 1
            if session.connections <= 0:
                self._sessions.pop((session.route, session.session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def in_flight(self) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions.values() if s.in_flight]


@dataclass(frozen=True)
class Attempt:
    """One migration attempt of a VM, as its source announced it over the peer link."""

    vm_id: uuid.UUID
    migration_id: uuid.UUID
    source_host: str
    channels: frozenset[ChannelKey]
    issued_at: int
    #: Identity suite: the attempt's own key; its blobs open with it alone.
    key: AttemptKey | None = field(default=None, compare=False, repr=False)


class AttemptTable:
    """Target side: the newest announced attempt of each VM (a newer one supersedes it)."""

    def __init__(self, max_vms: int = 65536) -> None:
        self._attempts: dict[uuid.UUID, Attempt] = {}
        self._lock = threading.Lock()
        self._max_vms = max_vms

    def announce(self, attempt: Attempt) -> Attempt | None:
        """Make ``attempt`` its VM's current one; returns the attempt it superseded."""
        with self._lock:
            previous = self._attempts.pop(attempt.vm_id, None)
            if len(self._attempts) >= self._max_vms:
                # The table is bounded by the routes served; drop the oldest entry if not.
                self._attempts.pop(next(iter(self._attempts)))
            self._attempts[attempt.vm_id] = attempt
            return previous

    def current(self, vm_id: uuid.UUID) -> Attempt | None:
        with self._lock:
            return self._attempts.get(vm_id)

    def __len__(self) -> int:
        return len(self._attempts)
