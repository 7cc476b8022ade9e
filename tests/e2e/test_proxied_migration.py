"""The gateway on the real thing: QEMU, spice-server and spice-gtk migrating through two proxies.

Topology (every arrow a TCP connection on 127.0.0.1; ``R*`` are test relays that watch, and
``client-target`` can tamper as a malicious client would)::

    client -> R client-source -> source proxy -> R source-server -> source QEMU
    client -> R client-target -> target proxy -> R target-server -> destination QEMU

``client_migrate_info`` sends the client to ``client-target``; the source proxy's peers table
names that address for the target host, so it seals for the target host. The server-side
relays see the native bytes independently of the proxies; the client-side ones see what the
client is handed and what it relays.

Each test is one fresh migration (fresh QEMUs, proxies and relays); the hosts' keyring and
replay databases live for the whole module, as they do on real hosts. The same relays without
the proxies give the baseline the proxied timings are compared with; timings are recorded in the
rig (shown at the end of the run), never asserted.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.envelope import read_header
from gateway.errors import GatewayError
from gateway.keys import load_keyring
from gateway.spice import (
    ChannelType,
    Direction,
    Migrate,
    MigrateConnectedSeamless,
    MigrateSwitchHost,
)

from .proxies import (
    SOURCE_HOST,
    TARGET_HOST,
    GatewayHost,
    GatewayProxy,
    generate_identities,
    generate_keyring,
    start_proxy,
)
from .relay import (
    FlipByte,
    Observed,
    Relay,
    Replace,
    ReplaceEach,
    Swap,
    Tamper,
    Truncate,
    Withhold,
)
from .rig import (
    EXPECTED_CHANNELS,
    LOCALHOST,
    MIGRATION_DATA_CHANNELS,
    Qemu,
    Rig,
    SpiceClient,
    free_ports,
    wait_client_ready_for_migration,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: One VM, migrated once per test between the same two hosts.
VM_ID = uuid.UUID("5f0c2b8e-4a51-4c8f-9d3e-0b7a6c1e2d34")
NATIVE_MAGICS = (b"MNMD", b"DCMD", b"ICMD", b"SCMD", b"SVMD")
#: spice-server's display worker waits this long for the display's MIGRATE_DATA before it
#: gives up on the channel. A link left open without data makes the destination wait it out;
#: the proxy closes the link of a refused blob, so no wait is expected, but waits allow for it.
DISPLAY_DATA_WAIT = 10.0
C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT


# --- fixtures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hosts:
    source: GatewayHost
    target: GatewayHost


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Hosts:
    """The two hosts' gateway files: one shared keyring, a replay database each, and an
    identity each with a trust store of the other's (used by the identity-suite runs)."""
    folder = tmp_path_factory.mktemp("gateway-hosts")
    keyring = generate_keyring(folder / "keyring.json")
    identities = generate_identities(folder / "identities", [SOURCE_HOST, TARGET_HOST])
    return Hosts(
        GatewayHost(
            SOURCE_HOST,
            keyring,
            folder / "source-replay.sqlite",
            folder / "source",
            identities[SOURCE_HOST],
        ),
        GatewayHost(
            TARGET_HOST,
            keyring,
            folder / "target-replay.sqlite",
            folder / "target",
            identities[TARGET_HOST],
        ),
    )


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    """Relays a test starts go in this list; each is stopped afterwards, pass or fail."""
    started: list[Relay] = []
    try:
        yield started
    finally:
        with contextlib.ExitStack() as stack:  # one failing close does not skip the others
            for relay in started:
                stack.callback(relay.close)


# --- the topology ------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One migration's processes and relays, proxied or not."""

    rig: Rig
    source: Qemu
    destination: Qemu
    client: SpiceClient
    #: Relays by leg: "client-source", "source-server", "client-target", "target-server".
    legs: dict[str, Relay]
    proxies: dict[str, GatewayProxy] = field(default_factory=dict)
    #: Prefix of this deployment's process and timing names (a test may run two).
    prefix: str = ""
    migrate_started_at: float = 0.0

    @property
    def target_port(self) -> int:
        """Where the client reaches the destination (what client_migrate_info names)."""
        return self.legs["client-target"].port

    def relay_errors(self) -> dict[str, list[str]]:
        return {name: relay.errors for name, relay in self.legs.items() if relay.errors}

    def stop(self) -> None:
        """Stop this deployment's processes (by pid) and relays, before starting another."""
        processes = [self.client.process, *(p.process for p in self.proxies.values())]
        for process in [*processes, self.destination.process, self.source.process]:
            process.stop()
        for relay in self.legs.values():
            relay.close()


