"""Bounds and invariants of every schema model, strictness, the registry, and error hygiene.

Each bound is tested at the edge and one past it on both sides; each cross-field invariant
once satisfied (at its edge) and once broken. Validation errors must never quote the input.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from pydantic import BaseModel, ValidationError

import schemas
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
    StrictModel,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
    registry,
)
from schemas.chardev import MAX_PENDING_WRITE
from schemas.display import GLZ_MAX_WINDOW, MAX_COORDINATE, MAX_PIXMAP_CACHE_SIZE, NUM_SURFACES
from schemas.inputs import MAX_MOTION_COUNT
from schemas.main import CONNECTED_READ_SLACK as SLACK
from schemas.main import MAIN_MAX_BODY
from schemas.smartcard import MAX_VSC_LENGTH
from tests.strategies import budget, channel_states
from tests.test_native_vectors import vdi_fill, vector, vsc

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
MARKER = "MARKER-7f3a9c-DO-NOT-ECHO"

DEVICE = CharDeviceState(
    connected=True,
    num_client_tokens=5,
    num_send_tokens=6,
    write_size=4,
    write_num_client_tokens=2,
    write_data=b"abcd",
)
READ_IDLE = AgentReadState(
    chunk_header_size=0,
    chunk_port=0,
    chunk_size=0,
    msg_header_done=False,
    msg_header_partial_len=0,
    msg_header_partial=b"",
    msg_remaining=0,
    msg_filter_result=0,
)
READ_PARTIAL = READ_IDLE.model_copy(
    update={
        "chunk_header_size": 8,
        "chunk_port": 1,
        "chunk_size": 40,
        "msg_header_partial_len": 2,
        "msg_header_partial": b"\1\0",
    }
)
WRITE_IDLE = AgentWriteState(msg_remaining=0, msg_filter_result=0)
RECT = LossyRect(left=0, top=0, right=MAX_COORDINATE, bottom=MAX_COORDINATE)
GLZ = GlzDictionary(window_size=1024, max_encoders=4, last_image_id=0)
MAIN = vector("main-full").state
MAIN_IDLE = vector("main-idle").state
DISPLAY = vector("display-lossy").state
DISPLAY_LOSSLESS = vector("display-lossless").state
INPUTS = vector("inputs-7").state
SMARTCARD = vector("smartcard-full").state
SMARTCARD_IDLE = vector("smartcard-idle").state
SPICEVMC = vector("usbredir-full").state

#: One valid instance of every model, for the generic strictness tests.
INSTANCES: list[BaseModel] = [
    DEVICE,
    READ_PARTIAL,
    WRITE_IDLE,
    MAIN,
    GLZ,
    RECT,
    LossySurface(id=3, lossy_rect=RECT),
    SurfacesLossless(ids=(0, 5)),
    SurfacesLossy(surfaces=(LossySurface(id=3, lossy_rect=RECT),)),
    DISPLAY,
    INPUTS,
    SMARTCARD,
    SPICEVMC,
]
_INSTANCE_IDS = [type(m).__name__ for m in INSTANCES]


def changed(model: BaseModel, **updates: Any) -> dict[str, Any]:
    """``model`` as a dict with fields replaced; ``__`` separates nested names
    (``glz_dict__window_size=...``)."""
    tree = copy.deepcopy(model.model_dump())
    for path, value in updates.items():
        node: Any = tree
        *parents, name = path.split("__")
        for part in parents:
            node = node[part]
        node[name] = value
    return tree


def accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


# --- bounds: edge accepted, one past refused -----------------------------------------------

Case = tuple[str, type[BaseModel], BaseModel, dict[str, Any], bool]


def _int_bounds(
    name: str, model: type[BaseModel], base: BaseModel, path: str, low: int, high: int
) -> list[Case]:
    return [
        (f"{name}={low - 1}", model, base, {path: low - 1}, False),
        (f"{name}={low}", model, base, {path: low}, True),
        (f"{name}={high}", model, base, {path: high}, True),
        (f"{name}={high + 1}", model, base, {path: high + 1}, False),
    ]


def _partial(n: int) -> dict[str, Any]:
    return {"msg_header_partial_len": n, "msg_header_partial": bytes(n)}


def _main_body(write: int, partial: int) -> dict[str, Any]:
    """A main state whose native body is 65 + write + partial bytes."""
    return {
        "agent__write_size": write,
        "agent__write_data": vdi_fill(write),
        "agent__write_num_client_tokens": 0,
        "agent_to_client__msg_header_partial_len": partial,
        "agent_to_client__msg_header_partial": bytes(partial),
    }


def _vsc_read(length: int, extra: int) -> dict[str, Any]:
    """A partial read of a VSC message announcing ``length``, holding ``extra`` data bytes."""
    data = vsc(7, 0, length) + bytes(extra)
    return {"read_size": len(data), "read_data": data}


BOUNDS: list[Case] = [
    # char-device base
    *_int_bounds("num_client_tokens", CharDeviceState, DEVICE, "num_client_tokens", 0, U32_MAX),
    *_int_bounds("num_send_tokens", CharDeviceState, DEVICE, "num_send_tokens", 0, U32_MAX),
    ("write_num_client_tokens=-1", CharDeviceState, DEVICE, {"write_num_client_tokens": -1}, False),
    ("write_size=-1", CharDeviceState, DEVICE, {"write_size": -1}, False),
    (
        "write_size=max",
        CharDeviceState,
        DEVICE,
        {"write_size": MAX_PENDING_WRITE, "write_data": bytes(MAX_PENDING_WRITE)},
        True,
    ),
    (
        "write_size=max+1",
        CharDeviceState,
        DEVICE,
        {"write_size": MAX_PENDING_WRITE + 1, "write_data": bytes(MAX_PENDING_WRITE + 1)},
        False,
    ),
    # agent state
    *_int_bounds(
        "chunk_header_size",
        AgentReadState,
        READ_IDLE.model_copy(update={"chunk_port": 1}),
        "chunk_header_size",
        0,
        8,
    ),
    *_int_bounds("chunk_port", AgentReadState, READ_IDLE, "chunk_port", 0, U32_MAX),
    *_int_bounds("chunk_size", AgentReadState, READ_IDLE, "chunk_size", 0, U32_MAX),
    *_int_bounds("read.msg_remaining", AgentReadState, READ_IDLE, "msg_remaining", 0, 2**31 - 1),
    *_int_bounds("read.filter", AgentReadState, READ_IDLE, "msg_filter_result", 0, 3),
    *_int_bounds("write.msg_remaining", AgentWriteState, WRITE_IDLE, "msg_remaining", 0, 2**31 - 1),
    *_int_bounds("write.filter", AgentWriteState, WRITE_IDLE, "msg_filter_result", 0, 3),
    ("partial_len=-1", AgentReadState, READ_PARTIAL, {"msg_header_partial_len": -1}, False),
    ("partial_len=0", AgentReadState, READ_PARTIAL, _partial(0), True),
    ("partial_len=19", AgentReadState, READ_PARTIAL, _partial(19), True),
    ("partial_len=20", AgentReadState, READ_PARTIAL, _partial(20), False),
    # main: the agent token window and the receive buffer (a connected record keeps 8 bytes of
    # read slack: the target's stored copy over-reads by 8, the partial header read by 2)
    ("tokens=10", MainState, MAIN, {"agent__num_client_tokens": 8}, True),
    ("tokens=11", MainState, MAIN, {"agent__num_client_tokens": 9}, False),
    ("body=max", MainState, MAIN, _main_body(MAIN_MAX_BODY - 65 - SLACK, 0), True),
    ("body=max+1", MainState, MAIN, _main_body(MAIN_MAX_BODY - 65 - SLACK + 1, 0), False),
    ("body+partial=max", MainState, MAIN, _main_body(MAIN_MAX_BODY - 65 - 1 - SLACK, 1), True),
    ("body+partial=max+1", MainState, MAIN, _main_body(MAIN_MAX_BODY - 65 - SLACK, 1), False),
    # display
    *_int_bounds("message_serial", DisplayState, DISPLAY, "message_serial", 0, U64_MAX),
    *_int_bounds("pixmap_cache_id", DisplayState, DISPLAY, "pixmap_cache_id", 0, 255),
    *_int_bounds("glz_dict_id", DisplayState, DISPLAY, "glz_dict_id", 0, 255),
    *_int_bounds(
        "pixmap_cache_size", DisplayState, DISPLAY, "pixmap_cache_size", 0, MAX_PIXMAP_CACHE_SIZE
    ),
    ("cache_clients=-1", DisplayState, DISPLAY, {"pixmap_cache_clients": (0, -1, 0, 0)}, False),
    ("cache_clients=max", DisplayState, DISPLAY, {"pixmap_cache_clients": (U64_MAX,) * 4}, True),
    (
        "cache_clients=max+1",
        DisplayState,
        DISPLAY,
        {"pixmap_cache_clients": (0, 0, 0, U64_MAX + 1)},
        False,
    ),
    ("cache_clients*3", DisplayState, DISPLAY, {"pixmap_cache_clients": (0, 0, 0)}, False),
    ("cache_clients*5", DisplayState, DISPLAY, {"pixmap_cache_clients": (0,) * 5}, False),
    *_int_bounds("glz_window", GlzDictionary, GLZ, "window_size", 1, GLZ_MAX_WINDOW),
    *_int_bounds("last_image_id", GlzDictionary, GLZ, "last_image_id", 0, U64_MAX),
    ("max_encoders=3", GlzDictionary, GLZ, {"max_encoders": 3}, False),
    ("max_encoders=4", GlzDictionary, GLZ, {"max_encoders": 4}, True),
    ("max_encoders=5", GlzDictionary, GLZ, {"max_encoders": 5}, False),
    ("left=-1", LossyRect, RECT, {"left": -1}, False),
    ("top=-1", LossyRect, RECT, {"top": -1}, False),
    ("right=max+1", LossyRect, RECT, {"right": MAX_COORDINATE + 1}, False),
    ("bottom=max+1", LossyRect, RECT, {"bottom": MAX_COORDINATE + 1}, False),
    ("left=right", LossyRect, RECT, {"left": MAX_COORDINATE}, True),
    ("top=bottom", LossyRect, RECT, {"top": MAX_COORDINATE}, True),
    ("left>right", LossyRect, RECT, {"left": 5, "right": 4}, False),
    ("top>bottom", LossyRect, RECT, {"top": 5, "bottom": 4}, False),
    *_int_bounds("lossy id", LossySurface, LossySurface(id=0, lossy_rect=RECT), "id", 0, 1023),
    ("ids (1023,)", SurfacesLossless, SurfacesLossless(ids=()), {"ids": (NUM_SURFACES - 1,)}, True),
    ("ids (1024,)", SurfacesLossless, SurfacesLossless(ids=()), {"ids": (NUM_SURFACES,)}, False),
    ("ids (-1,)", SurfacesLossless, SurfacesLossless(ids=()), {"ids": (-1,)}, False),
    ("ids all", SurfacesLossless, SurfacesLossless(ids=()), {"ids": tuple(range(1024))}, True),
    ("ids 1025", SurfacesLossless, SurfacesLossless(ids=()), {"ids": tuple(range(1025))}, False),
    ("ids repeated", SurfacesLossless, SurfacesLossless(ids=()), {"ids": (1, 1)}, False),
    ("ids descending", SurfacesLossless, SurfacesLossless(ids=()), {"ids": (2, 1)}, False),
    ("lossy empty", DisplayState, DISPLAY, {"surfaces": {"kind": "lossy", "surfaces": ()}}, False),
    (
        "lossy repeated",
        DisplayState,
        DISPLAY,
        {
            "surfaces": {
                "kind": "lossy",
                "surfaces": (
                    {"id": 4, "lossy_rect": RECT.model_dump()},
                    {"id": 4, "lossy_rect": RECT.model_dump()},
                ),
            }
        },
        False,
    ),
    (
        "lossy all",
        DisplayState,
        DISPLAY,
        {
            "surfaces": {
                "kind": "lossy",
                "surfaces": tuple({"id": i, "lossy_rect": RECT.model_dump()} for i in range(1024)),
            }
        },
        True,
    ),
    (
        "kind missing",
        DisplayState,
        DISPLAY_LOSSLESS,
        {"surfaces": {"ids": (1, 2)}},
        False,
    ),
    (
        "kind mismatch",
        DisplayState,
        DISPLAY_LOSSLESS,
        {"surfaces": {"kind": "lossy", "ids": (1, 2)}},
        False,
    ),
    # inputs
    *_int_bounds("motion_count", InputsState, INPUTS, "motion_count", 0, MAX_MOTION_COUNT),
    # smartcard: read_size and the partial VSC message rule
    ("read_size=-1", SmartcardState, SMARTCARD, {"read_size": -1}, False),
    ("read < header", SmartcardState, SMARTCARD, {"read_size": 11, "read_data": bytes(11)}, True),
    ("read = header", SmartcardState, SMARTCARD, _vsc_read(0, 0), True),
    ("read = message", SmartcardState, SMARTCARD, _vsc_read(10, 10), True),
    ("read > message", SmartcardState, SMARTCARD, _vsc_read(10, 11), False),
    ("read > empty message", SmartcardState, SMARTCARD, _vsc_read(0, 1), False),
    ("vsc length=max", SmartcardState, SMARTCARD, _vsc_read(MAX_VSC_LENGTH, 0), True),
    ("vsc length=max+1", SmartcardState, SMARTCARD, _vsc_read(MAX_VSC_LENGTH + 1, 0), False),
    ("read_size=max", SmartcardState, SMARTCARD, _vsc_read(MAX_VSC_LENGTH, MAX_VSC_LENGTH), True),
    (
        "read_size=max+1",
        SmartcardState,
        SMARTCARD,
        _vsc_read(MAX_VSC_LENGTH + 1, MAX_VSC_LENGTH + 1),
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "model", "base", "updates", "valid"), BOUNDS, ids=[c[0] for c in BOUNDS]
)
def test_bound(
    name: str, model: type[BaseModel], base: BaseModel, updates: dict[str, Any], valid: bool
) -> None:
    assert accepts(model, changed(base, **updates)) is valid, name


# --- cross-field invariants ----------------------------------------------------------------

INVARIANTS: list[tuple[str, type[BaseModel], BaseModel, dict[str, Any]]] = [
    ("write_data shorter", CharDeviceState, DEVICE, {"write_size": 5}),
    ("write_data longer", CharDeviceState, DEVICE, {"write_size": 3}),
    ("write tokens > bytes", CharDeviceState, DEVICE, {"write_num_client_tokens": 5}),
    ("partial_len != partial", AgentReadState, READ_PARTIAL, {"msg_header_partial_len": 3}),
    ("partial w/o chunk header", AgentReadState, READ_PARTIAL, {"chunk_header_size": 7}),
    ("partial after header done", AgentReadState, READ_PARTIAL, {"msg_header_done": True}),
    ("no agent, started", MainState, MAIN_IDLE, {"client_agent_started": True}),
    ("no agent, read state", MainState, MAIN_IDLE, {"agent_to_client__chunk_port": 1}),
    ("no agent, write state", MainState, MAIN_IDLE, {"client_to_agent__msg_remaining": 1}),
    ("read_data != read_size", SmartcardState, SMARTCARD, {"read_size": 15}),
    ("no device, reader", SmartcardState, SMARTCARD_IDLE, {"reader_added": True}),
    (
        "no device, read data",
        SmartcardState,
        SMARTCARD_IDLE,
        {"read_size": 1, "read_data": b"\0"},
    ),
    (
        "spicevmc disconnected",
        SpicevmcState,
        SPICEVMC,
        {
            "device": CharDeviceState(
                connected=False,
                num_client_tokens=0,
                num_send_tokens=0,
                write_size=0,
                write_num_client_tokens=0,
                write_data=b"",
            ).model_dump()
        },
    ),
]


@pytest.mark.parametrize(
    ("name", "model", "base", "updates"), INVARIANTS, ids=[c[0] for c in INVARIANTS]
)
def test_invariant_is_enforced(
    name: str, model: type[BaseModel], base: BaseModel, updates: dict[str, Any]
) -> None:
    assert accepts(model, changed(base, **updates)) is False, name


#: spice-server's smartcard read buffer starts at APDUBufSize (270) + the 12-byte VSC header and
#: grows (to at least length + 12) only when a partial header announces length > its size.
TARGET_READ_BUFFER = 270 + 12


@pytest.mark.parametrize("length", [0, 10, 270, TARGET_READ_BUFFER + 1, MAX_VSC_LENGTH])
def test_partial_read_that_fits_the_targets_buffer_is_accepted(length: int) -> None:
    read = min(12 + length, TARGET_READ_BUFFER) if length <= TARGET_READ_BUFFER else 12 + length
    data = (vsc(7, 0, length) + bytes(length))[:read]
    assert accepts(SmartcardState, changed(SMARTCARD, read_size=len(data), read_data=data))


@pytest.mark.parametrize("length", [271, TARGET_READ_BUFFER])
def test_partial_read_that_overflows_the_targets_buffer_is_refused(length: int) -> None:
    data = vsc(7, 0, length) + bytes(length)  # read_size = 12 + length > 282, no growth
    assert len(data) > TARGET_READ_BUFFER
    assert not accepts(SmartcardState, changed(SMARTCARD, read_size=len(data), read_data=data))


@pytest.mark.parametrize(
    "field",
    ["num_client_tokens", "num_send_tokens", "write_size", "write_num_client_tokens"],
)
def test_disconnected_device_must_be_all_zero(field: str) -> None:
    empty = {
        "connected": False,
        "num_client_tokens": 0,
        "num_send_tokens": 0,
        "write_size": 0,
        "write_num_client_tokens": 0,
        "write_data": b"",
    }
    assert accepts(CharDeviceState, empty)
    if field == "write_size":
        empty.update(write_size=1, write_data=b"\0")
    else:
        empty[field] = 1
    assert not accepts(CharDeviceState, empty)


# --- strictness ----------------------------------------------------------------------------


def _wrong_values(value: Any) -> list[Any]:
    """Values a lax validator would coerce into ``value``'s type; strict ones refuse them."""
    if isinstance(value, bool):
        return [int(value), str(value).lower(), None]
    if isinstance(value, int):
        return [str(value), float(value), True, None]
    if isinstance(value, bytes):
        return [value.decode("latin-1"), bytearray(value), list(value), None]
    if isinstance(value, tuple):
        return [list(value), None]
    if isinstance(value, str):
        return [value.encode(), 1, None]
    if isinstance(value, BaseModel):
        return [1, "x", None]
    raise AssertionError(f"no wrong values for {type(value).__name__}")  # pragma: no cover


