"""Benchmark: the inline SPICE proxy against a direct connection and a plain C relay (socat).

Run: ``python bench/proxy.py [--quick]``. Prints medians; asserts nothing.

What is measured
----------------
* **Throughput** of display-like traffic, server to client, on one linked display channel:
  a stream of data messages (mini header) whose bodies range from 16 bytes to 1 MiB, and a
  stream of small messages only (16 to 512 bytes, where the per-message cost shows). The same
  scripted server and client run direct, through ``socat`` (a plain TCP relay written in C,
  default options) and through one ``spice-migration-gateway proxy`` process. The peers are
  threads with blocking sockets in this process; each relay is its own process.
* **Added latency** of a small message: round trips of a 32-byte message echoed by the server,
  median and 99th percentile, direct and through each relay.
* **Migration critical path**: the time from the first MIGRATE_DATA leaving the source server
  to the last one arriving at the target server, six channels (main, display, inputs,
  smartcard, usbredir, webdav) with real payloads, the client relaying each body at once.
  Direct (server -> client -> server) and through a source proxy and a target proxy (seal on
  the way out, open with a durable replay-guard commit on the way in).

* With ``--suite identity``, the migration is measured with the peer link configured (the
  source announces each attempt before the client learns where to go): through two proxies
  under the shared keyring, and under the identity suite (a signed hybrid-KEM handshake per
  attempt, then every blob sealed with the attempt key). Beside the critical path it reports
  the begin phase (MIGRATE_BEGIN_SEAMLESS until every channel is linked to the target), which
  holds the announcement and so the handshake, off the critical path.

Goals (reported, not asserted): proxy throughput at least half of socat's; at most 1 ms added
to the migration's critical path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The scripted peers of the proxy tests drive the migration run.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.keys import Keyring, save_keyring
from gateway.service.control import request
from gateway.spice.constants import (
    LINK_HEADER_SIZE,
    TICKET_SIZE,
    ChannelType,
    Direction,
    LinkError,
    MigrateFlags,
    Msg,
    Msgc,
)
from gateway.spice.link import LinkHeader, encode_link_result
from gateway.spice.messages import Migrate, MigrateFlushMark
from gateway.spice.scripted import client_auth, client_link, server_link_reply
from tests.proxy.peers import ClientSession, ScriptedServer, native_payloads

MINI = struct.Struct("<HI")
SIX_CHANNELS = tuple(
    (channel, 0)
    for channel in (
        ChannelType.MAIN,
        ChannelType.DISPLAY,
        ChannelType.INPUTS,
        ChannelType.SMARTCARD,
        ChannelType.USBREDIR,
        ChannelType.WEBDAV,
    )
)
TIMEOUT = 30.0
SUITES = ("shared-key", "identity")


# --- blocking SPICE peers for throughput and latency ---------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return bytes(data)


def server_link(sock: socket.socket) -> int:
    """Link as spice-server (both peers advertise auth selection and the mini header)."""
    header = LinkHeader.decode(recv_exact(sock, LINK_HEADER_SIZE), Direction.CLIENT_TO_SERVER)
    channel_type = recv_exact(sock, header.size)[4]
    sock.sendall(server_link_reply())
    recv_exact(sock, 4 + TICKET_SIZE)
    sock.sendall(encode_link_result(LinkError.OK))
    return channel_type


def client_connect(address: tuple[str, int], channel: ChannelType) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(client_link(channel))
    header = LinkHeader.decode(recv_exact(sock, LINK_HEADER_SIZE), Direction.SERVER_TO_CLIENT)
    recv_exact(sock, header.size)
    sock.sendall(client_auth())
    if recv_exact(sock, 4) != encode_link_result(LinkError.OK):
        raise ConnectionError("link refused")
    return sock


def display_stream(total: int, small_only: bool, seed: int = 7) -> tuple[bytes, int]:
    """Data messages of display-like sizes up to ``total`` bytes; (stream, message count)."""
    rng = random.Random(seed)
    filler = os.urandom(1 << 20)
    parts: list[bytes] = []
    size = count = 0
    while size < total:
        roll = rng.random()
        if small_only or roll < 0.6:
            length = rng.randint(16, 512)
        elif roll < 0.85:
            length = rng.randint(1024, 16 * 1024)
        elif roll < 0.95:
            length = rng.randint(64 * 1024, 256 * 1024)
        else:
            length = rng.randint(512 * 1024, 1 << 20)
        parts.append(MINI.pack(101 + count % 20, length) + filler[:length])
        size += MINI.size + length
        count += 1
    return b"".join(parts), count


class BenchServer:
    """A blocking spice-server stand-in: display links get ``stream``, main links an echo."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.stream = b""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock, contextlib.suppress(OSError, ValueError):
            channel = server_link(sock)
            if channel == ChannelType.DISPLAY:
                view = memoryview(self.stream)
                for start in range(0, len(view), 4 << 20):
                    sock.sendall(view[start : start + (4 << 20)])
                sock.recv(1)  # until the client closes
            else:
                while True:
                    header = recv_exact(sock, MINI.size)
                    sock.sendall(header + recv_exact(sock, MINI.unpack(header)[1]))

    def close(self) -> None:
        self.listener.close()