def _relay(relays: list[Relay], name: str, upstream: int, tamper: Tamper | None = None) -> Relay:
    relay = Relay(name, upstream, tamper=tamper)
    relays.append(relay)
    return relay.start()


def _start_qemus(rig: Rig, prefix: str) -> tuple[Qemu, Qemu]:
    """A running source and a destination waiting for it (the rig's, with named processes)."""
    with rig.timed(f"{prefix}qemus_up"):
        (incoming_port,) = free_ports(1)
        source = rig.start_qemu(f"{prefix}qemu-source")
        destination = rig.start_qemu(f"{prefix}qemu-destination", incoming_port=incoming_port)
        source.wait_status("running")
        destination.wait_status("inmigrate")
    return source, destination


def _start_client(rig: Rig, prefix: str, port: int, hold_migration_links: bool) -> SpiceClient:
    with rig.timed(f"{prefix}client_linked"):
        client = rig.start_client(
            f"{prefix}client", LOCALHOST, port, hold_migration_links=hold_migration_links
        )
        client.wait_linked(port)
        # The guest's display reached the client through every hop before migrating.
        client.wait_event("display-primary-create")
    return client


def deploy_proxied(
    rig: Rig,
    relays: list[Relay],
    hosts: Hosts,
    *,
    tamper: Tamper | None = None,
    hold_migration_links: bool = False,
    prefix: str = "",
    peer_port: int | None = None,
    limits: dict[str, int] | None = None,
    suite: str = "shared-key",
) -> Deployment:
    """Both QEMUs, the four relays, both proxies, and the client linked through them.

    ``peer_port`` replaces the address the source proxy lists for the target host (by default
    the one ``client_migrate_info`` names, so the target is trusted). The source announces
    each attempt to the target over the peer link, each proxy listening on a port of its own;
    with ``suite = "identity"`` both agree a per-attempt key there under their identities.
    """
    source, destination = _start_qemus(rig, prefix)
    source_port, target_port, source_link, target_link = free_ports(4)
    legs = {
        "source-server": _relay(relays, "source-server", source.spice_port),
        "target-server": _relay(relays, "target-server", destination.spice_port),
        "client-source": _relay(relays, "client-source", source_port),
        "client-target": _relay(relays, "client-target", target_port, tamper),
    }
    source_config = hosts.source.write_config(
        f"{prefix}source",
        listen_port=source_port,
        upstream_port=legs["source-server"].port,
        vm_id=VM_ID,
        # What MIGRATE_BEGIN_SEAMLESS will carry: where the client reaches the target host.
        peers={TARGET_HOST: [peer_port or legs["client-target"].port]},
        peer_listen=source_link,
        peer_links={TARGET_HOST: target_link},
        limits=limits,
        suite=suite,
    )
    target_config = hosts.target.write_config(
        f"{prefix}target",
        listen_port=target_port,
        upstream_port=legs["target-server"].port,
        vm_id=VM_ID,
        peers={SOURCE_HOST: [legs["client-source"].port]},
        peer_listen=target_link,
        peer_links={SOURCE_HOST: source_link},
        limits=limits,
        suite=suite,
    )
    with rig.timed(f"{prefix}proxies_up"):
        proxies = {
            "source": start_proxy(rig, f"{prefix}proxy-source", source_config, source_port),
            "target": start_proxy(rig, f"{prefix}proxy-target", target_config, target_port),
        }
        for proxy in proxies.values():
            proxy.wait_ready()
    client = _start_client(rig, prefix, legs["client-source"].port, hold_migration_links)
    return Deployment(rig, source, destination, client, legs, proxies, prefix)


def deploy_direct(rig: Rig, relays: list[Relay]) -> Deployment:
    """The baseline with the same relays and no proxies: client -> relay -> spice-server."""
    source, destination = _start_qemus(rig, "")
    client_source = _relay(relays, "client-source", source.spice_port)
    client_target = _relay(relays, "client-target", destination.spice_port)
    legs = {
        "client-source": client_source,
        "source-server": client_source,
        "client-target": client_target,
        "target-server": client_target,
    }
    client = _start_client(rig, "", client_source.port, False)
    return Deployment(rig, source, destination, client, legs)


