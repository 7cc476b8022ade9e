#!/usr/bin/env python3
"""HTTP request head bytes -> (method, path) (``parse_request_head``: what the monitoring
listener reads from a scraper before answering ``/metrics`` or ``/healthz``).

Oracle: only GatewayError escapes and its message stays short; an input over the size limit is
refused as TooLarge; what parses is an upper-case method and a printable absolute path without a
query, taken from the request line.
"""

import _harness

with _harness.instrumented("gateway.service.http"):
    from gateway.errors import GatewayError
    from gateway.service.http import MAX_HEAD, parse_request_head

__all__ = ["TestOneInput"]


def TestOneInput(data: bytes) -> None:
    try:
        method, path = parse_request_head(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data), MAX_HEAD)
        return
    if not method.isupper() or not method.isascii():
        raise _harness.OracleFailure("a method that is not an upper-case token")
    if not path.startswith("/") or "?" in path or not path.isprintable() or " " in path:
        raise _harness.OracleFailure("a path that is not a printable absolute path")
    if not data.startswith(f"{method} {path}".encode()):
        raise _harness.OracleFailure("method and path not taken from the request line")


if __name__ == "__main__":
    _harness.main(TestOneInput)
