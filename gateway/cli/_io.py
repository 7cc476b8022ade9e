"""Small I/O helpers shared by the CLI verbs."""

from __future__ import annotations

import os
import sys
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
    """Write ``data`` to ``path`` atomically, or to stdout when ``path`` is None or ``-``."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)
