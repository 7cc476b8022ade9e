"""Benchmark: one proxy process holding a host's worth of SPICE sessions, and an evacuation storm.

Run: ``python bench/scale.py [--sessions N] [--vms M] [--tiny]``. Prints figures and the goal
lines of the issue; asserts nothing about speed, but **fails loudly** (exit status 1, and a
line starting ``CORRECTNESS``) when the proxies did not do exactly their job under the load.

What is measured
----------------
* **Sidecar**: one proxy with one route per session (a VM each), ``--sessions`` client sessions
  of ``--channels`` channels each (main, display, inputs, cursor by default) linked through it.
  Half the sessions stay idle; on the other half the server streams display-like traffic (data
  messages log-uniform 64 B..64 KiB; as fast as the client reads, or at ``--rate`` MB/s) for
  ``--seconds``. Figures:
  the proxy's resident memory per session (idle, then with half of them streaming), its event
  loop's lag (a probe in the proxy process sleeps 10 ms at a time and records how late it
  wakes; p99 and max) while idle and while streaming, and the throughput per active session.
  Every active client checks each byte it receives against what its server sent.
* **Evacuation storm**: ``--vms`` VMs migrate at once through one source and one target proxy,
  six data channels each (main, display, inputs, smartcard, usbredir, webdav: 6 x VMS blobs).
  Every session is linked on both sides and past MIGRATE/FLUSH_MARK first; then every source
  server sends its six MIGRATE_DATA at once and the client relays each body as it arrives.
  Figures: CPU seconds each proxy spent from the first MIGRATE_DATA sent to the last one
  arriving, and per VM the critical path (its first MIGRATE_DATA sent to its last arrival),
  p50 and p99. Checked: every target server got exactly the native bytes its source server
  sent, once, and nothing else; no client saw a native payload; the proxies' counters show
  6 x VMS sealed and opened and no refusal; a replay of a sample of the blobs is refused
  without a byte reaching the server.

The scripted servers and clients all run in this process, on one event loop, and compete with
the proxies for the CPU: on a small machine the figures are the proxies' under that load too.

Goals of the issue (reported, not asserted): at most 64 KiB per idle session; the storm in at
most 1 s of CPU per side; a p99 critical path of at most 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proxy import (
    SIX_CHANNELS,
    Host,
    cpu_seconds,
    display_stream,
    quantile,
    wait_healthy,
    write_config,
)
from gateway.keys import Keyring, save_keyring
from gateway.service.control import request
from gateway.spice.constants import ChannelType, MigrateFlags, Msg, Msgc
from gateway.spice.messages import (
    MainInit,
    Migrate,
    MigrateDstDoSeamless,
    MigrateFlushMark,
)
from tests.proxy.peers import (
    NATIVE_MAGICS,
    ClientSession,
    Endpoint,
    ScriptedServer,
    link_client,
    native_payloads,
)

TIMEOUT = 120.0
T = TypeVar("T")
#: The proxy's event-loop probe: how long it sleeps between two looks at the clock.
PROBE_INTERVAL = 0.01
#: The config's limit on the addresses of one peer.
MAX_PEER_ADDRESSES = 64
SOURCE_HOST, TARGET_HOST = "source-host", "target-host"
#: Set by ``--profile``: where a proxy process writes its profile of the measured part.
PROFILE_ENV = "SMG_BENCH_PROFILE"


class CorrectnessError(Exception):
    """The proxies did something other than their job under load."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CorrectnessError(what)


# --- the proxy process, with an event-loop probe -------------------------------------------------


