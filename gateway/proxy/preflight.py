"""``proxy --check``: everything starting the proxy needs, checked without starting it.

The config model already refuses what is wrong in the file itself. Here the host is asked: the
keyring loads (owner-only, owned by this user), the replay database's directory exists and is
this user's to write, the TLS files load as pairs, every listen address can be bound, and the
control socket is not in use. A config that passes starts, unless something changes in between.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from gateway.errors import GatewayError
from gateway.keys import load_keyring
from gateway.proxy.config import ProxyConfig, parse_address

__all__ = ["preflight"]


def preflight(config: ProxyConfig) -> list[str]:
    """Every problem that would stop this config from starting, one line each."""
    problems: list[str] = []
    try:
        load_keyring(config.keyring)
    except GatewayError as error:
        problems.append(str(error))
    problems += _replay_db(Path(config.replay_db))
    problems += _tls(config)
    problems += _listeners(config)
    if config.control_socket:
        problems += _control_socket(Path(config.control_socket))
    return problems


def _private_file(path: Path, what: str) -> list[str]:
    """An existing file must be this user's (or root's) and closed to group and others."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return []
    except OSError as error:
        return [f"{what} {path}: {error.strerror}"]
    if not stat.S_ISREG(info.st_mode):
        return [f"{what} {path} is not a regular file"]
    problems = []
    if info.st_uid not in (os.geteuid(), 0):
        problems.append(f"{what} {path} is owned by uid {info.st_uid}, not by this user")
    if info.st_mode & 0o077:
        problems.append(
            f"{what} {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); make it 0600"
        )
    return problems


def _writable_directory(path: Path, what: str) -> list[str]:
    if not path.is_dir():
        return [f"{what}: directory {path} does not exist"]
    if not os.access(path, os.W_OK | os.X_OK):
        return [f"{what}: directory {path} is not writable by this user"]
    if path.stat().st_mode & 0o002 and not path.stat().st_mode & stat.S_ISVTX:
        return [f"{what}: directory {path} is writable by everyone"]
    return []


def _replay_db(path: Path) -> list[str]:
    problems = _writable_directory(path.parent, "replay_db")
    problems += _private_file(path, "replay_db")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problems.append(f"replay_db {path} is not readable and writable by this user")
    return problems


def _tls(config: ProxyConfig) -> list[str]:
    from gateway.proxy.server import _client_tls, _upstream_tls

    problems = []
    for route in config.routes:
        for make in (_client_tls, _upstream_tls):
            try:
                make(route)
            except GatewayError as error:
                problems.append(str(error))
        if route.tls_key is not None and Path(route.tls_key).exists():
            mode = Path(route.tls_key).stat().st_mode
            if mode & 0o007:
                problems.append(
                    f"route {route.name}: tls_key {route.tls_key} is readable by others "
                    f"(mode {stat.S_IMODE(mode):04o})"
                )
    return problems


def _listeners(config: ProxyConfig) -> list[str]:
    wanted = [(f"route {route.name}", route.listen) for route in config.routes]
    if config.metrics_listen is not None:
        wanted.append(("metrics_listen", config.metrics_listen))
    if config.peer_listen is not None:
        wanted.append(("peer_listen", config.peer_listen))
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for what, text in wanted:
        address = parse_address(text)
        if address in seen:
            problems.append(f"{what}: {text} is also where {seen[address]} listens")
            continue
        seen[address] = what
        problems += _bindable(what, address)
    return problems


def _bindable(what: str, address: tuple[str, int]) -> list[str]:
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return [f"{what}: cannot resolve {host}: {error.strerror}"]
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the proxy binds: SO_REUSEADDR, so a port in TIME_WAIT is not a problem.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as error:
            return [f"{what}: cannot listen on {host}:{port}: {error.strerror}"]
    return []


def _control_socket(path: Path) -> list[str]:
    problems = _writable_directory(path.parent, "control_socket")
    if problems:
        return problems
    try:
        info = path.lstat()
    except FileNotFoundError:
        return []
    if not stat.S_ISSOCK(info.st_mode):
        return [f"control_socket {path} exists and is not a socket"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return []  # a stale socket of a proxy that is gone: start replaces it
    return [f"control_socket {path} is in use (a proxy is running)"]
