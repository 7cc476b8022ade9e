"""The SPICE protocol fuzz harnesses: seeds reproducible and meaningful, corpus replays clean."""

from __future__ import annotations

import importlib
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gateway.errors import ProtocolError
from gateway.spice import ChannelType, Direction, Message, SpiceConnection
from gateway.spice.events import Passthrough
from gateway.spice.scripted import link_exchange

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
HARNESSES = ("spice_link", "spice_client_framing", "spice_server_framing", "proxy_pair")
#: Framing seeds built to be refused; every other framing seed is valid traffic.
REFUSED = {"oversized-header", "begin-seamless-host-past-end"}


@pytest.fixture(scope="module")
def fuzz_modules() -> Iterator[Callable[[str], ModuleType]]:
    sys.path.insert(0, str(FUZZ))
    try:
        harness = importlib.import_module("_harness")
        harness.INSTRUMENT = False  # replay only; coverage feedback is libFuzzer's business
        yield importlib.import_module
    finally:
        sys.path.remove(str(FUZZ))


def test_seeds_are_reproducible(fuzz_modules: Callable[[str], ModuleType]) -> None:
    seeds = fuzz_modules("seeds_spice").build_seeds()
    assert set(seeds) == set(HARNESSES)
    for harness, files in seeds.items():
        assert len(files) >= 5
        for name, data in files.items():
            assert (FUZZ / "corpus" / harness / name).read_bytes() == data, (harness, name)


@pytest.mark.parametrize("harness", HARNESSES)
def test_corpus_replays_without_findings(
    harness: str, fuzz_modules: Callable[[str], ModuleType]
) -> None:
    test_one_input = fuzz_modules(f"{harness}_fuzzer").TestOneInput
    files = sorted((FUZZ / "corpus" / harness).iterdir())
    assert files
    for path in files:
        test_one_input(path.read_bytes())


@pytest.mark.parametrize(
    ("harness", "direction"),
    [
        ("spice_client_framing", Direction.CLIENT_TO_SERVER),
        ("spice_server_framing", Direction.SERVER_TO_CLIENT),
    ],
)
def test_framing_seeds_are_real_traffic(
    harness: str, direction: Direction, fuzz_modules: Callable[[str], ModuleType]
) -> None:
    """Decode each hand-written seed by the harness's documented layout: valid ones parse to
    the end. (Inputs merged back from campaigns are only replayed, above.)"""
    names = sorted(fuzz_modules("seeds_spice").build_seeds()[harness])
    for path in (FUZZ / "corpus" / harness / name for name in names):
        data = path.read_bytes()
        flags, count = data[0], data[1] % 8
        payload = data[2 + 2 * count :]
        channel = ChannelType.MAIN if flags & 4 else ChannelType.DISPLAY
        conn = SpiceConnection(max_message_size=1 << 16)
        for side, unit in link_exchange(
            channel, mini_header=bool(flags & 1), auth_selection=bool(flags & 2)
        ):
            receive = (
                conn.receive_from_client
                if side is Direction.CLIENT_TO_SERVER
                else conn.receive_from_server
            )
            receive(unit)
        receive = (
            conn.receive_from_client
            if direction is Direction.CLIENT_TO_SERVER
            else conn.receive_from_server
        )
        if path.name in REFUSED:
            with pytest.raises(ProtocolError):
                receive(payload)
            continue
        events = receive(payload)
        messages = sum(e.count if isinstance(e, Passthrough) else 1 for e in events)
        assert messages >= 3, path.name
        assert b"".join(e.raw for e in events) == payload
        assert conn.buffered(direction) == 0
        assert any(isinstance(e, Message) for e in events), path.name


def test_link_seeds_cover_every_mode() -> None:
    modes = {path.read_bytes()[0] % 4 for path in (FUZZ / "corpus" / "spice_link").iterdir()}
    assert modes == {0, 1, 2, 3}
    sasl = (FUZZ / "corpus" / "spice_link" / "client-sasl").read_bytes()
    assert struct.unpack("<I", sasl[3:]) == (2,)
