"""The two-proxy state-machine harness (fuzz/proxy_pair_fuzzer.py): its scripts do what their
names say, its oracles catch a proxy that lets unopened bytes through, and the planted logic bug
is caught by a committed seed."""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gateway.envelope import read_unauthenticated

pytest.importorskip("atheris", reason="the fuzz extra is not installed")

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


@pytest.fixture(scope="module")
def fuzz() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(FUZZ))
    try:
        harness = importlib.import_module("_harness")
        harness.INSTRUMENT = False
        yield {
            name: importlib.import_module(name)
            for name in ("_harness", "proxy_pair_fuzzer", "seeds_spice", "planted")
        }
    finally:
        sys.path.remove(str(FUZZ))


def _seeds(fuzz: dict[str, ModuleType]) -> dict[str, bytes]:
    seeds: dict[str, bytes] = fuzz["seeds_spice"].proxy_pair_seeds()
    return seeds


@pytest.mark.parametrize(
    ("seed", "sealed", "accepted", "recorded"),
    [
        ("migration", 3, 3, 3),
        ("migration-full-header", 3, 3, 3),
        ("migration-split-reads", 3, 3, 3),
        ("replayed-blob", 3, 3, 3),
        ("replay-after-reconnect", 3, 1, 1),
        ("cancelled-then-again", 3, 3, 3),
        ("untrusted-destination", 0, 0, 0),
        ("native-from-client", 0, 0, 0),
        ("flipped-and-truncated", 3, 1, 1),
        # The display blob sent on the inputs channel is authentic: refused there, it is used
        # all the same, so relayed again on its own channel it is Replayed.
        ("wrong-channel", 3, 1, 2),
        ("back-to-the-source", 3, 0, 0),
        # The first expired blob relayed is refused (and recorded); the main channel's refusal
        # ends the client's session before the others arrive.
        ("expired", 3, 0, 1),
        # The second attempt supersedes the first at the target (peer link): the first
        # attempt's two blobs relayed after it are refused (and recorded, being authentic), as
        # are the second's on that session, which pinned the first attempt.
        ("two-migrations", 6, 1, 3),
        ("two-migrations-verified-together", 6, 1, 2),
        ("a-migration-verified-together", 3, 3, 3),
        # No announcement reached the target, which refuses: every blob is refused (and
        # recorded, being authentic).
        ("peer-link-down-refused", 3, 0, 3),
        # The same in first-blob mode: the first blob pins the migration, all are accepted.
        ("peer-link-down-first-blob", 3, 3, 3),
        # First-blob mode, two first blobs of two attempts verified together: the one
        # recorded first pins its migration, the other is refused by the pin (recorded).
        ("first-blob-pin-mismatch", 6, 1, 2),
        # Sealed 33 s before the target session began (skew 30 s): all refused, recorded.
        ("issued-before-the-target-session", 3, 0, 3),
        # The guard fails once: that blob is refused, not recorded; the others pass.
        ("replay-store-fails", 3, 2, 2),
        ("replay-database-fails", 3, 0, 0),
        # The refusal's record fails: nothing recorded, the refusal stands.
        ("replay-store-fails-on-refusal", 3, 0, 0),
        ("replay-database-fails-on-refusal", 3, 0, 0),
        ("replay-closed-on-refusal", 3, 0, 0),
        # Relayed again past their keep-until time, two together: both refused as expired,
        # each record pruning what came before (the second is what the guard still holds).
        ("expired-verified-together", 3, 3, 1),
        # A newer attempt lands while the first blob is recorded: it is refused (recorded),
        # and so are the others, of the superseded attempt.
        ("superseded-while-recording", 3, 0, 3),
        ("identity-migration", 3, 3, 3),
        # The identity suite without an agreed key: nothing is sealed.
        ("identity-link-down", 0, 0, 0),
        # A reload back to the shared key: the announced attempt's key still opens its blobs.
        ("identity-then-shared-key", 3, 3, 3),
        # A port state past 64 KiB, sealed and opened in a worker thread.
        ("large-port-state", 1, 1, 1),
        # The guard fails at its first read of it (already used?): refused, not recorded.
        ("large-port-state-store-fails", 1, 0, 0),
    ],
)
def test_scripts_migrate_what_they_say(
    fuzz: dict[str, ModuleType], seed: str, sealed: int, accepted: int, recorded: int
) -> None:
    """Every authentic blob the target read is recorded, accepted or refused (used once)."""
    run = fuzz["proxy_pair_fuzzer"].run_script(_seeds(fuzz)[seed])
    assert (len(run.pool), len(run.accepted)) == (sealed, accepted)
    assert len(run.target.guard) == recorded


