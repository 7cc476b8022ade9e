"""The ``keys``, ``seal``, ``open`` and ``inspect`` verbs, through the real command entry point."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import gateway
from gateway import native
from gateway.cli import main
from gateway.keys import KeyState, load_keyring
from schemas import ChannelType, DisplayState

from .test_library_api import always_source_display

SAMPLES = Path(gateway.__file__).parent / "samples"
VM = "6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1"
MIGRATION = "0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused_as(capsys: pytest.CaptureFixture[str], error: str, *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{error}: "), err
    return err


@pytest.fixture
def keyring_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "keyring.json"
    code, out, _ = run(capsys, "keys", "generate", "--keyring", str(path))
    assert code == 0
    assert "created" in out
    return path


def context_args(channel: str, *, source: str = "src", migration: str = MIGRATION) -> list[str]:
    return ["--channel", channel, "--channel-id", "0", "--vm", VM, "--migration", migration,
            "--source", source, "--target", "dst"]


def seal_sample(
    capsys: pytest.CaptureFixture[str], keyring: Path, tmp_path: Path, channel: str
) -> Path:
    blob = tmp_path / f"{channel}.sealed"
    code, _, err = run(capsys, "seal", *context_args(channel), "--keyring", str(keyring),
                       "--out", str(blob), str(SAMPLES / f"{channel}.bin"))
    assert code == 0, err
    return blob


def open_args(keyring: Path, tmp_path: Path, blob: Path, channel: str, *extra: str) -> list[str]:
    return ["open", *context_args(channel), *extra, "--keyring", str(keyring),
            "--replay-db", str(tmp_path / "replay.db"), "--out", str(tmp_path / "native.bin"),
            str(blob)]


# --- keys ----------------------------------------------------------------------------------


def test_key_lifecycle(keyring_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keyring_path.stat().st_mode & 0o777 == 0o600
    first = load_keyring(keyring_path).active

    code, out, _ = run(capsys, "keys", "generate", "--keyring", str(keyring_path))
    assert code == 0
    pending = next(k for k in load_keyring(keyring_path).keys if k.state is KeyState.PENDING)
    assert pending.id_hex in out

    code, out, _ = run(capsys, "keys", "rotate", "--keyring", str(keyring_path))
    assert code == 0
    ring = load_keyring(keyring_path)
    assert ring.active.key_id == pending.key_id
    old = ring.get(first.key_id)
    assert old is not None
    assert old.state is KeyState.DECRYPT_ONLY

    code, out, _ = run(capsys, "keys", "list", "--keyring", str(keyring_path))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:2] == [first.id_hex, "decrypt-only"]
    assert lines[1].split()[:2] == [pending.id_hex, "active"]
    assert lines[0].split()[2] == first.created_iso

    refused_as(capsys, "KeyringError", "keys", "retire", "--keyring", str(keyring_path),
               pending.id_hex)
    refused_as(capsys, "KeyringError", "keys", "retire", "--keyring", str(keyring_path), "abc")
    code, _, _ = run(capsys, "keys", "retire", "--keyring", str(keyring_path), first.id_hex)
    assert code == 0
    gone = load_keyring(keyring_path).get(first.key_id)
    assert gone is not None
    assert gone.state is KeyState.RETIRED
    assert first.secret.hex() not in keyring_path.read_text()


def test_list_never_prints_secrets(keyring_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "keys", "generate", "--keyring", str(keyring_path))
    code, out, err = run(capsys, "keys", "list", "--keyring", str(keyring_path))
    assert code == 0
    for key in load_keyring(keyring_path).keys:
        assert key.secret.hex() not in out + err
        assert key.id_hex in out


def test_unsafe_keyring_is_refused(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring_path.chmod(0o640)
    refused_as(capsys, "KeyringError", "keys", "list", "--keyring", str(keyring_path))
    refused_as(capsys, "KeyringError", "seal", *context_args("inputs"), "--keyring",
               str(keyring_path), str(SAMPLES / "inputs.bin"))


# --- seal / open / inspect -----------------------------------------------------------------


@pytest.mark.parametrize("channel", sorted(native.CHANNEL_NAMES))
def test_seal_then_open_gives_back_the_native_bytes(
    channel: str, keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = seal_sample(capsys, keyring_path, tmp_path, channel)
    code, _, err = run(capsys, *open_args(keyring_path, tmp_path, blob, channel))
    assert code == 0, err
    assert (tmp_path / "native.bin").read_bytes() == (SAMPLES / f"{channel}.bin").read_bytes()
    refused_as(capsys, "Replayed", *open_args(keyring_path, tmp_path, blob, channel))


@pytest.mark.parametrize(
    ("extra", "kind"), [((), "lossless"), (("--jpeg-wan-compression", "always"), "lossy")]
)
def test_open_writes_the_surface_list_the_target_reads(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...], kind: str,
) -> None:
    """A lossy list with low_bandwidth 0 (an ``always`` source) reaches an ``auto`` target as
    the lossless list it reads."""
    native_in = tmp_path / "display-always.bin"
    native_in.write_bytes(always_source_display())
    blob = tmp_path / "display.sealed"
    code, _, err = run(capsys, "seal", *context_args("display"), "--keyring", str(keyring_path),
                       "--out", str(blob), str(native_in))
    assert code == 0, err
    code, _, err = run(capsys, *open_args(keyring_path, tmp_path, blob, "display", *extra))
    assert code == 0, err
    state = native.decode(ChannelType.DISPLAY, (tmp_path / "native.bin").read_bytes())
    assert isinstance(state, DisplayState)
    assert state.surfaces.kind == kind


def test_open_checks_the_context(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = seal_sample(capsys, keyring_path, tmp_path, "display")
    # Each refusal on its own target's database: a refused authentic blob is spent there.
    wrong_vm = open_args(keyring_path, tmp_path, blob, "display")
    wrong_vm[wrong_vm.index("--vm") + 1] = str(uuid.uuid4())
    wrong_vm[wrong_vm.index("--replay-db") + 1] = str(tmp_path / "target-1.db")
    refused_as(capsys, "ContextMismatch", *wrong_vm)
    refused_as(capsys, "ContextMismatch", "open", *context_args("display", source="other"),
               "--keyring", str(keyring_path), "--replay-db", str(tmp_path / "target-2.db"),
               str(blob))
    refused_as(capsys, "ContextMismatch", "open", *context_args("main"), "--keyring",
               str(keyring_path), "--replay-db", str(tmp_path / "target-3.db"), str(blob))
    # ...and spent there: the same blob, rightly addressed, is a replay on that database.
    refused_as(capsys, "Replayed", "open", *context_args("display"), "--keyring",
               str(keyring_path), "--replay-db", str(tmp_path / "target-3.db"), str(blob))
    # The first channel of a session may accept any migration, from any trusted source.
    code, _, err = run(
        capsys, "open", *context_args("display", source="other", migration="any"),
        "--source", "src", "--keyring", str(keyring_path), "--replay-db",
        str(tmp_path / "replay.db"), "--out", str(tmp_path / "native.bin"), str(blob),
    )
    assert code == 0, err


def test_tampered_blob_is_refused(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = seal_sample(capsys, keyring_path, tmp_path, "smartcard")
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x10
    blob.write_bytes(bytes(data))
    refused_as(capsys, "AuthenticationFailed", *open_args(keyring_path, tmp_path, blob,
                                                          "smartcard"))
    assert not (tmp_path / "native.bin").exists()


def test_invalid_native_input_is_refused_by_seal(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"XXXX" + (SAMPLES / "display.bin").read_bytes()[4:])
    refused_as(capsys, "BadMagic", "seal", *context_args("display"), "--keyring",
               str(keyring_path), str(bad))
    refused_as(capsys, "ConfigError", "seal", *context_args("inputs"), "--ttl", "0",
               "--keyring", str(keyring_path), str(SAMPLES / "inputs.bin"))
    bad_vm = context_args("inputs")
    bad_vm[bad_vm.index("--vm") + 1] = "not-a-uuid"
    refused_as(capsys, "ConfigError", "seal", *bad_vm, "--keyring", str(keyring_path),
               str(SAMPLES / "inputs.bin"))


def test_open_refuses_a_blob_over_the_size_limit(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = seal_sample(capsys, keyring_path, tmp_path, "main")
    refused_as(capsys, "TooLarge", *open_args(keyring_path, tmp_path, blob, "main",
                                              "--max-size", "100"))


def test_inspect_shows_the_header_and_clear_context_marked_unauthenticated(
    keyring_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = seal_sample(capsys, keyring_path, tmp_path, "webdav")
    code, out, _ = run(capsys, "inspect", str(blob))
    assert code == 0
    assert out.startswith("UNAUTHENTICATED")
    key = load_keyring(keyring_path).active
    assert key.id_hex in out
    assert key.secret.hex() not in out
    assert "source:         src" in out  # shown, under the UNAUTHENTICATED banner
    assert f"total_length:   {len(blob.read_bytes())}" in out
    short = tmp_path / "short"
    short.write_bytes(blob.read_bytes()[:30])
    refused_as(capsys, "Truncated", "inspect", str(short))


def test_usage_errors_exit_2(keyring_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["seal", "--channel", "display", "--keyring", str(keyring_path), "x"])
    assert caught.value.code == 2
    capsys.readouterr()


def test_blob_goes_to_stdout_as_binary_by_default(keyring_path: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
    sealed = subprocess.run(
        [*command, "seal", *context_args("inputs"), "--keyring", str(keyring_path),
         str(SAMPLES / "inputs.bin")],
        capture_output=True, timeout=60, check=False,
    )
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout[:4] == b"SMGE"
    opened = subprocess.run(
        [*command, "open", *context_args("inputs"), "--keyring", str(keyring_path),
         "--replay-db", str(tmp_path / "replay.db"), "-"],
        input=sealed.stdout, capture_output=True, timeout=60, check=False,
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == (SAMPLES / "inputs.bin").read_bytes()
