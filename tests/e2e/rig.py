"""A real SPICE seamless-migration rig: two local QEMUs, spice-server inside them, spice-gtk.

Everything listens on 127.0.0.1 on ports picked at run time. Every process the rig starts is
owned by a :class:`Rig` and stopped by its pid (terminate, bounded wait, kill) when the rig
closes, also when a test fails half-way. Every wait is bounded and raises :class:`RigTimeout`
naming what did not happen. Each process logs to a file in the rig's work directory;
:meth:`Rig.logs` returns them so a failing test can show them.

The rig knows nothing about the gateway: a test that puts proxies in the path passes the
proxies' ports where this baseline passes the servers' ports (the client's ``port``, and the
``port`` of ``client_migrate_info``).

The timing trap (see :func:`wait_client_ready_for_migration`): after ``client_migrate_info`` the
client must have linked to the destination *before* ``migrate`` starts; QEMU does not wait for
it, and an idle guest migrates faster than the client links. If the source's migration ends
first, spice-server falls back to ``MIGRATE_SWITCH_HOST`` and no migration data flows at all.
A client started with ``hold_migration_links`` links to the destination only when told, which
reproduces the trap deterministically.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "EXPECTED_CHANNELS",
    "LOCALHOST",
    "MIGRATION_DATA_CHANNELS",
    "ManagedProcess",
    "Qemu",
    "QmpClient",
    "QmpError",
    "Rig",
    "RigError",
    "RigTimeout",
    "SpiceClient",
    "free_ports",
    "is_available",
    "qemu_command",
    "skip_reason",
    "wait_client_ready_for_migration",
    "wait_until",
]

LOCALHOST = "127.0.0.1"

QEMU_BINARY = os.environ.get("SMG_E2E_QEMU", "qemu-system-x86_64")
#: The GI bindings for spice-gtk are packaged for the distribution's python3, not for a
#: virtualenv, so the client runs as a subprocess of that interpreter.
GI_PYTHON = os.environ.get("SMG_E2E_PYTHON", "/usr/bin/python3")
CLIENT_SCRIPT = Path(__file__).with_name("spice_client.py")

#: Channels the client links with the device set of :func:`qemu_command` (names as spice-gtk
#: spells them). Cursor is the one without migration data.
EXPECTED_CHANNELS = frozenset(
    {"main", "display", "inputs", "cursor", "smartcard", "usbredir", "webdav"}
)
#: Channels whose SPICE_MSG_MIGRATE carries NEED_FLUSH|NEED_DATA_TRANSFER.
MIGRATION_DATA_CHANNELS = frozenset(
    {"main", "display", "inputs", "smartcard", "usbredir", "webdav"}
)
#: spice-protocol channel type numbers, as QEMU's query-spice reports them.
CHANNEL_TYPE_NAMES = {
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

DEFAULT_TIMEOUT = 15.0
_POLL_INTERVAL = 0.02
_LOG_TAIL_CHARS = 4000

T = TypeVar("T")


class RigError(RuntimeError):
    """The rig could not bring a process or a migration into the expected state."""


class RigTimeout(RigError, TimeoutError):
    """A bounded wait ran out; the message says what was awaited."""


class QmpError(RigError):
    """QEMU answered a QMP command with an error."""


# --------------------------------------------------------------------------------------------
# Availability


@functools.cache
def skip_reason() -> str | None:
    """Why this machine cannot run the end-to-end tests, or None when it can."""
    if shutil.which(QEMU_BINARY) is None:
        return f"{QEMU_BINARY} not found (install qemu-system-x86; see .ci/install-e2e-deps)"
    if not os.access(GI_PYTHON, os.X_OK):
        return f"{GI_PYTHON} not found (the spice-gtk GI bindings need the system python3)"
    probe = (
        "import gi; gi.require_version('SpiceClientGLib', '2.0'); "
        "from gi.repository import SpiceClientGLib"
    )
    try:
        result = subprocess.run(
            [GI_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {GI_PYTHON}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return (
            "spice-gtk GI client unavailable (install gir1.2-spiceclientglib-2.0 and "
            f"python3-gi; see .ci/install-e2e-deps): {last}"
        )
    return None


def is_available() -> bool:
    """True when QEMU and the GI spice client can run here."""
    return skip_reason() is None


# --------------------------------------------------------------------------------------------
# Ports, waits, processes


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1.

    All sockets stay bound until every port is picked, so the ports differ; a port can still be
    taken by someone else before it is used, which is the usual, accepted race.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOCALHOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something other than None; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise RigTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(_POLL_INTERVAL)


def _tail(path: Path, limit: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else "..." + text[-limit:]


@dataclass
class ManagedProcess:
    """A child process the rig started; it is only ever stopped through its own pid."""

    name: str
    popen: subprocess.Popen[Any]
    log_paths: list[Path]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate, wait up to `timeout`, then kill; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{_tail(p)}" for p in self.log_paths)

    def check_alive(self, doing: str) -> None:
        if self.popen.poll() is not None:
            raise RigError(
                f"{self.name} (pid {self.pid}) exited with status {self.popen.returncode} "
                f"while {doing}\n{self.log_tail()}"
            )


# --------------------------------------------------------------------------------------------
# QMP


class QmpClient:
    """A small synchronous QMP client: JSON lines over a unix socket, every read bounded.

    Events arrive interleaved with command replies; each one read is kept in :attr:`events`
    (in arrival order) so a later :meth:`wait_event` finds events that came early.
    """

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
            greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise QmpError(f"{path.name}: unexpected QMP greeting keys {sorted(greeting)}")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command and return its "return" value; raise QmpError on "error"."""
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self._read_message(deadline, what=f"reply to {command}")
            if "event" in message:
                self.events.append(message)
                continue
            if message.get("id") != self._next_id:
                continue
            if "error" in message:
                error = message["error"]
                raise QmpError(f"{command}: {error.get('class')}: {error.get('desc')}")
            return message.get("return")

    def wait_event(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event called `name` received so far, else the next one to arrive."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for event in self.events:
            if event["event"] == name:
                return event
        while True:
            message = self._read_message(deadline, what=f"QMP event {name}")
            if "event" in message:
                self.events.append(message)
                if message["event"] == name:
                    return message

    def poll_events(self) -> None:
        """Collect events already waiting on the socket without blocking."""
        with contextlib.suppress(RigTimeout):
            while True:
                message = self._read_message(time.monotonic(), what="pending events")
                if "event" in message:
                    self.events.append(message)

    def _read_message(self, deadline: float, what: str = "QMP greeting") -> dict[str, Any]:
        while b"\n" not in self._buffer:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise RigTimeout(f"{self.path.name}: timed out waiting for {what}") from None
            if not chunk:
                raise RigError(f"{self.path.name}: QMP connection closed while awaiting {what}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"{self.path.name}: QMP sent a non-object")
        return message


# --------------------------------------------------------------------------------------------
# QEMU


def qemu_command(spice_port: int, qmp_path: Path, incoming_port: int | None = None) -> list[str]:
    """The guest: no disk (SeaBIOS idles on "no bootable device"), a QXL display, and one
    device per SPICE channel that carries migration data (vdagent port for main, webdav port,
    usbredir, smartcard), so all six kinds of MIGRATE_DATA flow."""
    options = [
        ("-machine", "pc,accel=tcg"),
        ("-m", "64"),
        ("-nodefaults",),
        ("-no-user-config",),
        ("-display", "none"),
        ("-vga", "none"),
        ("-device", "qxl-vga,id=video0"),
        (
            "-spice",
            f"port={spice_port},addr={LOCALHOST},disable-ticketing=on,seamless-migration=on",
        ),
        ("-device", "virtio-serial-pci,id=vser0"),
        ("-chardev", "spicevmc,id=vdagent,name=vdagent"),
        ("-device", "virtserialport,bus=vser0.0,chardev=vdagent,name=com.redhat.spice.0"),
        ("-chardev", "spiceport,name=org.spice-space.webdav.0,id=webdav"),
        ("-device", "virtserialport,bus=vser0.0,chardev=webdav,name=org.spice-space.webdav.0"),
        ("-device", "qemu-xhci,id=xhci"),
        ("-chardev", "spicevmc,name=usbredir,id=usbredirchardev1"),
        ("-device", "usb-redir,chardev=usbredirchardev1,id=usbredirdev1,bus=xhci.0"),
        ("-device", "usb-ccid,id=ccid0,bus=xhci.0"),
        ("-chardev", "spicevmc,id=ccid,name=smartcard"),
        ("-device", "ccid-card-passthru,chardev=ccid"),
        ("-qmp", f"unix:{qmp_path},server=on,wait=off"),
        ("-serial", "none"),
        ("-monitor", "none"),
    ]
    if incoming_port is not None:
        options.append(("-incoming", f"tcp:{LOCALHOST}:{incoming_port}"))
    return [QEMU_BINARY, *itertools.chain.from_iterable(options)]


class Qemu:
    """One QEMU (source, or destination when `incoming_port` is set) and its QMP connection."""

    def __init__(
        self, process: ManagedProcess, qmp: QmpClient, spice_port: int, incoming_port: int | None
    ) -> None:
        self.process = process
        self.qmp = qmp
        self.spice_port = spice_port
        self.incoming_port = incoming_port

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def incoming_uri(self) -> str:
        if self.incoming_port is None:
            raise RigError(f"{self.name} was not started as a migration destination")
        return f"tcp:{LOCALHOST}:{self.incoming_port}"

    def client_migrate_info(self, host: str, port: int) -> None:
        """Tell spice-server where the client should reach the destination (step 2)."""
        self.qmp.execute(
            "client_migrate_info", {"protocol": "spice", "hostname": host, "port": port}
        )

    def migrate(self, uri: str) -> None:
        self.qmp.execute("migrate", {"uri": uri})

    def query_migrate(self) -> dict[str, Any]:
        result = self.qmp.execute("query-migrate")
        assert isinstance(result, dict)
        return result

    def wait_migration_completed(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Poll query-migrate until "completed"; a "failed" or "cancelled" raises at once."""

        def check() -> dict[str, Any] | None:
            self.process.check_alive("migrating")
            info = self.query_migrate()
            status = info.get("status")
            if status in ("failed", "cancelled"):
                raise RigError(f"{self.name}: migration {status}: {info.get('error-desc', '')}")
            return info if status == "completed" else None

        return wait_until(check, timeout, f"{self.name}: query-migrate status completed")

    def query_status(self) -> str:
        result = self.qmp.execute("query-status")
        assert isinstance(result, dict)
        return str(result["status"])

    def wait_status(self, expected: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        def check() -> str | None:
            self.process.check_alive(f"waiting for status {expected}")
            status = self.query_status()
            return status if status == expected else None

        return wait_until(check, timeout, f"{self.name}: query-status {expected}")

    def query_spice(self) -> dict[str, Any]:
        result = self.qmp.execute("query-spice")
        assert isinstance(result, dict)
        return result

    def spice_channel_names(self) -> set[str]:
        """Names of the channels clients have linked to this spice-server (query-spice)."""
        channels = self.query_spice().get("channels", [])
        return {
            CHANNEL_TYPE_NAMES.get(ch["channel-type"], str(ch["channel-type"])) for ch in channels
        }

    def wait_event(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        self.process.check_alive(f"waiting for QMP event {name}")
        return self.qmp.wait_event(name, timeout)


# --------------------------------------------------------------------------------------------
# The spice-gtk client


class SpiceClient:
    """The headless spice-gtk client subprocess and the JSON events it printed so far."""

    def __init__(self, process: ManagedProcess, stdout: IO[str], events_log: Path) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(
            target=self._read,
            args=(stdout, events_log),
            name=f"{process.name}-reader",
            daemon=True,
        )
        self._reader.start()

    def _read(self, stdout: IO[str], events_log: Path) -> None:
        with stdout, events_log.open("a") as log:
            for line in stdout:
                log.write(line)
                log.flush()
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "unparsed", "line": line.rstrip("\n")}
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.events)

    def wait_for(
        self, check: Callable[[list[dict[str, Any]]], T | None], timeout: float, what: str
    ) -> T:
        """Wait until `check(events)` returns non-None; fail early if the client exits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check(list(self.events))
                if result is not None:
                    return result
                if self._eof:
                    self.process.popen.poll()
                    raise RigError(
                        f"{self.process.name} exited (status {self.process.popen.returncode}) "
                        f"before {what}\n{self.process.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RigTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
                self._cond.wait(remaining)

    def select(self, event: str, *, after: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The events called `event` whose fields equal `match`, in arrival order; with
        `after`, only those that followed the first event called `after` (none if it never
        came)."""
        events = self.snapshot()
        if after is not None:
            starts = [i for i, e in enumerate(events) if e["event"] == after]
            events = events[starts[0] :] if starts else []
        return _matching(events, event, match)

    def release_migration_links(self) -> None:
        """Let a client started with `hold_migration_links` link to the destination."""
        self.process.check_alive("releasing its migration links")
        self.process.popen.send_signal(signal.SIGUSR1)

    def wait_linked(
        self,
        port: int,
        channels: frozenset[str] = EXPECTED_CHANNELS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Wait until every channel in `channels` has opened to `port`."""

        def check(events: list[dict[str, Any]]) -> bool | None:
            opened = _matching(
                events, "channel-event", {"session": "primary", "what": "opened", "peer_port": port}
            )
            return True if channels <= {e["type"] for e in opened} else None

        self.wait_for(check, timeout, f"client linked to port {port} on {sorted(channels)}")

    def migration_states(self, session: str = "primary") -> list[str]:
        return [e["state"] for e in self.select("migration-state", session=session)]

    def wait_event(
        self, event: str, timeout: float = DEFAULT_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """The first event called `event` with fields equal to `match` (already seen or next)."""

        def check(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            found = _matching(events, event, match)
            return found[0] if found else None

        shown = " ".join(f"{k}={v}" for k, v in match.items())
        return self.wait_for(check, timeout, f"client event {event} {shown}".rstrip())

    def wait_migration_state(
        self, state: str, timeout: float = DEFAULT_TIMEOUT, session: str = "primary"
    ) -> dict[str, Any]:
        return self.wait_event("migration-state", timeout, session=session, state=state)

    def peers(self) -> dict[str, int | None]:
        """Where each channel of the primary session talks to now: name -> server port."""
        return _last_peers(self.snapshot())

    def wait_connected_to(
        self,
        port: int,
        channels: frozenset[str] = EXPECTED_CHANNELS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, int | None]:
        """Wait until the client's latest view has every channel talking to `port`."""

        def check(events: list[dict[str, Any]]) -> dict[str, int | None] | None:
            peers = _last_peers(events)
            return peers if all(peers.get(c) == port for c in channels) else None

        return self.wait_for(check, timeout, f"client connected to port {port} on all channels")


def _matching(
    events: list[dict[str, Any]], event: str, match: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        e for e in events if e["event"] == event and all(e.get(k) == v for k, v in match.items())
    ]


def _last_peers(events: list[dict[str, Any]]) -> dict[str, int | None]:
    last = _matching(events, "peers", {})
    return {ch["type"]: ch["peer_port"] for ch in last[-1]["channels"]} if last else {}


def wait_client_ready_for_migration(
    client: SpiceClient,
    destination: Qemu,
    channels: frozenset[str] = EXPECTED_CHANNELS,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Return once the client has linked every channel to the destination and told the source.

    Why: QEMU's ``migrate`` does not wait for the SPICE client. If the source finishes
    migrating before it has received ``MAIN_MIGRATE_CONNECTED_SEAMLESS``, spice-server sends
    ``MIGRATE_SWITCH_HOST`` and no MIGRATE_DATA flows. Two witnesses, both bounded:

    1. the client: its primary session's migration-state becomes ``migrating``. spice-gtk sets
       it after the last destination channel opened, in the same coroutine step that queues
       ``MIGRATE_CONNECTED_SEAMLESS`` to the source, so by the time this process has read the
       line, sent QMP ``migrate`` and QEMU has moved RAM, the source has long received it;
    2. the destination: ``query-spice`` lists every channel (spice-server has accepted the
       client's links as a migration target, directly or through a proxy).

    Neither side reports "source received CONNECTED_SEAMLESS" itself: QEMU's
    connect-complete callback emits nothing over QMP.
    """
    deadline = time.monotonic() + timeout
    client.wait_migration_state("migrating", timeout)

    def check() -> bool | None:
        destination.process.check_alive("waiting for the client's migration links")
        return True if channels <= destination.spice_channel_names() else None

    wait_until(
        check,
        max(deadline - time.monotonic(), 0.0),
        f"{destination.name}: query-spice listing {sorted(channels)}",
    )


# --------------------------------------------------------------------------------------------
# The rig


@dataclass
class Rig:
    """Owns the processes of one test run and the files they log to.

    Use as a context manager (or call :meth:`close`): closing stops every process it started,
    newest first, by pid.
    """

    workdir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _qmp_clients: list[QmpClient] = field(default_factory=list, repr=False)
    _sockdir: Path | None = field(default=None, repr=False)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record how long the block took in :attr:`timings` (for reports, never asserted)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - start, 3)

    def _socket_path(self, name: str) -> Path:
        # A unix socket path must fit in 108 bytes; test tmp dirs can be longer.
        if self._sockdir is None:
            self._sockdir = Path(tempfile.mkdtemp(prefix="smg-e2e-"))
        return self._sockdir / f"{name}.qmp"

    def _spawn(
        self, name: str, argv: Sequence[str], *, stdout_pipe: bool = False
    ) -> tuple[ManagedProcess, IO[str] | None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        logs = [log_path]
        if stdout_pipe:
            logs.append(self.workdir / f"{name}.events.jsonl")
        process = ManagedProcess(name, popen, logs)
        self.processes.append(process)
        return process, popen.stdout

    def start_process(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        """Start any other process the test needs (a proxy, say); its stdout and stderr go to
        ``<workdir>/<name>.log`` and it is stopped, by pid, when the rig closes."""
        process, _ = self._spawn(name, argv)
        return process

    def start_qemu(
        self,
        name: str,
        *,
        spice_port: int | None = None,
        incoming_port: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Qemu:
        """Start a QEMU and connect to its QMP; `incoming_port` makes it a destination."""
        if spice_port is None:
            (spice_port,) = free_ports(1)
        qmp_path = self._socket_path(name)
        process, _ = self._spawn(name, qemu_command(spice_port, qmp_path, incoming_port))

        def connect() -> QmpClient | None:
            process.check_alive("starting")
            if not qmp_path.exists():
                return None
            try:
                return QmpClient(qmp_path, timeout)
            except (ConnectionRefusedError, FileNotFoundError):
                return None

        qmp = wait_until(connect, timeout, f"{name}: QMP socket")
        self._qmp_clients.append(qmp)
        return Qemu(process, qmp, spice_port, incoming_port)

    def start_source_and_destination(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[Qemu, Qemu]:
        """A running source and a destination waiting for its migration on a free port."""
        (incoming_port,) = free_ports(1)
        source = self.start_qemu("qemu-source", timeout=timeout)
        destination = self.start_qemu(
            "qemu-destination", incoming_port=incoming_port, timeout=timeout
        )
        source.wait_status("running", timeout)
        destination.wait_status("inmigrate", timeout)
        return source, destination

    def migrate_seamlessly(
        self,
        source: Qemu,
        destination: Qemu,
        client: SpiceClient,
        target_port: int,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Steps 2-4 of a seamless migration, each timed in :attr:`timings`.

        `target_port` is where the client should reach the destination: its SPICE port, or
        the port of a proxy in front of it.
        """
        with self.timed("client_linked_to_destination"):
            source.client_migrate_info(LOCALHOST, target_port)
            wait_client_ready_for_migration(client, destination, timeout=timeout)
        with self.timed("migration"):
            source.migrate(destination.incoming_uri)
            source.wait_migration_completed(timeout)

    def start_client(
        self, name: str, host: str, port: int, *, hold_migration_links: bool = False
    ) -> SpiceClient:
        """Start the spice-gtk client against `host:port` (a server or a proxy).

        With `hold_migration_links` the client links to a migration destination only after
        :meth:`SpiceClient.release_migration_links`.
        """
        argv = [GI_PYTHON, "-u", str(CLIENT_SCRIPT), "--host", host, "--port", str(port)]
        if hold_migration_links:
            argv.append("--hold-migration-links")
        process, stdout = self._spawn(name, argv, stdout_pipe=True)
        assert stdout is not None
        return SpiceClient(process, stdout, self.workdir / f"{name}.events.jsonl")

    def logs(self) -> dict[str, str]:
        """Each process's log files (tails), for showing when a test fails."""
        return {p.name: p.log_tail() for p in self.processes}

    def close(self) -> None:
        for qmp in self._qmp_clients:
            qmp.close()
        self._qmp_clients.clear()
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the others
                errors.append(f"{process.name} (pid {process.pid}): {exc}")
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
        if errors:
            raise RigError("could not stop: " + "; ".join(errors))
