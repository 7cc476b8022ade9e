"""The envelope benchmark still runs and prints its goals and its floor (figures not checked)."""

from __future__ import annotations

import pytest

from tests.test_bench import load


def test_envelope_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("envelope").main(["--tiny"]) == 0
    out = capsys.readouterr().out
    for section in (
        "Seal vs encrypt",
        "Open vs decrypt",
        "Floor: the steps the construction cannot avoid",
        "HKDF extract (HMAC)",
        "HKDF expand, encryption key (HMAC)",
        "HKDF expand, MAC key (HMAC)",
        "signature (HMAC)",
        "AES-256-GCM, the blob's key",
        "msgpack pack",
        "msgpack unpack (strict)",
        "raw AES-256-GCM, one key",
        "Pipeline on the",
        "Goals (reported, not asserted",
    ):
        assert section in out, section
    goals = [line for line in out.splitlines() if line.startswith(("  met ", "  missed "))]
    assert len(goals) == 6, goals
    for size in ("4 MiB seal", "4 MiB open", "1 KiB seal", "1 KiB open"):
        (line,) = (goal for goal in goals if size in goal)
        assert "(floor " in line, line
    floors = [line for line in out.splitlines() if "floor: steps / raw" in line]
    assert len(floors) == 2, floors
