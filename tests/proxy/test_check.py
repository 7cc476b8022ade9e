"""``proxy --check`` checks what starting needs: a config it passes starts, and each thing
that would stop the start is reported by --check first."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.proxy.config import parse_config
from gateway.proxy.preflight import preflight
from gateway.proxy.server import ProxyServer

from .conftest import TEST_LIMITS, TlsFiles, config_toml, free_port
from .peers import bounded
from .test_cli import run_cli


class Setup:
    """A host's files and a config over them, each piece replaceable by a test."""

    def __init__(self, tmp_path: Path, keyring: Path, tls: TlsFiles, socket_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.keyring = keyring
        self.state = tmp_path / "state"
        self.state.mkdir(mode=0o700)
        self.tls = tmp_path / "tls"
        shutil.copytree(tls.cert.parent, self.tls)
        self.replay_db = self.state / "replay.sqlite"
        self.control_socket = socket_dir / "control.sock"
        self.route: dict[str, Any] = {
            "name": "vm",
            "listen": f"127.0.0.1:{free_port()}",
            "upstream": "127.0.0.1:1",
            "vm_id": str(uuid.uuid4()),
            "tls_cert": str(self.tls / "cert.pem"),
            "tls_key": str(self.tls / "key.pem"),
        }
        self.metrics_listen = f"127.0.0.1:{free_port()}"
        self.peer_listen: str | None = None

    def text(self) -> str:
        body = config_toml(
            host_id="host-a",
            keyring=self.keyring,
            replay_db=self.replay_db,
            routes=[self.route],
            limits=TEST_LIMITS,
            control_socket=self.control_socket,
        )
        peer = "" if self.peer_listen is None else f'peer_listen = "{self.peer_listen}"\n'
        return f'metrics_listen = "{self.metrics_listen}"\n' + peer + body

    def problems(self) -> list[str]:
        return preflight(parse_config(self.text().encode()))


@pytest.fixture
def setup(tmp_path: Path, keyring_path: Path, tls_files: TlsFiles, socket_dir: Path) -> Setup:
    return Setup(tmp_path, keyring_path, tls_files, socket_dir)


async def test_a_config_that_passes_starts(setup: Setup) -> None:
    assert setup.problems() == []
    proxy = ProxyServer(parse_config(setup.text().encode()))
    await proxy.start()
    try:
        # Running, it holds what it checked: a second check finds every address taken.
        problems = setup.problems()
        assert any("route vm: cannot listen" in p for p in problems)
        assert any("metrics_listen: cannot listen" in p for p in problems)
        assert any("control_socket" in p and "in use" in p for p in problems)
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
    assert setup.problems() == []


def _busy(setup: Setup) -> Callable[[], Any]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    setup.route["listen"] = f"127.0.0.1:{sock.getsockname()[1]}"
    return sock.close


def _busy_peer_link(setup: Setup) -> Callable[[], Any]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    setup.peer_listen = f"127.0.0.1:{sock.getsockname()[1]}"
    return sock.close


def _stale_socket(setup: Setup) -> Callable[[], Any]:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(setup.control_socket))
    sock.close()  # bound, never listening: what a killed proxy leaves behind
    return lambda: None


BROKEN: dict[str, tuple[Callable[[Setup], Any], str | None]] = {
    "keyring missing": (lambda s: s.keyring.unlink(), "cannot open keyring"),
    "keyring readable by others": (lambda s: s.keyring.chmod(0o644), "accessible to group"),
    "replay directory missing": (lambda s: shutil.rmtree(s.state), "does not exist"),
    "replay directory for everyone": (lambda s: s.state.chmod(0o777), "writable by everyone"),
    "replay db readable by others": (
        lambda s: (s.replay_db.write_bytes(b""), s.replay_db.chmod(0o644)),
        "replay_db",
    ),
    "tls cert missing": (lambda s: (s.tls / "cert.pem").unlink(), "cannot load tls_cert"),
    "tls key not matching": (
        lambda s: (s.tls / "key.pem").write_text((s.tls / "cert.pem").read_text()),
        "cannot load tls_cert",
    ),
    "tls key readable by all": (lambda s: (s.tls / "key.pem").chmod(0o644), "tls_key"),
    "listen port in use": (_busy, "cannot listen on"),
    "listen address not local": (
        lambda s: s.route.update(listen="192.0.2.1:5900"),
        "cannot listen on",
    ),
    "metrics on a route's port": (
        lambda s: setattr(s, "metrics_listen", s.route["listen"]),
        "also where route vm listens",
    ),
    "peer link port in use": (_busy_peer_link, "peer_listen: cannot listen on"),
    "peer link on the metrics port": (
        lambda s: setattr(s, "peer_listen", s.metrics_listen),
        "peer_listen: ",
    ),
    "control socket directory missing": (
        lambda s: setattr(s, "control_socket", s.tmp_path / "nowhere" / "c.sock"),
        "does not exist",
    ),
    "control socket is a file": (lambda s: s.control_socket.write_text(""), "not a socket"),
    "stale control socket": (_stale_socket, None),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_check_finds_what_would_stop_the_start(setup: Setup, case: str) -> None:
    breaks, message = BROKEN[case]
    undo = breaks(setup)
    try:
        problems = setup.problems()
        if message is None:
            assert problems == []
        else:
            assert len(problems) == 1, problems
            assert message in problems[0]
        started = True
        proxy: ProxyServer | None = None
        try:
            proxy = ProxyServer(parse_config(setup.text().encode()))
            await proxy.start()
        except (GatewayError, OSError):
            started = False
        finally:
            if proxy is not None:
                await bounded(proxy.stop(), "the proxy to stop")
        if case not in OWN_RULES:
            # What --check refuses fails the start; what it lets through starts.
            assert started == (message is None), case
    finally:
        if callable(undo):
            undo()


#: Refused by --check as unsafe although the start itself would not fail on them.
OWN_RULES = {
    "replay directory for everyone",
    "replay db readable by others",
    "tls key readable by all",
}


async def test_the_command_reports_every_problem_on_one_line(setup: Setup) -> None:
    setup.keyring.chmod(0o644)
    (setup.tls / "cert.pem").unlink()
    config = setup.tmp_path / "proxy.toml"
    config.write_text(setup.text())
    code, out, err = await run_cli("proxy", "--config", str(config), "--check")
    assert (code, out) == (2, "")
    assert err.startswith("ConfigError: ")
    assert "accessible to group" in err
    assert "cannot load tls_cert" in err
    assert err.count("\n") == 1
