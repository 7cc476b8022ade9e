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
        "Goals of the issue",
        "critical path added <= 1 ms",
        "display blob back (verify+encode) <= 30 us",
    ):
        assert section in out, section
    if shutil.which("socat"):
        assert "socat -b256k" in out
        assert "added round trip <= 1.5 x plain socat's" in out
