"""Build the bundled sample payloads, one ``<channel>.bin`` per channel with migration data.

The samples are spice-server's native MIGRATE_DATA bodies for a busy guest, populated wherever
the channel has something to carry (pending writes to the guest, partial reads, lossy surfaces),
so that whatever uses them (the ``demo`` command, tests) walks every tail block. They are built
from validated models with the gateway's own encoder, so they are reproducible:

    python gateway/samples/make_samples.py           # (re)write the .bin files
    python gateway/samples/make_samples.py --check   # exit 1 if a file differs
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

from gateway import native
from schemas import (
    AgentReadState,
    AgentWriteState,
    ChannelType,
    CharDeviceState,
    DisplayState,
    GlzDictionary,
    InputsState,
    LossyRect,
    LossySurface,
    MainState,
    SmartcardState,
    SpicevmcState,
    StateModel,
    SurfacesLossy,
    UsbredirState,
)
from schemas.streams import usbredir_packet

HERE = Path(__file__).resolve().parent
NO_FLOW_CONTROL = 0xFFFF_FFFF


def _agent_message(msg_type: int, data: bytes) -> bytes:
    """One client->agent message as the main channel queues it for the guest: VDIChunkHeader
    (port 1, size) then VDAgentMessage (protocol 1, type, opaque, size) and its data."""
    message = struct.pack("<IIQI", 1, msg_type, 0, len(data)) + data
    return struct.pack("<II", 1, len(message)) + message


def _vsc(msg_type: int, reader: int, data: bytes, length: int | None = None) -> bytes:
    """A VSC message (big-endian header: type, reader_id, length)."""
    return struct.pack(">III", msg_type, reader, len(data) if length is None else length) + data


def _device(write: bytes, tokens: int, client_tokens: int, send_tokens: int) -> CharDeviceState:
    return CharDeviceState(
        connected=True,
        num_client_tokens=client_tokens,
        num_send_tokens=send_tokens,
        write_size=len(write),
        write_num_client_tokens=tokens,
        write_data=write,
    )


def main_state() -> MainState:
    """A live agent: three clipboard messages queued for the guest, and the source in the middle
    of reading the header of the agent's next message."""
    text = b"migrated clipboard text\n"
    write = (
        _agent_message(7, struct.pack("<I", 1))  # CLIPBOARD_GRAB: UTF8_TEXT
        + _agent_message(8, struct.pack("<I", 1))  # CLIPBOARD_REQUEST: UTF8_TEXT
        + _agent_message(4, struct.pack("<I", 1) + text)  # CLIPBOARD: UTF8_TEXT + data
    )
    partial = struct.pack("<II", 1, 4)[:7]  # 7 of the 20 header bytes
    return MainState(
        agent=_device(write, tokens=3, client_tokens=7, send_tokens=NO_FLOW_CONTROL - 118),
        client_agent_started=True,
        agent_to_client=AgentReadState(
            chunk_header_size=8,
            chunk_port=1,
            chunk_size=1_052,
            msg_header_done=False,
            msg_header_partial_len=len(partial),
            msg_header_partial=partial,
            msg_remaining=0,
            msg_filter_result=0,
        ),
        client_to_agent=AgentWriteState(msg_remaining=0, msg_filter_result=0),
    )


def display_state() -> DisplayState:
    """JPEG on (lossy list), the primary surface and two off-screen ones, a frozen cache."""

    def rect(left: int, top: int, right: int, bottom: int) -> LossyRect:
        return LossyRect(left=left, top=top, right=right, bottom=bottom)

    return DisplayState(
        message_serial=1_873,
        low_bandwidth=True,
        pixmap_cache_id=1,
        pixmap_cache_size=20_971_520,
        pixmap_cache_freezer=True,
        pixmap_cache_clients=(1_861, 0, 0, 0),
        glz_dict_id=1,
        glz_dict=GlzDictionary(window_size=3_145_728, max_encoders=4, last_image_id=412),
        surfaces=SurfacesLossy(
            surfaces=(
                LossySurface(id=0, lossy_rect=rect(0, 0, 1_024, 768)),
                LossySurface(id=1, lossy_rect=rect(0, 0, 0, 0)),
                LossySurface(id=7, lossy_rect=rect(16, 16, 272, 208)),
            )
        ),
    )


def smartcard_state() -> SmartcardState:
    """A SELECT APDU still to be written to the card, half of the card's answer read."""
    select = bytes.fromhex("00a404000ba000000397425446590201")
    answer = bytes.fromhex("6f0b8409a000000397425446599000")  # FCI template, status 90 00
    partial = _vsc(7, 0, answer[:6], length=len(answer))
    return SmartcardState(
        device=_device(
            _vsc(7, 0, select), tokens=1, client_tokens=NO_FLOW_CONTROL, send_tokens=NO_FLOW_CONTROL
        ),
        reader_added=True,
        read_size=len(partial),
        read_data=partial,
    )


def spicevmc_state(write: bytes, tokens: int, usbredir: bool = False) -> SpicevmcState:
    model = UsbredirState if usbredir else SpicevmcState
    return model(
        device=_device(
            write, tokens=tokens, client_tokens=NO_FLOW_CONTROL, send_tokens=NO_FLOW_CONTROL
        )
    )


def samples() -> dict[str, tuple[ChannelType, StateModel]]:
    """Every sample, by channel name."""
    descriptor = bytes.fromhex("12010002000000409a0b0100000101020301")
    bulk_in = b"usb mass storage read\n" * 3
    usbredir = (  # the answer to GET_DESCRIPTOR(device) and a bulk IN transfer, for the guest
        usbredir_packet(
            100, struct.pack("<BBBBHHH", 0x80, 6, 0x80, 0, 0x0100, 0, 18), descriptor, 41
        )
        + usbredir_packet(101, struct.pack("<BBHIH", 0x81, 0, len(bulk_in), 0, 0), bulk_in, 42)
    )
    port = b"guest-agent> status\r\nguest-agent> uptime\r\n"
    webdav = struct.pack("<qH", 1, 38) + b"PROPFIND /Documents HTTP/1.1\r\nDepth: 1"
    return {
        "main": (ChannelType.MAIN, main_state()),
        "display": (ChannelType.DISPLAY, display_state()),
        "inputs": (ChannelType.INPUTS, InputsState(motion_count=3)),
        "smartcard": (ChannelType.SMARTCARD, smartcard_state()),
        "usbredir": (ChannelType.USBREDIR, spicevmc_state(usbredir, 2, usbredir=True)),
        "port": (ChannelType.PORT, spicevmc_state(port, 2)),
        "webdav": (ChannelType.WEBDAV, spicevmc_state(webdav, 1)),
    }


def build() -> dict[str, bytes]:
    """The native bytes of every sample, by file name."""
    return {
        f"{name}.bin": native.encode(state, channel) for name, (channel, state) in samples().items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the files")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the .bin files live")
    args = parser.parse_args(argv)
    stale = []
    for name, data in build().items():
        path = args.dir / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
