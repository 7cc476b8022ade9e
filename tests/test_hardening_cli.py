"""Attack catalogue, finding 5: the CLI's output files.

``open --out`` writes decrypted state. It must land owner-only whatever the umask, through a
temporary name nobody can predict or pre-create, and a link planted at that name or at the
destination must not redirect the write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli_envelope import SAMPLES, open_args, run, seal_sample


@pytest.fixture
def keyring_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "keyring.json"
    code, _, err = run(capsys, "keys", "generate", "--keyring", str(path))
    assert code == 0, err
    return path


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def opened(capsys: pytest.CaptureFixture[str], keyring: Path, tmp_path: Path) -> Path:
    blob = seal_sample(capsys, keyring, tmp_path, "smartcard")
    code, _, err = run(capsys, *open_args(keyring, tmp_path, blob, "smartcard"))
    assert code == 0, err
    out = tmp_path / "native.bin"
    assert out.read_bytes() == (SAMPLES / "smartcard.bin").read_bytes()
    return out


def test_decrypted_output_is_owner_only(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], usual_umask: None
) -> None:
    out = opened(capsys, keyring_path, tmp_path)
    assert out.stat().st_mode & 0o777 == 0o600


def test_link_at_the_old_predictable_temporary_name_redirects_nothing(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # What an attacker could plant before: the name was .NAME.PID.tmp, opened following links.
    (tmp_path / f".native.bin.{os.getpid()}.tmp").symlink_to(victim)
    opened(capsys, keyring_path, tmp_path)
    assert victim.read_bytes() == b"precious"


def test_link_at_the_destination_is_replaced_not_followed(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "native.bin").symlink_to(victim)
    out = opened(capsys, keyring_path, tmp_path)
    assert not out.is_symlink()
    assert victim.read_bytes() == b"precious"


def test_no_temporary_file_is_left_behind(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opened(capsys, keyring_path, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
