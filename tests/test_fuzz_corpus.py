"""The fuzz harnesses, in-process: every committed corpus replays clean through its harness,
the settings table fits the corpus, the structure-aware mutator reaches deep, the planted bugs
still apply to the code they plant into, and each finding stays reproduced by its input.

Only the replay needs nothing but the package; libFuzzer is not started here (``fuzz/run``).
"""

from __future__ import annotations

import importlib
import os
import random
import re
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gateway import native
from gateway.errors import GatewayError, TooLarge
from gateway.native import display, inputs, smartcard
from schemas import ChannelType

pytest.importorskip("atheris", reason="the fuzz extra is not installed")

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))
_table: Any = importlib.import_module("_table")
_harness: Any = importlib.import_module("_harness")
_streams: Any = importlib.import_module("_streams")
_harness.INSTRUMENT = False  # replay only: coverage feedback is libFuzzer's business
sys.path.remove(str(FUZZ))

HARNESSES = _table.discover()
NAMES = [h.name for h in HARNESSES]


@pytest.fixture(scope="module")
def load() -> Iterator[Callable[[Any], ModuleType]]:
    sys.path.insert(0, str(FUZZ))
    try:
        yield _table.load
    finally:
        sys.path.remove(str(FUZZ))


# --- the committed corpus --------------------------------------------------------------------


@pytest.mark.parametrize("harness", HARNESSES, ids=NAMES)
def test_corpus_replays_clean(harness: Any, load: Callable[[Any], ModuleType]) -> None:
    """Any exception here is a finding: TestOneInput lets only its oracle's failures out."""
    seeds = harness.seeds()
    assert seeds, f"{harness.name} has no committed corpus (fuzz/make_corpus.py)"
    target = load(harness).TestOneInput
    for path in seeds:
        target(path.read_bytes())


@pytest.mark.parametrize("harness", HARNESSES, ids=NAMES)
def test_harness_is_an_executable_script(harness: Any) -> None:
    """libFuzzer's -merge, -fork and -jobs re-run the harness by its path."""
    assert harness.path.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(harness.path, os.X_OK)


@pytest.mark.parametrize("harness", HARNESSES, ids=NAMES)
def test_max_len_holds_every_seed(harness: Any) -> None:
    """libFuzzer truncates a seed longer than -max_len: the seed would silently change."""
    assert all(p.stat().st_size <= harness.max_len for p in harness.seeds())


@pytest.mark.parametrize("harness", [h for h in HARNESSES if h.covers or h.shares], ids=str)
def test_coverage_targets_exist(harness: Any) -> None:
    for entry in (*harness.covers, *harness.shares):
        path, _, function = entry.partition("::")
        source = (_table.ROOT / path).read_text()
        if function:
            assert re.search(rf"def {re.escape(function.split('.')[-1])}\(", source), entry


def test_native_max_len_crosses_the_size_limit() -> None:
    """Where the decoder's limit is within reach, max_len goes past it, so the limit is fuzzed."""
    for harness in HARNESSES:
        if harness.name.startswith("native_"):
            kind = harness.name.removeprefix("native_").removesuffix("_structured")
            channel = ChannelType.USBREDIR if kind == "spicevmc" else native.channel_by_name(kind)
            limit = native.layout_for(channel).max_size
            assert harness.max_len > limit or limit > 1 << 24, harness.name


def test_dictionaries_are_libfuzzer_format() -> None:
    entry = re.compile(r'^\w+="(?:[^"\\]|\\x[0-9a-f]{2}|\\\\|\\")+"$')
    dictionaries = sorted((FUZZ / "dict").glob("*.dict"))
    assert dictionaries
    for path in dictionaries:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines, path.name
        assert all(entry.match(line) for line in lines), path.name


# --- the oracle ------------------------------------------------------------------------------


def test_oracle_accepts_refusals_and_exact_round_trips() -> None:
    payload = native.encode(inputs.decode(b"ICMD\x01\x00\x00\x00\x05\x00"))
    _harness.check_codec(payload, inputs.decode, inputs.encode, inputs.LAYOUT.max_size)
    _harness.check_codec(b"junk", inputs.decode, inputs.encode, inputs.LAYOUT.max_size)


def test_oracle_fails_a_changed_round_trip() -> None:
    payload = b"ICMD\x01\x00\x00\x00\x05\x00"
    with pytest.raises(_harness.OracleFailure, match="first difference at offset 8"):
        _harness.check_codec(
            payload, inputs.decode, lambda s: payload[:8] + b"\x06\x00", inputs.LAYOUT.max_size
        )


def test_oracle_wants_too_large_for_oversized_input() -> None:
    with pytest.raises(_harness.OracleFailure, match="not TooLarge"):
        _harness.check_refusal(GatewayError("inputs: bad magic"), 2049, 2048)
    _harness.check_refusal(TooLarge("inputs: 2049 bytes"), 2049, 2048)
    with pytest.raises(_harness.OracleFailure, match="characters"):
        _harness.check_refusal(GatewayError("x" * 5000), 10)


# --- the structure-aware mutator -------------------------------------------------------------


