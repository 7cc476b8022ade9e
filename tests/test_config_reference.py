"""docs/config.md is generated from the config model: stale or incomplete, this fails."""

from __future__ import annotations

from pathlib import Path

from gateway.proxy.config import Limits, Peer, ProxyConfig, Route
from gateway.proxy.reference import missing, render

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/config.md is stale: python -m gateway.proxy.reference > docs/config.md"
    )


def test_every_key_is_documented() -> None:
    assert missing() == []


def test_every_key_appears_with_its_bounds() -> None:
    text = render()
    for model in (ProxyConfig, Limits, Peer, Route):
        for name in model.model_fields:
            assert f"| `{name}` |" in text
    assert "| `max_connections` | integer | `1024` | >= 1, <= 65536 |" in text
    assert "| `link_timeout` | number | `10.0` | > 0, <= 600 |" in text
    assert "## `[[routes]]`" in text
    assert "## `[limits]`" in text
