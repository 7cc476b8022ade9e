"""Write the known-answer vectors in this directory from the plain reference sealer.

Run from the repository root: ``python -m tests.vectors.envelope.make_vectors``. The vectors are
frozen: regenerate them only with a new format version or suite, never to make a test pass.
Every input is fixed (key, salt, clock), so the output is the same on every run.
"""

from __future__ import annotations

import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import msgpack

from schemas import DisplayState, InputsState, MainState, StateModel, UsbredirState
from tests.vectors.envelope import reference

HERE = Path(__file__).parent


def _state_cases() -> list[tuple[str, str, StateModel, dict[str, Any]]]:
    device = {
        "connected": True,
        "num_client_tokens": 5,
        "num_send_tokens": 7,
        # One usbredir packet for the guest: device_disconnect (type 2, no type header).
        "write_size": 16,
        "write_num_client_tokens": 1,
        "write_data": b"\x02\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00",
    }
    return [
        (
            "inputs",
            "An inputs channel state: the smallest payload.",
            InputsState(motion_count=5),
            {"channel_type": 3, "channel_id": 0, "direction": 1, "source_host": "src-1",
             "target_host": "dst-1"},
        ),
        (
            "display-lossy",
            "A display state with lossy surfaces: nested maps, arrays and the union tag.",
            DisplayState.model_validate(
                {
                    "message_serial": 0x0123456789ABCDEF,
                    "low_bandwidth": False,
                    "pixmap_cache_id": 1,
                    "pixmap_cache_size": 20 * 1024 * 1024,
                    "pixmap_cache_freezer": False,
                    "pixmap_cache_clients": (1, 0, 0, 0),
                    "glz_dict_id": 1,
                    "glz_dict": {"window_size": 1 << 24, "max_encoders": 4, "last_image_id": 99},
                    "surfaces": {
                        "kind": "lossy",
                        "surfaces": (
                            {"id": 0, "lossy_rect": {"left": 0, "top": 0, "right": 1024,
                                                     "bottom": 768}},
                            {"id": 7, "lossy_rect": {"left": 3, "top": 4, "right": 5,
                                                     "bottom": 6}},
                        ),
                    },
                }
            ),
            {"channel_type": 2, "channel_id": 1, "direction": 1,
             "source_host": "kvm-a.example:5900", "target_host": "kvm-b.example:5900"},
        ),
        (
            "usbredir",
            "A usbredir state with pending bytes (msgpack bin) and non-ASCII host ids.",
            UsbredirState.model_validate({"device": device}),
            {"channel_type": 9, "channel_id": 2, "direction": 1, "source_host": "hôte-source",
             "target_host": "hôte-cible"},
        ),
        (
            "main-reverse",
            "A main channel state sealed for the target-to-source direction.",
            MainState.model_validate(
                {
                    "agent": {**device, "num_client_tokens": 3, "num_send_tokens": 1,
                              "write_size": 0, "write_num_client_tokens": 0, "write_data": b""},
                    "client_agent_started": True,
                    "agent_to_client": {
                        "chunk_header_size": 8, "chunk_port": 1, "chunk_size": 64,
                        "msg_header_done": False, "msg_header_partial_len": 4,
                        "msg_header_partial": b"\x01\x00\x00\x00", "msg_remaining": 44,
                        "msg_filter_result": 0,
                    },
                    "client_to_agent": {"msg_remaining": 0, "msg_filter_result": 0},
                }
            ),
            {"channel_type": 1, "channel_id": 0, "direction": 2, "source_host": "b",
             "target_host": "a"},
        ),
    ]


