"""What the envelope attack tests share: one clock, VM and migration, a blob's context (as the
gateway builds it, and as the raw fields a key holder can seal), and a key holder's seal.

The ``keyring`` and ``guard`` fixtures that go with them are in ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway.envelope import Context
from gateway.keys import Keyring
from schemas import ChannelType
from tests.vectors.envelope import reference

__all__ = ["MIGRATION", "NOW", "TTL", "VM", "by_key_holder", "context_for", "raw_context"]

NOW = 1_800_000_000
TTL = 300
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")
SOURCE, TARGET = "src.example", "dst.example"


def context_for(channel: ChannelType, channel_id: int, **changes: Any) -> Context:
    """The context the gateway seals a blob of ``channel`` under, with ``changes``."""
    fields: dict[str, Any] = {
        "channel_type": channel,
        "channel_id": channel_id,
        "vm_id": VM,
        "migration_id": MIGRATION,
        "source_host": SOURCE,
        "target_host": TARGET,
        "schema_version": 1,
    }
    fields.update(changes)
    return Context(**fields)


def raw_context(channel: ChannelType, channel_id: int, **changes: Any) -> reference.RawContext:
    """The same context as raw fields (any value a key holder likes), with ``changes``."""
    fields: dict[str, Any] = {
        "channel_type": int(channel),
        "channel_id": channel_id,
        "direction": 1,
        "schema_version": 1,
        "vm_id": VM,
        "migration_id": MIGRATION,
        "issued_at": NOW,
        "expires_at": NOW + TTL,
        "source_host": SOURCE,
        "target_host": TARGET,
    }
    fields.update(changes)
    return reference.RawContext(**fields)


def by_key_holder(
    keyring: Keyring, payload: bytes, context: reference.RawContext | bytes, salt: bytes
) -> bytes:
    """A blob that authenticates: sealed with the real key over bytes of the holder's choice
    (what a compromised source can send)."""
    encoded = context if isinstance(context, bytes) else context.encode()
    return reference.seal_raw(
        payload, encoded, key_id=keyring.active.key_id, secret=keyring.active.secret, salt=salt
    )
