"""The peer link's asyncio side: the target's listener and the source's announcer.

Both ends are thin loops around :mod:`gateway.peerlink`: one TCP connection per migration
attempt, opened by the source when the main channel sends ``MIGRATE_BEGIN_SEAMLESS`` and held
until the target's verdict (bounded by ``limits.peer_timeout``). For a peer with
``suite = "identity"`` the exchange also agrees the attempt's key (the handshake's public-key
work runs in worker threads); the target records it with the attempt, the source keeps it in
the session for sealing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterable

from gateway.errors import GatewayError
from gateway.peerlink import (
    MAX_BODY,
    AnnouncementVerified,
    ChallengeAnswered,
    SourceLink,
    TargetLink,
    VerdictReceived,
)
from gateway.proxy.channel import Announcer, ProxyState
from gateway.proxy.config import ProxyConfig, Route, parse_address
from gateway.proxy.sessions import Attempt, Session
from gateway.service.logs import audit, log

__all__ = ["PeerLinkServer", "make_announcer"]

READ_SIZE = MAX_BODY + 64
#: Connections served at once; an announcement takes one round trip.
MAX_PEER_CONNECTIONS = 64


class PeerLinkServer:
    """Target side: takes announcements on ``peer_listen`` and records each VM's attempt.

    Each connection reads the config in force (``state.config``, replaced on reload) and
    ``vm_ids()``, the VMs of the routes served at that moment (config and control API alike).
    """

    def __init__(
        self,
        config: ProxyConfig,
        state: ProxyState,
        vm_ids: Callable[[], Iterable[uuid.UUID]] | None = None,
    ) -> None:
        self.state = state
        self._listen = config.peer_listen
        self._vm_ids = vm_ids or (lambda: (route.vm_id for route in self.config.routes))
        self.address: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        #: Connections being served, oldest first (a dict keeps the order of arrival).
        self._tasks: dict[asyncio.Task[None], None] = {}

    @property
    def config(self) -> ProxyConfig:
        return self.state.config

    async def start(self) -> None:
        assert self._listen is not None
        host, port = parse_address(self._listen)
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=READ_SIZE, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        log(logging.INFO, "peer link listening", listen=f"{bound[0]}:{bound[1]}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        task = asyncio.current_task()
        if task is None:
            writer.close()
            return
        if len(self._tasks) >= MAX_PEER_CONNECTIONS:
            # A real source answers the challenge within a round trip; connections that stay
            # (silent, or trickling bytes) must not lock it out: the oldest one makes room.
            oldest = next(iter(self._tasks))
            del self._tasks[oldest]
            oldest.cancel()
            self.state.metrics.inc("smg_peer_link_refused_total", reason="evicted")
        self._tasks[task] = None
        try:
            await asyncio.wait_for(
                self._exchange(reader, writer, peer), self.config.limits.peer_timeout
            )
        except (TimeoutError, ConnectionError, OSError):
            self.state.metrics.inc("smg_peer_link_refused_total", reason="incomplete")
            log(logging.WARNING, "peer link connection ended without an announcement", peer=peer)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        state, config = self.state, self.config
        identity = state.identity() if state.identity is not None else None
        make = functools.partial(
            TargetLink,
            config.host_id,
            state.keyring(),
            config.trusted_sources,
            self._vm_ids(),
            now=state.clock(),
            clock_skew=config.limits.clock_skew,
            identity=identity,
            identity_sources=config.identity_peers,
        )
        # The identity suite's hello (a signature, an ephemeral key pair) and its check of
        # the offer are kept off the event loop: other sessions' switch-overs run there.
        try:
            link = await asyncio.to_thread(make) if identity is not None else make()
        except GatewayError as error:  # this host's own identity cannot sign a hello
            log(logging.ERROR, "peer link cannot answer", error=type(error).__name__, peer=peer)
            return
        writer.write(link.start())
        await writer.drain()
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise ConnectionResetError("peer closed before announcing")
                events = (
                    await asyncio.to_thread(link.receive, data)
                    if identity is not None
                    else link.receive(data)
                )
                if events:
                    break
        except GatewayError as error:
            state.metrics.inc("smg_peer_link_refused_total", reason=type(error).__name__)
            audit(
                "announcement_refused",
                f"peer link announcement refused: {type(error).__name__}",
                outcome="refused",
                error=type(error).__name__,
                detail=str(error),
                peer=peer,
            )
            writer.write(link.verdict(False, type(error).__name__))
            await writer.drain()
            return
        for event in events:
            self._record(event, peer)
        writer.write(link.verdict(True))
        await writer.drain()

    def _record(self, event: AnnouncementVerified, peer: str) -> None:
        announcement = event.announcement
        attempt = Attempt(
            vm_id=announcement.vm_id,
            migration_id=announcement.migration_id,
            source_host=announcement.source_host,
            channels=frozenset(announcement.channels),
            issued_at=announcement.issued_at,
            key=event.key,
        )
        previous = self.state.attempts.announce(attempt)
        self.state.metrics.inc("smg_peer_announcements_total", side="target")
        audit(
            "attempt_announced",
            f"migration {attempt.migration_id} of VM {attempt.vm_id} announced by "
            f"{attempt.source_host}",
            vm=str(attempt.vm_id),
            migration=str(attempt.migration_id),
            source=attempt.source_host,
            channels=len(attempt.channels),
            superseded=str(previous.migration_id) if previous is not None else None,
            suite="identity" if event.key is not None else "shared-key",
            peer=peer,
        )


def make_announcer(state: ProxyState) -> Announcer:
    """Source side: the coroutine that announces a session's attempt to its target."""

    async def announce(route: Route, session: Session) -> bool:
        config = state.config  # the one in force now (a reload replaces it)
        with session.lock:
            migration_id, target = session.migration_id, session.target_host
            channels = sorted(session.expected_channels)
        if migration_id is None or target is None:
            return False  # not a trusted destination: nothing will be sealed
        peer = config.peer(target)

        def down(reason: str, detail: str) -> bool:
            state.metrics.inc("smg_peer_link_down_total", reason=reason)
            audit(
                "peer_link_down",
                f"migration {migration_id} of route {route.name} not announced to {target}",
                outcome="failed",
                reason=reason,
                detail=detail,
                route=route.name,
                vm=str(route.vm_id),
                migration=str(migration_id),
                target=target,
            )
            return False

        if peer is None or peer.peer_address is None:
            return down("unconfigured", f"peer {target} has no peer_address")
        identity = None
        if peer.suite == "identity":
            if state.identity is None:
                return down("unconfigured", "no identity configured for the identity suite")
            identity = state.identity()
        link = SourceLink(
            host_id=config.host_id,
            target_host=target,
            keyring=state.keyring(),
            vm_id=route.vm_id,
            migration_id=migration_id,
            channels=channels,
            now=state.clock(),
            identity=identity,
            clock_skew=config.limits.clock_skew,
        )
        host, port = parse_address(peer.peer_address)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(config.limits.peer_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
                while True:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return down("closed", "the target closed the peer link")
                    # The identity suite's offer (an encapsulation, a signature, the hello's
                    # check) runs off the event loop, before the switch-over.
                    events = (
                        await asyncio.to_thread(link.receive, data)
                        if identity is not None
                        else link.receive(data)
                    )
                    for event in events:
                        if isinstance(event, ChallengeAnswered):
                            writer.write(event.data)
                            await writer.drain()
                        elif isinstance(event, VerdictReceived):
                            if not event.verdict.accepted:
                                return down("refused", f"refused: {event.verdict.reason}")
                            with session.lock:
                                # Only the attempt it was agreed for seals with this key.
                                if session.migration_id == migration_id:
                                    session.attempt_key = link.attempt_key
                            state.metrics.inc("smg_peer_announcements_total", side="source")
                            audit(
                                "attempt_announced",
                                f"migration {migration_id} of route {route.name} announced "
                                f"to {target}",
                                route=route.name,
                                vm=str(route.vm_id),
                                migration=str(migration_id),
                                target=target,
                                channels=len(channels),
                                suite=peer.suite,
                            )
                            return True
        except TimeoutError:
            return down("timeout", f"no verdict within {config.limits.peer_timeout} s")
        except GatewayError as error:
            return down("protocol", f"{type(error).__name__}: {error}")
        except OSError as error:
            return down("unreachable", error.strerror or type(error).__name__)
        finally:
            if writer is not None:
                writer.close()

    return announce
