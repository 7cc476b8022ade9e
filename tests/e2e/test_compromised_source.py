"""A compromised source on the real target: states a key holder seals, delivered for real.

Each test is one migration through both proxies (the topology of test_proxied_migration) in
which the client-target leg carries, for chosen channels, a blob sealed by a compromised source
host (:class:`~tests.e2e.compromised.CompromisedSource`) instead of the genuine one. Several
states travel in one migration, one per channel, to keep the runs few.

- Hostile states (every one seen to abort the destination QEMU, corrupt its memory or silence
  its agent when the gateway still accepted it) are refused by the target proxy, or, for the
  display surface list that a legitimate source writes in the other format, rewritten in the
  format the destination reads; the destination QEMU stays alive and runs the guest.
- Legitimate edge states are delivered and taken.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from schemas import (
    CharDeviceState,
    DisplayState,
    LossyRect,
    LossySurface,
    MainState,
    SmartcardState,
    StateModel,
    SurfacesLossless,
    SurfacesLossy,
    UsbredirState,
)
from schemas.display import NUM_SURFACES
from schemas.main import AgentReadState, AgentWriteState
from schemas.streams import usbredir_bulk_in, vsc_message

from . import test_proxied_migration as proxied
from .compromised import CompromisedSource
from .proxies import SOURCE_HOST, TARGET_HOST
from .relay import Relay
from .rig import MIGRATION_DATA_CHANNELS, Rig, wait_until

pytestmark = pytest.mark.e2e

hosts = proxied.hosts
relays = proxied.relays

MIB = 1024 * 1024
C2S = proxied.C2S
S2C = proxied.S2C
Chooser = Callable[[StateModel], StateModel]


def _with_device(state: StateModel, write: bytes, tokens: int, **extra: object) -> StateModel:
    """The genuine state with other pending bytes, unvalidated (a key holder seals anything)."""
    device = getattr(state, "device")  # noqa: B009 - smartcard and spicevmc both call it device
    changed = CharDeviceState.model_construct(
        **(
            dict(device)
            | {"write_size": len(write), "write_data": write, "write_num_client_tokens": tokens}
        )
    )
    return type(state).model_construct(**(dict(state) | {"device": changed} | extra))


def _display(surfaces: SurfacesLossless | SurfacesLossy, low_bandwidth: bool) -> Chooser:
    def choose(state: StateModel) -> StateModel:
        assert isinstance(state, DisplayState)
        return state.model_copy(update={"low_bandwidth": low_bandwidth, "surfaces": surfaces})

    return choose


def run(
    e2e_rig: Rig, relays: list[Relay], hosts: proxied.Hosts, choices: dict[int, Chooser]
) -> tuple[proxied.Deployment, CompromisedSource]:
    source = CompromisedSource(
        hosts.source.keyring, proxied.VM_ID, SOURCE_HOST, TARGET_HOST, choices
    )
    deployment = proxied.deploy_proxied(e2e_rig, relays, hosts, tamper=source)
    proxied.migrate(deployment)
    return deployment, source


def assert_destination_alive(deployment: proxied.Deployment) -> None:
    """The guest runs on the destination and its QEMU still answers QMP."""
    deployment.destination.wait_status("running", timeout=proxied.DISPLAY_DATA_WAIT + 5)
    assert deployment.destination.process.running()
    assert deployment.destination.query_status() == "running"
    # QMP answers (the process is neither dead nor hung) and spice-server is still enabled.
    assert deployment.destination.query_spice()["enabled"] is True


def wait_refused(deployment: proxied.Deployment, refused: dict[str, str]) -> None:
    target = deployment.proxies["target"]
    for name, error in refused.items():
        record = target.wait_audit("channel_refused", channel=f"{name}:0")
        assert (record["reason"], record["error"]) == ("open", error), record


def test_hostile_device_bytes_are_refused_and_a_foreign_list_format_is_rewritten(
    e2e_rig: Rig, relays: list[Relay], hosts: proxied.Hosts
) -> None:
    """usbredir: 1 MiB + 64 bytes that are no usbredir packet (aborted QEMU on its next
    chardev read); smartcard: one 1 MiB VSC message (the passthru card cannot hold it);
    display: what a jpeg-wan-compression=always source writes with low_bandwidth 0, a lossy
    list of two surfaces, the second rect at left 65536 (an auto target read it as lossless
    ids: surface 0 twice aborted it, 65536 wrote 64 KiB past its array)."""
    lossy = SurfacesLossy(
        surfaces=(
            LossySurface(id=0, lossy_rect=LossyRect(left=0, top=0, right=720, bottom=400)),
            LossySurface(id=1, lossy_rect=LossyRect(left=65_536, top=0, right=65_536, bottom=0)),
        )
    )
    deployment, source = run(
        e2e_rig,
        relays,
        hosts,
        {
            9: lambda state: _with_device(state, b"\x41" * (MIB + 64), 1),
            8: lambda state: _with_device(state, vsc_message(7, 0, bytes(MIB)), 1),
            2: _display(lossy, low_bandwidth=False),
        },
    )
    wait_refused(deployment, {"usbredir": "SchemaViolation", "smartcard": "SchemaViolation"})
    kept = MIGRATION_DATA_CHANNELS - {"usbredir", "smartcard"}
    target_leg = deployment.legs["target-server"]
    proxied.wait_migrate_data(target_leg, C2S, kept)
    assert_destination_alive(deployment)

    delivered = proxied.channels_with_data(target_leg.migrate_data(C2S))
    assert set(delivered) == kept
    display = delivered["display"].body
    # The destination (jpeg-wan-compression=auto, low_bandwidth 0) reads lossless ids:
    # it got ids 0 and 1, not the rects.
    assert display[76:80] == struct.pack("<I", 80)
    assert display[80:] == struct.pack("<III", 2, 0, 1)
    sealed = source.sealed[2]
    assert isinstance(sealed, DisplayState)
    native_out = proxied.channels_with_data(deployment.legs["source-server"].migrate_data(S2C))
    for name in kept - {"display"}:
        assert delivered[name].body == native_out[name].body, name
    target = deployment.proxies["target"]
    assert {r["channel"] for r in target.audit("channel_refused")} == {"usbredir:0", "smartcard:0"}
    assert target.audit("blob_accepted", channel="display:0")

    def dropped() -> bool | None:
        names = deployment.destination.spice_channel_names()
        return True if not names & {"usbredir", "smartcard"} else None

    wait_until(dropped, 15.0, "the destination dropping the refused channels")
    assert_destination_alive(deployment)


def _agent(**read: object) -> Chooser:
    """A connected agent record with ``read`` over an idle reader, unvalidated."""

    def choose(state: StateModel) -> StateModel:
        assert isinstance(state, MainState)
        agent = {
            "connected": True,
            "num_client_tokens": 10,
            "num_send_tokens": 0xFFFF_FFFF - 5,
            "write_size": 0,
            "write_num_client_tokens": 0,
            "write_data": b"",
        }
        for name in list(read):
            if name.startswith("agent_"):
                agent[name.removeprefix("agent_")] = read.pop(name)
        values = {
            "chunk_header_size": 8,
            "chunk_port": 1,
            "chunk_size": 40,
            "msg_header_done": True,
            "msg_header_partial_len": 0,
            "msg_header_partial": b"",
            "msg_remaining": 0,
            "msg_filter_result": 0,
        } | read
        return MainState.model_construct(
            agent=CharDeviceState.model_construct(**agent),
            client_agent_started=True,
            agent_to_client=AgentReadState.model_construct(**values),
            client_to_agent=AgentWriteState(msg_remaining=0, msg_filter_result=0),
        )

    return choose


@pytest.mark.parametrize(
    ("choose", "detail"),
    [
        pytest.param(
            _agent(
                chunk_size=0,
                msg_header_done=False,
                msg_header_partial_len=5,
                msg_header_partial=b"\x01\x00\x00\x00\x04",
            ),
            "a partial message header in a chunk with no bytes left",
            id="chunk-size-0-under-partial-header",
        ),
        pytest.param(
            _agent(chunk_header_size=7),
            "msg_header_done with a partial chunk header",
            id="partial-chunk-header-with-header-done",
        ),
        pytest.param(
            _agent(agent_num_send_tokens=0),
            "num_send_tokens 0",
            id="no-send-tokens",
        ),
        pytest.param(
            _agent(
                agent_write_size=64,
                agent_write_data=b"\x41" * 64,
                agent_write_num_client_tokens=1,
                agent_num_client_tokens=9,
            ),
            "VDI chunk at offset 0",
            id="agent-bytes-not-vdi-framed",
        ),
    ],
)
def test_agent_states_that_silence_the_agent_are_refused(
    e2e_rig: Rig, relays: list[Relay], hosts: proxied.Hosts, choose: Chooser, detail: str
) -> None:
    """Each of these left a live vdagentd with no traffic for the session (or made it lose
    sync and reconnect); here the guest has no agent, so what is proven is the refusal on the
    real path and a destination that keeps running."""
    deployment, _ = run(e2e_rig, relays, hosts, {1: choose})
    wait_refused(deployment, {"main": "SchemaViolation"})
    (refusal,) = deployment.proxies["target"].audit("channel_refused")
    assert detail in refusal["detail"], refusal
    assert_destination_alive(deployment)
    # Nothing of the refused main state reached spice-server.
    delivered = deployment.legs["target-server"].migrate_data(C2S)
    assert "main" not in {o.channel for o in delivered}


def test_more_edge_states(e2e_rig: Rig, relays: list[Relay], hosts: proxied.Hosts) -> None:
    """A partial VSC header read from the card (11 bytes: taken); a lossless list of one
    surface under low_bandwidth 1 (an auto target read 20-byte entries past the body: now
    written as lossy with an empty rect); 64 bytes that are no usbredir packet (QEMU's parser
    errored and kept the device broken: refused)."""

    def smartcard(state: StateModel) -> StateModel:
        assert isinstance(state, SmartcardState)
        partial = struct.pack(">III", 7, 0, 261)[:11]
        return state.model_copy(
            update={"reader_added": True, "read_size": len(partial), "read_data": partial}
        )

    deployment, _ = run(
        e2e_rig,
        relays,
        hosts,
        {
            2: _display(SurfacesLossless(ids=(0,)), low_bandwidth=True),
            8: smartcard,
            9: lambda state: _with_device(state, b"\x41" * 64, 1),
        },
    )
    wait_refused(deployment, {"usbredir": "SchemaViolation"})
    kept = MIGRATION_DATA_CHANNELS - {"usbredir"}
    target_leg = deployment.legs["target-server"]
    proxied.wait_migrate_data(target_leg, C2S, kept)
    assert_destination_alive(deployment)
    delivered = proxied.channels_with_data(target_leg.migrate_data(C2S))
    assert set(delivered) == kept
    assert delivered["display"].body[80:] == struct.pack("<IIiiii", 1, 0, 0, 0, 0, 0)
    assert delivered["smartcard"].body.endswith(struct.pack(">III", 7, 0, 261)[:11])
    assert [r["channel"] for r in deployment.proxies["target"].audit("channel_refused")] == [
        "usbredir:0"
    ]


def test_legitimate_edge_states_are_taken(
    e2e_rig: Rig, relays: list[Relay], hosts: proxied.Hosts
) -> None:
    """1,024 lossless surfaces; a whole maximum VSC message read from the card (65,564
    bytes); 1 MiB of well-formed usbredir packets pending for the guest."""
    vsc_read = struct.pack(">III", 7, 0, 65_552) + bytes(65_552)

    def smartcard(state: StateModel) -> StateModel:
        assert isinstance(state, SmartcardState)
        return state.model_copy(
            update={"reader_added": True, "read_size": len(vsc_read), "read_data": vsc_read}
        )

    def usbredir(state: StateModel) -> StateModel:
        packets = b"".join(usbredir_bulk_in(bytes(64 * 1024 - 26), n) for n in range(16))
        return UsbredirState.model_validate(dict(_with_device(state, packets, 16)))

    deployment, source = run(
        e2e_rig,
        relays,
        hosts,
        {
            2: _display(SurfacesLossless(ids=tuple(range(NUM_SURFACES))), low_bandwidth=False),
            8: smartcard,
            9: usbredir,
        },
    )
    accepted = deployment.proxies["target"].wait_audit("migration_accepted")
    assert accepted["channels"] == len(MIGRATION_DATA_CHANNELS)
    target_leg = deployment.legs["target-server"]
    proxied.wait_migrate_data(target_leg, C2S, MIGRATION_DATA_CHANNELS)
    assert_destination_alive(deployment)
    deployment.source.wait_event("SPICE_MIGRATE_COMPLETED")
    deployment.client.wait_connected_to(deployment.target_port)
    delivered = proxied.channels_with_data(target_leg.migrate_data(C2S))
    assert len(delivered["display"].body) == 84 + 4 * NUM_SURFACES
    assert delivered["smartcard"].body.endswith(vsc_read)
    assert len(delivered["usbredir"].body) == 33 + 16 * 64 * 1024
    assert deployment.proxies["target"].audit("channel_refused") == []
    assert set(source.sealed) == {2, 8, 9}
    assert_destination_alive(deployment)
