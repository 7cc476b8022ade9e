"""Every metric the code counts is declared, with its help text, in one table.

An undeclared family would still be rendered, but without HELP and TYPE lines and without its
series at zero from the start, so alerting rules would not see it before its first event.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.service.metrics import FAMILIES, Metrics

ROOT = Path(__file__).resolve().parents[1]
USE = re.compile(r"\.(?:inc|set)\(\s*\"(smg_[a-z_]+)\"")


def test_every_counted_family_is_declared() -> None:
    used = {
        name
        for path in (ROOT / "gateway").rglob("*.py")
        for name in USE.findall(path.read_text())
    }
    assert len(used) > 10  # the pattern still finds the calls
    assert used <= set(FAMILIES), sorted(used - set(FAMILIES))


def test_every_declared_family_is_rendered_with_help_and_type() -> None:
    text = Metrics().render()
    for name, (kind, _) in FAMILIES.items():
        assert f"# HELP {name} " in text, name
        assert f"# TYPE {name} {kind}" in text, name
