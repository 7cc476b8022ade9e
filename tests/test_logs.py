"""Log lines: RFC 3339 UTC timestamps (and Unix seconds for machines); audit records do not
repeat the time; one clock skew for library, command and proxy."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.envelope import DEFAULT_CLOCK_SKEW, MAX_CLOCK_SKEW, Policy
from gateway.errors import ConfigError
from gateway.proxy.config import Limits
from gateway.service.logs import audit, configure_logging, log, rfc3339

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger("spice_migration_gateway")
    saved = (root.handlers[:], root.level, root.propagate)
    stream = io.StringIO()
    configure_logging("debug", stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level, root.propagate = saved


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1_803_893_400.25) == "2027-03-01T09:30:00.250000Z"


def test_log_and_audit_lines_carry_rfc3339_time(lines: io.StringIO) -> None:
    log(logging.INFO, "listening", route="web01")
    audit("proxy_started", "proxy started", host_id="host-a")
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert len(records) == 2
    for record in records:
        assert RFC3339_UTC.match(record["time"]), record
        moment = dt.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs(moment.replace(tzinfo=dt.UTC).timestamp() - record["ts"]) < 2e-6
        assert list(record)[:2] == ["time", "ts"]
        assert "at" not in record
    assert records[1]["event"] == "proxy_started"


def test_one_clock_skew() -> None:
    assert Policy().clock_skew == Limits().clock_skew == DEFAULT_CLOCK_SKEW == 30
    Policy(clock_skew=MAX_CLOCK_SKEW)
    with pytest.raises(ConfigError, match=f"0 to {MAX_CLOCK_SKEW} seconds"):
        Policy(clock_skew=MAX_CLOCK_SKEW + 1)
    with pytest.raises(ValueError, match="clock_skew"):
        Limits(clock_skew=MAX_CLOCK_SKEW + 1)
