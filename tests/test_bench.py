"""The benchmarks still run: each one once at its smallest size (figures not checked, only that
every part ran and printed its goal lines)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_proxy_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("proxy").main(["--tiny"]) == 0
    out = capsys.readouterr().out
    for section in (
        "Throughput, server -> client",
        "display 64 B..64 KiB",
        "Round trip of a 32-byte message",
        "Migration critical path, six channels",
        "two proxies, replay db in memory" if Path("/dev/shm").is_dir() else "two proxies",
        "Switch-over steps",
        "target: replay commit (alone)",
        "proxy CPU over the critical path",
        "The first migration in a fresh process",
        "target: commit thread hand-off",
        "target: replay commit (commit thread)",
        "Goals of the issue",
        "critical path added <= 1 ms",
        "display blob back (verify+encode) <= 30 us",
    ):
        assert section in out, section
    if shutil.which("socat"):
        assert "socat -b256k" in out
        assert "added round trip <= 1.5 x plain socat's" in out


def test_scale_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("scale").main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert "CORRECTNESS" not in out
    for section in (
        "Sidecar: 4 sessions x 4 channels",
        "memory per session",
        "event-loop lag, streaming",
        "active sessions",
        "memory per idle session <= 64 KiB",
        "Evacuation storm: 3 VMs x 6 channels (18 blobs)",
        "2 replays refused with nothing forwarded",
        "storm CPU on the target <= 1 s",
        "critical path p99 <= 50 ms",
    ):
        assert section in out, section


def test_scale_bench_fails_loudly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that forwarded something else makes the run fail, not just print figures."""
    scale = load("scale")
    check_storm = scale.check_storm

    def wrong(sessions: list[object], payloads: dict[object, bytes], *, sealed: bool) -> None:
        if sealed:  # as if the target server had received the source's payloads swapped
            first, second = list(payloads)[:2]
            payloads = {**payloads, first: payloads[second], second: payloads[first]}
        check_storm(sessions, payloads, sealed=sealed)

    monkeypatch.setattr(scale, "check_storm", wrong)
    assert scale.main(["--sessions", "0", "--vms", "1", "--replays", "0"]) == 1
    assert "CORRECTNESS: " in capsys.readouterr().out