@pytest.mark.parametrize("instance", INSTANCES, ids=_INSTANCE_IDS)
def test_wrong_types_are_refused(instance: BaseModel) -> None:
    model = type(instance)
    fields = dict(instance)
    for name, value in fields.items():
        for wrong in _wrong_values(value):
            with pytest.raises(ValidationError) as caught:
                model(**{**fields, name: wrong})
            assert caught.value.errors()[0]["loc"][0] == name


@pytest.mark.parametrize("instance", INSTANCES, ids=_INSTANCE_IDS)
def test_extra_and_missing_fields_are_refused(instance: BaseModel) -> None:
    model = type(instance)
    fields = dict(instance)
    assert model(**fields) == instance
    with pytest.raises(ValidationError, match="extra_forbidden"):
        model(**fields, unexpected=0)
    for name in fields:
        if name == "kind":
            continue  # the discriminator has a default
        without = {k: v for k, v in fields.items() if k != name}
        with pytest.raises(ValidationError, match="missing"):
            model(**without)


@pytest.mark.parametrize("instance", INSTANCES, ids=_INSTANCE_IDS)
def test_models_are_frozen(instance: BaseModel) -> None:
    name, value = next(iter(dict(instance).items()))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(instance, name, value)
    assert hash(instance) == hash(type(instance)(**dict(instance)))


