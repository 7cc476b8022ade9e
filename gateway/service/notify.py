"""systemd's notify protocol, client side: READY, RELOADING, STOPPING, STATUS and WATCHDOG.

The protocol is one datagram per notification to the Unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` names an abstract socket), each a newline-separated list of ``KEY=VALUE``
assignments. ``$WATCHDOG_USEC`` (for ``$WATCHDOG_PID``, when set) asks for ``WATCHDOG=1`` at
least that often; :class:`Notifier` pings at half the interval. Without ``$NOTIFY_SOCKET``
every call does nothing, so the proxy runs the same outside systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

#: A notification is a handful of short assignments; refuse to send anything longer.
MAX_DATAGRAM = 4096


class Notifier:
    """Sends notifications to the service manager named by the environment, if any."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **assignments: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); False when nobody listens."""
        if self.address is None:
            return False
        text = "\n".join(f"{key.upper()}={value}" for key, value in assignments.items())
        data = text.encode()
        if len(data) > MAX_DATAGRAM or "\n" in "".join(str(v) for v in assignments.values()):
            raise ValueError("notification too long or with a line break in a value")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(data, self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status, mainpid=os.getpid())
        if self.watchdog_interval is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._ping())

    def reloading(self) -> None:
        self.notify(reloading=1, status="reloading")

    def stopping(self) -> None:
        self.notify(stopping=1, status="stopping")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _ping(self) -> None:
        """WATCHDOG=1 at half the interval, from the event loop: a stuck loop stops the pings."""
        assert self.watchdog_interval is not None
        while True:
            self.notify(watchdog=1)
            await asyncio.sleep(self.watchdog_interval / 2)
