"""Counters and gauges, rendered in the Prometheus text format for the control API."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """A tiny thread-safe metrics registry; names follow Prometheus conventions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}

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
