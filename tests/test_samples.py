"""The bundled sample payloads: one per channel, populated, exact, and reproducible."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest

from gateway import native
from schemas import DisplayState, InputsState, MainState, SmartcardState, SpicevmcState

SAMPLES = resources.files("gateway") / "samples"
NAMES = sorted(native.CHANNEL_NAMES)


def _load_builder() -> ModuleType:
    path = Path(str(SAMPLES / "make_samples.py"))
    spec = importlib.util.spec_from_file_location("make_samples", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sample(name: str) -> bytes:
    return (SAMPLES / f"{name}.bin").read_bytes()


def test_one_sample_per_channel() -> None:
    found = sorted(p.name for p in SAMPLES.iterdir() if p.name.endswith(".bin"))
    assert found == [f"{name}.bin" for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_sample_decodes_and_round_trips(name: str) -> None:
    channel = native.channel_by_name(name)
    data = _sample(name)
    state = native.decode(channel, data)
    assert native.encode(state, channel) == data


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_populated(name: str) -> None:
    """Every tail block the channel has is present, so users of the samples walk them all."""
    state = native.decode(native.channel_by_name(name), _sample(name))
    if isinstance(state, MainState):
        assert state.agent.connected
        assert state.agent.write_size > 0
        assert state.agent_to_client.msg_header_partial_len > 0
    elif isinstance(state, DisplayState):
        assert state.surfaces.kind == "lossy"
        assert len(state.surfaces.surfaces) > 1
    elif isinstance(state, SmartcardState):
        assert state.device.write_size > 0
        assert state.read_size > 12
    elif isinstance(state, SpicevmcState):
        assert state.device.write_size > 0
    else:
        assert isinstance(state, InputsState)
        assert state.motion_count > 0


def test_samples_are_reproducible() -> None:
    builder = _load_builder()
    built = builder.build()
    assert sorted(built) == [f"{name}.bin" for name in NAMES]
    for file_name, data in built.items():
        assert _sample(file_name.removesuffix(".bin")) == data, file_name


def test_builder_check_mode(tmp_path: Path) -> None:
    builder = _load_builder()
    assert builder.main(["--dir", str(tmp_path), "--check"]) == 1
    assert builder.main(["--dir", str(tmp_path)]) == 0
    assert builder.main(["--dir", str(tmp_path), "--check"]) == 0
    (tmp_path / "inputs.bin").write_bytes(b"ICMD")
    assert builder.main(["--dir", str(tmp_path), "--check"]) == 1
