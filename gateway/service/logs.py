"""Structured (JSON lines) logging and the audit trail.

Audit events are ordinary log records on the ``spice_migration_gateway.audit`` logger with an
``event`` name and fields; operators route that logger wherever their audit trail lives.
Nothing here ever formats key material: callers pass ids, never secrets.

Each line starts with ``time``, an RFC 3339 UTC timestamp with microseconds
(``2027-03-01T09:30:00.123456Z``), and ``ts``, the same instant in Unix seconds for machines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["AUDIT", "LOG", "JsonFormatter", "audit", "configure_logging", "log", "rfc3339"]

LOG = logging.getLogger("spice_migration_gateway")
AUDIT = logging.getLogger("spice_migration_gateway.audit")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def rfc3339(seconds: float) -> str:
    """``seconds`` (Unix time) as RFC 3339 in UTC with microseconds, ending in ``Z``."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("spice_migration_gateway")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def log(level: int, message: str, **fields: Any) -> None:
    """A structured operational log line (``fields`` become JSON keys)."""
    LOG.log(level, message, extra={"fields": fields})


def audit(event: str, message: str, **fields: Any) -> None:
    """Record an audit event (always at INFO or above, never with secrets)."""
    level = logging.WARNING if fields.get("outcome") in ("refused", "failed") else logging.INFO
    AUDIT.log(level, message, extra={"fields": {"event": event, **fields}})
