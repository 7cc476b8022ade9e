"""Fixtures the envelope tests share (a module's own fixture of the same name wins)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from tests.envelope_setup import NOW


@pytest.fixture
def keyring() -> Keyring:
    """A fresh keyring with one active key, created at the tests' fixed clock."""
    return Keyring.create(now=NOW)


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[ReplayGuard]:
    """A real replay guard on an SQLite file of its own, closed afterwards."""
    with ReplayGuard(tmp_path / "replay.db") as replay_guard:
        yield replay_guard