def _all_models() -> list[type[StrictModel]]:
    found: list[type[StrictModel]] = []
    pending: list[type[StrictModel]] = [StrictModel]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("schemas.") and sub not in found:
                found.append(sub)
            pending.append(sub)
    return found


def test_every_model_is_strict_closed_frozen_and_quiet() -> None:
    models = _all_models()
    assert {m.__name__ for m in models} >= {type(i).__name__ for i in INSTANCES}
    for model in models:
        config = model.model_config
        assert config.get("strict") is True, model
        assert config.get("extra") == "forbid", model
        assert config.get("frozen") is True, model
        assert config.get("hide_input_in_errors") is True, model


@pytest.mark.parametrize(
    "text",
    [
        '{"motion_count": "3"}',
        '{"motion_count": 3.0}',
        '{"motion_count": true}',
        '{"motion_count": null}',
        '{"motion_count": 3, "extra": 1}',
        "{}",
        "[3]",
        '{"motion_count": 3',
    ],
)
def test_json_input_is_strict(text: str) -> None:
    assert InputsState.model_validate_json('{"motion_count": 3}') == InputsState(motion_count=3)
    with pytest.raises(ValidationError):
        InputsState.model_validate_json(text)


def test_json_bytes_are_base64() -> None:
    text = DEVICE.model_dump_json()
    assert '"write_data":"YWJjZA=="' in text
    assert CharDeviceState.model_validate_json(text) == DEVICE
    with pytest.raises(ValidationError):
        CharDeviceState.model_validate_json(text.replace("YWJjZA==", "YW!jZA=="))


