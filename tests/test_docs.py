"""Every code block of the README and the docs is run, or checked by the code it documents.

- ``python``: executed (the README's library snippet as written, the fuzz harness template
  called on inputs);
- ``toml``: parsed by the proxy's own config parser; ``json`` and ``xml``: parsed;
- ``sh``: each ``spice-migration-gateway`` command is parsed by the command's own parser (and
  ``demo`` and ``--help`` run); each ``fuzz/...`` script exists and every option it is given
  exists; other tools (``virsh``, ``pip``, ``python -m venv``, ``pytest``) are not run here;
- blocks without a language are diagrams and byte layouts: only checked to be closed.

It also checks what the README promises of an editable install: ``mypy --strict`` on a user's
script outside the checkout finds ``gateway``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.cli import main as cli_main
from gateway.proxy.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "SECURITY.md", "docs/deployment.md", "fuzz/README.md"]
LANGUAGES = {"", "python", "sh", "toml", "json", "xml", "yaml", "dockerfile"}
#: Programs of the host a guide may run besides the project's own (checked by name only).
SYSTEM_PROGRAMS = {
    "virsh", "python3", "python", "pip", "apt-get", "install", "useradd", "systemctl",
    "systemd-analyze", "promtool", "scp",
}  # fmt: skip
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}:{self.language or 'plain'}"


def blocks(document: str) -> Iterator[Block]:
    lines = (ROOT / document).read_text().splitlines()
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.startswith("```"):
            if opened is not None:
                body.append(line)
            continue
        if opened is None:
            opened, body = (number, line[3:].strip()), []
        else:
            yield Block(document, opened[0], opened[1], "\n".join(body) + "\n")
            opened = None
    assert opened is None, f"{document}:{opened[0]}: code block never closed"


ALL = [block for document in DOCUMENTS for block in blocks(document)]


def of(language: str) -> list[Any]:
    return [pytest.param(block, id=str(block)) for block in ALL if block.language == language]


def test_every_block_has_a_known_language() -> None:
    assert len(ALL) > 20
    assert {block.language for block in ALL} <= LANGUAGES, {b.language for b in ALL}
    assert of("python")
    assert any(block.document == "README.md" and block.language == "python" for block in ALL)


@pytest.mark.parametrize("block", of("python"))
def test_python_blocks_run(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # as a user would run it: not from the checkout
    code = compile(block.text, str(block), "exec")
    namespace: dict[str, Any] = {"__name__": "docs_block"}
    if block.document.startswith("fuzz/"):
        # The harness template: it runs with fuzz/ on the path, like every harness.
        monkeypatch.syspath_prepend(str(ROOT / "fuzz"))
        harness = importlib.import_module("_harness")
        monkeypatch.setattr(harness, "INSTRUMENT", False)
        exec(code, namespace)
        for data in (b"", b"host_id = 1", b"\xff" * 64, (ROOT / "README.md").read_bytes()):
            namespace["TestOneInput"](data)
        return
    exec(code, namespace)


@pytest.mark.parametrize("block", of("toml"))
def test_toml_blocks_are_valid_proxy_configs(block: Block) -> None:
    config = parse_config(block.text.encode(), str(block))
    assert config.routes


@pytest.mark.parametrize("block", of("json"))
def test_json_blocks_parse(block: Block) -> None:
    assert json.loads(block.text)


@pytest.mark.parametrize("block", of("xml"))
def test_xml_blocks_parse(block: Block) -> None:
    ET.fromstring(block.text)


def _commands(text: str) -> Iterator[list[str]]:
    """Each command of a shell block: continuation lines joined, comments and && split off."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def _fuzz_help() -> str:
    result = subprocess.run(
        [str(ROOT / "fuzz" / "run"), "--help"], capture_output=True, text=True,
        timeout=TIMEOUT, check=False, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _parse(arguments: list[str]) -> int | str | None:
    """0 when the command's own parser accepts ``arguments`` (``--help`` exits 0 too)."""
    try:
        build_parser().parse_args(arguments)
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.parametrize("block", of("sh"))
def test_shell_blocks_name_real_commands_and_options(
    block: Block, capsys: pytest.CaptureFixture[str]
) -> None:
    fuzz_help: str | None = None
    harnesses = set(re.findall(r"^\[(\w+)\]", (ROOT / "fuzz/harnesses.toml").read_text(), re.M))
    checked = 0
    for command in _commands(block.text):
        program = command[0].removeprefix(".venv/bin/")
        if program.startswith("/") and Path(program).name in ("spice-migration-gateway", "pip"):
            program = Path(program).name  # an installed copy, e.g. in a virtualenv under /opt
        if program == "spice-migration-gateway":
            arguments = command[1:]
            code = _parse(arguments)
            assert code == 0, f"{block}: {shlex.join(command)}: {capsys.readouterr()}"
            if arguments[:1] == ["demo"]:
                assert cli_main(arguments) == 0, capsys.readouterr()
            checked += 1
        elif program == "fuzz/run":
            fuzz_help = fuzz_help or _fuzz_help()
            for word in command[1:]:
                if word.startswith("-"):
                    assert word in fuzz_help, f"{block}: fuzz/run has no {word}"
                elif not word.isdigit():
                    assert word in harnesses, f"{block}: no harness {word}"
            checked += 1
        elif (program == "python" and command[1].startswith("fuzz/")) or program.startswith(
            "fuzz/"
        ):
            script = command[1] if program == "python" else program
            assert (ROOT / script).is_file(), f"{block}: {script} does not exist"
            for word in command[2:] if program == "python" else command[1:]:
                path = word.split("=", 1)[-1]
                if path.startswith("fuzz/") and "..." not in path and "/out/" not in path:
                    assert (ROOT / path).exists(), f"{block}: {path} does not exist"
            checked += 1
        else:
            assert program in SYSTEM_PROGRAMS, f"{block}: unknown {program}"
    capsys.readouterr()
    if block.document in ("SECURITY.md", "fuzz/README.md"):
        assert checked, f"{block}: no command checked"


def _editable_install() -> bool:
    site = Path(sysconfig.get_paths()["purelib"])
    return any(site.glob("__editable__*spice_migration_gateway*"))


def test_editable_install_is_visible_to_type_checkers(tmp_path: Path) -> None:
    """``mypy --strict`` on a user's script, outside the checkout, finds ``gateway``."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    script = tmp_path / "user_script.py"
    script.write_text(
        "import gateway\n"
        "from gateway.proxy.config import ProxyConfig\n\n"
        "def version() -> str:\n"
        "    return gateway.__version__\n\n"
        "def seal() -> object:\n"
        "    return gateway.seal_native\n\n"
        "CONFIG: type[ProxyConfig] = ProxyConfig\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--follow-imports", "silent", str(script)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=tmp_path, env=env,
    )
    kind = "editable" if _editable_install() else "regular"
    assert result.returncode == 0, f"{kind} install: {result.stdout}{result.stderr}"
    assert "Success" in result.stdout
