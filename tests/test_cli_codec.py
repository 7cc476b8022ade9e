"""The ``decode`` and ``encode`` verbs, in a child process and in-process.

Exit codes: 0 success; 2 input refused (exactly one stderr line starting with the error's class
name), a usage error, or a file that cannot be used (one line naming it); 1 anything else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import native
from gateway.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from schemas import ChannelType
from tests.test_native_vectors import VECTORS, Vector, vector

#: Populated payloads of every channel (the known-answer vectors).
FULL = {
    "main": vector("main-full"),
    "display": vector("display-lossy"),
    "inputs": vector("inputs-7"),
    "smartcard": vector("smartcard-full"),
    "usbredir": vector("usbredir-full"),
    "port": vector("port-full"),
    "webdav": vector("webdav-full"),
}
NAMES = list(FULL)
TIMEOUT = 60
_RUN_MAIN = "import sys; from gateway.cli import main; sys.exit(main())"


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", _RUN_MAIN, *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_every_channel_has_a_payload() -> None:
    assert sorted(FULL) == sorted(native.CHANNEL_NAMES)


# --- child process -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["main", "display", "smartcard"])
def test_decode_then_encode_in_a_child_process(name: str, tmp_path: Path) -> None:
    item = FULL[name]
    payload = tmp_path / "payload.bin"
    payload.write_bytes(item.data)
    decoded = run("decode", "--channel", name, str(payload))
    assert decoded.returncode == EXIT_OK, decoded.stderr
    assert decoded.stderr == b""
    assert json.loads(decoded.stdout) == item.state.model_dump(mode="json")
    model = tmp_path / "state.json"
    model.write_bytes(decoded.stdout)
    out = tmp_path / "again.bin"
    encoded = run("encode", "--channel", name, str(model), "--out", str(out))
    assert encoded.returncode == EXIT_OK, encoded.stderr
    assert encoded.stdout == b""
    assert out.read_bytes() == item.data


def test_stdin_and_stdout_in_a_child_process() -> None:
    item = FULL["webdav"]
    decoded = run("decode", "--channel", "webdav", "-", stdin=item.data)
    assert decoded.returncode == EXIT_OK, decoded.stderr
    encoded = run("encode", "--channel", "webdav", "-", stdin=decoded.stdout)
    assert encoded.returncode == EXIT_OK, encoded.stderr
    assert encoded.stdout == item.data


def test_refusal_in_a_child_process(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"DCMD" + FULL["main"].data[4:])
    result = run("decode", "--channel", "main", str(payload))
    assert result.returncode == EXIT_REFUSED
    assert result.stdout == b""
    assert one_line(result.stderr.decode()).startswith("BadMagic: main: magic b'DCMD'")


def test_usage_error_in_a_child_process() -> None:
    result = run("decode", "--channel", "cursor", "x.bin")
    assert result.returncode == EXIT_USAGE == 2
    assert b"invalid choice" in result.stderr


def test_help_in_a_child_process() -> None:
    result = run("--help")
    assert result.returncode == EXIT_OK
    assert b"decode" in result.stdout
    assert b"encode" in result.stdout


def test_installed_command() -> None:
    script = Path(sys.executable).parent / "spice-migration-gateway"
    if not script.is_file():
        pytest.skip("console script not installed next to the interpreter")
    result = subprocess.run(
        [str(script), "decode", "--help"], capture_output=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == EXIT_OK
    assert b"--channel" in result.stdout


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert b"decode" in result.stdout


# --- in-process ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_decode_then_encode(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    item = FULL[name]
    payload = tmp_path / f"{name}.bin"
    payload.write_bytes(item.data)
    assert main(["decode", "--channel", name, str(payload)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out) == item.state.model_dump(mode="json")
    model = tmp_path / f"{name}.json"
    model.write_text(captured.out)
    out = tmp_path / f"{name}.out"
    assert main(["encode", "--channel", name, str(model), "--out", str(out)]) == EXIT_OK
    assert out.read_bytes() == item.data


@pytest.mark.parametrize("item", VECTORS, ids=[v.name for v in VECTORS])
def test_encode_from_the_models_json(
    item: Vector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "state.json"
    model.write_text(item.state.model_dump_json())
    out = tmp_path / "out.bin"
    name = item.channel.name.lower()
    assert main(["encode", "--channel", name, str(model), "--out", str(out)]) == EXIT_OK
    assert out.read_bytes() == item.data
    assert capsys.readouterr().err == ""


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == EXIT_REFUSED
    captured = capsys.readouterr()
    assert captured.out == ""
    return one_line(captured.err)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "Truncated"),
        (b"ICMD\x01\0\0\0\x07", "Truncated"),
        (b"XXXX\x01\0\0\0\x07\0", "BadMagic"),
        (b"ICMD\x02\0\0\0\x07\0", "UnsupportedVersion"),
        (b"ICMD\x01\0\0\0\x41\0", "SchemaViolation"),
        (b"ICMD\x01\0\0\0\x07\0\0", "UnaccountedBytes"),
        (b"ICMD\x01\0\0\0" + bytes(2041), "TooLarge"),
    ],
)
def test_decode_refusals(
    data: bytes, error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(data)
    line = _refused(["decode", "--channel", "inputs", str(payload)], capsys)
    assert line.startswith(f"{error}: inputs: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Invalid JSON"),
        ("{", "Invalid JSON"),
        ("[]", "state"),
        ('{"motion_count": 65}', "motion_count"),
        ('{"motion_count": "7"}', "motion_count"),
        ('{"motion_count": 7, "extra": 1}', "extra"),
        (FULL["display"].state.model_dump_json(), "motion_count"),
    ],
)
def test_encode_refusals(
    text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "state.json"
    model.write_text(text)
    out = tmp_path / "out.bin"
    line = _refused(["encode", "--channel", "inputs", str(model), "--out", str(out)], capsys)
    assert line.startswith("SchemaViolation: inputs: ")
    assert fragment in line
    assert not out.exists()


def test_encode_refuses_another_channels_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usbredir model is a valid spicevmc model: encoding it as port is fine, as main not."""
    model = tmp_path / "state.json"
    model.write_text(FULL["usbredir"].state.model_dump_json())
    out = tmp_path / "out.bin"
    assert main(["encode", "--channel", "port", str(model), "--out", str(out)]) == EXIT_OK
    assert out.read_bytes() == FULL["usbredir"].data
    line = _refused(["encode", "--channel", "main", str(model)], capsys)
    assert line.startswith("SchemaViolation: main: ")


