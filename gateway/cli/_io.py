"""Small I/O helpers shared by the CLI verbs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from gateway.errors import TooLarge


class UsageError(Exception):
    """Something the user named cannot be used (a file, a socket, standard output)."""


#: No CLI input needs more than this; refused before it is read whole.
MAX_INPUT = 128 * 1024 * 1024


def read_input(path: str, limit: int = MAX_INPUT) -> bytes:
    """The bytes of ``path`` (``-`` for stdin), refusing more than ``limit``."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{path}: more than {limit} bytes")
    return data


def refuse_terminal(path: str | None) -> None:
    """Refuse to write binary to a terminal (as gzip does): checked before any work is done."""
    if (path is None or path == "-") and sys.stdout.isatty():
        raise UsageError(
            "refusing to write binary data to a terminal; use --out FILE or redirect stdout"
        )


def write_output(path: str | None, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, or to stdout when ``path`` is None or ``-``.

    The bytes go to an unpredictable temporary file in the destination's directory, created
    exclusively (``O_EXCL``, no symbolic link followed) with mode 0600 whatever the umask, since
    it may hold decrypted state; it is fsynced and renamed over ``path``. A link planted at the
    temporary name cannot redirect the write, and one at ``path`` is replaced, not followed.
    """
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    directory = target.parent
    # mkstemp: a random name, O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600.
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