def _byte_flip(data: bytes, max_size: int) -> bytes:
    """Stands in for libFuzzer's mutation outside a fuzzing process."""
    if not data:
        return b"\x00"
    rng = random.Random(data)
    flipped = bytearray(data)
    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped[:max_size])


def _outcomes(layout: Any, seed: bytes, runs: int = 3000, stream: Any = None) -> Counter[str]:
    mutator = _harness.LayoutMutator(layout, mutate=_byte_flip, stream=stream)
    outcomes: Counter[str] = Counter()
    data = seed
    for i in range(runs):
        mutated = mutator(data, 4096, i)
        assert len(mutated) <= 4096
        outcomes["header kept"] += mutated[:8] == seed[:8]
        try:
            layout.decode(mutated)
        except GatewayError as error:
            outcomes[type(error).__name__] += 1
        else:
            outcomes["decoded"] += 1
            data = mutated  # walk on from valid inputs, as libFuzzer keeps them
    return outcomes


def test_mutator_keeps_the_header_and_reaches_tail_blocks() -> None:
    seed = (FUZZ.parent / "gateway" / "samples" / "smartcard.bin").read_bytes()
    outcomes = _outcomes(smartcard.LAYOUT, seed)
    assert outcomes["header kept"] > 0.9 * 3000
    assert outcomes["decoded"] > 100
    # Each offset and size check of the engine is hit, not just the first ones.
    for error in (
        "OffsetIntoFixedPart",
        "OffsetOutOfRange",
        "OverlappingBlocks",
        "UnaccountedBytes",
        "CountOutOfRange",
        "NonCanonical",
        "SchemaViolation",
    ):
        assert outcomes[error] > 0, (error, outcomes)


def test_mutator_reaches_the_surface_list() -> None:
    seed = (FUZZ.parent / "gateway" / "samples" / "display.bin").read_bytes()
    outcomes = _outcomes(display.LAYOUT, seed)
    assert outcomes["decoded"] > 100
    assert outcomes["CountOutOfRange"] > 0
    assert outcomes["UnaccountedBytes"] > 0


@pytest.mark.parametrize("name", ["main", "smartcard", "usbredir"])
def test_stream_aware_mutator_passes_the_inner_stream_rules(name: str) -> None:
    """From a seed without pending bytes, the pending-write block is laid out as whole
    packets, messages or chunks often enough that states with pending bytes decode."""
    channel = {"main": ChannelType.MAIN, "smartcard": ChannelType.SMARTCARD}.get(
        name, ChannelType.USBREDIR
    )
    layout = native.layout_for(channel)
    seed = (FUZZ.parent / "tests" / "vectors" / "native" / "real" / f"{name}.bin").read_bytes()
    if name == "main":  # the real capture has no agent; start from a connected one, idle
        from tests.test_native_vectors import vector

        seed = vector("main-agent-between-chunks").data

    def pending(outcomes_of: Any) -> int:
        mutator = _harness.LayoutMutator(layout, mutate=_byte_flip, stream=outcomes_of)
        found = 0
        for i in range(1500):
            try:
                state = layout.decode(mutator(seed, 4096, i))
            except GatewayError:
                continue
            device = getattr(state, "device", None) or getattr(state, "agent", None)
            found += bool(device.write_size)
        return found

    aware = pending(_streams.STREAMS[name])
    assert aware > 50, aware
    assert aware > 3 * pending(None)


def test_mutator_builds_a_header_from_nothing() -> None:
    mutator = _harness.LayoutMutator(inputs.LAYOUT, mutate=_byte_flip)
    results = [mutator(b"", 64, i) for i in range(200)]
    assert sum(r.startswith(b"ICMD\x01\x00\x00\x00") for r in results) > 150
    assert all(len(r) <= 64 for r in results)


def test_interesting_ints_are_the_schema_limits() -> None:
    from schemas import display as display_schema

    values = _harness.interesting_ints([display_schema])
    assert {1023, 1024, 1025, (1 << 25) + 1} <= set(values)


# --- the planted bugs ------------------------------------------------------------------------


def _planted() -> ModuleType:
    sys.path.insert(0, str(FUZZ))
    try:
        return importlib.import_module("planted")
    finally:
        sys.path.remove(str(FUZZ))


def test_planted_bugs_still_apply_and_are_undone() -> None:
    """Each planted edit must find its check in today's code (a refactor that moves it must
    move the plant too), and swapping back restores the original behaviour."""
    planted = _planted()
    for bug in planted.BUGS:
        undo = planted.planted(bug)
        undo()
    oversized = b"ICMD\x01\x00\x00\x00\x05\x00" + bytes(2048)
    size_limit = next(b for b in planted.BUGS if b.name == "size-limit")
    undo = planted.planted(size_limit)
    try:
        with pytest.raises(GatewayError) as refused:
            inputs.decode(oversized)
        assert not isinstance(refused.value, TooLarge)
    finally:
        undo()
    with pytest.raises(TooLarge):
        inputs.decode(oversized)


