"""Outside programs some tests run (promtool, systemd-analyze, prometheus, libvirtd).

Without the program such a test is skipped with the reason; ``SMG_REQUIRE_E2E=1`` (set by CI,
which installs them through ``.ci/``) turns the skip into a failure, so a missing install step
cannot pass as a green run.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str, package: str) -> str:
    """The path of ``program``, or skip (fail under SMG_REQUIRE_E2E=1) naming the package."""
    path = shutil.which(program) or next(
        (
            candidate
            for candidate in (f"/usr/sbin/{program}", f"/usr/bin/{program}")
            if os.access(candidate, os.X_OK)
        ),
        None,
    )
    if path is not None:
        return path
    reason = f"{program} not installed (Debian package {package}; bash .ci/install-e2e-deps)"
    if os.environ.get("SMG_REQUIRE_E2E") == "1":
        pytest.fail(f"SMG_REQUIRE_E2E=1 but {reason}", pytrace=False)
    pytest.skip(reason)
