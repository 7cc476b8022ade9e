#!/usr/bin/env python3
"""Write the seed corpora of the three SPICE protocol harnesses, reproducibly.

Every seed is built from the package's own encoders in the input layout its harness documents,
so a seed starts the fuzzer on real traffic: stock links with and without auth selection,
mini and full headers, and the migration messages of the main and display channels.

    python fuzz/seeds_spice.py            # writes fuzz/corpus/spice_*/
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from gateway.spice import (
    ChannelType,
    ClientMigrateData,
    DstInfo,
    HeaderKind,
    LinkError,
    MainInit,
    Migrate,
    MigrateBeginSeamless,
    MigrateConnectedSeamless,
    MigrateData,
    MigrateDstDoSeamless,
    MigrateDstSeamlessAck,
    MigrateFlags,
    MigrateFlushMark,
    MigrateSwitchHost,
    encode_data_message,
    encode_link_result,
)
from gateway.spice.scripted import client_auth, client_link, server_link_reply

CORPUS = Path(__file__).resolve().parent / "corpus"

# Harness flag bits (see each harness's docstring).
LINK_MAIN, LINK_SELECTION, LINK_MINI = 4, 8, 16
FRAMING_MINI, FRAMING_SELECTION, FRAMING_MAIN = 1, 2, 4

MIGRATE_ALL = Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
DST = DstInfo(port=5910, sport=5911, host="127.0.0.1", cert_subject="CN=destination")


def _link_input(mode: int, flags: int, payload: bytes, cuts: bytes = b"\x00\x00") -> bytes:
    return bytes([mode | flags]) + cuts + payload


def _framing_input(flags: int, payload: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    return bytes([flags, len(cuts)]) + struct.pack(f"<{len(cuts)}H", *cuts) + payload


def _messages(kind: HeaderKind, parts: list[tuple[int, bytes]]) -> bytes:
    """Data messages in a row; full headers get serials from 1 as spice-server numbers them."""
    out = b""
    for serial, (msg_type, body) in enumerate(parts, start=1):
        full = kind is HeaderKind.FULL
        out += encode_data_message(kind, msg_type, body, serial=serial if full else 0)
    return out


def link_seeds() -> dict[str, bytes]:
    both = LINK_SELECTION | LINK_MINI
    return {
        "client-link-main": _link_input(0, both, client_link(ChannelType.MAIN)),
        "client-link-display-no-selection": _link_input(
            0, LINK_MINI, client_link(ChannelType.DISPLAY, 1, auth_selection=False)
        ),
        "client-link-migration-target": _link_input(
            0, both, client_link(ChannelType.MAIN, connection_id=0x5E55), b"\x05\x30"
        ),
        "server-reply-and-result": _link_input(
            1, both | LINK_MAIN, server_link_reply() + encode_link_result(LinkError.OK)
        ),
        "server-reply-full-header": _link_input(
            1, LINK_SELECTION, server_link_reply(mini_header=False)
        ),
        "server-error-reply": _link_input(
            1, both, server_link_reply(error=LinkError.NEED_SECURED), b"\x10\x00"
        ),
        "client-auth-and-ticket": _link_input(2, both, client_auth(), b"\x04\x40"),
        "client-ticket-only": _link_input(2, LINK_MINI, client_auth(auth_selection=False)),
        "client-sasl": _link_input(2, both, struct.pack("<I", 2)),
        "server-result-and-messages": _link_input(
            3,
            both | LINK_MAIN,
            encode_link_result(LinkError.OK)
            + _messages(HeaderKind.MINI, [(3, struct.pack("<II", 1, 20))]),
        ),
        "server-result-denied": _link_input(
            3, both, encode_link_result(LinkError.PERMISSION_DENIED)
        ),
    }


def _link_header(size: int, magic: bytes = b"REDQ", major: int = 2) -> bytes:
    return struct.pack("<4sIII", magic, major, 2, size)


def _mess(n_common: int, n_channel: int, caps_offset: int, caps: bytes = b"") -> bytes:
    return struct.pack("<IBBIII", 0, 1, 0, n_common, n_channel, caps_offset) + caps


def link_refusal_seeds() -> dict[str, bytes]:
    """One seed per check of the link stage: each is refused where its name says, or (the
    partial ones) waits for more input."""
    both = LINK_SELECTION | LINK_MINI
    caps = struct.pack("<II", 0b111, 0)
    good_mess = client_link(ChannelType.MAIN)
    reply = server_link_reply()
    decoder = 32  # the harness's bit for the link decoders alone
    return {
        "client-not-spice": _link_input(0, both, b"GET / HTTP"),
        "client-bad-magic-whole-header": _link_input(0, both, _link_header(18, b"REDX")),
        "client-bad-major": _link_input(0, both, _link_header(18, major=1)),
        "client-size-too-small": _link_input(0, both, _link_header(17)),
        "client-size-too-large": _link_input(0, both, _link_header(4097)),
        "client-too-many-caps": _link_input(
            0, both, _link_header(18 + 8) + _mess(1025, 0, 18, caps)
        ),
        "client-caps-offset-inside": _link_input(
            0, both, _link_header(18 + 8) + _mess(1, 1, 10, caps)
        ),
        "client-caps-past-the-end": _link_input(
            0, both, _link_header(18 + 8) + _mess(2, 1, 18, caps)
        ),
        "client-unknown-channel-refused": _link_input(
            0,
            both,
            _link_header(18) + struct.pack("<IBBIII", 0, 99, 3, 0, 0, 0) + b"\x00",
            b"\x16\x00",
        ),
        "client-link-in-pieces": _link_input(0, both, good_mess, b"\x03\x14"),
        "client-link-then-more": _link_input(0, both, good_mess + b"\x01"),
        "server-reply-in-pieces": _link_input(1, both, reply, b"\x05\x40"),
        "server-before-client-link": _link_input(1, both, reply, b"\x00\x00"),
        "server-result-before-ticket": _link_input(
            1, both, reply + encode_link_result(LinkError.OK)
        ),
        "server-reply-bad-caps": _link_input(
            1, both, _link_header(178 + 8) + reply[16 : 16 + 4 + 162] + struct.pack(
                "<III", 3000, 0, 178
            ) + caps
        ),
        "server-reply-too-small": _link_input(1, both, _link_header(100)),
        "client-auth-in-pieces": _link_input(2, both, client_auth(), b"\x02\x30"),
        "client-bad-mechanism": _link_input(2, both, struct.pack("<I", 7)),
        "client-talks-before-result": _link_input(2, both, client_auth() + b"\x00"),
        "client-ticket-partial": _link_input(2, LINK_MINI, client_auth(auth_selection=False)[:50]),
        "server-result-in-pieces": _link_input(
            3, both | LINK_MAIN, encode_link_result(LinkError.OK), b"\x02\x03"
        ),
        "server-denied-then-more": _link_input(
            3, both, encode_link_result(LinkError.PERMISSION_DENIED) + b"\x00\x01"
        ),
        "server-result-full-header-data": _link_input(
            3,
            LINK_SELECTION,
            encode_link_result(LinkError.OK)
            + _messages(HeaderKind.FULL, [(3, struct.pack("<II", 1, 20)), (4, bytes(12))]),
            b"\x04\x10",
        ),
        "decode-mess": _link_input(0, decoder, good_mess[16:]),
        "decode-mess-short": _link_input(0, decoder, good_mess[16:30]),
        "decode-reply": _link_input(1, decoder, reply[16:]),
        "decode-reply-error": _link_input(
            1, decoder, server_link_reply(error=LinkError.NEED_SECURED)[16:]
        ),
        "decode-reply-short": _link_input(1, decoder, reply[16:100]),
        "decode-word": _link_input(2, decoder, struct.pack("<I", 1)),
        "decode-word-short": _link_input(2, decoder, b"\x01\x00"),
        "decode-client-header": _link_input(3, decoder | LINK_MAIN, _link_header(18)),
        "decode-server-header": _link_input(3, decoder, _link_header(178)),
        "decode-header-short": _link_input(3, decoder, _link_header(178)[:12]),
    }


def client_framing_seeds() -> dict[str, bytes]:
    main = [
        (1, struct.pack("<I", 1)),  # ACK_SYNC
        (MigrateDstDoSeamless.MSG_TYPE, MigrateDstDoSeamless(1).encode_body()),
        (MigrateConnectedSeamless.MSG_TYPE, b""),
        (MigrateFlushMark.MSG_TYPE, b""),
        (ClientMigrateData.MSG_TYPE, b"MNMD\x01\0\0\0" + bytes(57)),
    ]
    display = [
        (2, b""),  # ACK
        (MigrateFlushMark.MSG_TYPE, b""),
        (ClientMigrateData.MSG_TYPE, b"DCMD\x01\0\0\0" + bytes(72)),
    ]
    sel = FRAMING_SELECTION
    return {
        "main-mini": _framing_input(
            FRAMING_MINI | sel | FRAMING_MAIN, _messages(HeaderKind.MINI, main)
        ),
        "main-full": _framing_input(sel | FRAMING_MAIN, _messages(HeaderKind.FULL, main), (7, 40)),
        "display-mini-split": _framing_input(
            FRAMING_MINI, _messages(HeaderKind.MINI, display), (1, 6, 9, 50)
        ),
        "display-full": _framing_input(sel, _messages(HeaderKind.FULL, display)),
        "oversized-header": _framing_input(FRAMING_MINI | sel, struct.pack("<HI", 5, 1 << 20)),
    }


def server_framing_seeds() -> dict[str, bytes]:
    main = [
        (3, struct.pack("<II", 1, 20)),  # SET_ACK
        (MainInit.MSG_TYPE, MainInit(session_id=0x5E55, agent_tokens=10).encode_body()),
        (MigrateBeginSeamless.MSG_TYPE, MigrateBeginSeamless(DST, 1).encode_body()),
        (MigrateDstSeamlessAck.MSG_TYPE, b""),
        (MigrateSwitchHost.MSG_TYPE, MigrateSwitchHost(DstInfo(5910, 0, "dst")).encode_body()),
        (Migrate.MSG_TYPE, MIGRATE_ALL.encode_body()),
        (MigrateData.MSG_TYPE, b"MNMD\x01\0\0\0" + bytes(57)),
    ]
    display = [
        (Migrate.MSG_TYPE, MIGRATE_ALL.encode_body()),
        (MigrateData.MSG_TYPE, b"DCMD\x01\0\0\0" + bytes(80)),
        (116, b"\x01\x02"),  # not BEGIN_SEAMLESS on this channel
    ]
    sel = FRAMING_SELECTION
    return {
        "main-mini": _framing_input(
            FRAMING_MINI | sel | FRAMING_MAIN, _messages(HeaderKind.MINI, main)
        ),
        "main-full": _framing_input(sel | FRAMING_MAIN, _messages(HeaderKind.FULL, main), (3, 100)),
        "display-mini": _framing_input(FRAMING_MINI | sel, _messages(HeaderKind.MINI, display)),
        "display-full-split": _framing_input(
            sel, _messages(HeaderKind.FULL, display), (1, 17, 18, 60)
        ),
        "begin-seamless-host-past-end": _framing_input(
            FRAMING_MINI | sel | FRAMING_MAIN,
            _messages(HeaderKind.MINI, [(116, struct.pack("<HHIIIII", 1, 2, 9, 24, 0, 0, 1))]),
        ),
    }


def proxy_pair_seeds() -> dict[str, bytes]:
    """Scripts of the two-proxy harness (``proxy_pair_fuzzer``): real migrations, then what a
    client can do wrong with them. The step encoding is the harness's own."""
    import _harness

    _harness.INSTRUMENT = False  # building scripts, not fuzzing
    import proxy_pair_fuzzer as pp

    def step(kind: int, proxy: int, slot: int, *args: int) -> bytes:
        return pp.op(kind, proxy, slot, *args)

    src, dst = 0, 1
    main, display, inputs, cursor, port = (
        pp.CHANNELS.index(c)
        for c in (
            ChannelType.MAIN,
            ChannelType.DISPLAY,
            ChannelType.INPUTS,
            ChannelType.CURSOR,
            ChannelType.PORT,
        )
    )
    session = 1 << 4  # SESSIONS[1], the id MAIN_INIT hands out with argument 0

    def linked(proxy: int, framing: int = 0) -> bytes:
        """main in slot 0 (the session's own on the source), display and inputs in 1 and 2."""
        first = main | (0 if proxy == src else session)
        return (
            step(pp.LINK, proxy, 0, first | framing)
            + (step(pp.SERVER, proxy, 0, 0) if proxy == src else b"")
            + step(pp.LINK, proxy, 1, display | session | framing)
            + step(pp.LINK, proxy, 2, inputs | session | framing)
        )

    def setting(arg: int) -> bytes:
        """A SET step: the pair's surroundings from here on."""
        return step(pp.CLOCK, dst, 0, arg)

    LINK_DOWN, FIRST_BLOB, IDENTITY, SUPERSEDE = 1, 2, 4, 32
    both = linked(src) + linked(dst)
    begin = step(pp.SERVER, src, 0, 1)  # MIGRATE_BEGIN_SEAMLESS to the peer
    migrate = b"".join(step(pp.SERVER, src, s, 2 | 3 << 3) for s in (0, 1, 2))
    flush = b"".join(step(pp.CLIENT, src, s, 0, 0) for s in (0, 1, 2))
    data = b"".join(step(pp.SERVER, src, s, 3) for s in (0, 1, 2))
    sealed = both + begin + migrate + flush + data
    relay = b"".join(step(pp.RELAY, dst, 0, i) for i in range(3))
    do_seamless = step(pp.CLIENT, dst, 0, 1, 0)
    return {
        "migration": sealed + do_seamless + relay,
        "migration-full-header": linked(src, 0xC0)
        + linked(dst, 0xC0)
        + begin
        + migrate
        + flush
        + data
        + relay,
        "migration-by-slot": sealed
        + b"".join(step(pp.CLIENT, dst, s, 4 | s << 3, 0) for s in (0, 1, 2)),
        "migration-split-reads": sealed
        + b"".join(step(pp.SPLIT, dst, s, s, 100) for s in (0, 1, 2)),
        "replayed-blob": sealed + relay + step(pp.LINK, dst, 3, display | session) + relay,
        "replay-after-reconnect": sealed
        + step(pp.RELAY, dst, 0, 1)
        + step(pp.CLOSE, dst, 1)
        + step(pp.LINK, dst, 1, display | session)
        + step(pp.RELAY, dst, 0, 1),
        "cancelled-then-again": both
        + begin
        + step(pp.SERVER, src, 0, 4)  # MIGRATE_CANCEL
        + step(pp.SERVER, src, 1, 3)  # refused: no migration in flight
        + step(pp.LINK, src, 1, display | session)
        + begin
        + migrate
        + flush
        + data
        + relay,
        "untrusted-destination": both + step(pp.SERVER, src, 0, 1 | 1 << 3) + data,
        "destination-by-tls-port": both + step(pp.SERVER, src, 0, 1 | 2 << 3) + data + relay,
        "native-from-client": both + b"".join(step(pp.CLIENT, dst, s, 5, 0) for s in (0, 1, 2)),
        "flipped-and-truncated": sealed
        + step(pp.CLIENT, dst, 1, 6 | 1 << 3, 40)
        + step(pp.CLIENT, dst, 2, 7 | 2 << 3, 128)
        + relay,
        "wrong-channel": sealed + step(pp.CLIENT, dst, 2, 4 | 1 << 3, 0) + relay,
        "back-to-the-source": sealed
        + b"".join(step(pp.CLIENT, src, s, 4 | s << 3, 0) for s in (0, 1, 2)),
        "expired": sealed + step(pp.CLOCK, src, 0, 110) + relay,
        "two-migrations": sealed
        + step(pp.RELAY, dst, 0, 0)
        + begin
        + data
        + relay
        + step(pp.RELAY, dst, 0, 4),
        "unasked-flush-and-do-seamless": both
        + step(pp.CLIENT, src, 1, 0, 0)
        + step(pp.CLIENT, src, 0, 1, 0)
        + step(pp.LINK, src, 3, cursor | session)
        + step(pp.SERVER, src, 3, 3)
        + step(pp.CLIENT, dst, 0, 2, 0),
        "two-migrations-verified-together": sealed
        + begin
        + data
        + bytes([pp.RELAY | dst << 3 | 0x80, 2]),
        "a-migration-verified-together": sealed + bytes([pp.RELAY | dst << 3 | 0x80, 0]) + relay,
        "large-bodies": both
        + begin
        + step(pp.SERVER, src, 1, 3 | 16 << 3)
        + step(pp.CLIENT, dst, 1, 5 | 16 << 3, 0),
        "no-session-and-unknown-channel": step(pp.LINK, dst, 0, display)
        + step(pp.CLIENT, dst, 0, 4, 0)
        + step(pp.LINK, dst, 1, display)
        + step(pp.SERVER, dst, 1, 4)
        + step(pp.LINK, dst, 2, cursor | 8 | session)
        + step(pp.CLIENT, dst, 2, 5, 0)
        + step(pp.LINK, src, 0, main)
        + step(pp.SERVER, src, 0, 0)
        + step(pp.SERVER, src, 0, 0)
        + step(pp.SERVER, src, 0, 1 << 3)
        + step(pp.SERVER, src, 0, 4)
        + step(pp.CLOSE, dst, 1),
        "switch-host-and-raw": both
        + step(pp.SERVER, src, 0, 5)
        + step(pp.SERVER, src, 0, 6)
        + step(pp.CLIENT, src, 0, 3, 0)
        + step(pp.RAW, dst, 1, 6, 5, 0, 2, 0, 0, 0)
        + step(pp.SERVER, dst, 0, 7),
        # The surroundings (a SET step): the peer link, the target's mode without it, the
        # identity suite, a failing replay guard, an attempt superseded while recording.
        "peer-link-down-refused": setting(LINK_DOWN) + sealed + relay,
        "peer-link-down-first-blob": setting(LINK_DOWN | FIRST_BLOB) + sealed + relay,
        "first-blob-pin-mismatch": setting(LINK_DOWN | FIRST_BLOB)
        + sealed
        + begin
        + data
        + bytes([pp.RELAY | dst << 3 | 0x80, 2]),
        "issued-before-the-target-session": linked(src)
        + begin
        + migrate
        + flush
        + data
        + step(pp.CLOCK, src, 0, 11)  # 33 s: past the 30 s skew, within the blob's life
        + linked(dst)
        + relay,
        "replay-store-fails": sealed + setting(1 << 3) + relay,
        "replay-database-fails": sealed
        + setting(2 << 3)
        + step(pp.RELAY, dst, 0, 0)
        + setting(3 << 3)
        + step(pp.RELAY, dst, 0, 1),
        "replay-store-fails-on-refusal": sealed
        + setting(1 << 3)
        + step(pp.CLIENT, dst, 2, 4 | 1 << 3, 0),
        # The refusal's record fails with a database error or a closed guard (what a real
        # guard can raise past itself): logged, the refusal stands.
        "replay-database-fails-on-refusal": sealed
        + setting(2 << 3)
        + step(pp.CLIENT, dst, 2, 4 | 1 << 3, 0),
        "replay-closed-on-refusal": sealed
        + setting(3 << 3)
        + step(pp.CLIENT, dst, 2, 4 | 1 << 3, 0),
        # Accepted blobs relayed again past their keep-until time (330 s), two verified
        # together: both refused as expired; the guard may forget them at once.
        "expired-verified-together": sealed
        + relay
        + step(pp.CLOCK, src, 0, 110)
        + bytes([pp.RELAY | dst << 3 | 0x80, 0]),
        "superseded-while-recording": sealed + setting(SUPERSEDE) + relay,
        "identity-migration": setting(IDENTITY) + sealed + do_seamless + relay,
        "identity-link-down": setting(IDENTITY | LINK_DOWN) + both + begin + data,
        "identity-then-shared-key": setting(IDENTITY) + sealed + setting(0) + relay,
        # A port channel whose guest stopped reading: a state past 64 KiB, sealed and opened
        # in a worker thread; then the same with the guard failing at its first read.
        "large-port-state": both
        + step(pp.LINK, src, 3, port | session)
        + step(pp.LINK, dst, 3, port | session)
        + begin
        + step(pp.SERVER, src, 3, 3 | 16 << 3)
        + step(pp.RELAY, dst, 0, 0),
        "large-port-state-store-fails": both
        + step(pp.LINK, src, 3, port | session)
        + step(pp.LINK, dst, 3, port | session)
        + begin
        + step(pp.SERVER, src, 3, 3 | 16 << 3)
        + setting(1 << 3)
        + step(pp.RELAY, dst, 0, 0),
    }


def build_seeds() -> dict[str, dict[str, bytes]]:
    """Harness name (without ``_fuzzer.py``) -> seed name -> seed bytes."""
    return {
        "spice_link": {**link_seeds(), **link_refusal_seeds()},
        "spice_client_framing": client_framing_seeds(),
        "spice_server_framing": server_framing_seeds(),
        "proxy_pair": proxy_pair_seeds(),
    }


def write_seeds(root: Path = CORPUS) -> None:
    for harness, seeds in build_seeds().items():
        folder = root / harness
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    write_seeds(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)
