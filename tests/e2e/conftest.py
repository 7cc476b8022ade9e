"""Fixtures for the end-to-end tests.

A machine without QEMU or the spice-gtk GI client skips the e2e tests with the reason;
``SMG_REQUIRE_E2E=1`` (set by CI) turns that skip into a failure, so a missing install step
cannot pass as a green run. A failing test shows every process log of its rig, and the run ends
with the timings each rig recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .rig import Rig, skip_reason

_RIG = pytest.StashKey[Rig]()
_TIMINGS = pytest.StashKey[list[tuple[str, dict[str, float]]]]()


def _required() -> bool:
    return os.environ.get("SMG_REQUIRE_E2E") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's: select by marker.
    reason = None if _required() else skip_reason()
    if reason is None:
        return
    mark = pytest.mark.skip(reason=f"e2e: {reason}")
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(mark)


@pytest.fixture
def e2e_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A rig in the test's tmp dir; every process it started is stopped afterwards."""
    reason = skip_reason()
    if reason is not None:
        if _required():
            pytest.fail(f"SMG_REQUIRE_E2E=1 but e2e cannot run: {reason}", pytrace=False)
        pytest.skip(f"e2e: {reason}")
    start = time.monotonic()
    with Rig(tmp_path / "rig") as rig:
        request.node.stash[_RIG] = rig
        yield rig
    rig.timings["whole_test"] = round(time.monotonic() - start, 3)
    request.config.stash.setdefault(_TIMINGS, []).append((request.node.nodeid, rig.timings))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    rig = item.stash.get(_RIG, None)
    if rig is not None and report.failed:
        for name, text in rig.logs().items():
            report.sections.append((f"{report.when}: log of {name}", text))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    timings = terminalreporter.config.stash.get(_TIMINGS, [])
    if timings:
        terminalreporter.section("e2e timings (seconds)")
        for nodeid, values in timings:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in values.items())
            terminalreporter.write_line(f"{nodeid}: {shown}")