def test_a_replayed_blob_is_refused_and_closes_the_channel(fuzz: dict[str, ModuleType]) -> None:
    pp = fuzz["proxy_pair_fuzzer"]
    run = pp.run_script(_seeds(fuzz)["migration"])
    assert len(run.accepted) == 3
    assert run.target.state.metrics.get("smg_migrations_completed_total") == 1


def test_blobs_verified_together_pin_one_migration(fuzz: dict[str, ModuleType]) -> None:
    """Two first blobs of different attempts, verified before either is recorded: the one of
    the attempt the target runs (the newest announced) is accepted; the other, of the attempt
    it superseded, is refused and not recorded."""
    run = fuzz["proxy_pair_fuzzer"].run_script(_seeds(fuzz)["two-migrations-verified-together"])
    metrics = run.target.state.metrics
    refused = sum(
        metrics.get("smg_refused_total", reason="open", channel=name)
        for name in ("main", "display", "inputs")
    )
    assert refused == 1
    assert len(run.target.guard) == 2  # the refused blob is authentic: recorded too
    (accepted,) = run.accepted
    current = run.target.state.attempts.current(run.target.route.vm_id)
    assert current is not None
    _, context, _, _ = read_unauthenticated(accepted)
    assert context.migration_id == current.migration_id


def test_the_oracle_catches_unopened_bytes(
    fuzz: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that forwarded every client MIGRATE_DATA as received fails the oracle."""
    pp = fuzz["proxy_pair_fuzzer"]
    from gateway.proxy.channel import ChannelHandler

    async def as_received(self: Any, event: Any) -> bytes:
        return bytes(event.raw)

    monkeypatch.setattr(ChannelHandler, "rewrite", as_received)
    with pytest.raises(fuzz["_harness"].OracleFailure, match=r"reached the server|unsealed"):
        pp.TestOneInput(_seeds(fuzz)["native-from-client"])


def test_the_oracle_catches_a_blob_accepted_twice(
    fuzz: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pp = fuzz["proxy_pair_fuzzer"]
    monkeypatch.setattr(pp._proxy_pair.MemoryReplayGuard, "consume", lambda *a, **k: None)
    with pytest.raises(fuzz["_harness"].OracleFailure, match="accepted twice"):
        pp.TestOneInput(_seeds(fuzz)["replayed-blob"])


def test_planted_logic_bug_is_caught_by_a_seed(fuzz: dict[str, ModuleType]) -> None:
    planted = fuzz["planted"]
    bug = next(b for b in planted.BUGS if b.name == "unopened-data")
    script = _seeds(fuzz)["migration"]
    fuzz["proxy_pair_fuzzer"].TestOneInput(script)
    undo = planted.planted(bug)
    try:
        with pytest.raises(fuzz["_harness"].OracleFailure):
            fuzz["proxy_pair_fuzzer"].TestOneInput(script)
    finally:
        undo()
    fuzz["proxy_pair_fuzzer"].TestOneInput(script)


def _refused(run: Any, reason: str) -> int:
    metrics = run.target.state.metrics
    return sum(
        metrics.get("smg_refused_total", reason=reason, channel=name)
        for name in ("main", "display", "inputs", "port")
    )


def test_unannounced_blobs_are_refused_as_peer_link_down(fuzz: dict[str, ModuleType]) -> None:
    seeds = _seeds(fuzz)
    run = fuzz["proxy_pair_fuzzer"].run_script(seeds["peer-link-down-refused"])
    assert _refused(run, "peer_link_down") == 3
    assert run.target.state.attempts.current(run.target.route.vm_id) is None
    run = fuzz["proxy_pair_fuzzer"].run_script(seeds["peer-link-down-first-blob"])
    assert _refused(run, "peer_link_down") == 0
    assert run.target.state.config.peer_link_down == "first-blob"


def test_replay_store_failures_are_refused_and_counted(fuzz: dict[str, ModuleType]) -> None:
    seeds = _seeds(fuzz)
    for seed, failed in (
        ("replay-store-fails", 1),
        ("replay-database-fails", 2),
        ("large-port-state-store-fails", 1),
    ):
        run = fuzz["proxy_pair_fuzzer"].run_script(seeds[seed])
        assert _refused(run, "replay_store") == failed
        assert run.target.state.metrics.get("smg_replay_store_errors_total") == failed
    # A failure to record a refusal is logged beside it; the refusal is the open one.
    for seed in (
        "replay-store-fails-on-refusal",
        "replay-database-fails-on-refusal",
        "replay-closed-on-refusal",
    ):
        run = fuzz["proxy_pair_fuzzer"].run_script(seeds[seed])
        assert (_refused(run, "open"), _refused(run, "replay_store")) == (1, 0)
        assert run.target.guard.failures == 1


def test_the_harness_catches_a_guard_failure_escaping_a_refusal(
    fuzz: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that lets what a database or a closed guard raises escape while it records a
    refused blob (catching only GatewayError there) fails: only GatewayError may escape."""
    pp = fuzz["proxy_pair_fuzzer"]
    from gateway.envelope import spend
    from gateway.errors import GatewayError
    from gateway.proxy.channel import ChannelHandler

    def gateway_errors_only(self: Any, error: GatewayError) -> None:
        with contextlib.suppress(GatewayError):
            spend(error, self.state.replay_guard)

    monkeypatch.setattr(ChannelHandler, "_spend", gateway_errors_only)
    seeds = _seeds(fuzz)
    with pytest.raises(RuntimeError, match="injected"):
        pp.TestOneInput(seeds["replay-closed-on-refusal"])
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        pp.TestOneInput(seeds["replay-database-fails-on-refusal"])


def test_identity_blobs_are_sealed_with_the_attempt_key(fuzz: dict[str, ModuleType]) -> None:
    pp = fuzz["proxy_pair_fuzzer"]
    run = pp.run_script(_seeds(fuzz)["identity-migration"])
    shared = pp._proxy_pair.KEYRING.active.key_id
    current = run.target.state.attempts.current(run.target.route.vm_id)
    assert current is not None
    assert current.key is not None
    for blob in run.accepted:
        key_id = read_unauthenticated(blob)[0].key_id
        assert key_id != shared
        assert key_id == current.key.key_id
    assert len(run.accepted) == 3


def test_the_oracle_catches_a_refused_authentic_blob_not_recorded(
    fuzz: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pp = fuzz["proxy_pair_fuzzer"]
    from gateway.proxy.channel import ChannelHandler

    monkeypatch.setattr(ChannelHandler, "_spend", lambda self, error: None)
    with pytest.raises(fuzz["_harness"].OracleFailure, match="was not recorded"):
        pp.TestOneInput(_seeds(fuzz)["peer-link-down-refused"])


def test_the_oracle_catches_a_second_attempt_kept(
    fuzz: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pp = fuzz["proxy_pair_fuzzer"]
    from gateway.proxy.sessions import AttemptTable

    monkeypatch.setattr(AttemptTable, "__len__", lambda self: 2)
    with pytest.raises(fuzz["_harness"].OracleFailure, match="more than the newest"):
        pp.TestOneInput(_seeds(fuzz)["migration"])
