"""The gateway's two proxies as an operator runs them: ``spice-migration-gateway proxy --config``.

Each host (source, target) has its own TOML config, its own replay database and the keyring
both hosts share (made with ``keys generate``, owner-only). The proxy processes are started
through the :class:`~tests.e2e.rig.Rig`, so they are stopped by pid with everything else; their
JSON log lines (audit events included) land in the rig's log file for the proxy, which
:class:`GatewayProxy` reads back.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rig import DEFAULT_TIMEOUT, LOCALHOST, ManagedProcess, Rig, RigError, wait_until

__all__ = [
    "SOURCE_HOST",
    "TARGET_HOST",
    "GatewayHost",
    "GatewayProxy",
    "gateway_command",
    "generate_identities",
    "generate_keyring",
    "start_proxy",
]

SOURCE_HOST = "source-host"
TARGET_HOST = "target-host"

#: Tests leave migrations unfinished on purpose; a stopping proxy must not wait long for them.
TEST_LIMITS: dict[str, float] = {"shutdown_grace": 0.5}


def gateway_command() -> list[str]:
    """The installed ``spice-migration-gateway`` beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("spice-migration-gateway")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]


def generate_keyring(path: Path, timeout: float = 60.0) -> Path:
    """Create a keyring with one active key through the CLI, as an operator would."""
    result = subprocess.run(
        [*gateway_command(), "keys", "generate", "--keyring", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RigError(f"keys generate failed ({result.returncode}): {result.stderr.strip()}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o600:
        raise RigError(f"keys generate left {path.name} with mode {mode:o}, not 600")
    return path


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*gateway_command(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        what = " ".join(args[:2])
        raise RigError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _fingerprint(text: str) -> str:
    found = re.search(r"sha256:[0-9a-f ]+", text)
    if found is None:
        raise RigError(f"no fingerprint printed: {text.strip()[:200]}")
    return found.group(0).strip()


def generate_identities(folder: Path, hosts: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    """Each host's identity and a trust store of every other host's, made through the CLI as
    an operator would (``host-init``, ``host-export``, ``trust-add`` with the fingerprint the
    peer printed): host id -> (identity file, trust store)."""
    folder.mkdir(parents=True, exist_ok=True)
    exported: dict[str, tuple[Path, str]] = {}
    for host in hosts:
        identity = folder / f"{host}.identity.json"
        _cli("keys", "host-init", "--identity", str(identity), "--host-id", host)
        public = folder / f"{host}.pub.json"
        result = _cli("keys", "host-export", "--identity", str(identity), "--output", str(public))
        exported[host] = (public, _fingerprint(result.stderr))
    files = {}
    for host in hosts:
        trust = folder / f"{host}.trust.json"
        for other in hosts:
            if other != host:
                public, fingerprint = exported[other]
                _cli(
                    "keys",
                    "trust-add",
                    str(public),
                    "--fingerprint",
                    fingerprint,
                    "--trust-store",
                    str(trust),
                )
        files[host] = (folder / f"{host}.identity.json", trust)
    return files


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything written here
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    return ["", header, *(f"{key} = {_toml(value)}" for key, value in values.items())]


@dataclass(frozen=True)
class GatewayHost:
    """One host's gateway: its id, and where its keyring, replay database and configs live.

    The replay database outlives the proxy processes, as on a real host: a blob accepted by
    one run of the target proxy is still refused as replayed by the next.
    """

    host_id: str
    keyring: Path
    replay_db: Path
    workdir: Path
    #: The host's identity and trust store, for the identity suite.
    identity: tuple[Path, Path] | None = None

    def write_config(
        self,
        name: str,
        *,
        listen_port: int,
        upstream_port: int,
        vm_id: uuid.UUID,
        peers: Mapping[str, Sequence[int]],
        peer_listen: int | None = None,
        peer_links: Mapping[str, int] | None = None,
        limits: Mapping[str, Any] | None = None,
        suite: str = "shared-key",
    ) -> Path:
        """A config with one route (``listen_port`` -> ``upstream_port``) and ``peers``
        (host id -> the ports where clients reach that host's proxy); the peer link listens on
        ``peer_listen`` and reaches each peer at ``peer_links[host id]``; every peer uses
        ``suite`` (the identity suite needs this host's identity files)."""
        lines = [
            f"host_id = {_toml(self.host_id)}",
            f"keyring = {_toml(str(self.keyring))}",
            f"replay_db = {_toml(str(self.replay_db))}",
        ]
        if peer_listen is not None:
            lines.append(f"peer_listen = {_toml(f'{LOCALHOST}:{peer_listen}')}")
        if suite == "identity":
            if self.identity is None:
                raise RigError(f"{self.host_id} has no identity for the identity suite")
            lines.append(f"identity = {_toml(str(self.identity[0]))}")
            lines.append(f"trust_store = {_toml(str(self.identity[1]))}")
        lines += _table("[limits]", {**TEST_LIMITS, **(limits or {})})
        for host_id, ports in peers.items():
            addresses = [f"{LOCALHOST}:{port}" for port in ports]
            peer: dict[str, Any] = {"host_id": host_id, "addresses": addresses, "suite": suite}
            if peer_links and host_id in peer_links:
                peer["peer_address"] = f"{LOCALHOST}:{peer_links[host_id]}"
            lines += _table("[[peers]]", peer)
        lines += _table(
            "[[routes]]",
            {
                "name": "vm",
                "listen": f"{LOCALHOST}:{listen_port}",
                "upstream": f"{LOCALHOST}:{upstream_port}",
                "vm_id": str(vm_id),
            },
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


class GatewayProxy:
    """A running proxy process and the JSON lines it logged so far."""

    def __init__(self, process: ManagedProcess, listen_port: int) -> None:
        self.process = process
        self.listen_port = listen_port
        self.log_path = process.log_paths[0]

    @property
    def name(self) -> str:
        return self.process.name

    def records(self) -> list[dict[str, Any]]:
        """Every JSON object line of the log (the rig's command line and any stray text are
        not JSON objects and are skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def audit(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """The audit records called ``event`` whose fields equal ``match``, in order."""
        return [
            r
            for r in self.records()
            if r.get("event") == event and all(r.get(k) == v for k, v in match.items())
        ]

    def wait_audit(
        self, event: str, timeout: float = DEFAULT_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = self.audit(event, **match)
            if found:
                return found[0]
            self.process.check_alive(f"waiting for audit event {event}")
            return None

        shown = " ".join(f"{k}={v}" for k, v in match.items())
        return wait_until(check, timeout, f"{self.name}: audit {event} {shown}".rstrip())

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once the proxy listens on every route (it audits proxy_started then)."""
        self.wait_audit("proxy_started", timeout)

    def problems(self) -> list[dict[str, Any]]:
        """Records at warning level or above (refusals are audited at warning)."""
        return [r for r in self.records() if r.get("level") in ("warning", "error", "critical")]


def start_proxy(rig: Rig, name: str, config: Path, listen_port: int) -> GatewayProxy:
    """Start ``spice-migration-gateway proxy --config``; :meth:`GatewayProxy.wait_ready`
    waits until it listens (start several, then wait: each takes a second to import)."""
    process = rig.start_process(name, [*gateway_command(), "proxy", "--config", str(config)])
    return GatewayProxy(process, listen_port)
