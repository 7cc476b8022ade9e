"""A real libvirtd fires the gateway's qemu hook: a transient QEMU/TCG domain with SPICE on
loopback gets its route on the running proxy (and a real SPICE link through it reaches the
domain's spice-server), a domain with SPICE on 0.0.0.0 is refused with the hook's message in
libvirt's error, and destroying the domain removes the route.

libvirtd runs as root in a private mount namespace of its own, with its own /etc/libvirt (the
installed files, ``namespaces = [ ]`` in qemu.conf, the hook from contrib/libvirt),
/run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt bind-mounted from the
test's directory: the host's libvirt configuration and state are not touched. The test stops
what it started by PID (the domain with ``virsh destroy`` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.proxy.config import load_config
from gateway.proxy.server import ProxyServer
from gateway.spice.constants import ChannelType
from tests.proxy.conftest import LogRecords, free_port, keyring_path, logs, socket_dir
from tests.proxy.peers import LinkRefused, bounded, link_client
from tests.proxy.test_libvirt_hook import hook_config
from tests.tools import require

__all__ = ["keyring_path", "logs", "socket_dir"]  # fixtures used here

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent
HOOK = ROOT / "contrib" / "libvirt" / "spice-migration-gateway"
INSTALLED = "/opt/spice-migration-gateway/bin/spice-migration-gateway"
#: libvirtd's start, a domain's start and stop: seconds each here, more on a loaded machine.
LIBVIRT_TIMEOUT = 60.0
#: What libvirtd sees in place of the host's directories.
PRIVATE = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)


def domain_xml(name: str, spice_port: int, listen: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <graphics type='spice' port='{spice_port}' autoport='no'>
      <listen type='address' address='{listen}'/>
    </graphics>
    <video><model type='qxl' primary='yes'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _prepare_tree(base: Path, config: Path) -> dict[str, Path]:
    """Private copies of libvirt's directories, with the hook installed."""
    sources: dict[str, Path] = {}
    for path in PRIVATE:
        copy = base / path.strip("/").replace("/", "_")
        if Path(path).is_dir():
            shutil.copytree(path, copy, symlinks=True)
            shutil.copystat(path, copy)
        else:
            copy.mkdir(mode=0o755)
        sources[path] = copy
    etc = sources["/etc/libvirt"]
    shutil.rmtree(etc / "qemu" / "networks" / "autostart", ignore_errors=True)
    qemu_conf = etc / "qemu.conf"
    # This sandbox refuses QEMU's private /dev namespace (see the rig notes). /dev/kvm here
    # is root's alone: probed as libvirt-qemu, QEMU's capabilities would be found outdated
    # ("KVM was enabled when probing ... not available now") and re-probed on every domain
    # start, for tens of seconds; QEMU runs as root instead.
    qemu_conf.write_text(
        qemu_conf.read_text() + '\nnamespaces = [ ]\nuser = "root"\ngroup = "root"\n'
    )
    script = Path(sys.executable).with_name("spice-migration-gateway")
    hooks = etc / "hooks" / "qemu.d"
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / HOOK.name
    hook.write_text(
        HOOK.read_text()
        .replace(INSTALLED, str(script))
        .replace("/etc/spice-migration-gateway/proxy.toml", str(config))
    )
    hook.chmod(0o755)
    return sources


