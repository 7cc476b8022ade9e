#!/usr/bin/env python3
"""The proxy's decisions, source and target together: a script of SPICE traffic on several
channels of two gateway hosts, checked after every step for what may reach spice-server.

The script (the input) is a list of steps, each an opcode byte and its argument bytes:

- ``op & 7`` is the step's kind (:data:`LINK` ... :data:`RELAY`), ``op >> 3 & 1`` the proxy
  (0 the source, 1 the target), ``op >> 4 & 3`` the connection slot on that proxy;
- LINK (1 byte): a new client connection in the slot (a reconnect closes the old one) runs a
  whole link stage; the byte picks the channel type, channel id, the ``connection_id`` (none
  or one of three session ids) and the two framing capabilities;
- CLOSE: the slot's connection closes (both its sides, as the server does);
- SERVER (1 byte): spice-server sends one message on the slot: MAIN_INIT, MIGRATE_BEGIN_SEAMLESS
  (to the peer, to an unknown host, to the peer by its TLS port only, back to itself),
  MIGRATE with flags, MIGRATE_DATA (a real native state of some channel; a large one: on a
  port or webdav channel its state with over 64 KiB of pending writes, sealed and opened in a
  worker thread, elsewhere a state with trailing bytes), MIGRATE_CANCEL,
  SWITCH_HOST, an ordinary message, DST_SEAMLESS_ACK;
- CLIENT (1 byte): the client sends one message: FLUSH_MARK, MIGRATE_DST_DO_SEAMLESS,
  MIGRATE_CONNECTED_SEAMLESS, an ordinary message, or MIGRATE_DATA carrying a blob a proxy
  sealed, a native state (never sealed), a sealed blob with one byte flipped, or one truncated;
- RAW (1 + n bytes): n raw bytes from the client or the server (bit 6 of the op);
- CLOCK (1 byte), proxy bit 0: both hosts' clock moves on by 3 s per unit (blob lifetime
  10 s, clock skew 30 s);
- CLOCK (1 byte), proxy bit 1, SET: the pair's surroundings from now on (a reload of both
  hosts): bit 0 the peer link is down (the next announcements are lost), bit 1 the target runs
  ``peer_link_down = "first-blob"`` (else "refuse"), bit 2 both hosts use the identity suite,
  bits 3-4 the replay guards' next operation fails (``_proxy_pair.FAULTS``: a database error
  or a closed guard only where a blob is recorded, accepted or spent), bit 5 a newer
  attempt is announced while the next blob is being recorded;
- SPLIT (2 bytes): a sealed blob sent as MIGRATE_DATA in two reads, cut where the fuzzer says;
- RELAY (1 byte): a sealed blob delivered the way a real client does, on the first slot of the
  other proxy linked on the blob's channel.

Oracles, after every step (spice-server is the upstream of each slot):

- nothing but the native bytes of a blob that opened reaches spice-server as MIGRATE_DATA: each
  such message answers the client's MIGRATE_DATA carrying that very blob, sealed by a proxy of
  the pair for this host and for this channel, and its body is the native state that was
  sealed; so no client MIGRATE_DATA body is ever forwarded unopened;
- each blob is accepted at most once, by either host;
- an authentic blob refused is recorded as used (unless the replay guard failed meanwhile, or
  the blob's time is over: the guard forgets, at its next write, a blob that could no longer
  pass the expiry check);
- the target runs at most one attempt of the VM, the newest announced;
- what a proxy sends the client as MIGRATE_DATA is a blob that opens to exactly the native
  state spice-server sent (sealed for the peer the client was sent to, for this channel);
- every other event is forwarded as the exact bytes received;
- only GatewayError escapes (the channel then closes), with a short message.
"""

import asyncio
import struct
import uuid

import _harness