def migrate(deployment: Deployment) -> None:
    """client_migrate_info, wait for the client's links, migrate, wait for QEMU to finish."""
    rig, source, destination = deployment.rig, deployment.source, deployment.destination
    with rig.timed(f"{deployment.prefix}client_linked_to_destination"):
        source.client_migrate_info(LOCALHOST, deployment.target_port)
        wait_client_ready_for_migration(deployment.client, destination)
        # The surest witness the topology offers: the relay in front of the source spice-server
        # forwarded MIGRATE_CONNECTED_SEAMLESS. Through two proxies and a loaded machine the
        # client's own "migrating" can come well before it, and a migration that finishes first
        # falls back to switch-host with no migration data.
        deployment.legs["source-server"].wait_for(
            lambda relay: True if relay.messages(MigrateConnectedSeamless) else None,
            15.0,
            "MIGRATE_CONNECTED_SEAMLESS reaching the source spice-server",
        )
    deployment.migrate_started_at = time.monotonic()
    with rig.timed(f"{deployment.prefix}migration"):
        source.migrate(destination.incoming_uri)
        source.wait_migration_completed()


def channels_with_data(observed: list[Observed]) -> dict[str, Observed]:
    """MIGRATE_DATA by channel name; each channel migrates exactly once."""
    found: dict[str, Observed] = {}
    for o in observed:
        assert o.channel not in found, f"{o.relay}: a second MIGRATE_DATA on {o.channel}"
        found[o.channel] = o
    return found


def wait_migrate_data(relay: Relay, direction: Direction, channels: frozenset[str]) -> None:
    def check(r: Relay) -> bool | None:
        seen = {o.channel for o in r.migrate_data(direction)}
        return True if channels <= seen else None

    relay.wait_for(check, 15.0, f"MIGRATE_DATA {direction.value} on {sorted(channels)}")


def record_critical_path(deployment: Deployment) -> None:
    """The migration's critical path, for the report (never asserted: timing is not a fact)."""
    sent = deployment.legs["source-server"].migrate_data(S2C)
    delivered = deployment.legs["target-server"].migrate_data(C2S)
    if not sent or not delivered:
        return
    last = max(o.sent_at for o in delivered)
    timings, prefix = deployment.rig.timings, deployment.prefix
    timings[f"{prefix}first_data_out_to_last_data_in"] = round(
        last - min(o.received_at for o in sent), 4
    )
    timings[f"{prefix}migrate_to_last_data_in"] = round(last - deployment.migrate_started_at, 4)


def is_sealed(body: bytes) -> bool:
    """A well-formed envelope: magic, version, suite and lengths that account for every byte."""
    try:
        read_header(body)
    except GatewayError:
        return False
    return True


# --- the baseline, through relays only ---------------------------------------------------------


def test_without_proxies_the_client_relays_native_data_unchanged(
    e2e_rig: Rig, relays: list[Relay]
) -> None:
    """The same relays and no gateway: what the proxied run is compared with."""
    deployment = deploy_direct(e2e_rig, relays)
    migrate(deployment)
    source_leg, target_leg = deployment.legs["client-source"], deployment.legs["client-target"]
    wait_migrate_data(target_leg, C2S, MIGRATION_DATA_CHANNELS)
    deployment.destination.wait_status("running")
    deployment.client.wait_connected_to(deployment.target_port)
    record_critical_path(deployment)

    sent = channels_with_data(source_leg.migrate_data(S2C))
    received = channels_with_data(target_leg.migrate_data(C2S))
    assert set(sent) == set(received) == MIGRATION_DATA_CHANNELS
    for name in MIGRATION_DATA_CHANNELS:
        assert sent[name].body.startswith(NATIVE_MAGICS), name
        assert received[name].body == sent[name].body, name
    assert deployment.relay_errors() == {}


# --- through the gateway -----------------------------------------------------------------------