def test_encode_to_stdout(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    model = tmp_path / "state.json"
    model.write_text(FULL["smartcard"].state.model_dump_json())
    assert main(["encode", "--channel", "smartcard", str(model)]) == EXIT_OK
    assert capsysbinary.readouterr().out == FULL["smartcard"].data


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["decode"],
        ["decode", "x.bin"],
        ["decode", "--channel", "cursor", "x.bin"],
        ["decode", "--channel", "inputs"],
        ["encode", "--channel", "inputs"],
        ["encode", "--channel", "inputs", "a.json", "--bogus"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == EXIT_USAGE == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_file_is_a_user_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.bin"
    code = main(["decode", "--channel", "inputs", str(absent)])
    assert code == EXIT_USAGE
    assert one_line(capsys.readouterr().err) == (
        f"FileNotFoundError: {absent}: No such file or directory"
    )


@pytest.mark.parametrize("verb", ["decode", "encode"])
def test_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([verb, "--help"])
    assert caught.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert "--channel" in out
    for name in native.CHANNEL_NAMES:
        assert name in out


def test_channel_choices_are_the_channels_with_migration_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    out = capsys.readouterr().out
    assert "cursor" not in out
    assert set(native.CHANNEL_NAMES) == {
        c.name.lower()
        for c in ChannelType
        if c
        not in (ChannelType.CURSOR, ChannelType.PLAYBACK, ChannelType.RECORD, ChannelType.TUNNEL)
    }


# --- refusals stay one short line ----------------------------------------------------------


def test_refusal_does_not_echo_a_long_surfaces_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FULL["display"].state.model_dump_json().replace('"lossy"', '"' + "K" * 5000 + '"')
    model = tmp_path / "state.json"
    model.write_text(text)
    line = _refused(["encode", "--channel", "display", str(model)], capsys)
    assert line.startswith("SchemaViolation: display: ")
    assert len(line) < 300


def test_refusal_does_not_echo_a_long_unexpected_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "state.json"
    model.write_text(json.dumps({"motion_count": 7, "K" * 5000: 0}))
    line = _refused(["encode", "--channel", "inputs", str(model)], capsys)
    assert line.startswith("SchemaViolation: inputs: ")
    assert len(line) < 300