with _harness.instrumented("gateway.proxy.channel", "gateway.proxy.sessions", "gateway.spice"):
    import _proxy_pair
    from _proxy_pair import FAULTS, SAMPLES, Clock, Proxy, Slot, Surroundings, make_pair

    from gateway import native
    from gateway.envelope import ANY_MIGRATION, ExpectedContext, verify
    from gateway.errors import GatewayError
    from gateway.proxy.sessions import Attempt
    from gateway.spice import (
        ChannelType,
        ConnectionState,
        Direction,
        DstInfo,
        Event,
        HeaderKind,
        MainInit,
        Message,
        Migrate,
        MigrateBeginSeamless,
        MigrateCancel,
        MigrateConnectedSeamless,
        MigrateDstDoSeamless,
        MigrateDstSeamlessAck,
        MigrateFlushMark,
        MigrateSwitchHost,
        Msg,
        Msgc,
        Passthrough,
        encode_data_message,
    )
    from gateway.spice.messages import ClientMigrateData
    from gateway.spice.scripted import link_exchange

__all__ = ["CHANNELS", "SESSIONS", "TestOneInput", "op", "run_script"]

LINK, CLOSE, SERVER, CLIENT, RAW, CLOCK, SPLIT, RELAY = range(8)
#: Steps past this many are ignored: a script is a migration or two, not a day of traffic.
MAX_STEPS = 64
#: Every channel with migration data, and the cursor channel, which has none; by type.
CHANNELS = tuple(sorted({*SAMPLES, ChannelType.CURSOR}))
#: A channel type this gateway does not know (in place of cursor channel 1).
UNKNOWN_CHANNEL = 99
#: A MIGRATE_DATA body this large is sealed or opened in a worker thread (pending device data).
LARGE = 64 * 1024
#: connection_id 0 (a fresh session), then the session ids spice-server hands out here.
SESSIONS = (0, 0x5E55, 0x7A11, 0x1D)
SAMPLE_CHANNELS = tuple(SAMPLES)
C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
HEADERS = {HeaderKind.MINI: struct.Struct("<HI"), HeaderKind.FULL: struct.Struct("<8xHI4x")}
LOOP = asyncio.new_event_loop()


