"""A real Prometheus server scrapes both proxies' ``/metrics`` while a scripted migration runs
through them, and its HTTP API then reports the sealed and accepted counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from ..tools import require
from .conftest import Proxies, free_port
from .peers import bounded
from .test_control import prepare, relay_all, seal_all

#: Prometheus starts in a few seconds here; on a loaded machine it may take longer.
PROMETHEUS_TIMEOUT = 45.0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return bytes(answer.read())


async def fetch(url: str) -> bytes | None:
    """The body at ``url``, or None while nothing answers there."""
    try:
        return await asyncio.to_thread(_get, url)
    except (OSError, ValueError):
        return None


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, targets: list[str]) -> AsyncIterator[str]:
    """A Prometheus server scraping ``targets`` every second; yields its base URL."""
    binary = require("prometheus", "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: spice-migration-gateway\n"
        f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> None:
            while await fetch(f"{base}/-/ready") is None:
                if process.returncode is not None:
                    raise AssertionError((tmp_path / "prometheus.log").read_text()[-3000:])
                await asyncio.sleep(0.2)

        await bounded(ready(), "Prometheus to be ready", PROMETHEUS_TIMEOUT)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def query(base: str, expression: str) -> float | None:
    body = await fetch(f"{base}/api/v1/query?query={urllib.parse.quote(expression)}")
    if body is None:
        return None
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def until(base: str, expression: str, expected: float) -> None:
    """Until Prometheus has scraped ``expected`` for ``expression`` (bounded)."""

    async def poll() -> None:
        while await query(base, expression) != expected:
            await asyncio.sleep(0.5)

    await bounded(poll(), f"Prometheus to see {expression} == {expected}", PROMETHEUS_TIMEOUT)


async def test_prometheus_scrapes_a_migration(proxies: Proxies, tmp_path: Path) -> None:
    ports = (free_port(), free_port())
    targets = [f"127.0.0.1:{port}" for port in ports]
    async with proxies.pair(metrics=ports) as rig, prometheus(tmp_path, targets) as base:
        # Both gateways are up and scraped, every counter already there at zero.
        await until(base, 'count(up{job="spice-migration-gateway"} == 1)', 2)
        await until(base, "count(smg_sealed_total)", 14)
        await until(base, "sum(smg_sealed_total) + sum(smg_opened_total)", 0)

        session = rig.session(0x50)
        await prepare(session)
        blobs = await seal_all(rig, session)
        assert await relay_all(rig, session, blobs) == [True] * len(blobs)

        source, target = targets
        await until(base, f'sum(smg_sealed_total{{instance="{source}"}})', len(blobs))
        await until(base, f'sum(smg_opened_total{{instance="{target}"}})', len(blobs))
        await until(base, f'smg_migrations_completed_total{{instance="{target}"}}', 1)
        assert await query(base, 'sum(smg_refused_total{reason="open"})') == 0
        assert await query(base, f'sum(smg_opened_total{{instance="{source}"}})') == 0
