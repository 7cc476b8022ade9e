"""The optional HTTP listener for monitoring: ``/metrics`` (Prometheus text format) and
``/healthz`` (JSON). Read-only, no authentication: bind it to loopback or a management network.

One request per connection, a bounded request head, a bounded wait for it and for the answer
to be taken, at most ``MAX_CONNECTIONS`` at once (a new one closes the oldest), no request body;
anything but ``GET``/``HEAD`` of those two paths gets a 4xx answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from gateway.errors import GatewayError, ProtocolError, TooLarge

__all__ = ["MAX_HEAD", "PROMETHEUS_CONTENT_TYPE", "MonitoringServer", "parse_request_head"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The request line and headers together; a scraper sends a few hundred bytes.
MAX_HEAD = 8192
#: How long a client may take to send its request head, and then to take the answer.
HEAD_TIMEOUT = 10.0
#: Connections served at once; a scraper uses one. Each further one closes the oldest, so that
#: idle or slow clients can neither hold the process's file descriptors (the routes need
#: them) nor lock the scraper out.
MAX_CONNECTIONS = 16

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MonitoringServer:
    """Serves the metrics text and the health document over HTTP/1.1."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], str],
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._health = health
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        #: Connections being served, oldest first (a dict keeps the order of arrival).
        self._open: dict[asyncio.StreamWriter, None] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEAD, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            # A scraper's request takes one round trip: the oldest connection makes room, so
            # idle or trickling clients cannot lock the scraper out.
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
        self._open[writer] = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                answer = (400, "text/plain", b"bad request\n", False)
            else:
                answer = self._route(head)
            # A client that does not read its answer is not waited for beyond the deadline.
            await asyncio.wait_for(_answer(writer, *answer), HEAD_TIMEOUT)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), HEAD_TIMEOUT)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
        finally:
            self._open.pop(writer, None)

    def _route(self, head: bytes) -> tuple[int, str, bytes, bool]:
        try:
            method, target = parse_request_head(head)
        except GatewayError:
            return 400, "text/plain", b"bad request\n", False
        if target not in ("/metrics", "/healthz"):
            return 404, "text/plain", b"not found; try /metrics or /healthz\n", False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", False
        head_only = method == "HEAD"
        if target == "/metrics":
            return 200, PROMETHEUS_CONTENT_TYPE, self._metrics().encode(), head_only
        health = self._health()
        status = 200 if health.get("status") == "serving" else 503
        body = (json.dumps(health, separators=(",", ":")) + "\n").encode()
        return status, "application/json", body, head_only


_TOKEN = re.compile(rb"[A-Z]{1,16}")
_TARGET = re.compile(rb"/[!-~]{0,2047}")


def parse_request_head(head: bytes) -> tuple[str, str]:
    """(method, path without the query) of an HTTP/1.x request head ending in CRLF CRLF.

    Only the request line is interpreted; headers are ignored (no body is ever read). Raises
    TooLarge over MAX_HEAD bytes, ProtocolError for anything but ``METHOD SP /target SP
    HTTP/1.x``.
    """
    if len(head) > MAX_HEAD:
        raise TooLarge(f"HTTP request head larger than {MAX_HEAD} bytes")
    if not head.endswith(b"\r\n\r\n"):
        raise ProtocolError("HTTP request head does not end with an empty line")
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise ProtocolError("HTTP request line is not METHOD TARGET HTTP/1.x")
    method, target = parts[0], parts[1]
    if not _TOKEN.fullmatch(method):
        raise ProtocolError("HTTP method is not an upper-case token")
    if not _TARGET.fullmatch(target):
        raise ProtocolError("HTTP target is not an absolute path")
    return method.decode(), target.split(b"?", 1)[0].decode()


async def _answer(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, head_only: bool
) -> None:
    reason = _REASONS.get(status, "Service Unavailable")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head if head_only else head + body)
    await writer.drain()