def throughput(address: tuple[str, int], total: int) -> float:
    """Bytes per second of one display stream, first byte to last, as the client sees it."""
    sock = client_connect(address, ChannelType.DISPLAY)
    buffer = bytearray(1 << 20)
    got = 0
    with sock:
        first = sock.recv_into(buffer)
        start = time.perf_counter()
        got = first
        while got < total:
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError(f"stream ended after {got} of {total} bytes")
            got += n
        elapsed = time.perf_counter() - start
    # The first read's bytes arrived before the clock started.
    return (total - first) / elapsed


def round_trips(address: tuple[str, int], count: int) -> list[float]:
    """Round-trip times (seconds) of a 32-byte message echoed by the server."""
    sock = client_connect(address, ChannelType.MAIN)
    message = MINI.pack(107, 32) + bytes(range(32))
    times = []
    with sock:
        for index in range(count + 50):
            start = time.perf_counter()
            sock.sendall(message)
            recv_exact(sock, len(message))
            if index >= 50:  # warm-up
                times.append(time.perf_counter() - start)
    return times


# --- relays -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(address: tuple[str, int], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"relay exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {address}")


@contextlib.contextmanager
def socat(upstream: tuple[str, int]) -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:{upstream[0]}:{upstream[1]}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(("127.0.0.1", port), process)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("spice-migration-gateway")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]


@dataclass
class Host:
    """Files of one proxy host."""

    host_id: str
    folder: Path

    @property
    def control(self) -> Path:
        return self.folder / "control.sock"


