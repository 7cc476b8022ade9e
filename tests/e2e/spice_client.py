"""A headless SPICE client (spice-gtk's GLib library) that reports what it sees as JSON lines.

It runs as its own process under the distribution's python3, because the GObject-introspection
bindings for spice-gtk live there and not in the project's virtualenv; the rig
(`tests/e2e/rig.py`) starts it and reads its stdout.

One JSON object per line, always with "event" and "t" (seconds since start, monotonic):

- ``start``: ``uri``.
- ``channel-new`` / ``channel-destroy``: ``session``, ``type``, ``type_id``, ``id``.
- ``channel-event``: ``session``, ``type``, ``type_id``, ``id``, ``what`` (``opened``,
  ``switching``, ``closed``, ``error-connect``, ``error-link``, ...) and ``peer_port``.
- ``migration-started``: the source told the client to connect to a destination
  (``MIGRATE_BEGIN``/``MIGRATE_BEGIN_SEAMLESS``); the following events with
  ``session: "migration"`` are the client's connections to the destination (after a
  seamless switch those channel objects hold the old source sockets, so their closing is
  reported under ``migration`` too).
- ``migration-state``: ``session``, ``state`` (``none``, ``migrating``, ``switching``; a
  migration session is already ``connecting`` when it is announced). On the primary session,
  ``migrating`` means every channel has linked to the destination and the answer to the
  source (``MIGRATE_CONNECTED[_SEAMLESS]``) is being sent; ``switching`` means the source fell
  back to ``MIGRATE_SWITCH_HOST``; ``none`` after ``migrating`` means every channel swapped its
  socket to the destination.
- ``peers``: ``channels``, a list of ``{type, type_id, id, peer_port}`` for every channel of the
  primary session; sent after every channel event and migration-state change of the primary
  session, so the last one tells which server each channel talks to.
- ``link-held`` / ``link-released``: ``type``, ``id`` (only with ``--hold-migration-links``).
- ``display-primary-create``: ``width``, ``height`` (the guest's display reached the client);
  ``display-primary-destroy``. A seamless migration keeps the client's surfaces (the
  destination restores them from the display's migration data); semi-seamless and
  switch-host destroy and re-create them.
- ``disconnected``, ``exit`` (``reason``), ``error`` (a handler raised; the client exits 1).

With ``--hold-migration-links`` the client does not link to the destination until it receives
SIGUSR1: a client that is slow to link, on demand, while it keeps serving its source
connections (a stopped process would not read them, and spice-server then stalls the source's
``stop`` for up to 30 s waiting for the display channel to drain).

Names, not numbers, are what a reader of the test wants; ``type_id`` keeps the wire number.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from typing import Any

import gi  # type: ignore[import-not-found, unused-ignore]

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

_T0 = time.monotonic()

#: spice-protocol channel type numbers (spice/enums.h), named as spice-gtk names them.
_CHANNEL_NAMES = {
    1: "main",
    2: "display",
    3: "inputs",
    4: "cursor",
    5: "playback",
    6: "record",
    7: "tunnel",
    8: "smartcard",
    9: "usbredir",
    10: "port",
    11: "webdav",
}

_EVENT_NAMES = {
    "SPICE_CHANNEL_NONE": "none",
    "SPICE_CHANNEL_OPENED": "opened",
    "SPICE_CHANNEL_SWITCHING": "switching",
    "SPICE_CHANNEL_CLOSED": "closed",
    "SPICE_CHANNEL_ERROR_CONNECT": "error-connect",
    "SPICE_CHANNEL_ERROR_TLS": "error-tls",
    "SPICE_CHANNEL_ERROR_LINK": "error-link",
    "SPICE_CHANNEL_ERROR_AUTH": "error-auth",
    "SPICE_CHANNEL_ERROR_IO": "error-io",
}

_STATE_NAMES = {
    "SPICE_SESSION_MIGRATION_NONE": "none",
    "SPICE_SESSION_MIGRATION_SWITCHING": "switching",
    "SPICE_SESSION_MIGRATION_MIGRATING": "migrating",
    "SPICE_SESSION_MIGRATION_CONNECTING": "connecting",
}


def emit(event: str, **fields: Any) -> None:
    """Write one event line; flushed at once because the rig waits on it."""
    record = {"event": event, "t": round(time.monotonic() - _T0, 4), **fields}
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def on(obj: Any, signal_name: str, handler: Any, *args: Any) -> None:
    """Connect a signal handler; spelled out because SpiceSession.connect() is the SPICE
    connect method, which hides GObject's."""
    GObject.Object.connect(obj, signal_name, handler, *args)


def channel_fields(channel: Any) -> dict[str, Any]:
    type_id = int(channel.props.channel_type)
    return {
        "type": _CHANNEL_NAMES.get(type_id, str(type_id)),
        "type_id": type_id,
        "id": int(channel.props.channel_id),
    }


def peer_port(channel: Any) -> int | None:
    """The server port this channel's socket is connected to (None while it has none).

    After a seamless migration spice-gtk swaps the socket of each channel object with the one
    it pre-connected to the destination, without any channel event, so the socket is the
    reliable witness of where a channel talks to.
    """
    sock = channel.props.socket
    if sock is None:
        return None
    try:
        return int(sock.get_remote_address().get_port())
    except GLib.Error:
        return None