@budget(100)
@given(item=channel_states())
def test_python_and_json_round_trips(item: tuple[ChannelType, StateModel]) -> None:
    _, state = item
    model = type(state)
    assert model.model_validate(state.model_dump()) == state
    assert model.model_validate_json(state.model_dump_json()) == state


# --- errors never quote the input ----------------------------------------------------------

LEAKS: list[tuple[str, type[BaseModel], dict[str, Any], pytest.MarkDecorator | None]] = [
    ("int as str", InputsState, {"motion_count": MARKER}, None),
    ("extra value", InputsState, {"motion_count": 1, "extra": MARKER}, None),
    ("bytes as str", CharDeviceState, {**dict(DEVICE), "write_data": MARKER}, None),
    (
        "length mismatch",
        CharDeviceState,
        {**dict(DEVICE), "write_data": MARKER.encode(), "write_size": 1},
        None,
    ),
    (
        "partial vsc",
        SmartcardState,
        {**dict(SMARTCARD), "read_data": vsc(7, 0, 1) + MARKER.encode(), "read_size": 12 + 25},
        None,
    ),
    ("nested", DisplayState, changed(DISPLAY, glz_dict__window_size=MARKER), None),
    (
        "surfaces kind",
        DisplayState,
        changed(DISPLAY, surfaces={"kind": MARKER}),
        None,
    ),
]