def finish_clean_migration(deployment: Deployment) -> dict[str, object]:
    """Wait until the six channels' data reached the destination, the guest runs there and the
    client switched; returns the target proxy's migration_accepted record."""
    migrate(deployment)
    wait_migrate_data(deployment.legs["target-server"], C2S, MIGRATION_DATA_CHANNELS)
    with deployment.rig.timed(f"{deployment.prefix}client_switched"):
        deployment.destination.wait_status("running")
        deployment.source.wait_event("SPICE_MIGRATE_COMPLETED")
        deployment.client.wait_connected_to(deployment.target_port)
    record_critical_path(deployment)
    return deployment.proxies["target"].wait_audit("migration_accepted")


@pytest.mark.parametrize("suite", ["shared-key", "identity"])
def test_seamless_migration_through_both_proxies(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts, suite: str
) -> None:
    deployment = deploy_proxied(e2e_rig, relays, hosts, suite=suite)
    accepted = finish_clean_migration(deployment)
    legs, proxies = deployment.legs, deployment.proxies

    # The source spice-server asked for data on exactly the six channels ...
    flagged = {
        o.channel
        for o in legs["source-server"].messages(Migrate)
        if isinstance(o.message, Migrate) and o.message.need_data_transfer
    }
    assert flagged == MIGRATION_DATA_CHANNELS
    native_out = channels_with_data(legs["source-server"].migrate_data(S2C))
    native_in = channels_with_data(legs["target-server"].migrate_data(C2S))
    handed = channels_with_data(legs["client-source"].migrate_data(S2C))
    relayed = channels_with_data(legs["client-target"].migrate_data(C2S))
    assert set(native_out) == set(native_in) == set(handed) == set(relayed) == flagged
    for name in MIGRATION_DATA_CHANNELS:
        # ... the client only ever held sealed blobs, and relayed them unchanged ...
        for leg in (handed, relayed):
            assert is_sealed(leg[name].body), name
            assert not leg[name].body.startswith(NATIVE_MAGICS), name
        assert relayed[name].body == handed[name].body, name
        # ... and the destination got exactly the bytes the source sent.
        assert native_out[name].body.startswith(NATIVE_MAGICS), name
        assert native_in[name].body == native_out[name].body, name

    assert deployment.destination.query_status() == "running"
    assert deployment.source.query_status() == "postmigrate"
    # Seamless to the end: the client swapped sockets and kept its display surface.
    assert deployment.client.migration_states() == ["migrating", "none"]
    assert deployment.client.select("display-primary-destroy", after="migration-started") == []
    assert deployment.destination.spice_channel_names() >= EXPECTED_CHANNELS
    assert accepted["channels"] == len(MIGRATION_DATA_CHANNELS)
    sealed = proxies["source"].wait_audit("migration_sealed")
    assert sealed["channels"] == len(MIGRATION_DATA_CHANNELS)
    assert len(proxies["source"].audit("blob_sealed")) == len(MIGRATION_DATA_CHANNELS)
    assert len(proxies["target"].audit("blob_accepted")) == len(MIGRATION_DATA_CHANNELS)
    assert proxies["source"].audit("migration_begin", target=TARGET_HOST, trusted=True)
    # The source announced the attempt over the peer link, and the target ran that one.
    (announced,) = proxies["target"].audit("attempt_announced", source=SOURCE_HOST)
    assert announced["migration"] == accepted["migration"]
    assert announced["channels"] == len(MIGRATION_DATA_CHANNELS)
    assert announced["suite"] == suite
    assert proxies["source"].audit("attempt_announced", migration=accepted["migration"])
    # Every blob under one key: the shared keyring's, or this attempt's own, which is not.
    key_ids = {read_header(handed[name].body).key_id for name in MIGRATION_DATA_CHANNELS}
    assert len(key_ids) == 1
    in_keyring = load_keyring(hosts.source.keyring).get(key_ids.pop()) is not None
    assert in_keyring is (suite == "shared-key")
    for proxy in proxies.values():
        assert proxy.problems() == [], proxy.name  # no refusal, no warning of any kind
    assert deployment.relay_errors() == {}


# --- a client that tampers ---------------------------------------------------------------------