def serve(config_path: str, lag_path: str) -> int:
    """Run a proxy for ``config_path`` (as ``spice-migration-gateway proxy`` does) with a probe
    of its event loop; on SIGTERM, write the probe's (monotonic time, lag) pairs as JSON."""
    from gateway.proxy.config import load_config
    from gateway.proxy.server import ProxyServer, run_proxy
    from gateway.service.logs import configure_logging

    config = load_config(config_path)
    configure_logging("warning")
    samples: list[tuple[float, float]] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            now = loop.time()
            samples.append((now, now - before - PROBE_INTERVAL))

    tasks: list[asyncio.Task[None]] = []

    profile_path = os.environ.get(PROFILE_ENV)
    # CPU time of the event loop's thread, not wall time: on a busy machine, wall time charges
    # whichever function was running when the process was preempted.
    profiler = cProfile.Profile(time.thread_time)

    def ready(_: ProxyServer) -> None:
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(probe()))
        if profile_path:
            # The benchmark switches the profiler on and off around what it measures.
            loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
            loop.add_signal_handler(signal.SIGUSR2, profiler.disable)

    asyncio.run(run_proxy(config, ready=ready))
    Path(lag_path).write_text(json.dumps(samples))
    if profile_path:
        profiler.dump_stats(profile_path)
    return 0