def _large_state(channel: ChannelType) -> bytes:
    """``channel``'s sample state with pending writes past :data:`LARGE` (a real shape:
    a guest port that stopped reading)."""
    state = native.decode(channel, SAMPLES[channel])
    device = state.device  # type: ignore[attr-defined]
    data = device.write_data * (LARGE // len(device.write_data) + 1)
    device = device.model_copy(update={"write_data": data, "write_size": len(data)})
    return native.encode(state.model_copy(update={"device": device}), channel)


#: Large valid states, for the channels whose pending writes are free-form bytes.
LARGE_STATES = {
    channel: _large_state(channel) for channel in (ChannelType.PORT, ChannelType.WEBDAV)
}


def op(kind: int, proxy: int, slot: int, *args: int) -> bytes:
    """One step of a script, for seeds and tests."""
    return bytes([kind | proxy << 3 | slot << 4, *args])


class Blob:
    """A blob a proxy sealed: for which host and channel, and the native state inside."""

    __slots__ = ("channel", "native", "target")

    def __init__(self, target: str, channel: tuple[int, int], native_state: bytes) -> None:
        self.target, self.channel, self.native = target, channel, native_state


class Run:
    """One script's world: the two proxies and what the oracles remember."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.world = Surroundings()
        self.source, self.target = make_pair(self.clock, LOOP, self.world)
        self.blobs: dict[bytes, Blob] = {}
        self.pool: list[bytes] = []
        self.accepted: set[bytes] = set()

    def proxy(self, index: int) -> Proxy:
        return self.target if index else self.source

    def peer(self, proxy: Proxy) -> Proxy:
        return self.source if proxy is self.target else self.target

    # --- the oracles ---------------------------------------------------------------------------

    def check(self, slot: Slot, event: Event, out: bytes) -> None:
        """What the proxy sent on for one event (see the module's docstring)."""
        if type(event) is Message and isinstance(event.migration, ClientMigrateData):
            self._check_opened(slot, event.migration.payload, out)
            return
        if type(event) is Message and event.direction is S2C and event.msg_type == Msg.MIGRATE_DATA:
            self._check_sealed(slot, event.body, out)
            return
        if out != event.raw:
            raise _harness.OracleFailure(f"{type(event).__name__} not forwarded as received")
        if type(event) is Passthrough and event.direction is C2S:
            kind = slot.header_kind or HeaderKind.MINI
            for msg_type, _ in _walk(out, kind):
                if msg_type == Msgc.MIGRATE_DATA:
                    raise _harness.OracleFailure("a client MIGRATE_DATA passed through unopened")

    def _check_opened(self, slot: Slot, blob: bytes, out: bytes) -> None:
        kind = slot.header_kind or HeaderKind.MINI
        msg_type, body = _one(out, kind)
        if msg_type != Msgc.MIGRATE_DATA:
            raise _harness.OracleFailure(f"MIGRATE_DATA rewritten into type {msg_type}")
        sealed = self.blobs.get(blob)
        handler = slot.handler
        if sealed is None:
            raise _harness.OracleFailure("a MIGRATE_DATA body no proxy sealed reached the server")
        if sealed.target != slot.proxy.host_id:
            raise _harness.OracleFailure(f"a blob for {sealed.target} opened elsewhere")
        if sealed.channel != (handler.channel_type, handler.channel_id):
            raise _harness.OracleFailure(f"a blob of {sealed.channel} opened on {handler.channel}")
        if blob in self.accepted:
            raise _harness.OracleFailure("a blob was accepted twice")
        if body != sealed.native:
            raise _harness.OracleFailure("the server got other bytes than the state sealed")
        self.accepted.add(blob)

    def _check_sealed(self, slot: Slot, payload: bytes, out: bytes) -> None:
        msg_type, blob = _one(out, _kind(slot))
        handler, proxy = slot.handler, slot.proxy
        peer = self.peer(proxy).host_id
        if msg_type != Msg.MIGRATE_DATA or blob == payload:
            raise _harness.OracleFailure("a native MIGRATE_DATA reached the client unsealed")
        expected = ExpectedContext(
            channel_type=ChannelType(handler.channel_type),
            channel_id=handler.channel_id,
            vm_id=_proxy_pair.VM,
            migration_id=ANY_MIGRATION,
            sources=frozenset([proxy.host_id]),
            target_host=peer,
            schema_version=1,
        )
        try:
            keyring = self.world.keyring_for(blob)
            verified = verify(blob, expected, keyring, now=self.clock())
            opened = verified.consume(_proxy_pair.MemoryReplayGuard())
        except GatewayError as error:
            raise _harness.OracleFailure(f"a sealed blob does not open: {error!r}") from None
        state = native.encode(opened.state, handler.channel_type)
        if state != payload:
            raise _harness.OracleFailure("the blob holds other bytes than the server sent")
        self.blobs[blob] = Blob(peer, (handler.channel_type, handler.channel_id), state)
        self.pool.append(blob)

    # --- the steps ----------------------------------------------------------------------------

    def _check_spent(self, proxy: Proxy, error: GatewayError, failures: int) -> None:
        """An authentic blob refused is used all the same: the guard holds it now (unless it
        failed meanwhile, or the blob's keep-until time has passed, so the guard may forget it:
        such a blob is refused as expired anyway)."""
        spent = error.authentic_blob
        if spent is None or proxy.guard.failures != failures or spent[1] < self.clock():
            return
        if spent[0] not in proxy.guard:
            raise _harness.OracleFailure(f"an authentic blob refused ({error!r}) was not recorded")

    def send(self, slot: Slot, direction: Direction, *chunks: bytes) -> None:
        proxy = slot.proxy
        failures = proxy.guard.failures
        try:
            for chunk in chunks:
                slot.feed(direction, chunk, self.check)
        except GatewayError as error:
            _harness.check_refusal(error, sum(map(len, chunks)))
            self._check_spent(proxy, error, failures)
            for index, held in list(proxy.slots.items()):
                if held is slot:
                    proxy.disconnect(index)

    def link(self, proxy: Proxy, index: int, arg: int) -> None:
        slot = proxy.connect(index)
        channel, channel_id = CHANNELS[arg & 7], arg >> 3 & 1
        if channel == ChannelType.CURSOR and channel_id:
            channel, channel_id = UNKNOWN_CHANNEL, 0
        for direction, unit in link_exchange(
            channel,
            channel_id,
            connection_id=SESSIONS[arg >> 4 & 3],
            mini_header=not arg & 0x40,
            auth_selection=not arg & 0x80,
        ):
            if proxy.slots.get(index) is not slot:
                return  # refused
            self.send(slot, direction, unit)

    def message(self, slot: Slot, direction: Direction, msg_type: int, body: bytes) -> bytes:
        kind = slot.header_kind or HeaderKind.MINI
        return encode_data_message(kind, msg_type, body, serial=1 if kind is HeaderKind.FULL else 0)

    def server_message(self, slot: Slot, arg: int) -> None:
        which, more = arg & 7, arg >> 3
        proxy = slot.proxy
        if which == 0:
            message = MainInit(session_id=SESSIONS[1 + more % 3], agent_tokens=10)
        elif which in (1, 5):
            peer = (
                _proxy_pair.SOURCE_ADDRESS if proxy is self.target else _proxy_pair.TARGET_ADDRESS
            )
            own = _proxy_pair.TARGET_ADDRESS if proxy is self.target else _proxy_pair.SOURCE_ADDRESS
            port_choice = more & 3
            if port_choice == 0:
                info = DstInfo(port=peer[1], sport=0, host=peer[0])
            elif port_choice == 1:
                info = DstInfo(port=5999, sport=0, host="198.51.100.7")
            elif port_choice == 2:
                info = DstInfo(port=1, sport=peer[1], host=peer[0])
            else:
                info = DstInfo(port=own[1], sport=0, host=own[0])
            if which == 1:
                self.send(slot, S2C, MigrateBeginSeamless(info, 1).encode(_kind(slot)))
            else:
                self.send(slot, S2C, MigrateSwitchHost(info).encode(_kind(slot)))
            return
        elif which == 2:
            message = Migrate(more & 3)
        elif which == 3:
            channel = slot.handler.channel_type
            if more % 8 or channel not in SAMPLES:
                channel = SAMPLE_CHANNELS[more % len(SAMPLE_CHANNELS)]
            body = SAMPLES[channel]
            if more & 16:
                body = LARGE_STATES.get(channel) or body + bytes(LARGE)
            self.send(slot, S2C, self.message(slot, S2C, Msg.MIGRATE_DATA, body))
            return
        elif which == 4:
            message = MigrateCancel()
        elif which == 6:
            self.send(slot, S2C, self.message(slot, S2C, Msg.PING, bytes(12)))
            return
        else:
            message = MigrateDstSeamlessAck()
        self.send(slot, S2C, message.encode(_kind(slot)))

    def client_message(self, slot: Slot, arg: int, extra: int) -> None:
        which, more = arg & 7, arg >> 3
        if which == 0:
            data = MigrateFlushMark().encode(_kind(slot))
        elif which == 1:
            data = MigrateDstDoSeamless(1).encode(_kind(slot))
        elif which == 2:
            data = MigrateConnectedSeamless().encode(_kind(slot))
        elif which == 3:
            data = self.message(slot, C2S, Msgc.PONG, bytes(12))
        elif which == 5:
            body = SAMPLES[SAMPLE_CHANNELS[more % len(SAMPLE_CHANNELS)]]
            if more & 16:  # past the inline limit: the thread path
                body = body + bytes(LARGE)
            data = self.message(slot, C2S, Msgc.MIGRATE_DATA, body)
        else:
            blob = self.pooled(more)
            if which == 6 and blob:
                flipped = bytearray(blob)
                flipped[extra * 97 % len(blob)] ^= 1 << (more & 7)
                blob = bytes(flipped)
            elif which == 7:
                blob = blob[: len(blob) * extra // 256]
            data = self.message(slot, C2S, Msgc.MIGRATE_DATA, blob)
        self.send(slot, C2S, data)

    def pooled(self, index: int) -> bytes:
        return self.pool[index % len(self.pool)] if self.pool else b""

    def relay(self, proxy: Proxy, arg: int, together: bool) -> None:
        """A blob, on the first slot of ``proxy`` linked on its channel; ``together``: the
        next blob too, on its own slot, both handled at once as two connections' legs are
        (both verified before either is recorded)."""
        sends = [s for s in (self._relay_to(proxy, arg),) if s is not None]
        if together:
            second = self._relay_to(proxy, arg + 1)
            if second is not None and sends and second[0] is not sends[0][0]:
                sends.append(second)
        if len(sends) == 2:
            self.send_together(sends)
        for slot, data in sends[:1] if len(sends) == 1 else ():
            self.send(slot, C2S, data)

    def _relay_to(self, proxy: Proxy, index: int) -> tuple[Slot, bytes] | None:
        blob = self.pooled(index)
        sealed = self.blobs.get(blob)
        if sealed is None:
            return None
        for key in sorted(proxy.slots):
            slot = proxy.slots[key]
            handler = slot.handler
            if (handler.channel_type, handler.channel_id) == sealed.channel:
                return slot, self.message(slot, C2S, Msgc.MIGRATE_DATA, blob)
        return None

    def send_together(self, sends: list[tuple[Slot, bytes]]) -> None:
        """Each slot's one MIGRATE_DATA through ``rewrite``, the two run as concurrent tasks
        (or one after the other where a slot is not ready for a whole message)."""
        if not all(_ready(slot) for slot, _ in sends):
            for slot, data in sends:
                if slot.proxy.slots.get(_index(slot, default=-1)) is slot:
                    self.send(slot, C2S, data)
            return
        events = []
        failures = [slot.proxy.guard.failures for slot, _ in sends]
        for slot, data in sends:
            (event,) = slot.conn.receive_from_client(data)  # ready: one whole message
            events.append((slot, event))

        async def both() -> list[bytes | BaseException]:
            return await asyncio.gather(
                *(slot.handler.rewrite(event) for slot, event in events), return_exceptions=True
            )

        outs = LOOP.run_until_complete(both())
        for (slot, event), out, failed in zip(events, outs, failures, strict=True):
            if isinstance(out, GatewayError):
                _harness.check_refusal(out, len(event.raw))
                self._check_spent(slot.proxy, out, failed)
                slot.proxy.disconnect(_index(slot))
            elif isinstance(out, BaseException):
                raise out
            else:
                self.check(slot, event, out)

    def settle(self, arg: int) -> None:
        """A SET step: the surroundings ``arg`` chooses (see the module's docstring)."""
        world = self.world
        world.delivers = not arg & 1
        world.peer_link_down = "first-blob" if arg & 2 else "refuse"
        world.identity = bool(arg & 4)
        for proxy in (self.source, self.target):
            proxy.configure(world)
            proxy.guard.fault = FAULTS[arg >> 3 & 3]
            proxy.guard.before_claim = self.supersede if arg & 32 else None

    def supersede(self) -> None:
        """The source announces a newer attempt of the VM (a peer-link connection of its own,
        landing while the target records a blob)."""
        attempts = self.target.state.attempts
        current = attempts.current(_proxy_pair.VM)
        attempts.announce(
            Attempt(
                vm_id=_proxy_pair.VM,
                migration_id=uuid.uuid4(),
                source_host=self.source.host_id,
                channels=current.channels if current is not None else frozenset(),
                issued_at=int(self.clock()),
            )
        )

    def step(self, code: int, args: bytes) -> int:
        """Run one step; returns how many argument bytes it used."""
        kind, proxy, index = code & 7, self.proxy(code >> 3 & 1), code >> 4 & 3
        arg = args[0] if args else 0
        if kind == LINK:
            self.link(proxy, index, arg)
            return 1
        if kind == CLOCK:
            if code & 8:
                self.settle(arg)
            else:
                self.clock.now += 3 * arg
            return 1
        if kind == RELAY:
            self.relay(proxy, arg, bool(code & 0x80))
            return 1
        slot = proxy.slots.get(index)
        if kind == CLOSE:
            proxy.disconnect(index)
            return 0
        if kind == RAW:
            raw = args[1 : 1 + arg % 64]
            if slot is not None:
                self.send(slot, S2C if code & 0x40 else C2S, raw)
            return 1 + len(raw)
        if slot is None:
            return 2 if kind in (CLIENT, SPLIT) else 1
        if kind == SERVER:
            self.server_message(slot, arg)
            return 1
        extra = args[1] if len(args) > 1 else 0
        if kind == CLIENT:
            self.client_message(slot, arg, extra)
            return 2
        data = self.message(slot, C2S, Msgc.MIGRATE_DATA, self.pooled(arg))
        cut = extra * len(data) // 256
        self.send(slot, C2S, data[:cut], data[cut:])
        return 2

    def close(self) -> None:
        for proxy in (self.source, self.target):
            for index in list(proxy.slots):
                proxy.disconnect(index)
            if len(proxy.state.sessions):
                raise _harness.OracleFailure("a session outlived every connection")


def _index(slot: Slot, default: int | None = None) -> int:
    """The slot number ``slot`` holds on its proxy (``default`` once it was closed)."""
    for index, held in slot.proxy.slots.items():
        if held is slot:
            return index
    if default is None:
        raise LookupError("the slot was closed")
    return default


def _ready(slot: Slot) -> bool:
    """The connection is in its data stage with nothing buffered from the client."""
    return slot.conn.state is ConnectionState.ESTABLISHED and not slot.conn.buffered(C2S)


def _one(raw: bytes, kind: HeaderKind) -> tuple[int, bytes]:
    """The single message the proxy sent in place of one message."""
    messages = _walk(raw, kind)
    if len(messages) != 1:
        raise _harness.OracleFailure(f"one message rewritten into {len(messages)}")
    return messages[0]


def _kind(slot: Slot) -> HeaderKind:
    return slot.header_kind or HeaderKind.MINI


def _walk(raw: bytes, kind: HeaderKind) -> list[tuple[int, bytes]]:
    """The (type, body) of each whole message in ``raw`` (the proxy only sends whole ones)."""
    header, pos, found = HEADERS[kind], 0, []
    while pos < len(raw):
        if pos + header.size > len(raw):
            raise _harness.OracleFailure("the proxy sent part of a header")
        msg_type, size = header.unpack_from(raw, pos)
        pos += header.size
        if pos + size > len(raw):
            raise _harness.OracleFailure("the proxy sent part of a message")
        found.append((msg_type, raw[pos : pos + size]))
        pos += size
    return found


def check_sessions(proxy: Proxy) -> None:
    """A session whose every linked data channel was sealed for the current migration has
    no migration in flight: stopping the source proxy need not wait for it."""
    for session in proxy.state.sessions.in_flight():
        with session.lock:
            if session.sealed and session.sealed >= session.expected_channels:
                raise _harness.OracleFailure("a session sealed whole is still in flight")


def run_script(data: bytes) -> Run:
    run = Run()
    pos = steps = 0
    while pos < len(data) and steps < MAX_STEPS:
        code = data[pos]
        pos += 1 + run.step(code, data[pos + 1 :])
        steps += 1
        check_sessions(run.source)
        check_sessions(run.target)
        if len(run.source.state.attempts) or len(run.target.state.attempts) > 1:
            raise _harness.OracleFailure("an attempt table holds more than the newest attempt")
    run.close()
    return run


def TestOneInput(data: bytes) -> None:
    run_script(data)


if __name__ == "__main__":
    _harness.main(TestOneInput)