class Libvirt:
    """libvirtd (and virtlogd) in their own mount namespace; virsh from outside."""

    def __init__(self, base: Path, config: Path) -> None:
        self.base = base
        self.sources = _prepare_tree(base, config)
        self.socket = self.sources["/run/libvirt"] / "libvirt-sock"
        self.log = base / "libvirtd.log"
        self.virtlogd_pid = base / "virtlogd.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.domains: list[str] = []

    def start(self) -> None:
        # A fresh machine may lack a mount point (systemd-tmpfiles makes /run/libvirt when the
        # packaged service starts; nothing here starts it): make it, as that would.
        mounts = "".join(
            f"mkdir -p '{path}'; mount --bind '{copy}' '{path}'; "
            for path, copy in self.sources.items()
        )
        script = (
            f"set -e; {mounts}"
            f"virtlogd & echo $! > '{self.virtlogd_pid}'; "
            "exec libvirtd --pid-file /run/libvirt/libvirtd-test.pid"
        )
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["virsh", "-c", f"qemu:///system?socket={self.socket}", *args],
            capture_output=True,
            text=True,
            timeout=LIBVIRT_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"virsh {' '.join(args)}: {result.stderr.strip()}\n{self.log_tail()}"
            )
        return result

    def log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        qemu_logs = self.sources["/var/log/libvirt"] / "qemu"
        for path in sorted(qemu_logs.glob("*.log")):
            text += f"\n--- {path.name}\n" + path.read_text(errors="replace")[-2000:]
        return text[-6000:]

    async def ready(self) -> None:
        async def poll() -> None:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"libvirtd exited:\n{self.log_tail()}")
                if self.socket.exists():
                    result = await asyncio.to_thread(self.virsh, "version", check=False)
                    if result.returncode == 0:
                        return
                await asyncio.sleep(0.2)

        await bounded(poll(), "libvirtd to answer", LIBVIRT_TIMEOUT)

    def stop(self) -> None:
        for name in self.domains:
            self.virsh("destroy", name, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(self.virtlogd_pid.read_text().strip())
            os.kill(pid, signal.SIGTERM)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "libvirtd runs as root here (qemu:///system)"
    if shutil.which("unshare") is None:
        return "util-linux's unshare is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"no private mount namespace here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def machine() -> None:
    require("libvirtd", "libvirt-daemon-system")
    require("virsh", "libvirt-clients")
    require("qemu-system-x86_64", "qemu-system-x86")
    reason = _skip_reason()
    if reason is not None:
        if os.environ.get("SMG_REQUIRE_E2E") == "1":
            pytest.fail(f"SMG_REQUIRE_E2E=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@contextlib.asynccontextmanager
async def running(libvirt: Libvirt) -> AsyncIterator[Libvirt]:
    libvirt.start()
    try:
        await libvirt.ready()
        yield libvirt
    finally:
        await asyncio.to_thread(libvirt.stop)


def test_libvirtd_fires_the_hook(
    machine: None, tmp_path: Path, keyring_path: Path, socket_dir: Path, logs: LogRecords
) -> None:
    asyncio.run(asyncio.wait_for(_scenario(tmp_path, keyring_path, socket_dir, logs), 240))


async def _scenario(tmp_path: Path, keyring: Path, socket_dir: Path, logs: LogRecords) -> None:
    spice_port, listen_port = free_port(), free_port()
    config = hook_config(tmp_path, keyring, socket_dir, listen_port - spice_port)
    proxy = ProxyServer(load_config(config), config_path=config)
    await proxy.start()
    base = tmp_path / "libvirt"
    base.mkdir()
    name = f"smg-e2e-{uuid.uuid4().hex[:8]}"
    try:
        async with running(Libvirt(base, config)) as libvirt:
            good = base / "good.xml"
            good.write_text(domain_xml(name, spice_port, "127.0.0.1"))
            libvirt.domains.append(name)
            await asyncio.to_thread(libvirt.virsh, "create", str(good))
            # prepare registered the route before QEMU started; a real SPICE link through it
            # reaches the domain's spice-server.
            assert list(proxy.routes.routes) == [name]
            route = proxy.routes.routes[name]
            assert route.upstream == f"127.0.0.1:{spice_port}"
            assert route.listen == f"127.0.0.1:{listen_port}"
            live = await asyncio.to_thread(libvirt.virsh, "domuuid", name)
            assert str(route.vm_id) == live.stdout.strip()
            # The domain has no SPICE password set, and libvirt leaves ticketing on: the
            # placeholder ticket is refused (7, PERMISSION_DENIED) by spice-server itself, after
            # its link reply came back through the proxy.
            with pytest.raises(LinkRefused, match="link result 7"):
                await link_client(("127.0.0.1", listen_port), ChannelType.MAIN)

            # A restarted proxy has lost the hook's routes; libvirt-sync registers them again.
            await bounded(proxy.stop(), "the proxy to stop")
            proxy = ProxyServer(load_config(config), config_path=config)
            await proxy.start()
            assert len(proxy.routes) == 0
            sync = await asyncio.to_thread(
                subprocess.run,
                [str(Path(sys.executable).with_name("spice-migration-gateway")), "libvirt-sync",
                 "--config", str(config), "--connect", f"qemu:///system?socket={libvirt.socket}"],
                capture_output=True, text=True, timeout=LIBVIRT_TIMEOUT,
            )  # fmt: skip
            assert sync.returncode == 0, sync.stderr
            assert "1 of 1 running domain(s) synced" in sync.stderr
            assert proxy.routes.routes[name] == route

            exposed_name = f"{name}-open"
            exposed = base / "exposed.xml"
            exposed.write_text(domain_xml(exposed_name, free_port(), "0.0.0.0"))
            libvirt.domains.append(exposed_name)
            refused = await asyncio.to_thread(libvirt.virsh, "create", str(exposed), check=False)
            assert refused.returncode != 0
            assert "HookRefused" in refused.stderr
            assert "SPICE listens on 0.0.0.0, not on loopback" in refused.stderr
            listed = await asyncio.to_thread(libvirt.virsh, "list", "--name")
            assert exposed_name not in listed.stdout

            await asyncio.to_thread(libvirt.virsh, "destroy", name)
            libvirt.domains.remove(name)
            assert list(proxy.routes.routes) == []
            # Added by the hook, then again by libvirt-sync after the restart.
            assert [e["origin"] for e in logs.audit("route_added", route=name)] == ["control"] * 2
            assert logs.audit("route_removed", route=name)
    finally:
        await bounded(proxy.stop(), "the proxy to stop")
