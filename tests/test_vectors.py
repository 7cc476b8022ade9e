"""Known-answer vectors for the sealed envelope, checked in both directions.

Each vector in tests/vectors/envelope/ fixes the key, salt and clock, so sealing its state must
give exactly its blob, and opening its blob must give exactly its state and context. The
intermediate values (derived keys, each part of the blob) are checked with the primitives
alone, as another implementation following SECURITY.md would.
"""

from __future__ import annotations

import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway import errors
from gateway.envelope import (
    Context,
    Direction,
    ExpectedContext,
    Policy,
    _derive,
    open_envelope,
    read_header,
    seal,
)
from gateway.keys import Key, Keyring, KeyState
from gateway.replay import ReplayGuard
from schemas import ChannelType, StateModel, model_for
from tests.vectors.envelope import reference

VECTORS = Path(__file__).parent / "vectors" / "envelope"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json") if p.stem != "refusals")


def load(name: str) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return vector


def keyring_of(vector: dict[str, Any]) -> Keyring:
    key = vector["key"]
    return Keyring(
        [Key(bytes.fromhex(key["id"]), KeyState.ACTIVE, 0, bytes.fromhex(key["secret"]))]
    )


def context_of(vector: dict[str, Any]) -> Context:
    c = vector["context"]
    return Context(
        channel_type=ChannelType(c["channel_type"]),
        channel_id=c["channel_id"],
        vm_id=uuid.UUID(c["vm_id"]),
        migration_id=uuid.UUID(c["migration_id"]),
        source_host=c["source_host"],
        target_host=c["target_host"],
        schema_version=c["schema_version"],
        direction=Direction(c["direction"]),
    )


def state_of(vector: dict[str, Any]) -> StateModel:
    c = vector["context"]
    model = model_for(c["channel_type"], c["schema_version"])
    assert model is not None
    assert model.__name__ == vector["model"]
    return model.model_validate_json(json.dumps(vector["state"]))


def test_there_are_vectors_for_several_channels() -> None:
    channels = {load(name)["context"]["channel_type"] for name in NAMES}
    assert len(NAMES) >= 4
    assert len(channels) >= 4


@pytest.mark.parametrize("name", NAMES)
def test_sealing_gives_the_vector_bytes(name: str) -> None:
    vector = load(name)
    c = vector["context"]
    salt = bytes.fromhex(vector["salt"])
    blob = seal(
        state_of(vector),
        context_of(vector),
        keyring_of(vector),
        ttl=c["expires_at"] - c["issued_at"],
        now=c["issued_at"],
        random_bytes=lambda size: salt[:size],
    )
    assert blob.hex() == vector["blob"]


@pytest.mark.parametrize("name", NAMES)
def test_opening_the_vector_gives_its_state_and_context(name: str, tmp_path: Path) -> None:
    vector = load(name)
    context = context_of(vector)
    with ReplayGuard(tmp_path / "r.db") as guard:
        opened = open_envelope(
            bytes.fromhex(vector["blob"]),
            ExpectedContext.of(context),
            keyring_of(vector),
            guard,
            now=vector["context"]["issued_at"],
        )
    assert opened.state == state_of(vector)
    assert opened.context == context
    assert opened.issued_at == vector["context"]["issued_at"]
    assert opened.expires_at == vector["context"]["expires_at"]
    assert opened.key_id.hex() == vector["key"]["id"]
    assert opened.blob_id.hex() == vector["salt"]


@pytest.mark.parametrize("name", NAMES)
def test_intermediate_values_follow_the_documented_construction(name: str) -> None:
    vector = load(name)
    mid = {k: bytes.fromhex(v) for k, v in vector["intermediate"].items()}
    blob = bytes.fromhex(vector["blob"])
    secret = bytes.fromhex(vector["key"]["secret"])
    salt = bytes.fromhex(vector["salt"])

    # HKDF-SHA256: extract with the salt, expand once per label.
    assert hmac.digest(salt, secret, "sha256") == mid["prk"]
    assert _derive(secret, salt) == (mid["enc_key"], mid["mac_key"])
    assert reference.derive(secret, salt) == (mid["enc_key"], mid["mac_key"])

    # header | context | ciphertext | tag | mac, nothing else.
    assert blob == mid["header"] + mid["context"] + mid["ciphertext"] + mid["tag"] + mid["mac"]
    header = read_header(blob)
    assert header.key_id.hex() == vector["key"]["id"]
    assert header.salt == salt
    assert header.context_length == len(mid["context"])
    assert header.body_length == len(mid["ciphertext"]) == len(mid["payload"])

    # The payload is the state's msgpack; GCM with header|context as AAD; HMAC over AAD|tag.
    state = state_of(vector)
    assert msgpack.packb(state.model_dump(mode="python"), use_bin_type=True) == mid["payload"]
    aad = mid["header"] + mid["context"]
    assert AESGCM(mid["enc_key"]).decrypt(mid["nonce"], mid["ciphertext"] + mid["tag"], aad) == (
        mid["payload"]
    )
    assert hmac.digest(mid["mac_key"], aad + mid["tag"], "sha256") == mid["mac"]
    fields: dict[str, Any] = dict(vector["context"])
    fields["vm_id"] = uuid.UUID(fields["vm_id"])
    fields["migration_id"] = uuid.UUID(fields["migration_id"])
    raw = reference.RawContext(**fields)
    assert raw.encode() == mid["context"]


REFUSALS = json.loads((VECTORS / "refusals.json").read_text())


@pytest.mark.parametrize(
    "case", REFUSALS["cases"], ids=[c["description"] for c in REFUSALS["cases"]]
)
def test_refusal_vectors(case: dict[str, Any], tmp_path: Path) -> None:
    base = load(Path(REFUSALS["base"]).stem)
    error = getattr(errors, case["error"])
    with ReplayGuard(tmp_path / "r.db") as guard:
        with pytest.raises(errors.GatewayError) as caught:
            open_envelope(
                bytes.fromhex(case["blob"]),
                ExpectedContext.of(context_of(base)),
                keyring_of(base),
                guard,
                policy=Policy(clock_skew=30),
                now=case["now"],
            )
        assert type(caught.value) is error
        # Only an authentic blob (refused for its lifetime) is spent; altered ones are not.
        authentic = case["error"] in ("Expired", "NotYetValid")
        assert len(guard) == int(authentic)
