"""The local control API: JSON lines over a Unix socket, for operators and non-Python tools.

Each request is one JSON object on one line, each answer likewise::

    {"cmd": "health"}   -> {"ok": true, "status": "serving", ...}
    {"cmd": "metrics"}  -> {"ok": true, "metrics": {"name{labels}": value, ...}}
    {"cmd": "prometheus"} -> {"ok": true, "text": "# TYPE ..."}
    {"cmd": "reload"}   -> {"ok": true, "keys": N}      (re-reads the keyring, like SIGHUP)

The socket is created with mode 0600: whoever can reach it is an operator of this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.service.logs import LOG

__all__ = ["MAX_REQUEST", "ControlServer"]

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]


class ControlServer:
    """Serves named commands on a Unix socket; each command is a plain function."""

    def __init__(self, path: str | Path, commands: dict[str, Handler]) -> None:
        self.path = Path(path)
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await _reply(writer, {"ok": False, "error": "request too large"})
                    break
                if not line:
                    break
                await _reply(writer, await self._dispatch(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request needs a string 'cmd'"}
        handler = self.commands.get(request["cmd"])
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown cmd; one of: {', '.join(sorted(self.commands))}",
            }
        try:
            answer = handler(request)
            if isinstance(answer, Awaitable):
                answer = await answer
        except Exception as error:  # a command's failure is reported, never fatal to the server
            LOG.warning("control command failed", extra={"fields": {"cmd": request["cmd"]}})
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return {"ok": True, **answer}


async def _reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def request(path: str | Path, command: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """A blocking client for scripts and the CLI: send one command, return the answer."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(command).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > 16 * 1024 * 1024:
                raise ValueError("answer too large")
    answer = json.loads(buffer)
    if not isinstance(answer, dict):
        raise ValueError("answer is not an object")
    return answer