class Client:
    """One SPICE session to `host:port`, its migration sessions, and the events they emit."""

    def __init__(self, host: str, port: int, hold_migration_links: bool = False) -> None:
        self.loop = GLib.MainLoop()
        self.failed = False
        self.hold_migration_links = hold_migration_links
        self.links_released = False
        self.held: list[Any] = []
        self.session = SpiceClientGLib.Session()
        uri = f"spice://{host}:{port}"
        self.session.props.uri = uri
        self.session.props.enable_usbredir = True
        self.session.props.enable_smartcard = True
        self.session.props.enable_audio = False
        self.watch_session(self.session, "primary")
        on(self.session, "disconnected", self.on_disconnected)
        emit("start", uri=uri)

    def watch_session(self, session: Any, label: str) -> None:
        on(session, "channel-new", self.on_channel_new, label)
        on(session, "channel-destroy", self.on_channel_destroy, label)
        on(session, "notify::migration-state", self.on_migration_state, label)

    def on_channel_new(self, _session: Any, channel: Any, label: str) -> None:
        emit("channel-new", session=label, **channel_fields(channel))
        on(channel, "channel-event", self.on_channel_event, label)
        if isinstance(channel, SpiceClientGLib.MainChannel) and label == "primary":
            on(channel, "migration-started", self.on_migration_started)
        if isinstance(channel, SpiceClientGLib.DisplayChannel):
            on(channel, "display-primary-create", self.on_primary_create)
            on(channel, "display-primary-destroy", self.on_primary_destroy)
        if label == "migration" and self.hold_migration_links:
            on(channel, "open-fd", self.on_open_fd)
        # spice-gtk connects the main channel and the channels of a migration session itself;
        # every other channel of the primary session is the application's to connect.
        if label == "primary" and not isinstance(channel, SpiceClientGLib.MainChannel):
            channel.connect()

    def on_channel_destroy(self, _session: Any, channel: Any, label: str) -> None:
        emit("channel-destroy", session=label, **channel_fields(channel))

    def on_channel_event(self, channel: Any, event: Any, label: str) -> None:
        what = _EVENT_NAMES.get(event.value_name, str(int(event)))
        emit(
            "channel-event",
            session=label,
            what=what,
            peer_port=peer_port(channel),
            **channel_fields(channel),
        )
        if label == "primary":
            self.emit_peers()

    def on_migration_started(self, _channel: Any, migration_session: Any) -> None:
        emit("migration-started")
        if self.hold_migration_links:
            # spice-gtk then asks for each destination socket (open-fd) instead of connecting
            # itself; the session was just created and has not connected anything yet.
            migration_session.props.client_sockets = True
        self.watch_session(migration_session, "migration")

    def on_open_fd(self, channel: Any, _with_tls: bool) -> None:
        emit("link-held", **channel_fields(channel))
        self.held.append(channel)
        if self.links_released:
            self.release_links()

    def release_links(self) -> None:
        while self.held:
            channel = self.held.pop(0)
            session = channel.props.spice_session
            sock = socket.create_connection((session.props.host, int(session.props.port)))
            channel.open_fd(sock.detach())  # spice-gtk owns the descriptor from here on
            emit("link-released", **channel_fields(channel))

    def on_sigusr1(self) -> bool:
        self.links_released = True
        self.release_links()
        return GLib.SOURCE_CONTINUE  # type: ignore[no-any-return]

    def on_migration_state(self, session: Any, _pspec: Any, label: str) -> None:
        state = session.props.migration_state
        emit(
            "migration-state",
            session=label,
            state=_STATE_NAMES.get(state.value_name, str(int(state))),
        )
        if label == "primary":
            self.emit_peers()

    def on_primary_create(
        self,
        _channel: Any,
        _fmt: int,
        width: int,
        height: int,
        _stride: int,
        _shmid: int,
        _imgdata: int,
    ) -> None:
        emit("display-primary-create", width=width, height=height)

    def on_primary_destroy(self, _channel: Any) -> None:
        emit("display-primary-destroy")

    def on_disconnected(self, _session: Any) -> None:
        emit("disconnected")
        self.loop.quit()

    def emit_peers(self) -> None:
        channels = [
            {**channel_fields(ch), "peer_port": peer_port(ch)} for ch in self.session.get_channels()
        ]
        channels.sort(key=lambda c: (c["type_id"], c["id"]))
        emit("peers", channels=channels)

    def on_sigterm(self) -> bool:
        emit("exit", reason="SIGTERM")
        self.loop.quit()
        return GLib.SOURCE_REMOVE  # type: ignore[no-any-return]

    def on_callback_error(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        """A bug in a handler must end the client, not leave it running half-blind."""
        sys.__excepthook__(kind, value, tb)
        emit("error", error=f"{kind.__name__}: {value}")
        self.failed = True
        self.loop.quit()

    def run(self) -> None:
        sys.excepthook = self.on_callback_error
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self.on_sigterm)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self.on_sigterm)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGUSR1, self.on_sigusr1)
        if not self.session.connect():
            emit("exit", reason="connect() refused")
            sys.exit(2)
        self.loop.run()
        self.session.disconnect()
        if self.failed:
            sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--hold-migration-links",
        action="store_true",
        help="link to a migration destination only after SIGUSR1",
    )
    args = parser.parse_args()
    Client(args.host, args.port, args.hold_migration_links).run()


if __name__ == "__main__":
    main()