def write_config(
    host: Host,
    keyring: Path,
    routes: list[tuple[str, tuple[str, int], uuid.UUID, int]],
    peer: tuple[str, list[tuple[str, int]]] | None,
    replay_db: Path | None = None,
    settings: tuple[list[str], list[str]] = ([], []),
) -> Path:
    """``settings``: more top-level lines, and more lines of the peer's table."""
    lines = [
        f'host_id = "{host.host_id}"',
        f'keyring = "{keyring}"',
        f'replay_db = "{replay_db or host.folder / "replay.sqlite"}"',
        f'control_socket = "{host.control}"',
        *settings[0],
        "[limits]",
        "shutdown_grace = 1.0",
    ]
    if peer is not None:
        addresses = ", ".join(f'"{h}:{p}"' for h, p in peer[1])
        lines += ["[[peers]]", f'host_id = "{peer[0]}"', f"addresses = [{addresses}]"]
        lines += settings[1]
    for name, upstream, vm_id, port in routes:
        lines += [
            "[[routes]]",
            f'name = "{name}"',
            f'listen = "127.0.0.1:{port}"',
            f'upstream = "{upstream[0]}:{upstream[1]}"',
            f'vm_id = "{vm_id}"',
        ]
    path = host.folder / "proxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def gateway_proxy(host: Host, config: Path) -> Iterator[int]:
    """A proxy process serving ``config``; yields its pid."""
    log = (host.folder / "proxy.log").open("wb")
    process = subprocess.Popen(
        [*gateway_command(), "proxy", "--config", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"proxy exited: {(host.folder / 'proxy.log').read_text()}")
            with contextlib.suppress(OSError, ValueError):
                if request(host.control, {"cmd": "health"}, timeout=1).get("ok"):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("proxy did not start")
            time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        log.close()


# --- the migration's critical path ----------------------------------------------------------------


async def critical_path(
    session: ClientSession,
    payloads: dict[ChannelType, bytes],
    begins: list[float] | None = None,
) -> float:
    """Seconds from the first MIGRATE_DATA leaving the source to the last reaching the target
    (and the begin phase's, appended to ``begins``)."""
    await session.link_source()
    begin = time.perf_counter()
    await session.begin_migration()
    if begins is not None:
        begins.append(time.perf_counter() - begin)
    for legs in session.legs.values():
        await legs.server_source.send_message(Migrate(MigrateFlags(3)))
        await legs.client_source.expect(Migrate.MSG_TYPE)
        await legs.client_source.send_message(MigrateFlushMark())
        await legs.server_source.expect(MigrateFlushMark.MSG_TYPE)
    arrived: list[float] = []

    async def relay(channel: tuple[int, int]) -> None:
        legs = session.leg(channel)
        assert legs.client_target is not None
        assert legs.server_target is not None
        body = (await legs.client_source.expect(Msg.MIGRATE_DATA)).body
        await legs.client_target.send(Msgc.MIGRATE_DATA, body)
        await legs.server_target.expect(Msgc.MIGRATE_DATA)
        arrived.append(time.perf_counter())

    tasks = [asyncio.create_task(relay(channel)) for channel in session.legs]
    await asyncio.sleep(0)
    start = time.perf_counter()
    for channel, legs in session.legs.items():
        await legs.server_source.send(Msg.MIGRATE_DATA, payloads[ChannelType(channel[0])])
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    await session.close()
    return max(arrived) - start


async def migration_runs(
    count: int,
    source_server: ScriptedServer,
    target_server: ScriptedServer,
    source: tuple[str, int],
    target: tuple[str, int],
    first_session: int,
    begins: list[float] | None = None,
) -> list[float]:
    payloads = native_payloads()
    times = []
    for index in range(count):
        session = ClientSession(
            session_id=first_session + index,
            source=source,
            target=target,
            source_server=source_server,
            target_server=target_server,
            channels=SIX_CHANNELS,
        )
        times.append(await critical_path(session, payloads, begins))
    return times


async def migration_bench(
    folder: Path, keyring: Path, count: int, memory_dir: Path | None
) -> dict[str, list[float]]:
    """Direct, then through two proxies (replay database on disk, and in memory if possible:
    the difference is the cost of the durable commit)."""
    source_server = await ScriptedServer("source").start()
    target_server = await ScriptedServer("target").start()
    results: dict[str, list[float]] = {}
    try:
        results["direct"] = await migration_runs(
            count, source_server, target_server, source_server.address, target_server.address, 1
        )
        places = [("two proxies", folder / "replay")]
        if memory_dir is not None:
            places.append(("two proxies, replay db in memory", memory_dir))
        for round_, (name, replay_dir) in enumerate(places, start=1):
            replay_dir.mkdir(exist_ok=True)
            source_host = Host("source-host", folder / f"source-{round_}")
            target_host = Host("target-host", folder / f"target-{round_}")
            source_host.folder.mkdir()
            target_host.folder.mkdir()
            ports = free_port(), free_port()
            vm = uuid.uuid4()
            source_config = write_config(
                source_host,
                keyring,
                [("vm", source_server.address, vm, ports[0])],
                ("target-host", [("127.0.0.1", ports[1])]),
                replay_dir / f"source-{round_}.sqlite",
            )
            target_config = write_config(
                target_host,
                keyring,
                [("vm", target_server.address, vm, ports[1])],
                ("source-host", [("127.0.0.1", ports[0])]),
                replay_dir / f"target-{round_}.sqlite",
            )
            with gateway_proxy(source_host, source_config), gateway_proxy(
                target_host, target_config
            ):
                results[name] = await migration_runs(
                    count,
                    source_server,
                    target_server,
                    ("127.0.0.1", ports[0]),
                    ("127.0.0.1", ports[1]),
                    10_000 * round_,
                )
        return results
    finally:
        await source_server.close()
        await target_server.close()


async def suite_bench(folder: Path, keyring: Path, count: int) -> dict[str, list[float]]:
    """Direct, then two proxies with the peer link under the shared keyring and two under the
    identity suite, all four running at once and the runs alternating between the suites (so
    the machine's load drifts alike for both); each run's begin phase and critical path (keys
    "<name>" and "<name> begin")."""
    from gateway.identity import HostIdentity, TrustStore, save_identity, save_trust_store

    source_server = await ScriptedServer("source").start()
    target_server = await ScriptedServer("target").start()
    identities = {h: HostIdentity.create(h) for h in ("source-host", "target-host")}
    results: dict[str, list[float]] = {}
    try:
        results["direct begin"] = []
        results["direct"] = await migration_runs(
            count,
            source_server,
            target_server,
            source_server.address,
            target_server.address,
            1,
            results["direct begin"],
        )
        with contextlib.ExitStack() as stack:
            addresses = {}
            for round_, suite in enumerate(SUITES, start=1):
                ports = free_port(), free_port()
                links = free_port(), free_port()
                vm = uuid.uuid4()
                hosts = (("source-host", "target-host"), ("target-host", "source-host"))
                for side, (me, other) in enumerate(hosts):
                    host = Host(me, folder / f"suite-{round_}-{me}")
                    host.folder.mkdir()
                    top = [f'peer_listen = "127.0.0.1:{links[side]}"']
                    if suite == "identity":
                        save_identity(identities[me], host.folder / "identity.json")
                        store, _ = TrustStore().with_peer(identities[other].public)
                        save_trust_store(store, host.folder / "trust.json")
                        top += [
                            f'identity = "{host.folder / "identity.json"}"',
                            f'trust_store = "{host.folder / "trust.json"}"',
                        ]
                    config = write_config(
                        host,
                        keyring,
                        [("vm", (source_server, target_server)[side].address, vm, ports[side])],
                        (other, [("127.0.0.1", ports[1 - side])]),
                        settings=(
                            top,
                            [f'peer_address = "127.0.0.1:{links[1 - side]}"', f'suite = "{suite}"'],
                        ),
                    )
                    stack.enter_context(gateway_proxy(host, config))
                addresses[f"two proxies, {suite}, peer link"] = ports
            for index in range(count):
                for round_, (name, ports) in enumerate(addresses.items(), start=1):
                    results.setdefault(name, []).extend(
                        await migration_runs(
                            1,
                            source_server,
                            target_server,
                            ("127.0.0.1", ports[0]),
                            ("127.0.0.1", ports[1]),
                            50_000 * round_ + index,
                            results.setdefault(f"{name} begin", []),
                        )
                    )
        return results
    finally:
        await source_server.close()
        await target_server.close()


# --- report -------------------------------------------------------------------------------------


def memory_folder() -> Path | None:
    """A folder on a memory-backed file system (no fsync cost), where Linux offers one."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    return Path(tempfile.mkdtemp(prefix="smg-bench-", dir=shm))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller streams, fewer runs")
    parser.add_argument(
        "--suite",
        choices=["identity"],
        help="measure the migration with the peer link, shared keyring beside identity suite",
    )
    args = parser.parse_args()
    mixed_total = (64 if args.quick else 256) << 20
    small_total = (8 if args.quick else 32) << 20
    runs = 3 if args.quick else 5
    pings = 500 if args.quick else 3000
    migrations = 10 if args.quick else 40

    have_socat = shutil.which("socat") is not None
    if not have_socat:
        print("socat not found; install it with `apt-get install -y socat`. Skipping its column.")
    load_before = os.getloadavg()

    streams = {
        "mixed 16 B..1 MiB": display_stream(mixed_total, small_only=False),
        "small 16..512 B": display_stream(small_total, small_only=True),
    }
    rates: dict[str, dict[str, list[float]]] = {name: {} for name in streams}
    proxy_cpu: dict[str, float | None] = {}
    latency: dict[str, list[float]] = {}
    memory = memory_folder()
    try:
        with tempfile.TemporaryDirectory(prefix="smg-bench-") as scratch:
            folder = Path(scratch)
            keyring = folder / "keyring.json"
            save_keyring(Keyring.create(), keyring)
            server = BenchServer()
            host = Host("bench-host", folder / "bench")
            host.folder.mkdir()
            port = free_port()
            config = write_config(host, keyring, [("vm", server.address, uuid.uuid4(), port)], None)
            with contextlib.ExitStack() as stack:
                relays = {"direct": server.address}
                if have_socat:
                    relays["socat"] = stack.enter_context(socat(server.address))
                pid = stack.enter_context(gateway_proxy(host, config))
                relays["proxy"] = ("127.0.0.1", port)
                for name, (stream, _) in streams.items():
                    server.stream = stream
                    spent = 0.0
                    # Rounds alternate the relays, so a busy moment of the machine does not
                    # fall on one column only.
                    for _ in range(runs):
                        for relay, address in relays.items():
                            before = cpu_seconds(pid) if relay == "proxy" else None
                            rate = throughput(address, len(stream))
                            rates[name].setdefault(relay, []).append(rate)
                            after = cpu_seconds(pid) if relay == "proxy" else None
                            if before is not None and after is not None:
                                spent += after - before
                    proxy_cpu[name] = spent / runs if cpu_seconds(pid) is not None else None
                for relay, address in relays.items():
                    latency[relay] = round_trips(address, pings)
            server.close()
            if args.suite == "identity":
                path = asyncio.run(suite_bench(folder, keyring, migrations))
            else:
                path = asyncio.run(migration_bench(folder, keyring, migrations, memory))
    finally:
        if memory is not None:
            shutil.rmtree(memory, ignore_errors=True)
    load_after = os.getloadavg()

    cores = os.cpu_count()
    print(f"{cores} CPUs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"\nThroughput, server -> client, one display channel ({runs} runs each), MB/s")
    columns = list(next(iter(rates.values())))
    header = f"{'stream':<18} {'messages':>8}" + "".join(f" {c + ' best':>12}" for c in columns)
    print(header + f" {'proxy median':>13} {'proxy/socat':>12} {'proxy CPU/MB':>13}")
    ratios = []
    for name, values in rates.items():
        best = {relay: max(v) for relay, v in values.items()}
        line = f"{name:<18} {streams[name][1]:>8}"
        line += "".join(f" {best[c] / 1e6:>12.0f}" for c in columns)
        line += f" {statistics.median(values['proxy']) / 1e6:>13.0f}"
        if "socat" in best:
            ratios.append(best["proxy"] / best["socat"])
            line += f" {ratios[-1]:>12.2f}"
        else:
            line += f" {'-':>12}"
        cpu = proxy_cpu.get(name)
        mb = len(streams[name][0]) / 1e6
        line += f" {cpu / mb * 1e3:>10.2f} ms" if cpu else f" {'-':>13}"
        print(line)

    print(f"\nRound trip of a 32-byte message ({pings} runs), microseconds")
    print(f"{'path':<10} {'median':>8} {'p99':>8} {'added (median)':>15}")
    base = statistics.median(latency["direct"])
    for relay, times in latency.items():
        median = statistics.median(times)
        p99 = statistics.quantiles(times, n=100)[98]
        print(f"{relay:<10} {median * 1e6:>8.0f} {p99 * 1e6:>8.0f} {(median - base) * 1e6:>15.0f}")

    print(f"\nMigration critical path, six channels ({migrations} runs), milliseconds")
    print(f"{'path':<44} {'median':>8} {'p90':>8} {'max':>8} {'added':>8}")
    direct = statistics.median(path["direct"])
    if args.suite == "identity":
        print("(begin: MIGRATE_BEGIN_SEAMLESS until every channel is linked to the target; it")
        print(" holds the announcement over the peer link and, in the identity suite, the")
        print(" handshake. Off the critical path.)")
        for name in [n for n in path if n.endswith(" begin")]:
            path[name.removesuffix(" begin") + ": begin"] = path.pop(name)
        path["two proxies"] = path["two proxies, shared-key, peer link"]
    for name, times in path.items():
        if name == "two proxies" and args.suite == "identity":
            continue
        p90 = statistics.quantiles(times, n=10)[8]
        median = statistics.median(times)
        base = statistics.median(path["direct: begin"]) if name.endswith(": begin") else direct
        print(
            f"{name:<44} {median * 1e3:>8.2f} {p90 * 1e3:>8.2f} {max(times) * 1e3:>8.2f} "
            f"{(median - base) * 1e3:>8.2f}"
        )
    added = statistics.median(path["two proxies"]) - direct

    print("\nGoals (reported, not asserted)")
    if ratios:
        worst = min(ratios)
        verdict = "met" if worst >= 0.5 else "missed"
        print(f"  {verdict:<6} throughput >= 0.5 x socat: worst stream {worst:.2f} x")
    verdict = "met" if added <= 1e-3 else "missed"
    print(f"  {verdict:<6} critical path added <= 1 ms: {added * 1e3:.2f} ms (median)")
    if args.suite == "identity":
        added = statistics.median(path["two proxies, identity, peer link"]) - direct
        verdict = "met" if added <= 1e-3 else "missed"
        print(f"  {verdict:<6} identity suite critical path added <= 1 ms: {added * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