def migrate_with_refusals(
    deployment: Deployment, refused: dict[str, str | None], *, others_complete: bool = True
) -> None:
    """Migrate while the client tampers; check what the gateway and the destination did.

    ``refused`` maps each channel whose blob the client altered to the error the target proxy
    must name (None: the caller checks it). For each: the refusal is audited, the proxy closes
    that channel's link to the destination without writing its MIGRATE_DATA, and the
    destination spice-server drops the channel. Whatever else reaches the destination is
    byte-identical to what the source sent, and with ``others_complete`` every other channel
    does migrate (spice-gtk drops its whole session when the main channel closes, so after a
    main refusal that is a race). The guest runs on the destination. spice-server's display
    worker would wait up to DISPLAY_DATA_WAIT for display data on a link that stayed open;
    the proxy closes it, so the guest need not wait, but the bound allows for it.
    """
    migrate(deployment)
    legs, target_proxy = deployment.legs, deployment.proxies["target"]
    target_leg = legs["target-server"]
    for name, error in refused.items():
        record = target_proxy.wait_audit("channel_refused", channel=f"{name}:0")
        assert record["reason"] == "open", record
        assert error is None or record["error"] == error, record

        def closed(relay: Relay, name: str = name) -> bool | None:
            links = [c for c in relay.connections() if c.channel == name]
            return True if links and all(c.closed_at is not None for c in links) else None

        target_leg.wait_for(closed, 15.0, f"the proxy closing the {name} link")
    kept = MIGRATION_DATA_CHANNELS - set(refused)
    if others_complete:
        wait_migrate_data(target_leg, C2S, kept)
    with deployment.rig.timed("destination_running"):
        deployment.destination.wait_status("running", timeout=DISPLAY_DATA_WAIT + 5)

    def dropped() -> bool | None:
        names = deployment.destination.spice_channel_names()
        return True if not names & set(refused) else None

    wait_until(dropped, 15.0, f"the destination dropping {sorted(refused)}")
    record_critical_path(deployment)

    # Nothing of a refused channel reached the destination; every other channel did, intact.
    native_out = channels_with_data(legs["source-server"].migrate_data(S2C))
    native_in = channels_with_data(target_leg.migrate_data(C2S))
    assert set(native_in) == kept if others_complete else set(native_in) <= kept
    for name, delivered in native_in.items():
        assert delivered.body == native_out[name].body, name
    tampered = {o.channel for o in legs["client-target"].migrate_data(C2S) if o.tampered}
    assert tampered == set(refused)
    # The tampering reached spice-server on no path, and the guest runs on the destination.
    assert deployment.destination.process.running()
    assert deployment.destination.query_status() == "running"
    assert {r["channel"] for r in target_proxy.audit("channel_refused")} == {
        f"{name}:0" for name in refused
    }
    assert target_proxy.audit("migration_accepted") == []
    assert deployment.proxies["source"].audit("channel_refused") == []
    assert deployment.relay_errors() == {}


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        pytest.param(FlipByte(ChannelType.DISPLAY, 1), "BadMagic", id="flip-near-start"),
        pytest.param(
            FlipByte(ChannelType.DISPLAY, 0, "middle"), "AuthenticationFailed", id="flip-middle"
        ),
        pytest.param(
            FlipByte(ChannelType.DISPLAY, 0, "end"), "AuthenticationFailed", id="flip-last-byte"
        ),
        pytest.param(Truncate(ChannelType.DISPLAY, 100), "Truncated", id="truncate"),
    ],
)
def test_tampered_display_blob_is_refused(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts, tamper: Tamper, error: str
) -> None:
    deployment = deploy_proxied(e2e_rig, relays, hosts, tamper=tamper)
    migrate_with_refusals(deployment, {"display": error})


def test_swapped_display_and_inputs_blobs_are_refused(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts
) -> None:
    """Each blob is genuine, but bound to the other channel."""
    tamper = Swap(ChannelType.DISPLAY, ChannelType.INPUTS)
    deployment = deploy_proxied(e2e_rig, relays, hosts, tamper=tamper)
    migrate_with_refusals(deployment, {"display": "ContextMismatch", "inputs": "ContextMismatch"})


