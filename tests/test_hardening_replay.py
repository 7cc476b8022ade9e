"""Attack catalogue, finding 4: the replay database is opened like the keyring.

Whoever can write the database can delete rows and so re-enable consumed blobs. The guard
refuses a symbolic link, a file of another user, a file group or others can access, and a
directory others can write to (where a file could be swapped); it creates the file 0600.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.replay import ReplayGuard

NOW = 1_800_000_000
OTHER_UID = 65534  # nobody


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_created_owner_only_whatever_the_umask(folder: Path, permissive_umask: None) -> None:
    with ReplayGuard(folder / "replay.db") as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_symlink_is_refused_and_not_followed(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    (folder / "replay.db").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="symbolic link"):
        ReplayGuard(folder / "replay.db")
    assert not elsewhere.exists()


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604])
def test_database_others_can_access_is_refused(folder: Path, mode: int) -> None:
    path = folder / "replay.db"
    with ReplayGuard(path) as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}"):
        ReplayGuard(path)


def test_database_of_another_user_is_refused(folder: Path) -> None:
    path = folder / "replay.db"
    with ReplayGuard(path):
        pass
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER_UID}"):
        ReplayGuard(path)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_directory_others_can_write_is_refused(folder: Path, mode: int) -> None:
    os.chmod(folder, mode)
    with pytest.raises(ConfigError, match="writable by group or others"):
        ReplayGuard(folder / "replay.db")
    assert not (folder / "replay.db").exists()


def test_directory_of_another_user_is_refused(folder: Path) -> None:
    os.chown(folder, OTHER_UID, -1)
    with pytest.raises(ConfigError, match=r"directory .* is owned by uid"):
        ReplayGuard(folder / "replay.db")


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_planted_companion_files_are_refused(folder: Path, tmp_path: Path, suffix: str) -> None:
    path = folder / "replay.db"
    with ReplayGuard(path):
        pass
    companion = folder / f"replay.db{suffix}"
    companion.unlink(missing_ok=True)
    companion.symlink_to(tmp_path / "planted")
    with pytest.raises(ConfigError, match="symbolic link"):
        ReplayGuard(path)


def test_a_readable_directory_is_fine(folder: Path) -> None:
    os.chmod(folder, 0o755)
    with ReplayGuard(folder / "replay.db") as guard:
        guard.consume(b"a" * 32, NOW + 60, now=NOW)
        assert len(guard) == 1