@dataclass
class Proxy:
    """A proxy process started by this benchmark."""

    host: Host
    process: subprocess.Popen[bytes]
    lag_file: Path
    lag: list[tuple[float, float]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident memory in bytes (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> float:
        """CPU seconds of the process so far, all threads: nanoseconds from the scheduler's
        statistics where Linux keeps them (clock ticks of 10 ms would blur a small storm)."""
        total = 0
        try:
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that just ended
                    total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            total = 0
        if total:
            return total / 1e9
        seconds = cpu_seconds(self.pid)
        if seconds is None:
            raise RuntimeError("no CPU time for the proxy (Linux /proc needed)")
        return seconds

    def counters(self) -> dict[str, float]:
        """Each counter summed over its labels."""
        answer = request(self.host.control, {"cmd": "metrics"}, timeout=TIMEOUT)
        totals: dict[str, float] = {}
        for series, value in answer["metrics"].items():
            name = series.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + value
        return totals

    def profiling(self, on: bool) -> None:
        """Switch the proxy's profiler (started with ``--profile``) on or off."""
        self.process.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def lag_between(self, start: float, end: float) -> list[float]:
        return [lag for at, lag in self.lag if start <= at <= end]


@contextlib.asynccontextmanager
async def proxy_process(
    host: Host, config: Path, profile: Path | None = None
) -> AsyncIterator[Proxy]:
    """A proxy (with its probe) serving ``config``; stopped and its probe read on exit. With
    ``profile``, it writes there the profile of what :meth:`Proxy.profiling` framed."""
    host.folder.mkdir(exist_ok=True)
    lag_file = host.folder / "lag.json"
    log = (host.folder / "proxy.log").open("wb")
    env = dict(os.environ)
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(config), str(lag_file)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    proxy = Proxy(host, process, lag_file)
    try:
        await asyncio.to_thread(wait_healthy, host, process)
        yield proxy
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, TIMEOUT)
        log.close()
        if lag_file.is_file():
            proxy.lag = [(at, lag) for at, lag in json.loads(lag_file.read_text())]


async def gather_bounded(coroutines: Iterable[Coroutine[Any, Any, T]], limit: int) -> list[T]:
    """Run ``coroutines`` at most ``limit`` at a time (linking thousands at once would only
    queue them in the kernel's backlog)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Coroutine[Any, Any, T]) -> T:
        async with semaphore:
            return await coroutine

    return await asyncio.wait_for(
        asyncio.gather(*(one(c) for c in coroutines)), TIMEOUT
    )


def listen_addresses(count: int) -> list[tuple[str, int]]:
    """``count`` distinct free ports, all held until all are found, on a loopback address of
    their own: outgoing connections of other programs take ports on 127.0.0.1 meanwhile."""
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1"
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((host, 0))
        return [(host, int(sock.getsockname()[1])) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --- the sidecar: many sessions, half of them streaming -----------------------------------------

CHANNEL_NAMES = {channel.name.lower(): channel for channel in ChannelType}


@dataclass
class SidecarFigures:
    sessions: int
    channels: int
    baseline_rss: int
    idle_rss: int
    streaming_rss: int
    idle_lag: list[float]
    streaming_lag: list[float]
    seconds: float
    active_bytes: list[int]
    link_seconds: float
    rate: float
    #: The proxy's CPU seconds over the streaming window.
    streaming_cpu: float


class Stream:
    """One active display channel: the server end sends ``data`` over and over (at most
    ``rate`` bytes a second, if given); the client end reads and checks every byte."""

    def __init__(self, server: Endpoint, client: Endpoint, data: bytes, rate: float = 0) -> None:
        self.server = server
        self.client = client
        self.data = data
        self.doubled = memoryview(data + data)
        self.rate = rate
        self.received = 0
        self.stop = False

    async def send(self) -> None:
        view = memoryview(self.data)
        step = 1 << 16 if self.rate else 1 << 18
        sent, began = 0, time.monotonic()
        with contextlib.suppress(ConnectionError):
            while not self.stop:
                for start in range(0, len(view), step):
                    self.server.writer.write(view[start : start + step])
                    await self.server.writer.drain()
                    if self.stop:
                        return
                    if self.rate:
                        sent += len(view[start : start + step])
                        ahead = sent / self.rate - (time.monotonic() - began)
                        if ahead > 0:
                            await asyncio.sleep(ahead)

    async def receive(self) -> None:
        size = len(self.data)
        reader = self.client.reader
        while not self.stop:
            chunk = await reader.read(1 << 18)
            if not chunk:
                check(self.stop, "an active stream ended before the benchmark stopped it")
                return
            at = self.received % size
            check(
                self.doubled[at : at + len(chunk)] == chunk,
                f"stream bytes {self.received}..{self.received + len(chunk)} differ from what "
                "the server sent",
            )
            self.received += len(chunk)


async def sidecar(
    folder: Path,
    keyring: Path,
    sessions: int,
    channels: Sequence[ChannelType],
    seconds: float,
    max_buffered: int | None,
    profile: Path | None = None,
    rate: float = 0,
) -> SidecarFigures:
    server = await ScriptedServer("sidecar").start()
    host = Host("sidecar-host", folder / "sidecar")
    host.folder.mkdir()
    listens = listen_addresses(sessions)
    routes = [(f"vm{i}", server.address, uuid.uuid4(), listens[i]) for i in range(sessions)]
    # Every client of the bench connects from 127.0.0.1: the per-client cap must hold them all.
    connections = sessions * len(channels) + 16
    limits = {"max_connections": connections, "max_connections_per_client": connections}
    if max_buffered is not None:
        limits["max_buffered_bytes"] = max_buffered
    config = write_config(host, keyring, routes, None, None, **limits)
    stream, _ = display_stream(4 << 20, "display", seed=11)
    ends: list[Endpoint] = []
    main_lock = asyncio.Lock()
    try:
        async with proxy_process(host, config, profile and profile / "sidecar.prof") as proxy:
            await asyncio.sleep(0.5)
            baseline = proxy.rss()

            async def link(index: int) -> tuple[Endpoint, Endpoint] | None:
                """Link one session (main first); the display ends of an active one."""
                session_id = 1000 + index
                address = listens[index]
                display: tuple[Endpoint, Endpoint] | None = None
                for channel in channels:
                    if channel == ChannelType.MAIN:
                        # Main links with connection id 0: one at a time, so the server end
                        # taken from the queue is this client's.
                        async with main_lock:
                            client = await link_client(address, channel)
                            server_end = await server.channel(channel)
                        await server_end.send_message(
                            MainInit(session_id=session_id, supported_mouse_modes=3)
                        )
                        await client.expect(MainInit.MSG_TYPE)
                    else:
                        client = await link_client(address, channel, connection_id=session_id)
                        server_end = await server.channel(channel, connection_id=session_id)
                    ends.extend((client, server_end))
                    if channel == ChannelType.DISPLAY and index % 2:
                        display = (server_end, client)
                return display

            start = time.perf_counter()
            linked = await gather_bounded((link(i) for i in range(sessions)), 32)
            link_seconds = time.perf_counter() - start
            health = request(host.control, {"cmd": "health"}, timeout=TIMEOUT)
            check(
                health["connections"] == sessions * len(channels),
                f"the proxy holds {health['connections']} connections, "
                f"not {sessions * len(channels)}",
            )
            await asyncio.sleep(1.0)
            idle_start = time.monotonic()
            await asyncio.sleep(max(1.0, seconds / 2))
            idle_end = time.monotonic()
            idle_rss = proxy.rss()

            streams = [
                Stream(pair[0], pair[1], stream, rate) for pair in linked if pair is not None
            ]
            tasks = [asyncio.create_task(s.send()) for s in streams]
            tasks += [asyncio.create_task(s.receive()) for s in streams]
            await asyncio.sleep(1.0)  # ramp up
            if profile is not None:
                proxy.profiling(True)
            before = [s.received for s in streams]
            cpu_before = proxy.cpu()
            streaming_start = time.monotonic()
            done, _ = await asyncio.wait(tasks, timeout=seconds, return_when="FIRST_EXCEPTION")
            streaming_end = time.monotonic()
            streaming_cpu = proxy.cpu() - cpu_before
            after = [s.received for s in streams]
            if profile is not None:
                proxy.profiling(False)
            streaming_rss = proxy.rss()
            for task in done:
                task.result()  # a failed check raises here
            for s in streams:
                s.stop = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            refused = proxy.counters().get("smg_refused_total", 0.0)
            check(refused == 0, f"the proxy refused {refused:g} channels of ordinary traffic")
        return SidecarFigures(
            sessions=sessions,
            channels=len(channels),
            baseline_rss=baseline,
            idle_rss=idle_rss,
            streaming_rss=streaming_rss,
            idle_lag=proxy.lag_between(idle_start, idle_end),
            streaming_lag=proxy.lag_between(streaming_start, streaming_end),
            seconds=streaming_end - streaming_start,
            active_bytes=[b - a for a, b in zip(before, after, strict=True)],
            link_seconds=link_seconds,
            rate=rate,
            streaming_cpu=streaming_cpu,
        )
    finally:
        for end in ends:
            end.writer.close()
        await server.close()


# --- the evacuation storm -------------------------------------------------------------------------


@dataclass
class StormFigures:
    vms: int
    run: Evacuation
    setup_seconds: float
    #: Proxy CPU seconds by side, during the storm and during the setup (empty when direct).
    cpu: dict[str, float] = field(default_factory=dict)
    setup_cpu: dict[str, float] = field(default_factory=dict)
    replays: int = 0


async def prepare(session: ClientSession) -> None:
    """Everything before the MIGRATE_DATA: links on both sides, the seamless handshake, and
    MIGRATE and FLUSH_MARK on every channel."""
    await session.link_source()
    await session.begin_migration()
    for legs in session.legs.values():
        await legs.server_source.send_message(
            Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
        )
        await legs.client_source.expect(Migrate.MSG_TYPE)
        await legs.client_source.send_message(MigrateFlushMark())
        await legs.server_source.expect(MigrateFlushMark.MSG_TYPE)


async def relay(session: ClientSession, channel: tuple[int, int]) -> tuple[float, float, float]:
    """The client's part for one channel: the sealed body in, on to the target. Returns when
    the client got the body, when it had sent it on, and when the target server got it."""
    legs = session.leg(channel)
    assert legs.client_target is not None
    assert legs.server_target is not None
    body = (await legs.client_source.expect(Msg.MIGRATE_DATA)).body
    got = time.perf_counter()
    await legs.client_target.send(Msgc.MIGRATE_DATA, body)
    sent = time.perf_counter()
    await legs.server_target.expect(Msgc.MIGRATE_DATA)
    return got, sent, time.perf_counter()


def check_storm(
    sessions: Sequence[ClientSession], payloads: dict[ChannelType, bytes], *, sealed: bool
) -> None:
    """Each target server got its source's native bytes once and nothing else; through the
    proxies (``sealed``), no client saw native bytes."""
    for session in sessions:
        for channel, legs in session.legs.items():
            assert legs.server_target is not None
            name = f"vm of session {session.session_id}, channel {channel}"
            payload = payloads[ChannelType(channel[0])]
            got = [f for f in legs.client_source.received if f.msg_type == Msg.MIGRATE_DATA]
            check(len(got) == 1, f"{name}: {len(got)} MIGRATE_DATA reached the client")
            if sealed:
                check(
                    not got[0].body.startswith(NATIVE_MAGICS) and payload not in got[0].body,
                    f"{name}: the client received native migration data",
                )
            expected: list[int] = [Msgc.MIGRATE_DATA]
            if channel == (ChannelType.MAIN, 0):
                expected.insert(0, MigrateDstDoSeamless.MSG_TYPE)
            types = [f.msg_type for f in legs.server_target.received]
            check(types == expected, f"{name}: the target server received types {types}")
            check(
                legs.server_target.received[-1].body == payload,
                f"{name}: the target server's native bytes differ from the source's",
            )


@dataclass
class Evacuation:
    """Seconds: per VM, its first MIGRATE_DATA sent to its last arrival; the storm's wall time
    (first sent to last arrived); per blob, its source leg (server sent -> client got) and
    target leg (client sent -> server got)."""

    paths: list[float]
    wall: float
    source_legs: list[float]
    target_legs: list[float]
    #: CPU seconds the scripted peers (this process) spent over the storm.
    peers_cpu: float = 0.0


async def evacuate(
    sessions: Sequence[ClientSession], payloads: dict[ChannelType, bytes]
) -> Evacuation:
    """Every session's six MIGRATE_DATA at once."""
    relays = {
        session.session_id: [
            asyncio.create_task(relay(session, channel)) for channel in session.legs
        ]
        for session in sessions
    }
    await asyncio.sleep(0)
    started: dict[int, float] = {}
    sent: dict[tuple[int, tuple[int, int]], float] = {}
    cpu_before = time.process_time()
    first = time.perf_counter()
    for session in sessions:
        started[session.session_id] = time.perf_counter()
        for channel, legs in session.legs.items():
            await legs.server_source.send(Msg.MIGRATE_DATA, payloads[ChannelType(channel[0])])
            sent[(session.session_id, channel)] = time.perf_counter()
    source_legs, target_legs, arrived = [], [], {}
    for session in sessions:
        times = await asyncio.wait_for(
            asyncio.gather(*relays[session.session_id]), TIMEOUT
        )
        for channel, (got, relayed, came) in zip(session.legs, times, strict=True):
            source_legs.append(got - sent[(session.session_id, channel)])
            target_legs.append(came - relayed)
        arrived[session.session_id] = max(came for _, _, came in times)
    return Evacuation(
        paths=[arrived[s.session_id] - started[s.session_id] for s in sessions],
        wall=max(arrived.values()) - first,
        source_legs=source_legs,
        target_legs=target_legs,
        peers_cpu=time.process_time() - cpu_before,
    )


async def replay_refused(
    session: ClientSession, server: ScriptedServer, address: tuple[str, int]
) -> None:
    """A fresh display link of the same session replays the blob the client got: the target
    proxy must close it with nothing forwarded."""
    channel = (ChannelType.DISPLAY, 0)
    received = session.leg(channel).client_source.received
    blob = next(f.body for f in received if f.msg_type == Msg.MIGRATE_DATA)
    client = await link_client(address, ChannelType.DISPLAY, connection_id=session.session_id)
    server_end = await server.channel(ChannelType.DISPLAY, connection_id=session.session_id)
    await client.send(Msgc.MIGRATE_DATA, blob)
    forwarded = await server_end.frames_until_closed(timeout=TIMEOUT)
    await client.close()
    check(not forwarded, f"a replayed blob of session {session.session_id} was forwarded")


async def storm(
    folder: Path,
    keyring: Path,
    vms: int,
    replays: int,
    replay_dir: Path | None,
    profile: Path | None = None,
) -> tuple[StormFigures, StormFigures]:
    """The storm direct (the peers' own floor), then through the two proxies."""
    payloads = native_payloads()
    servers = {
        side: [await ScriptedServer(f"{side}-{i}").start() for i in range(vms)]
        for side in ("source", "target")
    }
    hosts = {
        side: Host(host_id, folder / side)
        for side, host_id in (("source", SOURCE_HOST), ("target", TARGET_HOST))
    }
    listens = {side: listen_addresses(vms) for side in hosts}
    vm_ids = [uuid.uuid4() for _ in range(vms)]
    # The peers table holds at most 64 addresses per peer, fewer than a host's VMs: VMs past
    # the 64th tell the client an address of the table; the client still goes to its own route.
    advertised = listens["target"][:MAX_PEER_ADDRESSES]
    configs = {}
    for side, other in (("source", "target"), ("target", "source")):
        hosts[side].folder.mkdir()
        configs[side] = write_config(
            hosts[side],
            keyring,
            [
                (f"vm{i}", servers[side][i].address, vm_ids[i], listens[side][i])
                for i in range(vms)
            ],
            (hosts[other], listens[other][:MAX_PEER_ADDRESSES]),
            replay_dir / f"{side}.sqlite" if replay_dir else None,
            max_connections=vms * 7 + 16,
            # Every client of the bench connects from 127.0.0.1.
            max_connections_per_client=vms * 7 + 16,
        )

    def session(i: int, first_id: int, proxied: bool) -> ClientSession:
        source, target = servers["source"][i], servers["target"][i]
        return ClientSession(
            session_id=first_id + i,
            source=listens["source"][i] if proxied else source.address,
            target=listens["target"][i] if proxied else target.address,
            source_server=source,
            target_server=target,
            channels=SIX_CHANNELS,
            target_advertised=advertised[i % len(advertised)] if proxied else target.address,
        )

    try:
        direct_sessions = [session(i, 5000, False) for i in range(vms)]
        start = time.perf_counter()
        await gather_bounded((prepare(s) for s in direct_sessions), 16)
        setup_seconds = time.perf_counter() - start
        run = await evacuate(direct_sessions, payloads)
        check_storm(direct_sessions, payloads, sealed=False)
        for s in direct_sessions:
            await s.close()
        direct = StormFigures(vms, run, setup_seconds)

        sessions = [session(i, 9000, True) for i in range(vms)]
        async with (
            proxy_process(
                hosts["source"], configs["source"], profile and profile / "storm-source.prof"
            ) as source,
            proxy_process(
                hosts["target"], configs["target"], profile and profile / "storm-target.prof"
            ) as target,
        ):
            proxies = {"source": source, "target": target}
            cpu0 = {side: proxy.cpu() for side, proxy in proxies.items()}
            start = time.perf_counter()
            await gather_bounded((prepare(s) for s in sessions), 16)
            setup_seconds = time.perf_counter() - start
            if profile is not None:
                for proxy in proxies.values():
                    proxy.profiling(True)
                await asyncio.sleep(0.2)  # the signals are handled on the proxies' loops
            cpu1 = {side: proxy.cpu() for side, proxy in proxies.items()}
            run = await evacuate(sessions, payloads)
            cpu2 = {side: proxy.cpu() for side, proxy in proxies.items()}
            if profile is not None:
                for proxy in proxies.values():
                    proxy.profiling(False)
            check_storm(sessions, payloads, sealed=True)
            sample = sessions[:replays]
            await gather_bounded(
                (
                    replay_refused(s, servers["target"][i], listens["target"][i])
                    for i, s in enumerate(sample)
                ),
                8,
            )
            counters = {side: proxy.counters() for side, proxy in proxies.items()}
            blobs = 6 * vms
            sealed = counters["source"].get("smg_sealed_total", 0.0)
            opened = counters["target"].get("smg_opened_total", 0.0)
            check(sealed == blobs, f"the source sealed {sealed:g} blobs, not {blobs}")
            check(opened == blobs, f"the target accepted {opened:g} blobs, not {blobs}")
            check(
                counters["source"].get("smg_refused_total", 0.0) == 0,
                "the source proxy refused something",
            )
            refused = counters["target"].get("smg_refused_total", 0.0)
            check(refused == len(sample), f"the target refused {refused:g}, not {len(sample)}")
            for s in sessions:
                await s.close()
    finally:
        for side_servers in servers.values():
            for server in side_servers:
                await server.close()
    proxied = StormFigures(
        vms,
        run,
        setup_seconds,
        cpu={side: cpu2[side] - cpu1[side] for side in cpu2},
        setup_cpu={side: cpu1[side] - cpu0[side] for side in cpu1},
        replays=len(sample),
    )
    return direct, proxied


# --- report ---------------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: only {target} file descriptors allowed, {needed} wanted")


def lag_line(name: str, lags: list[float]) -> str:
    if not lags:
        return f"  {name:<28} no samples"
    return (
        f"  {name:<28} p50 {statistics.median(lags) * 1e3:7.2f} ms  "
        f"p99 {quantile(lags, 0.99) * 1e3:7.2f} ms  max {max(lags) * 1e3:7.2f} ms "
        f"({len(lags)} samples)"
    )


def report_sidecar(f: SidecarFigures) -> None:
    per_idle = (f.idle_rss - f.baseline_rss) / f.sessions
    per_streaming = (f.streaming_rss - f.baseline_rss) / f.sessions
    active = len(f.active_bytes)
    total = sum(f.active_bytes)
    print(
        f"\nSidecar: {f.sessions} sessions x {f.channels} channels through one proxy "
        f"({f.sessions * f.channels} proxied connections), linked in {f.link_seconds:.1f} s"
    )
    print(
        f"  proxy RSS: {f.baseline_rss / 2**20:.1f} MiB with its routes, "
        f"{f.idle_rss / 2**20:.1f} MiB idle, {f.streaming_rss / 2**20:.1f} MiB streaming"
    )
    print(f"  memory per session: {per_idle / 1024:.1f} KiB idle, {per_streaming / 1024:.1f} KiB "
          f"with half of them streaming")
    print(lag_line("event-loop lag, idle:", f.idle_lag))
    print(lag_line("event-loop lag, streaming:", f.streaming_lag))
    if active:
        rates = sorted(b / f.seconds for b in f.active_bytes)
        limit = f"at most {f.rate / 1e6:g} MB/s each" if f.rate else "as fast as they could"
        print(f"  the active sessions' servers sent {limit}")
        print(
            f"  {active} active sessions for {f.seconds:.1f} s: {total / f.seconds / 1e6:.1f} MB/s "
            f"in all; per session median {statistics.median(rates) / 1e6:.2f} MB/s, "
            f"min {rates[0] / 1e6:.2f}, max {rates[-1] / 1e6:.2f}"
        )
        print(
            f"  proxy CPU while streaming: {f.streaming_cpu:.2f} s in {f.seconds:.1f} s "
            f"({f.streaming_cpu / f.seconds:.0%} of one core), "
            f"{f.streaming_cpu / max(total, 1) * 1e9:.2f} ms per MB"
        )
    verdict = "met" if per_idle <= 64 * 1024 else "missed"
    print(f"  {verdict:<6} memory per idle session <= 64 KiB: {per_idle / 1024:.1f} KiB")


def report_storm(direct: StormFigures, f: StormFigures) -> None:
    print(
        f"\nEvacuation storm: {f.vms} VMs x 6 channels ({6 * f.vms} blobs) at once, one source "
        f"and one target proxy; direct: the same peers without proxies"
    )
    print(
        f"  {'':<8} {'setup':>7} {'storm':>7} {'path p50':>9} {'p99':>7} {'max':>7} "
        f"{'source leg p50':>15} {'p99':>7} {'target leg p50':>15} {'p99':>7}  (ms)"
    )
    for name, figures in (("direct", direct), ("proxied", f)):
        run = figures.run
        cells = [statistics.median(run.paths), quantile(run.paths, 0.99), max(run.paths)]
        cells += [statistics.median(run.source_legs), quantile(run.source_legs, 0.99)]
        cells += [statistics.median(run.target_legs), quantile(run.target_legs, 0.99)]
        widths = (9, 7, 7, 15, 7, 15, 7)
        print(
            f"  {name:<8} {figures.setup_seconds * 1e3:>7.0f} {run.wall * 1e3:>7.0f} "
            + " ".join(f"{c * 1e3:>{w}.1f}" for c, w in zip(cells, widths, strict=True))
        )
    print(
        "  (setup: links on both sides, handshake, MIGRATE/FLUSH_MARK; storm: first MIGRATE_DATA "
        "sent to last arrival;\n   path: per VM, its first sent to its last arrival; per blob, "
        "source leg: server sent -> client got, target leg: client sent -> server got)"
    )
    print(
        f"  proxy CPU during the storm: source {f.cpu['source']:.2f} s, target "
        f"{f.cpu['target']:.2f} s (setup: {f.setup_cpu['source']:.2f} s, "
        f"{f.setup_cpu['target']:.2f} s)"
    )
    # Whether the storm was bound by the machine's CPU: then no VM's path can be much shorter
    # than the whole storm, whatever the proxies' latency.
    cores = os.cpu_count() or 1
    spent = f.run.peers_cpu + sum(f.cpu.values())
    print(
        f"  CPU over the storm, both proxies and the peers: {spent:.2f} s in {f.run.wall:.2f} s "
        f"on {cores} CPUs ({spent / (f.run.wall * cores):.0%} of the machine; the peers "
        f"{f.run.peers_cpu:.2f} s, {direct.run.peers_cpu:.2f} s in {direct.run.wall:.2f} s "
        "direct)"
    )
    print(
        f"  correct: every blob accepted once, native bytes identical, nothing else "
        f"forwarded, {f.replays} replays refused with nothing forwarded"
    )
    for side in ("source", "target"):
        verdict = "met" if f.cpu[side] <= 1.0 else "missed"
        print(f"  {verdict:<6} storm CPU on the {side} <= 1 s: {f.cpu[side]:.2f} s")
    p99 = quantile(f.run.paths, 0.99)
    verdict = "met" if p99 <= 0.05 else "missed"
    print(
        f"  {verdict:<6} critical path p99 <= 50 ms: {p99 * 1e3:.1f} ms "
        f"(direct {quantile(direct.run.paths, 0.99) * 1e3:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="sidecar sessions (0: skip)")
    parser.add_argument(
        "--channels",
        default="main,display,inputs,cursor",
        help="channels of each sidecar session, comma-separated (main and display needed)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="MB/S",
        help="what each active session's server sends, at most (default: as fast as it can)",
    )
    parser.add_argument(
        "--max-buffered",
        type=int,
        metavar="BYTES",
        help="the sidecar proxy's limits.max_buffered_bytes (default: the proxy's default)",
    )
    parser.add_argument("--vms", type=int, default=200, help="VMs in the storm (0: skip)")
    parser.add_argument(
        "--replay-db-dir",
        type=Path,
        metavar="DIR",
        help="where the storm's proxies keep their replay databases (default: a temporary "
        "folder; /dev/shm shows the storm without any disk cost)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile the proxies (cProfile, CPU time of their event-loop thread) while "
        "streaming and during the storm; the .prof files go to DIR",
    )
    parser.add_argument("--replays", type=int, default=10, help="blobs replayed after the storm")
    parser.add_argument("--tiny", action="store_true", help="4 sessions, 3 VMs, 1 s")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "LAGFILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(*args.serve)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.sessions, args.vms, args.seconds, args.replays = 4, 3, 1.0, 2
    channels = [CHANNEL_NAMES[name.strip()] for name in args.channels.split(",")]
    if ChannelType.MAIN not in channels or ChannelType.DISPLAY not in channels:
        parser.error("--channels needs main and display")
    # Both ends of every connection live here: client and server sockets.
    raise_fd_limit(max(args.sessions * len(channels), args.vms * 7) * 2 + 256)

    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="smg-scale-") as scratch:
            folder = Path(scratch)
            keyring = folder / "keyring.json"
            save_keyring(Keyring.create(), keyring)
            side = (
                asyncio.run(
                    sidecar(
                        folder,
                        keyring,
                        args.sessions,
                        channels,
                        args.seconds,
                        args.max_buffered,
                        args.profile,
                        args.rate * 1e6,
                    )
                )
                if args.sessions
                else None
            )
            evacuation = (
                asyncio.run(
                    storm(
                        folder,
                        keyring,
                        args.vms,
                        min(args.replays, args.vms),
                        args.replay_db_dir,
                        args.profile,
                    )
                )
                if args.vms
                else None
            )
    except CorrectnessError as error:
        print(f"CORRECTNESS: {error}", file=sys.stderr)
        print(f"CORRECTNESS: {error}")
        return 1
    load_after = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (benchmark peers share the machine with the proxies)"
    )
    if side is not None:
        report_sidecar(side)
    if evacuation is not None:
        report_storm(*evacuation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
