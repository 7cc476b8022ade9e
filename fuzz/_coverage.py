"""Branch coverage the committed corpus alone reaches in each decoder (``fuzz/run --coverage``).

Each harness replays its corpus in its own process under ``coverage`` with branch measurement
(the project imported after coverage starts, without atheris instrumentation); the report then
reads that harness's data for the modules its row ``covers``, and the union of the harnesses
that ``share`` a module (the native engine) for that module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

import _table  # noqa: E402

__all__ = ["Measure", "collect", "measure", "report"]

DATA_DIR = _table.OUT_DIR / "coverage"


@dataclass(frozen=True)
class Measure:
    """Coverage of some modules: statements and branches, as coverage.py counts them."""

    statements: int
    covered_statements: int
    branches: int
    covered_branches: int
    missing: dict[str, list[str]]

    @property
    def branch_percent(self) -> float:
        return 100.0 * self.covered_branches / self.branches if self.branches else 100.0

    @property
    def percent(self) -> float:
        """coverage.py's combined figure (statements and branches), as ``coverage report``."""
        total = self.statements + self.branches
        covered = self.covered_statements + self.covered_branches
        return 100.0 * covered / total if total else 100.0


def collect(name: str, data_file: Path) -> None:
    """Replay ``name``'s corpus under coverage (runs in a child process)."""
    import coverage

    os.environ["SMG_FUZZ_INSTRUMENT"] = "0"
    cov = coverage.Coverage(
        branch=True,
        data_file=str(data_file),
        source=[str(_table.ROOT / "gateway"), str(_table.ROOT / "schemas")],
    )
    cov.start()
    try:
        (harness,) = _table.discover([name])
        target = _table.load(harness).TestOneInput
        for seed in harness.seeds():
            target(seed.read_bytes())
    finally:
        cov.stop()
        cov.save()


def _run_collect(harness: _table.Harness) -> tuple[_table.Harness, Path, str]:
    data_file = DATA_DIR / f"{harness.name}.coverage"
    data_file.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, __file__, "--collect", harness.name, str(data_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    return harness, data_file, (result.stderr if result.returncode else "")


def measure(data_files: Sequence[Path], modules: Sequence[str]) -> Measure:
    """Coverage of ``modules`` over ``data_files``: paths relative to the repository, each
    whole (``gateway/keys.py``) or one function or method of it (``gateway/keys.py::Key.x``)."""
    import coverage

    wanted: dict[str, set[str]] = {}
    for module in modules:
        path, _, function = module.partition("::")
        wanted.setdefault(str(_table.ROOT / path), set()).update([function] if function else [])
    with tempfile.TemporaryDirectory() as tmp:
        combined = Path(tmp) / "combined"
        cov = coverage.Coverage(data_file=str(combined), branch=True)
        cov.combine([str(f) for f in data_files], keep=True)
        cov.save()
        out = Path(tmp) / "report.json"
        cov.json_report(outfile=str(out), include=list(wanted))
        files: dict[str, Any] = json.loads(out.read_text())["files"]
    totals = [0, 0, 0, 0]
    missing: dict[str, list[str]] = {}
    for path, entry in files.items():
        functions = wanted.get(str(Path(path).resolve()), set())
        parts = [entry["functions"][name] for name in sorted(functions)] if functions else [entry]
        for part in parts:
            summary = part["summary"]
            totals[0] += summary["num_statements"]
            totals[1] += summary["covered_lines"]
            totals[2] += summary["num_branches"]
            totals[3] += summary["covered_branches"]
            gaps = [f"line {line}" for line in part["missing_lines"]]
            gaps += [f"branch {a}->{b if b > 0 else 'exit'}" for a, b in part["missing_branches"]]
            if gaps:
                missing.setdefault(os.path.relpath(path, _table.ROOT), []).extend(gaps)
    statements, covered_statements, branches, covered_branches = totals
    return Measure(statements, covered_statements, branches, covered_branches, missing)


def report(harnesses: Sequence[_table.Harness], jobs: int, *, verbose: bool = False) -> int:
    """Measure and print; returns the number of harnesses whose replay failed."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(_run_collect, harnesses))
    failures = 0
    data: dict[str, Path] = {}
    print(f"{'harness / module':<48} {'branches':>11} {'branch%':>8} {'total%':>7}")
    for harness, data_file, error in results:
        if error:
            failures += 1
            print(f"{harness.name}: replay failed\n{error[-2000:]}")
            continue
        data[harness.name] = data_file
        modules = harness.covers or ()
        if not modules:
            print(f"{harness.name:<48} (no modules listed in harnesses.toml)")
            continue
        _print(harness.name, measure([data_file], modules), verbose)
    shared = sorted({m for h in harnesses for m in h.shares})
    for module in shared:
        users = [h.name for h in harnesses if module in h.shares and h.name in data]
        if users:
            _print(
                f"{module} (union of {len(users)})",
                measure([data[u] for u in users], [module]),
                verbose,
            )
    return failures


def _print(label: str, m: Measure, verbose: bool) -> None:
    print(
        f"{label:<48} {m.covered_branches:>5}/{m.branches:<5} {m.branch_percent:>7.1f}% "
        f"{m.percent:>6.1f}%"
    )
    if verbose:
        for path, gaps in m.missing.items():
            print(f"    {path}: {', '.join(gaps)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--collect":
        collect(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit("usage: fuzz/run --coverage [HARNESS ...]")
