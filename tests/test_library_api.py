"""The library surface: ``gateway.seal_native``/``open_native`` for the common case, a package
namespace that does not shadow builtins, and ``gateway.proxy`` as a regular package."""

from __future__ import annotations

import builtins
import importlib.util
import pkgutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway
from gateway import native
from gateway.errors import ConfigError, ContextMismatch, Replayed, SchemaViolation, Truncated
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, DisplayState
from schemas.display import LossyRect, LossySurface, SurfacesLossy

SAMPLES = Path(gateway.__file__).parent / "samples"
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")
BINDING = {"vm": VM, "migration": MIGRATION, "source": "host-a", "target": "host-b"}


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.create()


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[ReplayGuard]:
    with ReplayGuard(tmp_path / "replay.sqlite") as opened:
        yield opened


@pytest.mark.parametrize("name", sorted(native.CHANNEL_NAMES))
def test_every_sample_round_trips(name: str, keyring: Keyring, guard: ReplayGuard) -> None:
    payload = (SAMPLES / f"{name}.bin").read_bytes()
    blob = gateway.seal_native(name, payload, keyring=keyring, **BINDING)
    opened = gateway.open_native(
        blob, channel=name, keyring=keyring, replay_guard=guard, **BINDING
    )
    assert opened.payload == payload
    assert opened.context.channel_type is native.channel_by_name(name)
    assert opened.context.migration_id == MIGRATION
    assert opened.context.source_host == "host-a"
    assert opened.opened.expires_at - opened.opened.issued_at == 300
    assert len(guard) == 1


def test_strings_and_enums_are_accepted(keyring: Keyring, guard: ReplayGuard) -> None:
    payload = (SAMPLES / "inputs.bin").read_bytes()
    blob = gateway.seal_native(
        native.channel_by_name("inputs"), payload, vm=str(VM), migration=str(MIGRATION),
        source="host-a", target="host-b", keyring=keyring, channel_id=3, ttl=60,
    )
    opened = gateway.open_native(
        blob, channel="inputs", vm=str(VM), migration="any", source=["host-c", "host-a"],
        target="host-b", keyring=keyring, replay_guard=guard, channel_id=3,
    )
    assert opened.payload == payload
    assert opened.context.migration_id == MIGRATION  # "any": the caller pins what it got
    assert opened.opened.expires_at - opened.opened.issued_at == 60


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channel": "display"}, "channel_type"),
        ({"channel_id": 1}, "channel_id"),
        ({"vm": uuid.UUID(int=1)}, "vm_id"),
        ({"migration": uuid.UUID(int=2)}, "migration_id"),
        ({"source": "host-x"}, "source_host"),
        ({"target": "host-a"}, "target_host"),
    ],
)
def test_open_refuses_a_blob_bound_elsewhere(
    change: dict[str, object], field: str, keyring: Keyring, guard: ReplayGuard
) -> None:
    blob = gateway.seal_native(
        "inputs", (SAMPLES / "inputs.bin").read_bytes(), keyring=keyring, **BINDING
    )
    arguments: dict[str, object] = {"channel": "inputs", **BINDING, **change}
    with pytest.raises(ContextMismatch) as caught:
        gateway.open_native(blob, keyring=keyring, replay_guard=guard, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    # It authenticated, so it is used once all the same (refused, and recorded).
    assert len(guard) == 1


def test_open_is_single_use_and_refuses_truncation(
    keyring: Keyring, guard: ReplayGuard
) -> None:
    blob = gateway.seal_native(
        "main", (SAMPLES / "main.bin").read_bytes(), keyring=keyring, **BINDING
    )
    with pytest.raises(Truncated):
        gateway.open_native(
            blob[:-1], channel="main", keyring=keyring, replay_guard=guard, **BINDING
        )
    gateway.open_native(blob, channel="main", keyring=keyring, replay_guard=guard, **BINDING)
    with pytest.raises(Replayed):
        gateway.open_native(blob, channel="main", keyring=keyring, replay_guard=guard, **BINDING)


def test_seal_validates_before_sealing(keyring: Keyring) -> None:
    payload = bytearray((SAMPLES / "inputs.bin").read_bytes())
    payload[-2:] = (65).to_bytes(2, "little")  # motion_count above its bound
    with pytest.raises(SchemaViolation):
        gateway.seal_native("inputs", bytes(payload), keyring=keyring, **BINDING)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"channel": "cursor"}, "channel must be"),
        ({"vm": "not-a-uuid"}, "vm must be a UUID"),
        ({"migration": "any"}, "migration must be a UUID"),  # sealing names one migration
    ],
)
def test_seal_refuses_misuse_clearly(
    change: dict[str, object], fragment: str, keyring: Keyring
) -> None:
    arguments: dict[str, object] = {"channel": "inputs", **BINDING, **change}
    channel = arguments.pop("channel")
    with pytest.raises(ConfigError, match=fragment):
        gateway.seal_native(
            channel, (SAMPLES / "inputs.bin").read_bytes(), keyring=keyring, **arguments  # type: ignore[arg-type]
        )


def test_star_import_does_not_shadow_builtins() -> None:
    namespace: dict[str, object] = {}
    exec("from gateway import *", namespace)
    assert "open" not in gateway.__all__
    assert namespace.keys() - {"__builtins__"} == set(gateway.__all__)
    assert not set(gateway.__all__) & set(dir(builtins))
    assert {"seal_native", "open_native"} <= set(gateway.__all__)


def test_proxy_is_a_regular_package() -> None:
    spec = importlib.util.find_spec("gateway.proxy")
    assert spec is not None
    assert spec.origin is not None
    assert Path(spec.origin).name == "__init__.py"
    packages = {module.name for module in pkgutil.iter_modules(gateway.__path__) if module.ispkg}
    assert {"cli", "native", "proxy", "service", "spice"} <= packages


def always_source_display() -> bytes:
    """What a source QEMU with ``jpeg-wan-compression=always`` writes for two surfaces on a
    fast link: a lossy list with ``low_bandwidth`` 0."""
    state = native.decode(ChannelType.DISPLAY, (SAMPLES / "display.bin").read_bytes())
    assert isinstance(state, DisplayState)
    lossy = SurfacesLossy(
        surfaces=(
            LossySurface(id=0, lossy_rect=LossyRect(left=0, top=0, right=720, bottom=400)),
            LossySurface(id=1, lossy_rect=LossyRect(left=0, top=0, right=0, bottom=0)),
        )
    )
    return native.encode(state.model_copy(update={"low_bandwidth": False, "surfaces": lossy}))


@pytest.mark.parametrize(
    ("setting", "kind"), [(None, "lossless"), ("auto", "lossless"), ("always", "lossy")]
)
def test_open_native_writes_the_surface_list_the_target_reads(
    keyring: Keyring, guard: ReplayGuard, setting: str | None, kind: str
) -> None:
    """Without the rewrite an ``auto`` target (QEMU's default) reads the lossy list as ids,
    finds surface 0 twice and aborts."""
    blob = gateway.seal_native("display", always_source_display(), keyring=keyring, **BINDING)
    extra = {} if setting is None else {"jpeg_wan_compression": setting}
    opened = gateway.open_native(
        blob, channel="display", keyring=keyring, replay_guard=guard, **BINDING, **extra
    )
    state = native.decode(ChannelType.DISPLAY, opened.payload)
    assert isinstance(state, DisplayState)
    assert state.surfaces.kind == kind
