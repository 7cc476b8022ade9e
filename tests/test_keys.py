"""Keyrings: validation, the file and its permissions, rotation, reload, and secret hygiene."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import KeyringError, UnknownKey
from gateway.keys import (
    Key,
    Keyring,
    KeyringFile,
    KeyState,
    dump_keyring,
    load_keyring,
    parse_keyring,
    save_keyring,
)

NOW = 1_800_000_000


def counter_random() -> Any:
    """Deterministic, distinct, never all-zero 'random' bytes."""
    state = {"n": 0}

    def random_bytes(size: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 7 + i) % 251 + 1 for i in range(size))

    return random_bytes


def secret_for(fill: int) -> bytes:
    """A fixed secret per ``fill`` that looks random (regular secrets are refused at load)."""
    return hashlib.sha256(bytes([fill])).digest()


def key(state: KeyState, fill: int, created: int = NOW) -> Key:
    secret = b"" if state is KeyState.RETIRED else secret_for(fill)
    return Key(bytes([fill]) * 16, state, created, secret)


def document(*entries: Any, **top: Any) -> str:
    doc = {"kind": "spice-migration-gateway keyring", "version": 1, "keys": list(entries)}
    doc.update(top)
    return json.dumps(doc)


def entry(fill: int, state: str = "active", **changes: Any) -> dict[str, Any]:
    item = {
        "id": bytes([fill]).hex() * 16,
        "state": state,
        "created": "2027-01-15T08:00:00Z",
        "secret": secret_for(fill).hex(),
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


# --- the keyring ---------------------------------------------------------------------------


def test_create_has_one_active_key_of_the_right_sizes() -> None:
    ring = Keyring.create(now=NOW)
    assert len(ring) == 1
    assert ring.active.state is KeyState.ACTIVE
    assert len(ring.active.key_id) == 16
    assert len(ring.active.secret) == 32
    assert ring.active.created == NOW


def test_generated_keys_are_distinct() -> None:
    ring = Keyring.create()
    ring, pending = ring.with_new_key()
    assert pending.key_id != ring.active.key_id
    assert pending.secret != ring.active.secret


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([key(KeyState.ACTIVE, 1), key(KeyState.ACTIVE, 2)], "exactly one active key, found 2"),
        ([key(KeyState.PENDING, 1)], "exactly one active key, found 0"),
        ([], "exactly one active key, found 0"),
        ([key(KeyState.ACTIVE, 1), key(KeyState.PENDING, 1)], "duplicate key id"),
    ],
)
def test_keyring_invariants(keys: list[Key], message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring(keys)


@pytest.mark.parametrize(
    ("key_id", "secret", "message"),
    [
        (b"\x01" * 15, b"\x01" * 32, "key id must be 16 bytes"),
        (b"\x01" * 16, b"\x01" * 31, "secret must be 32 bytes"),
        (b"\x01" * 16, b"\x01" * 33, "secret must be 32 bytes"),
        (b"\x01" * 16, bytes(32), "all zero"),
        (b"\x01" * 16, b"", "secret must be 32 bytes"),
    ],
)
def test_key_invariants(key_id: bytes, secret: bytes, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Key(key_id, KeyState.ACTIVE, NOW, secret)


def test_retired_key_keeps_no_secret() -> None:
    with pytest.raises(KeyringError, match="retired key keeps no secret"):
        Key(b"\x01" * 16, KeyState.RETIRED, NOW, b"\x01" * 32)


@pytest.mark.parametrize(
    ("state", "opens"),
    [
        (KeyState.PENDING, True),
        (KeyState.ACTIVE, True),
        (KeyState.DECRYPT_ONLY, True),
        (KeyState.RETIRED, False),
    ],
)
def test_which_states_open(state: KeyState, opens: bool) -> None:
    other = key(state, 2)
    keys = [other] if state is KeyState.ACTIVE else [key(KeyState.ACTIVE, 1), other]
    ring = Keyring(keys)
    if opens:
        assert ring.for_opening(other.key_id) is other
    else:
        with pytest.raises(UnknownKey, match="retired"):
            ring.for_opening(other.key_id)


def test_unknown_key_id_is_its_own_error() -> None:
    ring = Keyring([key(KeyState.ACTIVE, 1)])
    with pytest.raises(UnknownKey, match=("09" * 16)):
        ring.for_opening(b"\x09" * 16)


# --- rotation ------------------------------------------------------------------------------


def test_rotate_promotes_the_pending_key_and_keeps_the_old_one_for_opening() -> None:
    random_bytes = counter_random()
    ring = Keyring.create(now=NOW, random_bytes=random_bytes)
    old = ring.active
    ring, pending = ring.with_new_key(now=NOW + 1, random_bytes=random_bytes)
    assert pending.state is KeyState.PENDING
    assert ring.active is old  # adding a pending key does not change who seals

    rotated, promoted = ring.rotated()
    assert promoted.key_id == pending.key_id
    assert promoted.secret == pending.secret
    assert rotated.active.key_id == pending.key_id
    demoted = rotated.get(old.key_id)
    assert demoted is not None
    assert demoted.state is KeyState.DECRYPT_ONLY
    assert demoted.secret == old.secret
    assert rotated.for_opening(old.key_id) is demoted


def test_rotate_with_a_pending_key_is_deterministic_for_every_host() -> None:
    ring, _ = Keyring.create().with_new_key()
    text = dump_keyring(ring)
    first, _ = parse_keyring(text).rotated()
    second, _ = parse_keyring(text).rotated()
    assert dump_keyring(first) == dump_keyring(second)


def test_rotate_without_pending_creates_a_fresh_active_key() -> None:
    ring = Keyring.create()
    old = ring.active
    rotated, fresh = ring.rotated(now=NOW)
    assert fresh.key_id != old.key_id
    assert rotated.active is fresh
    assert [k.state for k in rotated.keys] == [KeyState.DECRYPT_ONLY, KeyState.ACTIVE]


def test_rotate_refuses_several_pending_keys() -> None:
    ring, _ = Keyring.create().with_new_key()
    ring, _ = ring.with_new_key()
    with pytest.raises(KeyringError, match="2 pending keys"):
        ring.rotated()


def test_only_pending_or_decrypt_only_keys_are_added() -> None:
    with pytest.raises(KeyringError, match="use rotate"):
        Keyring.create().with_new_key(KeyState.ACTIVE)


def test_retire_drops_the_secret_and_refuses_the_active_key() -> None:
    ring, _ = Keyring.create().with_new_key()
    ring, _ = ring.rotated()
    old = next(k for k in ring.keys if k.state is KeyState.DECRYPT_ONLY)
    retired = ring.retired(old.key_id)
    gone = retired.get(old.key_id)
    assert gone is not None
    assert gone.state is KeyState.RETIRED
    assert gone.secret == b""
    assert old.secret.hex() not in dump_keyring(retired).decode()
    with pytest.raises(UnknownKey, match="retired"):
        retired.for_opening(old.key_id)
    with pytest.raises(KeyringError, match="rotate before retiring"):
        retired.retired(retired.active.key_id)
    with pytest.raises(KeyringError, match="not in the keyring"):
        retired.retired(b"\x77" * 16)
    assert retired.retired(old.key_id) is retired


# --- the file ------------------------------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_file_round_trip(tmp_path: Path) -> None:
    ring, _ = Keyring.create(now=NOW).with_new_key(now=NOW + 5)
    ring, _ = ring.rotated()
    path = tmp_path / "keyring.json"
    save_keyring(ring, path)
    loaded = load_keyring(path)
    assert [(k.key_id, k.state, k.created, k.secret) for k in loaded.keys] == [
        (k.key_id, k.state, k.created, k.secret) for k in ring.keys
    ]


def test_save_is_owner_only_whatever_the_umask_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write(tmp_path / "keyring.json", "old", mode=0o644)
    old_umask = os.umask(0)
    try:
        save_keyring(Keyring.create(), path)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]
    load_keyring(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o610])
def test_load_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    save_keyring(Keyring.create(), path)
    path.chmod(mode)
    with pytest.raises(KeyringError, match=f"mode {mode:04o}"):
        load_keyring(path)


def test_load_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    save_keyring(Keyring.create(), real)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(KeyringError, match="cannot open"):
        load_keyring(link)


def test_load_refuses_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring(directory)
    with pytest.raises(KeyringError, match="cannot open"):
        load_keyring(tmp_path / "missing.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_load_refuses_a_file_owned_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    save_keyring(Keyring.create(), path)
    os.chown(path, 54321, 54321)
    with pytest.raises(KeyringError, match="owned by uid 54321"):
        load_keyring(path)


def test_load_refuses_an_oversized_file(tmp_path: Path) -> None:
    path = write(tmp_path / "keyring.json", " " * (1024 * 1024 + 1))
    with pytest.raises(KeyringError, match="larger than"):
        load_keyring(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (document(entry(1), kind="something else"), "'kind' must be"),
        (document(entry(1), version=2), "unsupported keyring version"),
        (document(entry(1), extra=1), "unknown member"),
        (document(), "exactly one active key, found 0"),
        (document(entry(1), entry(2)), "exactly one active key, found 2"),
        (document(entry(1, "pending")), "exactly one active key, found 0"),
        (document(entry(1), entry(1, "pending")), "duplicate key id"),
        (document(entry(1, secret="01" * 31)), "'secret' must be 64 hex digits"),
        (document(entry(1, secret="00" * 32)), "all zero"),
        (document(entry(1, secret="zz" * 32)), "'secret' is not hex"),
        (document(entry(1, secret=None)), "'secret' must be 64 hex digits"),
        (document(entry(1, id="01" * 15)), "'id' must be 32 hex digits"),
        (document(entry(1, state="on")), "'state' must be one of"),
        (document(entry(1, created="yesterday")), "'created' is not"),
        (document(entry(1, created=5)), "'created' must be a string"),
        (document(entry(1), entry(2, "retired")), "retired key must not keep its secret"),
        (document(entry(1, colour="red")), "unknown member"),
        (document(entry(1))[:-1] + ', "keys": []}', "duplicate JSON member 'keys'"),
        (json.dumps({"kind": "spice-migration-gateway keyring", "version": 1, "keys": {}}),
         "'keys' must be a list"),
        (document("not an object"), "keys\\[0\\] is not an object"),
    ],
)
def test_parse_refuses(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "keyring.json", text)
    with pytest.raises(KeyringError, match=message) as caught:
        load_keyring(path)
    # Whatever the problem, the message never carries a secret's digits.
    for fill in (1, 2):
        assert secret_for(fill).hex() not in str(caught.value)
        assert secret_for(fill).hex()[:16] not in str(caught.value)


def test_retired_entry_without_secret_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "k.json", document(entry(1), entry(2, "retired", secret=None)))
    ring = load_keyring(path)
    retired = ring.get(b"\x02" * 16)
    assert retired is not None
    assert retired.state is KeyState.RETIRED


# --- reload --------------------------------------------------------------------------------


def test_reload_picks_up_a_new_file_and_keeps_the_old_ring_when_the_new_one_is_bad(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keyring.json"
    first = Keyring.create()
    save_keyring(first, path)
    holder = KeyringFile(path)
    assert holder.keyring.active.key_id == first.active.key_id

    second, _ = first.rotated()
    save_keyring(second, path)
    assert holder.reload().active.key_id == second.active.key_id
    assert holder.keyring.active.key_id == second.active.key_id

    path.chmod(0o644)
    with pytest.raises(KeyringError):
        holder.reload()
    assert holder.keyring.active.key_id == second.active.key_id


# --- secrets stay secret -------------------------------------------------------------------


def test_repr_and_str_never_show_secrets(tmp_path: Path) -> None:
    ring, _ = Keyring.create().with_new_key()
    path = tmp_path / "keyring.json"
    save_keyring(ring, path)
    holder = KeyringFile(path)
    shown = " ".join(
        [repr(ring), str(ring), repr(holder)]
        + [repr(k) for k in ring.keys]
        + [str(k) for k in ring.keys]
        + [f"{k}" for k in ring.keys]
    )
    for k in ring.keys:
        assert k.secret.hex() not in shown
        assert repr(k.secret)[2:-1] not in shown
        assert k.id_hex in shown


def test_keys_compare_by_identity_not_by_secret() -> None:
    one = key(KeyState.ACTIVE, 1)
    same = key(KeyState.ACTIVE, 1)
    assert one != same
    assert one == one