def test_planted_count_wrap_decodes_a_wrapped_count(load: Callable[[Any], ModuleType]) -> None:
    planted = _planted()
    sample = (FUZZ.parent / "gateway" / "samples" / "display.bin").read_bytes()
    wrapped = sample[:80] + struct.pack("<I", 0x4000_0000)
    (harness,) = _table.discover(["native_display"])
    target = load(harness).TestOneInput
    target(wrapped)  # refused: CountOutOfRange
    undo = planted.planted(next(b for b in planted.BUGS if b.name == "count-wrap"))
    try:
        with pytest.raises(_harness.OracleFailure, match="round trip"):
            target(wrapped)
    finally:
        undo()


# --- findings --------------------------------------------------------------------------------

#: Found by keyring_fuzzer in its first seconds: the member name of a keyring file was quoted in
#: the refusal, at any length (a 5,000-character name gave a 5,020-character message).
KEYRING_MEMBER_ECHO = bytes.fromhex(
    "7b226b69" + "34" * 92 + "6e64223a2022737069" + "63652d6d696765797269"
    "7a67222c20227673696f6e223a20302c20226b657973223a207b7d7d"
)


def test_keyring_refusal_does_not_quote_member_names(load: Callable[[Any], ModuleType]) -> None:
    (harness,) = _table.discover(["keyring"])
    load(harness).TestOneInput(KEYRING_MEMBER_ECHO)


def test_keyring_refusal_message_is_bounded() -> None:
    from gateway.keys import parse_keyring

    with pytest.raises(GatewayError) as refused:
        parse_keyring(b'{"' + b"a" * 5000 + b'": 1}')
    assert len(str(refused.value)) <= _harness.MAX_MESSAGE


# --- the runner ------------------------------------------------------------------------------


def _runner() -> ModuleType:
    sys.path.insert(0, str(FUZZ))
    try:
        return importlib.import_module("_runner")
    finally:
        sys.path.remove(str(FUZZ))


def test_runner_reads_libfuzzer_progress() -> None:
    runner = _runner()
    job = runner.Job(HARNESSES[0], [])
    job._parse("#264616\tREDUCE cov: 82 ft: 110 corp: 35/3647b lim: 4096 exec/s: 17641 rss: 58Mb")
    assert (job.execs, job.cov, job.features, job.corpus, job.rate) == (264616, 82, 110, 35, 17641)
    job._parse("#5587: cov: 187 ft: 190 corp: 31 exec/s 9000 oom/timeout/crash: 0/0/1 time: 5s")
    assert (job.execs, job.cov, job.corpus, job.rate) == (5587, 187, 31, 9000)
    job._parse("artifact_prefix='x/'; Test unit written to x/crash-0123")
    assert job.artifacts == [Path("x/crash-0123")]
    assert job.failed


def test_table_finds_harnesses_by_any_of_their_names() -> None:
    (by_name,) = _table.discover(["native_display"])
    (by_file,) = _table.discover(["fuzz/native_display_fuzzer.py"])
    assert by_name == by_file
    assert by_name.corpus == FUZZ / "corpus" / "native_display"
    assert "-max_len=32768" in by_name.options()
    with pytest.raises(ValueError, match="no harness"):
        _table.discover(["nonexistent"])


def test_document_builder_writes_the_schemas_shape() -> None:
    """Fuzz data becomes documents of the model's own shape; some of them are valid states."""
    import atheris
    import msgpack

    from schemas import DisplayState, InputsState, MainState, SmartcardState, SpicevmcState

    rng = random.Random(7)
    shaped = valid = 0
    for model in (DisplayState, MainState, InputsState, SmartcardState, SpicevmcState):
        for _ in range(120):
            fdp = atheris.FuzzedDataProvider(rng.randbytes(rng.randrange(64, 512)))
            document = _harness.build_document(fdp, model)
            if isinstance(document, dict) and set(document) <= {*model.model_fields, "extra"}:
                shaped += 1
            payload = msgpack.packb(document, use_bin_type=True)
            try:
                model.model_validate(msgpack.unpackb(payload, use_list=False))
            except ValueError:
                continue
            valid += 1
    assert shaped > 550
    assert valid > 20


def test_planted_depth_is_caught_by_envelope_open(load: Callable[[Any], ModuleType]) -> None:
    """A key holder's blob nested past the depth limit: refused by the msgpack layer; with the
    bound removed it reaches the schema, and the harness's oracle says so."""
    planted = _planted()
    (harness,) = _table.discover(["envelope_open"])
    module = load(harness)
    expected = module.EXPECTATIONS[0]
    context = module.build_context(lambda options: options[0], expected)
    deep = b"\x91" * 20 + b"\x80"
    key_id = next(iter(module.SECRETS))
    blob = module.seal_raw(context, deep, key_id=key_id, salt=bytes(32))
    module.TestOneInput(b"\x00" + blob)  # refused as nesting too deep
    undo = planted.planted(next(b for b in planted.BUGS if b.name == "depth"))
    try:
        with pytest.raises(_harness.OracleFailure, match="nested 21 deep"):
            module.TestOneInput(b"\x00" + blob)
    finally:
        undo()
