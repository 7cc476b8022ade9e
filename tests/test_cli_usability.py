"""What a new user meets at the command line: exit codes, one-line messages that name the file,
help text, ``--version``, ``inspect``'s clear context, terminals, JSON limits, proxy start-up."""

from __future__ import annotations

import argparse
import base64
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway
from gateway import native
from gateway.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_parser, main
from gateway.cli.codec import JSON_STRUCTURE_ALLOWANCE, json_limit
from gateway.envelope import Context, seal
from gateway.keys import Keyring, save_keyring
from schemas import ChannelType
from schemas.streams import usbredir_bulk_in
from tests.test_native_vectors import vector

SAMPLES = Path(gateway.__file__).parent / "samples"
VM = "6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1"
MIGRATION = "0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b"
TIMEOUT = 120
COMMAND = [sys.executable, "-m", "gateway.cli"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    save_keyring(Keyring.create(), path)
    return path


def context_args(channel: str) -> list[str]:
    return ["--channel", channel, "--channel-id", "0", "--vm", VM, "--migration", MIGRATION,
            "--source", "src", "--target", "dst"]


# --- exit codes and messages ------------------------------------------------------------------


def test_unknown_verb_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == EXIT_USAGE == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["decode", "encode", "inspect", "seal"])
def test_unreadable_inputs_exit_2_naming_the_file(
    verb: str, tmp_path: Path, keyring_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    absent = tmp_path / "absent.bin"
    for target, reason in ((directory, "Is a directory"), (absent, "No such file or directory")):
        argv = {
            "decode": ["decode", "--channel", "inputs", str(target)],
            "encode": ["encode", "--channel", "inputs", str(target), "--out", "x"],
            "inspect": ["inspect", str(target)],
            "seal": ["seal", *context_args("inputs"), "--keyring", str(keyring_path),
                     "--out", str(tmp_path / "out"), str(target)],
        }[verb]
        code, out, err = run(capsys, *argv)
        assert code == EXIT_USAGE
        assert out == ""
        assert one_line(err).endswith(f": {target}: {reason}"), err


@pytest.mark.parametrize("verb", ["decode", "encode", "seal"])
def test_unwritable_out_exits_2_naming_it(
    verb: str, tmp_path: Path, keyring_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing-directory" / "out.bin"
    model = tmp_path / "inputs.json"
    model.write_text(native.decode(ChannelType.INPUTS, (SAMPLES / "inputs.bin").read_bytes())
                     .model_dump_json())
    argv = {
        "decode": ["decode", "--channel", "inputs", str(SAMPLES / "inputs.bin")],
        "encode": ["encode", "--channel", "inputs", str(model)],
        "seal": ["seal", *context_args("inputs"), "--keyring", str(keyring_path),
                 str(SAMPLES / "inputs.bin")],
    }[verb]
    code, out_text, err = run(capsys, *argv, "--out", str(out))
    assert code == EXIT_USAGE
    assert out_text == ""
    assert one_line(err) == f"FileNotFoundError: {out}: No such file or directory"


def test_missing_keyring_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "keyring.json"
    code, _, err = run(capsys, "keys", "list", "--keyring", str(absent))
    assert code == EXIT_USAGE
    assert one_line(err) == f"KeyringError: cannot open keyring {absent}: No such file or directory"


def test_symlinked_keyring_is_refused_saying_why(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(keyring_path)
    code, _, err = run(capsys, "keys", "list", "--keyring", str(link))
    assert code == EXIT_USAGE
    line = one_line(err)
    assert line.startswith(
        f"KeyringError: cannot open keyring {link}: it is a symbolic link, and symlinks are refused"
    )
    assert "Too many levels" not in line


def test_tampered_length_field_is_explained(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob_path = tmp_path / "display.sealed"
    code, _, err = run(capsys, "seal", *context_args("display"), "--keyring", str(keyring_path),
                       "--out", str(blob_path), str(SAMPLES / "display.bin"))
    assert code == EXIT_OK, err
    blob = bytearray(blob_path.read_bytes())
    (body_length,) = struct.unpack_from(">I", blob, 8)
    assert body_length > 256
    total = len(blob) - 256
    for new_length, error, words in (
        (body_length - 256, "UnaccountedBytes", "is malformed or tampered with"),
        (body_length + 256, "Truncated", "is truncated or tampered with"),
    ):
        struct.pack_into(">I", blob, 8, new_length)
        blob_path.write_bytes(blob)
        for argv in (
            ["inspect", str(blob_path)],
            ["open", *context_args("display"), "--keyring", str(keyring_path),
             "--replay-db", str(tmp_path / "replay.db"), "--out", str(tmp_path / "o"),
             str(blob_path)],
        ):
            code, _, err = run(capsys, *argv)
            assert code == EXIT_USAGE
            line = one_line(err)
            assert line.startswith(f"{error}: envelope {words}: {len(blob)} bytes"), line
            assert "header (offsets 6 and 8)" in line
        if error == "UnaccountedBytes":
            assert f"leaving 256 bytes after offset {total}" in line


# --- demo -------------------------------------------------------------------------------------


def test_demo_shows_the_binding_and_each_refusal_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "demo")
    assert (code, err) == (EXIT_OK, "")
    for name in native.CHANNEL_NAMES:
        assert re.search(rf"^{name} +\d+ +\d+  byte-identical$", out, re.M), out
    assert "the display blob is bound to (authenticated):" in out
    assert re.search(r"^  VM [0-9a-f-]{36}, migration [0-9a-f-]{36}$", out, re.M), out
    assert "from host 'source-host' to host 'target-host'" in out
    assert re.search(r"^  issued \S+Z, valid 300 s, single-use", out, re.M), out
    refusals = re.findall(r"^refused (.+?): (\w+): (.+)$", out, re.M)
    assert [error for _, error, _ in refusals] == [
        "AuthenticationFailed", "Replayed", "ContextMismatch"
    ]
    assert all(len(reason) > 10 for _, _, reason in refusals)
    assert out.rstrip().endswith("demo passed")


def test_demo_fails_on_a_bad_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("display", "inputs"):
        (tmp_path / f"{name}.bin").write_bytes((SAMPLES / f"{name}.bin").read_bytes())
    (tmp_path / "main.bin").write_bytes(b"DCMD" + (SAMPLES / "main.bin").read_bytes()[4:])
    code, out, _ = run(capsys, "demo", "--samples", str(tmp_path))
    assert code == EXIT_FAILURE
    assert re.search(r"^main .* BadMagic: main: ", out, re.M), out
    assert out.rstrip().endswith("demo FAILED (1)")


# --- control ----------------------------------------------------------------------------------


def test_control_names_a_missing_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    code, out, err = run(capsys, "control", "--socket", str(path), "health")
    assert code == EXIT_USAGE
    assert out == ""
    assert one_line(err) == f"error: control socket {path}: No such file or directory"


@pytest.fixture
def failing_proxy(tmp_path: Path) -> Iterator[Path]:
    """A control socket whose every command fails, as a proxy's reload with a bad keyring does."""
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            connection.makefile("rb").readline()
            reply = {"ok": False, "error": "KeyringError: keyring k.json is not a regular file"}
            connection.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield path
    finally:
        thread.join(timeout=TIMEOUT)
        server.close()


def test_control_failure_goes_to_stderr_and_exits_1(
    failing_proxy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "control", "--socket", str(failing_proxy), "reload")
    assert code == EXIT_FAILURE
    assert out == ""
    assert one_line(err) == (
        "error: reload failed: KeyringError: keyring k.json is not a regular file"
    )


# --- help and version -------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_and_no_markup_leaks() -> None:
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10
    for parser in parsers:
        text = parser.format_help()
        assert "``" not in text, parser.prog
        assert ":class:" not in text, parser.prog
        assert ":func:" not in text, parser.prog
        assert parser.description, parser.prog
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{parser.prog} {action.dest}"


def test_help_shows_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside the defaults
    with pytest.raises(SystemExit):
        main(["open", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 30)" in text  # --clock-skew
    assert "(default: source-to-target)" in text
    assert "(default: None)" not in text


def test_fuzz_runner_help_has_no_markup() -> None:
    runner = Path(__file__).resolve().parents[1] / "fuzz" / "run"
    result = subprocess.run(
        [str(runner), "--help"], capture_output=True, timeout=TIMEOUT, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    assert b"--smoke" in result.stdout
    assert b"``" not in result.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"spice-migration-gateway {gateway.__version__}\n"


def test_decode_writes_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "main.json"
    code, printed, err = run(capsys, "decode", "--channel", "main", str(SAMPLES / "main.bin"),
                             "--out", str(out))
    assert (code, printed, err) == (EXIT_OK, "", "")
    state = native.decode(ChannelType.MAIN, (SAMPLES / "main.bin").read_bytes())
    assert json.loads(out.read_text()) == state.model_dump(mode="json")


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_shows_the_clear_context_and_time_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring = Keyring.create()
    state = native.decode(ChannelType.DISPLAY, (SAMPLES / "display.bin").read_bytes())
    context = Context(ChannelType.DISPLAY, 2, uuid.UUID(VM), uuid.UUID(MIGRATION), "host-a",
                      "host-b", 1)
    issued = int(time.time()) - 1000  # long expired, whatever the test's own duration
    blob = tmp_path / "blob"
    blob.write_bytes(seal(state, context, keyring, ttl=300, now=issued))
    code, out, err = run(capsys, "inspect", str(blob))
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].startswith("UNAUTHENTICATED")
    fields = {key.strip(): value.strip() for key, value in
              (line.split(": ", 1) for line in lines[1:])}
    expected = {
        "channel": "display",
        "channel_id": "2",
        "vm": VM,
        "migration": MIGRATION,
        "source": "host-a",
        "target": "host-b",
        "direction": "source-to-target",
        "schema_version": "1",
        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued)),
    }
    assert {key: fields.get(key) for key in expected} == expected
    expires = fields["expires_at"]
    assert expires.startswith(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued + 300)))
    assert "expired " in expires
    assert " s ago)" in expires
    assert keyring.active.secret.hex() not in out