def test_replayed_main_blob_is_refused(e2e_rig: Rig, relays: list[Relay], hosts: Hosts) -> None:
    """The client keeps the main blob of one migration and sends it again in the next one of
    the same VM to the same host, where the replay database remembers it."""
    first = deploy_proxied(e2e_rig, relays, hosts, prefix="first-")
    finish_clean_migration(first)
    (recorded,) = [o for o in first.legs["client-target"].migrate_data(C2S) if o.channel == "main"]
    first.stop()

    tamper = Replace(ChannelType.MAIN, recorded.body)
    deployment = deploy_proxied(e2e_rig, relays, hosts, tamper=tamper)
    migrate_with_refusals(deployment, {"main": None}, others_complete=False)

    # Why it was refused depends on timing: if the old blob is checked before a fresh blob of
    # this migration pins the session's migration id, it passes the context check and the
    # replay database refuses it; afterwards the old migration id itself is refused. (The
    # session's id in the audit record only says whether a pin happened by the time of the
    # record, not which came first, so it cannot tell the two apart.)
    (refusal,) = deployment.proxies["target"].audit("channel_refused")
    assert (refusal["error"], refusal["detail"]) == (
        "ContextMismatch",
        "context field 'migration_id' does not match (main channel 0)",
    ) or (refusal["error"] == "Replayed" and "already opened" in refusal["detail"]), refusal


def test_withheld_attempt_relayed_in_the_next_is_refused(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts
) -> None:
    """The client withholds every blob of one attempt (the target receives none of them, so
    none is recorded as used) and relays them in the next attempt of the same VM to the same
    host, instead of that attempt's own. Both proxies give blobs a long lifetime here, so that
    expiry is not what refuses them: the target runs the newer attempt its source announced.

    spice-gtk drops its whole session once the main channel is refused, so how many of the
    stale blobs it relays before that is a race: every one the target proxy read must be
    refused, and none may reach the destination."""
    long_lived = {"blob_ttl": 600}
    data_types = frozenset(int(ChannelType[name.upper()]) for name in MIGRATION_DATA_CHANNELS)
    first = deploy_proxied(
        e2e_rig, relays, hosts, tamper=Withhold(data_types), prefix="first-", limits=long_lived
    )
    migrate(first)
    # What the client was handed, sealed for the first attempt; the target got none of it.
    wait_migrate_data(first.legs["client-source"], S2C, MIGRATION_DATA_CHANNELS)
    kept = channels_with_data(first.legs["client-source"].migrate_data(S2C))
    (first_attempt,) = first.proxies["target"].audit("attempt_announced")
    assert first.proxies["target"].audit("blob_accepted") == []
    assert first.legs["target-server"].migrate_data(C2S) == []
    first.stop()

    stale = ReplaceEach({int(ChannelType[name.upper()]): o.body for name, o in kept.items()})
    deployment = deploy_proxied(e2e_rig, relays, hosts, tamper=stale, limits=long_lived)
    migrate(deployment)
    legs, target_proxy = deployment.legs, deployment.proxies["target"]
    target_proxy.wait_audit("channel_refused")
    with deployment.rig.timed("destination_running"):
        deployment.destination.wait_status("running", timeout=DISPLAY_DATA_WAIT + 5)

    def relayed_and_settled() -> bool | None:
        """Every stale blob relayed was refused, or its channel closed before the target
        proxy read it (the refused main channel ends the client's session, and with it the
        other connections, so a blob still in flight then is never read)."""
        refused = {r["channel"] for r in target_proxy.audit("channel_refused")}
        closed = {
            c.channel for c in legs["client-target"].connections() if c.closed_at is not None
        }
        relayed = {o.channel for o in legs["client-target"].migrate_data(C2S)}
        settled = all(f"{name}:0" in refused or name in closed for name in relayed)
        return True if settled else None

    wait_until(relayed_and_settled, 15.0, "a refusal or a close for every stale blob relayed")
    (attempt,) = target_proxy.audit("attempt_announced")
    assert attempt["migration"] != first_attempt["migration"]
    refusals = target_proxy.audit("channel_refused")
    for refusal in refusals:
        assert (refusal["reason"], refusal["error"]) == ("open", "ContextMismatch"), refusal
        assert "'migration_id' does not match" in refusal["detail"], refusal
    # Whatever the client relayed was one of the first attempt's blobs, and none was let in.
    relayed = legs["client-target"].migrate_data(C2S)
    assert all(o.forwarded == kept[o.channel].body for o in relayed)
    assert {r["channel"] for r in refusals} <= {f"{o.channel}:0" for o in relayed}
    assert legs["target-server"].migrate_data(C2S) == []
    assert target_proxy.audit("blob_accepted") == []
    assert deployment.destination.process.running()
    assert deployment.destination.query_status() == "running"
    assert deployment.relay_errors() == {}