@pytest.mark.parametrize(
    ("model", "data"),
    [pytest.param(m, d, id=n, marks=[k] if k else []) for n, m, d, k in LEAKS],
)
def test_validation_errors_never_contain_the_input(
    model: type[BaseModel], data: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    assert MARKER not in str(caught.value)
    assert MARKER not in repr(caught.value)
    for error in caught.value.errors(include_input=False):
        assert MARKER not in str(error)


def test_json_validation_errors_never_contain_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        InputsState.model_validate_json('{"motion_count": "' + MARKER + '"}')
    assert MARKER not in str(caught.value)


# --- the registry --------------------------------------------------------------------------

EXPECTED_MODELS = {
    ChannelType.MAIN: MainState,
    ChannelType.DISPLAY: DisplayState,
    ChannelType.INPUTS: InputsState,
    ChannelType.SMARTCARD: SmartcardState,
    ChannelType.USBREDIR: UsbredirState,
    ChannelType.PORT: SpicevmcState,
    ChannelType.WEBDAV: SpicevmcState,
}


def test_channel_type_numbers() -> None:
    """spice-protocol's enums.h numbering (§5.4)."""
    assert [(c.name, int(c)) for c in ChannelType] == [
        ("MAIN", 1),
        ("DISPLAY", 2),
        ("INPUTS", 3),
        ("CURSOR", 4),
        ("PLAYBACK", 5),
        ("RECORD", 6),
        ("TUNNEL", 7),
        ("SMARTCARD", 8),
        ("USBREDIR", 9),
        ("PORT", 10),
        ("WEBDAV", 11),
    ]


@pytest.mark.parametrize("channel", list(EXPECTED_MODELS), ids=lambda c: c.name.lower())
def test_registry_maps_each_channel_to_its_model(channel: ChannelType) -> None:
    model = EXPECTED_MODELS[channel]
    assert schemas.model_for(channel, 1) is model
    assert schemas.model_for(int(channel), 1) is model
    assert schemas.latest_version(channel) == 1
    assert model.schema_version == 1
    assert channel in model.channel_types


def test_registry_entries_are_complete_and_sorted() -> None:
    entries = list(schemas.entries())
    assert entries == sorted(entries, key=lambda e: (e[0], e[1]))
    assert {(c, v): m for c, v, m in entries} == {(c, 1): m for c, m in EXPECTED_MODELS.items()}


@pytest.mark.parametrize(
    ("channel", "version"),
    [
        (ChannelType.CURSOR, 1),
        (ChannelType.PLAYBACK, 1),
        (ChannelType.MAIN, 0),
        (ChannelType.MAIN, 2),
        (0, 1),
        (12, 1),
        (-1, 1),
    ],
)
def test_registry_has_nothing_else(channel: int, version: int) -> None:
    assert schemas.model_for(channel, version) is None


def test_latest_version_of_a_channel_without_schema() -> None:
    with pytest.raises(LookupError, match="CURSOR"):
        schemas.latest_version(ChannelType.CURSOR)


def _dummy(channels: tuple[ChannelType, ...], version: int) -> type[StateModel]:
    class Dummy(StateModel):
        schema_version = version
        channel_types = channels
        value: int

    return Dummy


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that register models do so in a copy of the registry."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.usefixtures("scratch_registry")
def test_register_a_new_version() -> None:
    dummy = _dummy((ChannelType.INPUTS,), 2)
    assert registry.register(dummy) is dummy
    assert schemas.model_for(ChannelType.INPUTS, 2) is dummy
    assert schemas.model_for(ChannelType.INPUTS, 1) is InputsState
    assert schemas.latest_version(ChannelType.INPUTS) == 2


@pytest.mark.usefixtures("scratch_registry")
def test_register_twice_is_refused() -> None:
    with pytest.raises(RuntimeError, match="MAIN v1 registered twice"):
        registry.register(_dummy((ChannelType.MAIN,), 1))
    assert schemas.model_for(ChannelType.MAIN, 1) is MainState


@pytest.mark.usefixtures("scratch_registry")
def test_failed_register_leaves_the_registry_unchanged() -> None:
    with pytest.raises(RuntimeError):
        registry.register(_dummy((ChannelType.CURSOR, ChannelType.MAIN), 1))
    assert schemas.model_for(ChannelType.CURSOR, 1) is None
