"""Counters and gauges, rendered in the Prometheus text format (control API and ``/metrics``).

Every family the proxy uses is declared here with its help text, and its series are present at
zero from the start (per route once the route is added), so that ``increase()`` and alerting
rules see a counter before its first event.
"""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["DATA_CHANNEL_NAMES", "FAMILIES", "Metrics"]

Labels = tuple[tuple[str, str], ...]

#: Channel label values of the channels that carry migration data.
DATA_CHANNEL_NAMES = ("main", "display", "inputs", "smartcard", "usbredir", "port", "webdav")

#: name -> (kind, help) of every family.
FAMILIES: dict[str, tuple[str, str]] = {
    "smg_sealed_total": ("counter", "Migration blobs sealed on this (source) host, by channel."),
    "smg_opened_total": (
        "counter",
        "Migration blobs authenticated, validated and passed to spice-server on this (target) "
        "host, by channel.",
    ),
    "smg_refused_total": (
        "counter",
        "Channels closed by a refusal, by reason (seal, open, protocol, sasl, peer_link_down, "
        "replay_store) and channel.",
    ),
    "smg_refused_by_route_total": ("counter", "Channels closed by a refusal, by route."),
    "smg_refused_by_client_total": (
        "counter",
        "Channels closed by a refusal, by client address (the first 256 addresses; the rest "
        'as "other").',
    ),
    "smg_connection_limits_total": (
        "counter",
        "Connections rejected or closed by a limit, by route and limit (max_connections, "
        "max_connections_per_route, max_connections_per_client, link_timeout, memory, "
        "stopping).",
    ),
    "smg_peer_announcements_total": (
        "counter",
        "Migration attempts announced over the peer link, by side (source: sent and taken; "
        "target: accepted).",
    ),
    "smg_peer_link_down_total": (
        "counter",
        "Migration attempts a source could not announce to its target, by reason.",
    ),
    "smg_peer_link_refused_total": (
        "counter",
        "Announcements or peer-link connections a target refused, by reason.",
    ),
    "smg_migrations_completed_total": (
        "counter",
        "Migrations whose every data channel was accepted on this (target) host.",
    ),
    "smg_replay_store_errors_total": (
        "counter",
        "Replay database failures while recording a blob (the blob was refused).",
    ),
    "smg_connections_total": ("counter", "Client connections accepted, by route."),
    "smg_connections_rejected_total": (
        "counter",
        "Client connections refused (connection limit or shutting down), by route.",
    ),
    "smg_bytes_total": ("counter", "Bytes forwarded, by sender (client or server)."),
    "smg_connections_active": ("gauge", "Client connections open now."),
}


class Metrics:
    """A tiny thread-safe metrics registry; names follow Prometheus conventions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        for name, (kind, text) in FAMILIES.items():
            self._help[name] = text
            (self._counters if kind == "counter" else self._gauges)[name] = {}
        for channel in DATA_CHANNEL_NAMES:
            for name in ("smg_sealed_total", "smg_opened_total"):
                self._counters[name][(("channel", channel),)] = 0.0
            for reason in ("seal", "open"):
                self._counters["smg_refused_total"][
                    (("channel", channel), ("reason", reason))
                ] = 0.0
        for sender in ("client", "server"):
            self._counters["smg_bytes_total"][(("sender", sender),)] = 0.0
        self._counters["smg_migrations_completed_total"][()] = 0.0
        self._counters["smg_replay_store_errors_total"][()] = 0.0
        for side in ("source", "target"):
            self._counters["smg_peer_announcements_total"][(("side", side),)] = 0.0
        self._gauges["smg_connections_active"][()] = 0.0

    def route_added(self, route: str) -> None:
        """A route's series, at zero unless it already has some."""
        key = (("route", route),)
        with self._lock:
            for name in (
                "smg_connections_total",
                "smg_connections_rejected_total",
                "smg_refused_by_route_total",
            ):
                self._counters[name].setdefault(key, 0.0)

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges[name][key] = value

    def get(self, name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        with self._lock:
            for table in (self._counters, self._gauges):
                if name in table and key in table[name]:
                    return table[name][key]
        return 0.0

    def snapshot(self) -> dict[str, float]:
        """Flat ``name{labels}`` -> value, for JSON consumers."""
        with self._lock:
            return {
                _series(name, key): value
                for table in (self._counters, self._gauges)
                for name, series in table.items()
                for key, value in series.items()
            }

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
                for name in sorted(table):
                    if name in self._help:
                        lines.append(f"# HELP {name} {self._help[name]}")
                    lines.append(f"# TYPE {name} {kind}")
                    for key, value in sorted(table[name].items()):
                        lines.append(f"{_series(name, key)} {value:g}")
        return "\n".join(lines) + "\n"


def _series(name: str, key: Labels) -> str:
    if not key:
        return name
    inner = ",".join(f'{label}="{_escape(value)}"' for label, value in key)
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
