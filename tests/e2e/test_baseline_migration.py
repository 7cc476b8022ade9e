"""Baseline: a real seamless migration without the gateway, and the timing trap that breaks it.

Source and destination QEMU, spice-server inside both, spice-gtk as the client, all on
127.0.0.1. The proxied end-to-end tests run the same steps with the proxies' ports where these
pass the servers' ports.
"""

from __future__ import annotations

import pytest

from .rig import EXPECTED_CHANNELS, LOCALHOST, Qemu, Rig, SpiceClient

pytestmark = pytest.mark.e2e


def start_linked(rig: Rig, *, hold_migration_links: bool = False) -> tuple[Qemu, Qemu, SpiceClient]:
    """Source running, destination waiting, client linked to the source on every channel."""
    with rig.timed("qemus_up"):
        source, destination = rig.start_source_and_destination()
    with rig.timed("client_linked"):
        client = rig.start_client(
            "client", LOCALHOST, source.spice_port, hold_migration_links=hold_migration_links
        )
        client.wait_linked(source.spice_port)
        # The guest's QXL surface reached the client: display traffic flows before migrating.
        client.wait_event("display-primary-create")
    assert source.spice_channel_names() >= EXPECTED_CHANNELS
    return source, destination, client


def test_seamless_migration_moves_guest_and_client(e2e_rig: Rig) -> None:
    source, destination, client = start_linked(e2e_rig)

    e2e_rig.migrate_seamlessly(source, destination, client, target_port=destination.spice_port)

    # Each wait raises if its condition does not come true in time.
    with e2e_rig.timed("client_switched"):
        destination.wait_status("running")
        source.wait_event("SPICE_MIGRATE_COMPLETED")
        client.wait_connected_to(destination.spice_port)
    assert source.query_status() == "postmigrate"
    # Seamless, neither switch-host nor semi-seamless: the client went migrating -> done, and
    # every channel object kept its state and swapped its socket instead of being rebuilt ...
    assert client.migration_states() == ["migrating", "none"]
    since = "migration-started"
    assert client.select("channel-event", after=since, session="primary", what="switching") == []
    assert client.select("channel-event", after=since, session="primary", what="closed") == []
    assert client.select("channel-destroy", after=since, session="primary") == []
    # ... and the display surface survived: the destination restored it from the display's
    # MIGRATE_DATA (semi-seamless would have reset the channel and re-created the surface).
    assert client.select("display-primary-destroy", after=since) == []
    assert client.process.running()


def test_migrating_before_the_client_linked_falls_back_to_switch_host(e2e_rig: Rig) -> None:
    """The trap: ``migrate`` right after ``client_migrate_info``, without waiting for the client.

    An idle 64 MiB guest migrates in about 25-60 ms; the client needs 100-200 ms to link seven
    channels to the destination, so the source finishes first and falls back to
    MIGRATE_SWITCH_HOST (20 of 20 trial runs without any help). The migration wins that race
    nearly always, but not by construction, so the client holds its destination links until
    the source has finished.
    """
    source, destination, client = start_linked(e2e_rig, hold_migration_links=True)

    with e2e_rig.timed("migration"):
        source.client_migrate_info(LOCALHOST, destination.spice_port)
        source.migrate(destination.incoming_uri)
        source.wait_migration_completed()
    # The guest moved. Links are released only now: ones that reach a destination still
    # loading the guest make its display wait 10 s for MIGRATE_DATA that never comes.
    destination.wait_status("running")
    assert source.query_status() == "postmigrate"
    client.release_migration_links()

    # The client follows by reconnecting from scratch (switch-host).
    client.wait_migration_state("switching")
    client.wait_connected_to(destination.spice_port)
    assert client.select("link-held", type="main"), "the client never tried to link early"
    main_events = client.select("channel-event", session="primary", type="main")
    assert [e["what"] for e in main_events][-2:] == ["switching", "opened"]
    # Every other channel was destroyed and created anew: its state (what MIGRATE_DATA would
    # have carried) did not survive the move.
    destroyed = {e["type"] for e in client.select("channel-destroy", session="primary")}
    assert destroyed == EXPECTED_CHANNELS - {"main"}