def _vector(index: int, name: str, description: str, state: StateModel,
            where: dict[str, Any]) -> dict[str, Any]:
    key_id = bytes(range(0x10 + index, 0x20 + index))
    secret = bytes((0xA0 + 3 * i + index) % 256 for i in range(32))
    salt = bytes((0x40 + 5 * i + index) % 256 for i in range(32))
    issued_at = 1_800_000_000 + 1000 * index
    expires_at = issued_at + 300
    context = reference.RawContext(
        schema_version=1,
        vm_id=uuid.UUID(int=0x6F1C1B9E0D5E4D8A9A532F43C0A5F0A1 + index),
        migration_id=uuid.UUID(int=0x0B7E2A588C364F0E9F0B6C1D2E3F4A5B + index),
        issued_at=issued_at,
        expires_at=expires_at,
        **where,
    )
    payload = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    encoded = context.encode()
    blob = reference.seal_raw(payload, encoded, key_id=key_id, secret=secret, salt=salt)
    enc_key, mac_key = reference.derive(secret, salt)
    header_end = 60
    tag_end = len(blob) - 32
    return {
        "description": description,
        "format_version": 1,
        "suite": 1,
        "model": type(state).__name__,
        "key": {"id": key_id.hex(), "secret": secret.hex()},
        "salt": salt.hex(),
        "context": {
            "channel_type": context.channel_type,
            "channel_id": context.channel_id,
            "direction": context.direction,
            "schema_version": context.schema_version,
            "vm_id": str(context.vm_id),
            "migration_id": str(context.migration_id),
            "issued_at": issued_at,
            "expires_at": expires_at,
            "source_host": context.source_host,
            "target_host": context.target_host,
        },
        "state": json.loads(state.model_dump_json()),
        "intermediate": {
            "prk": hmac.digest(salt, secret, "sha256").hex(),
            "enc_key": enc_key.hex(),
            "mac_key": mac_key.hex(),
            "nonce": reference.NONCE.hex(),
            "header": blob[:header_end].hex(),
            "context": encoded.hex(),
            "payload": payload.hex(),
            "ciphertext": blob[header_end + len(encoded) : tag_end - 16].hex(),
            "tag": blob[tag_end - 16 : tag_end].hex(),
            "mac": blob[tag_end:].hex(),
        },
        "blob": blob.hex(),
    }


def _refusals(base: dict[str, Any]) -> list[dict[str, Any]]:
    blob = bytes.fromhex(base["blob"])
    issued = base["context"]["issued_at"]
    expires = base["context"]["expires_at"]

    def flipped(offset: int, mask: int = 0x01) -> str:
        data = bytearray(blob)
        data[offset] ^= mask
        return data.hex()

    return [
        {"description": "bad magic", "blob": flipped(0), "now": issued, "error": "BadMagic"},
        {"description": "format version 2", "blob": flipped(4, 0x03), "now": issued,
         "error": "UnsupportedVersion"},
        {"description": "suite 0", "blob": flipped(5), "now": issued,
         "error": "UnsupportedVersion"},
        {"description": "key id not in the keyring", "blob": flipped(12), "now": issued,
         "error": "UnknownKey"},
        {"description": "one salt bit", "blob": flipped(40), "now": issued,
         "error": "AuthenticationFailed"},
        {"description": "one context bit (channel id)", "blob": flipped(61), "now": issued,
         "error": "AuthenticationFailed"},
        {"description": "one ciphertext bit", "blob": flipped(len(blob) - 49), "now": issued,
         "error": "AuthenticationFailed"},
        {"description": "one tag bit", "blob": flipped(len(blob) - 33), "now": issued,
         "error": "AuthenticationFailed"},
        {"description": "one signature bit", "blob": flipped(len(blob) - 1, 0x80),
         "now": issued, "error": "AuthenticationFailed"},
        {"description": "last byte missing", "blob": blob[:-1].hex(), "now": issued,
         "error": "Truncated"},
        {"description": "one byte appended", "blob": (blob + b"\x00").hex(), "now": issued,
         "error": "UnaccountedBytes"},
        {"description": "opened after expires_at + 30 s skew", "blob": blob.hex(),
         "now": expires + 31, "error": "Expired"},
        {"description": "opened more than 30 s before issued_at", "blob": blob.hex(),
         "now": issued - 31, "error": "NotYetValid"},
    ]


def main() -> None:
    vectors = [_vector(i, *case) for i, case in enumerate(_state_cases())]
    for (name, *_), vector in zip(_state_cases(), vectors, strict=True):
        (HERE / f"{name}.json").write_text(json.dumps(vector, indent=2) + "\n")
    refusals = {
        "description": (
            "Blobs derived from inputs.json that must be refused, opened with that vector's key "
            "as the only key, its context as the expected context, a 30 s clock skew, at 'now'."
        ),
        "base": "inputs.json",
        "cases": _refusals(vectors[0]),
    }
    (HERE / "refusals.json").write_text(json.dumps(refusals, indent=2) + "\n")


if __name__ == "__main__":
    main()