# --- terminals and limits ---------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["seal", "encode"])
def test_binary_is_never_written_to_a_terminal(
    verb: str, keyring_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "inputs.json"
    model.write_text(native.decode(ChannelType.INPUTS, (SAMPLES / "inputs.bin").read_bytes())
                     .model_dump_json())
    argv = {
        "seal": ["seal", *context_args("inputs"), "--keyring", str(keyring_path),
                 str(SAMPLES / "inputs.bin")],
        "encode": ["encode", "--channel", "inputs", str(model)],
    }[verb]
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([*COMMAND, *argv], stdout=terminal, stderr=subprocess.PIPE,
                                timeout=TIMEOUT, check=False)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == EXIT_USAGE
    assert one_line(result.stderr.decode()) == (
        "error: refusing to write binary data to a terminal; use --out FILE or redirect stdout"
    )


def test_encode_caps_json_per_channel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert json_limit(ChannelType.INPUTS) == json_limit(ChannelType.DISPLAY)
    assert json_limit(ChannelType.INPUTS) == JSON_STRUCTURE_ALLOWANCE
    usbredir = native.layout_for(ChannelType.USBREDIR).max_size
    assert json_limit(ChannelType.USBREDIR) > 4 * usbredir // 3
    big = tmp_path / "big.json"
    big.write_bytes(b" " * JSON_STRUCTURE_ALLOWANCE + b"{}")
    code, _, err = run(capsys, "encode", "--channel", "inputs", str(big), "--out", "x")
    assert code == EXIT_USAGE
    assert one_line(err) == f"TooLarge: {big}: more than {JSON_STRUCTURE_ALLOWANCE} bytes"


def test_encode_refuses_json_structure_no_model_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Strings count towards the file cap only; masses of numbers or brackets are refused."""
    state = vector("usbredir-full").state.model_dump(mode="json")
    # 2 MiB of pending write (whole usbredir packets, as the target rules want): over the
    # structure allowance.
    data = b"".join(usbredir_bulk_in(bytes(range(256)) * 256, i) for i in range(32))
    state["device"].update(write_size=len(data), write_data=base64.b64encode(data).decode())
    model = tmp_path / "large-write.json"
    model.write_text(json.dumps(state, indent=2))
    out = tmp_path / "out.bin"
    code, _, err = run(capsys, "encode", "--channel", "usbredir", str(model), "--out", str(out))
    assert (code, err) == (EXIT_OK, "")
    assert out.read_bytes()[-len(data):] == data
    numbers = tmp_path / "numbers.json"
    numbers.write_text('{"device": [' + ",".join(["1"] * (JSON_STRUCTURE_ALLOWANCE // 2)) + "]}")
    code, _, err = run(capsys, "encode", "--channel", "usbredir", str(numbers), "--out", "x")
    assert code == EXIT_USAGE
    assert one_line(err).startswith("TooLarge: usbredir: ")
    assert f"outside strings, more than any valid model needs ({JSON_STRUCTURE_ALLOWANCE})" in err


def test_the_largest_display_model_fits_the_json_cap(tmp_path: Path) -> None:
    """The cap is not tighter than what decode prints for the largest valid display state."""
    state = vector("display-lossy").state.model_dump(mode="json")
    edge = {"left": 65535, "top": 65535, "right": 65536, "bottom": 65536}
    state["surfaces"] = {"kind": "lossy",
                         "surfaces": [{"id": i, "lossy_rect": edge} for i in range(1024)]}
    for key in ("message_serial", "glz_dict_id"):
        state[key] = 2**64 - 1 if key == "message_serial" else 255
    state["pixmap_cache_clients"] = [2**64 - 1] * 4
    model = native.layout_for(ChannelType.DISPLAY).model.model_validate_json(json.dumps(state))
    text = model.model_dump_json(indent=2).encode()
    assert len(text) < json_limit(ChannelType.DISPLAY)
    path = tmp_path / "display.json"
    path.write_bytes(text)
    assert main(["encode", "--channel", "display", str(path), "--out", str(tmp_path / "o")]) == 0


# --- proxy start-up ---------------------------------------------------------------------------


def _proxy_config(tmp_path: Path, keyring: Path, listen: str, control: Path | None) -> Path:
    lines = [
        'host_id = "h"',
        f'keyring = "{keyring}"',
        f'replay_db = "{tmp_path / "replay.sqlite"}"',
        *([f'control_socket = "{control}"'] if control else []),
        "[[routes]]",
        'name = "vm"',
        f'listen = "{listen}"',
        'upstream = "127.0.0.1:9"',
        f'vm_id = "{VM}"',
    ]
    path = tmp_path / "proxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_failing_proxy(config: Path) -> str:
    """Start a proxy that cannot start: it exits 2 with one plain stderr line, which is
    returned, and writes no audit record of starting or stopping."""
    result = subprocess.run([*COMMAND, "proxy", "--config", str(config)], capture_output=True,
                            timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    plain, events = [], []
    for line in result.stderr.decode().splitlines():
        try:
            events.append(json.loads(line).get("event"))
        except ValueError:
            plain.append(line)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert len(plain) == 1, plain
    assert "proxy_started" not in events
    assert "proxy_stopped" not in events
    return plain[0]


def test_proxy_port_in_use_is_one_line_and_no_unpaired_audit(
    tmp_path: Path, keyring_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = _proxy_config(tmp_path, keyring_path, f"127.0.0.1:{port}", None)
        line = _start_failing_proxy(config)
    assert line == (
        f"ConfigError: route vm: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_proxy_control_socket_in_a_missing_directory(tmp_path: Path, keyring_path: Path) -> None:
    control = tmp_path / "missing" / "control.sock"
    with socket.socket() as probe:  # a free port; the proxy binds it again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _proxy_config(tmp_path, keyring_path, f"127.0.0.1:{port}", control)
    line = _start_failing_proxy(config)
    assert line == (
        f"ConfigError: control_socket {control}: cannot listen: No such file or directory"
    )