def test_untrusted_destination_gets_nothing_sealed(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts
) -> None:
    """``client_migrate_info`` names an address the source proxy does not list for any peer
    (a misconfiguration, or a destination the operator does not trust): no channel's state
    leaves the source host, sealed or not."""
    (elsewhere,) = free_ports(1)
    deployment = deploy_proxied(e2e_rig, relays, hosts, peer_port=elsewhere)
    migrate(deployment)
    legs, source_proxy = deployment.legs, deployment.proxies["source"]

    # The first refusal closes a channel and spice-server then drops the whole client, maybe
    # before every channel sent its MIGRATE_DATA: wait for the ends, not for six refusals.
    def closed(relay: Relay) -> bool | None:
        gone = {c.channel for c in relay.connections() if c.closed_at is not None}
        return True if gone >= MIGRATION_DATA_CHANNELS else None

    legs["client-source"].wait_for(closed, 15.0, "the client's source channels closing")
    deployment.destination.wait_status("running")

    assert source_proxy.audit("migration_begin", target=None, trusted=False)
    # Whatever the source spice-server sent was refused (a channel the client closed first
    # may have been dropped unread), and nothing crossed the client's legs.
    sent = {f"{o.channel}:0" for o in legs["source-server"].migrate_data(S2C)}
    refusals = source_proxy.audit("channel_refused")
    assert refusals, "no channel was refused"
    assert {r["channel"] for r in refusals} <= sent
    assert {(r["reason"], r["error"]) for r in refusals} == {("seal", "ProtocolError")}
    for name in ("client-source", "client-target", "target-server"):
        assert legs[name].migrate_data() == [], name
    assert source_proxy.audit("blob_sealed") == []
    assert deployment.proxies["target"].audit("blob_accepted") == []
    assert deployment.relay_errors() == {}


# --- the timing trap ---------------------------------------------------------------------------


def test_switch_host_fallback_passes_through_the_proxies(
    e2e_rig: Rig, relays: list[Relay], hosts: Hosts
) -> None:
    """``migrate`` before the client linked to the destination: spice-server falls back to
    MIGRATE_SWITCH_HOST, no migration data exists, and the proxies let the client follow.

    The client holds its destination links until the guest runs there (the rig's
    ``hold_migration_links``), which makes the fallback certain rather than likely.
    """
    deployment = deploy_proxied(e2e_rig, relays, hosts, hold_migration_links=True)
    source, destination, client = deployment.source, deployment.destination, deployment.client
    legs, proxies = deployment.legs, deployment.proxies
    with e2e_rig.timed("migration"):
        source.client_migrate_info(LOCALHOST, deployment.target_port)
        source.migrate(destination.incoming_uri)
        source.wait_migration_completed()
    destination.wait_status("running")
    client.release_migration_links()
    with e2e_rig.timed("client_switched"):
        client.wait_migration_state("switching")
        client.wait_connected_to(deployment.target_port)
    switch = proxies["source"].wait_audit("switch_host")

    # The fallback passed the source proxy byte for byte, naming the target's client address.
    (native,) = legs["source-server"].messages(MigrateSwitchHost)
    (handed,) = legs["client-source"].messages(MigrateSwitchHost)
    assert handed.body == native.body
    assert isinstance(handed.message, MigrateSwitchHost)
    assert (handed.message.dst_info.host, handed.message.dst_info.port) == (
        LOCALHOST,
        deployment.target_port,
    )
    assert switch["route"] == "vm"
    # No channel had data to migrate, so nothing was sealed, opened or refused ...
    for leg in legs.values():
        assert leg.migrate_data() == [], leg.name
    for proxy in proxies.values():
        for event in ("blob_sealed", "blob_accepted", "channel_refused"):
            assert proxy.audit(event) == [], (proxy.name, event)
    # ... and the client reconnected from scratch, through the target proxy.
    assert client.select("link-held", type="main"), "the client never tried to link early"
    assert destination.query_status() == "running"
    assert source.query_status() == "postmigrate"
    # The client's sockets are up before the links through the target proxy complete.
    wait_until(
        lambda: True if destination.spice_channel_names() >= EXPECTED_CHANNELS else None,
        15.0,
        "the destination listing every channel",
    )
    assert deployment.relay_errors() == {}
