"""The deployment files in contrib/: the systemd unit passes ``systemd-analyze verify`` and
keeps its exposure score low, the example config fits the unit's directories, the alerting
rules pass ``promtool check rules`` and fire in ``promtool test rules``, the hook script is
valid sh."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from gateway.proxy.config import load_config

from .tools import require

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "spice-migration-gateway.service"
INSTALLED = "/opt/spice-migration-gateway/bin/spice-migration-gateway"


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's command (verify checks it exists)."""
    script = Path(sys.executable).with_name("spice-migration-gateway")
    assert script.is_file(), "install the project (pip install -e .) first"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(script)))
    return copy


def unit_settings() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "verify", str(unit_here(tmp_path))], capture_output=True, text=True, timeout=120
    )
    # verify only warns (exit 0) about unknown keys: any output at all is a failure here.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    analyze = require("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Overall exposure level for spice-migration-gateway.service: 1." in result.stdout


def test_unit_hardening_and_notify_settings() -> None:
    service = unit_settings()["Service"]
    assert service["Type"] == "notify"
    assert service["WatchdogSec"] == "30s"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["User"] == "smg"
    assert service["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--check" in service["ExecStartPre"]


def test_example_config_fits_the_unit() -> None:
    config = load_config(ROOT / "contrib" / "systemd" / "proxy.toml")
    service = unit_settings()["Service"]
    name, source = service["LoadCredential"].split(":", 1)
    assert source == "/etc/spice-migration-gateway/keyring.json"
    assert config.keyring == f"/run/credentials/{UNIT.name}/{name}"
    assert Path(config.replay_db).parent == Path("/var/lib") / service["StateDirectory"]
    assert config.control_socket is not None
    assert Path(config.control_socket).parent == Path("/run") / service["RuntimeDirectory"]
    assert config.libvirt is not None
    assert config.routes == ()


def test_alerting_rules_pass_promtool() -> None:
    promtool = require("promtool", "prometheus")
    rules = ROOT / "contrib" / "prometheus" / "spice-migration-gateway.rules.yml"
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 4 rules found" in check.stdout
    tests = ROOT / "tests" / "prometheus"
    run = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=tests,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hook_script_is_valid_sh() -> None:
    script = ROOT / "contrib" / "libvirt" / "spice-migration-gateway"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0
    assert f"exec {INSTALLED} libvirt-hook" in script.read_text()
