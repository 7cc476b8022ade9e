"""Attack catalogue, finding 7: weak or shared keyring secrets are refused at load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gateway.errors import KeyringError
from gateway.keys import Key, Keyring, KeyState, load_keyring, parse_keyring

NOW = 1_800_000_000


def _entry(key_id: bytes, secret: bytes, state: str = "active") -> dict[str, str]:
    return {
        "id": key_id.hex(),
        "state": state,
        "created": "2027-01-15T08:00:00Z",
        "secret": secret.hex(),
    }


def _document(*entries: dict[str, str]) -> str:
    return json.dumps(
        {"kind": "spice-migration-gateway keyring", "version": 1, "keys": list(entries)}
    )


STRONG = hashlib.sha256(b"strong").digest()


def test_one_secret_under_two_key_ids_is_refused(tmp_path: Path) -> None:
    text = _document(
        _entry(b"\x01" * 16, STRONG, "active"), _entry(b"\x02" * 16, STRONG, "decrypt-only")
    )
    path = tmp_path / "keyring.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="share one secret") as caught:
        load_keyring(path)
    assert STRONG.hex()[:16] not in str(caught.value)


def test_shared_secret_refused_when_built_in_memory() -> None:
    with pytest.raises(KeyringError, match="share one secret"):
        Keyring(
            [
                Key(b"\x01" * 16, KeyState.ACTIVE, NOW, STRONG),
                Key(b"\x02" * 16, KeyState.PENDING, NOW, STRONG),
            ]
        )


@pytest.mark.parametrize(
    "secret",
    [bytes(31) + b"\x01", b"\x41" * 32, b"\x00\xff" * 16, bytes(range(11)) * 2 + bytes(10)],
    ids=["31-zeros-then-one", "0x41-repeated", "two-values", "eleven-values"],
)
def test_low_entropy_secret_is_refused_at_load(secret: bytes) -> None:
    with pytest.raises(KeyringError, match="too regular") as caught:
        parse_keyring(_document(_entry(b"\x01" * 16, secret)))
    assert secret.hex() not in str(caught.value)


def test_twelve_distinct_values_still_load() -> None:
    """The rule is a floor for the obviously regular, not a randomness test."""
    secret = bytes(range(12)) * 2 + bytes(range(8))
    assert len(parse_keyring(_document(_entry(b"\x01" * 16, secret)))) == 1


def test_generate_never_produces_a_weak_secret() -> None:
    with pytest.raises(KeyringError, match="too regular"):
        Key.generate(KeyState.ACTIVE, random_bytes=lambda size: b"\x41" * size)
    fresh = Key.generate(KeyState.ACTIVE)
    assert len(set(fresh.secret)) >= 12
