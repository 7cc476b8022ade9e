"""The local control API: JSON lines over a Unix socket, for operators and non-Python tools.

Each request is one JSON object on one line, each answer likewise::

    {"cmd": "health"}   -> {"ok": true, "status": "serving", ...}  (or "starting", "stopping")
    {"cmd": "metrics"}  -> {"ok": true, "metrics": {"name{labels}": value, ...}}
    {"cmd": "prometheus"} -> {"ok": true, "text": "# TYPE ..."}
    {"cmd": "reload"}   -> {"ok": true, "keys": N}      (re-reads the keyring, like SIGHUP)

The socket is created with mode 0600: whoever can reach it is an operator of this host.
Each server needs its own socket path: one refuses to start while a live server answers on its
path (a stale socket left by a crash is replaced), and removes at close only the socket it
created itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
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
        #: (device, inode) of the socket this server created: the only one it may remove.
        self._identity: tuple[int, int] | None = None

    async def start(self) -> None:
        """Listen on the path; ConfigError if another live server answers there already."""
        self._remove_stale()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        except OSError as error:
            raise ConfigError(
                f"control_socket {self.path}: cannot listen: "
                f"{os.strerror(error.errno) if error.errno else error.strerror}"
            ) from None
        finally:
            os.umask(old_umask)
        info = os.lstat(self.path)
        self._identity = (info.st_dev, info.st_ino)

    def _remove_stale(self) -> None:
        """Remove a socket nobody listens on (a crashed server's); refuse a live one."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            return  # binding fails with a clear error; never remove what is not a socket
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except OSError:
            pass  # unreachable for another reason (permissions, a full backlog): treat as live
        finally:
            probe.close()
        raise ConfigError(
            f"control socket {self.path} is in use by a running process; each proxy needs "
            "its own control_socket"
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        identity, self._identity = self._identity, None
        if identity is None:
            return
        # Remove the path only if it is still this server's socket, not a successor's.
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)

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
