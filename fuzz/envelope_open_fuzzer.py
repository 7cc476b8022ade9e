#!/usr/bin/env python3
"""``open_envelope``: a sealed blob from the client, opened with valid keys at a fixed clock.

Input: one byte choosing what the opener expects (which channel, pinned or any migration) and
its policy (the default, or one with tight limits or minimum versions), then the blob.

The custom mutator knows the keys. Besides byte-level mutation of the blob (what an attacker
without keys controls: header, lengths, key id, truncation), it decrypts, mutates the context
or the payload and seals again, so the checks behind the MAC are fuzzed too, as a source
holding a valid key could attack them.

Oracle: only GatewayError escapes; a refused blob is recorded in the replay guard exactly when
its signature and ciphertext verified (an authentic blob is used once, accepted or refused); an
opened blob matches the expectation field by field, is within its lifetime, re-encodes natively,
and opening it a second time is refused as Replayed.
"""

import atexit
import hmac
import os
import random
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Any

import _harness
from _harness import Pick

with _harness.instrumented("gateway.envelope", "schemas"):
    from gateway import envelope, native
    from gateway.envelope import (
        ANY_MIGRATION,
        DEFAULT_POLICY,
        DEFAULT_TTL,
        HEADER_SIZE,
        MAC_SIZE,
        MAX_HOST_ID,
        TAG_SIZE,
        ExpectedContext,
        Opened,
        Policy,
        open_envelope,
        read_unauthenticated,
    )
    from gateway.errors import GatewayError, Replayed, SchemaViolation
    from gateway.keys import Key, Keyring, KeyState
    from gateway.replay import ReplayGuard
    from schemas import ChannelType, model_for

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "EXPECTATIONS",
    "KEYRING",
    "NOW",
    "POLICIES",
    "CustomMutator",
    "TestOneInput",
    "build_context",
    "choose",
    "seal_raw",
]

NOW = 1_800_000_000
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")
SOURCE, TARGET = "src-1", "dst-1"
HEADER = struct.Struct(">4sBBHI16s32s")
CONTEXT = struct.Struct(">BBBH16s16sQQ")


def _key(first: int, state: KeyState) -> Key:
    secret = b"" if state is KeyState.RETIRED else bytes(range(first + 0x80, first + 0xA0))
    return Key(bytes(range(first, first + 16)), state, 1_700_000_000, secret)


#: One key in every state, so each branch of the key lookup is reachable.
KEYRING = Keyring(
    [
        _key(0x10, KeyState.ACTIVE),
        _key(0x20, KeyState.DECRYPT_ONLY),
        _key(0x30, KeyState.PENDING),
        _key(0x40, KeyState.RETIRED),
    ]
)
SECRETS = {key.key_id: key.secret for key in KEYRING.keys if key.secret}
RETIRED_ID = KEYRING.keys[3].key_id

#: What the opener expects, chosen by the input's first byte: every channel with a pinned
#: migration, then the first-blob case (any migration, two trusted sources).
EXPECTATIONS = [
    ExpectedContext(
        channel_type=channel,
        channel_id=0,
        vm_id=VM,
        migration_id=MIGRATION,
        sources=frozenset([SOURCE]),
        target_host=TARGET,
        schema_version=1,
    )
    for channel in sorted(native.CHANNEL_NAMES.values())
] + [
    ExpectedContext(
        channel_type=ChannelType.MAIN,
        channel_id=0,
        vm_id=VM,
        migration_id=ANY_MIGRATION,
        sources=frozenset([SOURCE, "src-2"]),
        target_host=TARGET,
        schema_version=1,
    )
]

#: The default policy, then one tight enough to refuse a real blob as too large or too long
#: lived, then ones with minimum versions above what a suite-1 blob carries.
POLICIES = [
    DEFAULT_POLICY,
    Policy(max_blob_size=2048, clock_skew=0, max_ttl=60),
    Policy(min_format_version=2),
    Policy(min_schema_version=2),
]


def _replay_db() -> Path:
    """A fresh replay database of this process's own. libFuzzer ends the process without
    Python's exit handlers, so each start also removes what dead runs left behind."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{_DB_PREFIX}*"):
        pid = stale.name.removeprefix(_DB_PREFIX)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = root / f"{_DB_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, folder, True)
    return folder / "replay.db"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_DB_PREFIX = "envelope-open-fuzz-"
GUARD = ReplayGuard(_replay_db())
#: Larger than any row's keep_until: pruning with it forgets every consumed blob.
FOREVER = 1 << 62


def choose(selector: int) -> tuple[ExpectedContext, Policy]:
    """The expectation and policy an input's first byte selects."""
    count = len(EXPECTATIONS)
    return EXPECTATIONS[selector % count], POLICIES[selector // count % len(POLICIES)]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    expected, policy = choose(data[0])
    blob = data[1:]
    # Rows a blob with an expiry near the end of time left behind survive pruning: compare.
    before = len(GUARD)
    try:
        shown: tuple[Any, ...] | None = read_unauthenticated(blob)[1:]
    except GatewayError as error:
        _harness.check_refusal(error, len(blob))
        shown = None
    try:
        opened = open_envelope(blob, expected, KEYRING, GUARD, policy=policy, now=NOW)
    except GatewayError as error:
        _harness.check_refusal(
            error, len(blob), envelope.max_blob_size(expected.channel_type, policy)
        )
        spent = error.authentic_blob
        if spent is None and len(GUARD) != before:
            raise _harness.OracleFailure("a refused forged blob was recorded") from error
        if spent is not None and spent[0] not in GUARD:
            raise _harness.OracleFailure("a refused authentic blob was not recorded") from error
        if isinstance(error, SchemaViolation):
            _check_depth_first(blob, policy)
        GUARD.prune(FOREVER)
        return
    try:
        _check_opened(opened, expected, policy, blob)
        if shown != (opened.context, opened.issued_at, opened.expires_at):
            raise _harness.OracleFailure("inspect shows another context than the one opened")
        try:
            open_envelope(blob, expected, KEYRING, GUARD, policy=policy, now=NOW)
        except Replayed:
            pass
        else:
            raise _harness.OracleFailure("the same blob opened twice")
    finally:
        GUARD.prune(FOREVER)


def _check_depth_first(blob: bytes, policy: Policy) -> None:
    """A payload nested deeper than the policy allows is refused by the msgpack layer, never
    left for the schema to trip over (only a key holder reaches this: the blob opened)."""
    unsealed = unseal(blob)
    nesting = _harness.msgpack_depth(unsealed[2]) if unsealed else None
    if nesting is not None and nesting > policy.max_depth:
        raise _harness.OracleFailure(
            f"payload nested {nesting} deep (limit {policy.max_depth}) reached the schema"
        )


def _check_opened(opened: Opened, expected: ExpectedContext, policy: Policy, blob: bytes) -> None:
    """Everything open_envelope promises, checked again independently of its code."""
    context = opened.context
    mismatches = [
        name
        for name, ok in (
            ("channel_type", context.channel_type == expected.channel_type),
            ("channel_id", context.channel_id == expected.channel_id),
            ("vm_id", context.vm_id == expected.vm_id),
            (
                "migration_id",
                expected.migration_id is ANY_MIGRATION
                or context.migration_id == expected.migration_id,
            ),
            ("source_host", context.source_host in expected.sources),
            ("target_host", context.target_host == expected.target_host),
            ("direction", context.direction == expected.direction),
            ("schema_version", context.schema_version == expected.schema_version),
        )
        if not ok
    ]
    if mismatches:
        raise _harness.OracleFailure(f"opened with mismatched context: {mismatches}")
    skew, ttl = policy.clock_skew, policy.max_ttl
    if not opened.issued_at - skew <= NOW <= opened.expires_at + skew:
        raise _harness.OracleFailure("opened outside its lifetime")
    if not 0 <= opened.expires_at - opened.issued_at <= ttl:
        raise _harness.OracleFailure("opened with a lifetime over the limit")
    if opened.key_id not in SECRETS or opened.blob_id != blob[28:HEADER_SIZE]:
        raise _harness.OracleFailure("opened with a key id or blob id not from the blob")
    model = model_for(context.channel_type, context.schema_version)
    if model is None or type(opened.state) is not model:
        raise _harness.OracleFailure(f"opened a {type(opened.state).__name__} for {context}")
    channel = context.channel_type
    if native.decode(channel, native.encode(opened.state, channel)) != opened.state:
        raise _harness.OracleFailure("opened state does not survive native encoding")


# --- sealing whatever bytes a key holder likes ------------------------------------------------


def seal_raw(
    context: bytes,
    payload: bytes,
    *,
    key_id: bytes,
    salt: bytes,
    format_version: int = 1,
    suite: int = 1,
) -> bytes:
    """A blob around raw context and payload bytes, sealed with one of KEYRING's secrets."""
    header = HEADER.pack(
        envelope.MAGIC, format_version, suite, len(context), len(payload), key_id, salt
    )
    enc_key, mac_key = envelope._derive(SECRETS[key_id], salt)
    authenticated = header + context
    body = AESGCM(enc_key).encrypt(envelope._NONCE, payload, authenticated)
    mac = hmac.digest(mac_key, authenticated + body[-TAG_SIZE:], "sha256")
    return authenticated + body + mac


def unseal(blob: bytes) -> tuple[tuple[Any, ...], bytes, bytes] | None:
    """(header fields, context, payload) of a blob sealed with a KEYRING secret, else None."""
    if len(blob) < HEADER_SIZE + TAG_SIZE + MAC_SIZE:
        return None
    fields = HEADER.unpack_from(blob)
    secret = SECRETS.get(fields[5])
    context_end = HEADER_SIZE + fields[3]
    if secret is None or context_end > len(blob) - TAG_SIZE - MAC_SIZE:
        return None
    enc_key, _ = envelope._derive(secret, fields[6])
    try:
        payload = AESGCM(enc_key).decrypt(
            envelope._NONCE, blob[context_end:-MAC_SIZE], blob[:context_end]
        )
    except InvalidTag:
        return None
    return fields, blob[HEADER_SIZE:context_end], payload


def build_context(pick: Pick, expected: ExpectedContext, now: int = NOW) -> bytes:
    """Context bytes that mostly match ``expected``, each field otherwise at a boundary of the
    opener's checks: clock skew, lifetime, host lengths and encodings, enum ranges."""
    skew, ttl = DEFAULT_POLICY.clock_skew, DEFAULT_POLICY.max_ttl
    issued = now + pick((0, 0, -1, -skew, -skew - 1, skew, skew + 1, -ttl, 1 << 40))
    expires = issued + pick((DEFAULT_TTL, DEFAULT_TTL, 0, -1, ttl, ttl + 1, 1))
    if pick((False, False, False, True)):
        expires = now + pick((-skew - 1, -skew, -skew + 1, skew))
    source = pick((SOURCE, SOURCE, SOURCE, "src-2", TARGET, "", "x" * MAX_HOST_ID, "s\x00", "é"))
    target = pick((TARGET, TARGET, TARGET, SOURCE, "x" * (MAX_HOST_ID + 1), "\u2028"))
    hosts = [source.encode(), target.encode()]
    if pick((False, False, False, False, True)):
        hosts[pick((0, 1))] = b"\xff\xfe"
    channel = int(expected.channel_type)
    fixed = CONTEXT.pack(
        pick((channel, channel, channel, 0, 4, 9, 12, 255)),
        pick((0, 0, 0, 1, 255)),
        pick((1, 1, 1, 2, 0, 3)),
        pick((1, 1, 1, 0, 2, 0xFFFF)),
        pick((VM.bytes, VM.bytes, VM.bytes, MIGRATION.bytes, bytes(16))),
        pick((MIGRATION.bytes, MIGRATION.bytes, MIGRATION.bytes, VM.bytes, bytes(16))),
        issued % (1 << 64),
        expires % (1 << 64),
    )
    lengths = b"".join(bytes([len(host) % 256]) + host for host in hosts)
    trailing: bytes = pick((b"", b"", b"", b"", b"\x00", b"\x05src-1"))
    return fixed + lengths + trailing


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    selector = data[:1] or bytes([rng.randrange(len(EXPECTATIONS) * len(POLICIES))])
    if rng.random() < 0.05:
        selector = bytes([rng.randrange(256)])
    blob = data[1:]
    opened = unseal(blob)
    if opened is None or rng.random() < 0.3:
        return (selector + _keyless(blob, rng, max_size - 1))[:max_size]
    fields, context, payload = opened
    _, format_version, suite, _, _, key_id, salt = fields
    expected, _ = choose(selector[0])
    roll = rng.random()
    if roll < 0.1:
        # Deeper: the document wrapped in one-element arrays, around the depth limit.
        limit = DEFAULT_POLICY.max_depth
        payload = b"\x91" * rng.randint(max(1, limit - 4), limit + 8) + payload
    elif roll < 0.4:
        payload = _harness.libfuzzer_mutate(payload, max(2 * len(payload), 64))
    elif roll < 0.65:
        context = build_context(rng.choice, expected)
    elif roll < 0.8:
        context = _harness.libfuzzer_mutate(context, len(context) + 16)
    elif roll < 0.9:
        key_id, salt = rng.choice(list(SECRETS)), rng.randbytes(32)
    else:
        format_version, suite = rng.choice((0, 1, 1, 2)), rng.choice((0, 1, 1, 2))
    blob = seal_raw(
        context, payload, key_id=key_id, salt=salt, format_version=format_version, suite=suite
    )
    return (selector + blob)[:max_size]


def _keyless(blob: bytes, rng: random.Random, max_size: int) -> bytes:
    """What an attacker without keys can do: change bytes, and half the time keep the header's
    lengths consistent with the new size so the key lookup and MAC are reached."""
    mutated = bytearray(_harness.libfuzzer_mutate(blob, max_size))
    if len(mutated) >= HEADER_SIZE and rng.random() < 0.5:
        mutated[:6] = envelope.MAGIC + b"\x01\x01"
        (context_length,) = struct.unpack_from(">H", mutated, 6)
        body = len(mutated) - HEADER_SIZE - context_length - TAG_SIZE - MAC_SIZE
        struct.pack_into(">I", mutated, 8, body % (1 << 32))
    return bytes(mutated)


if __name__ == "__main__":
    _harness.main(TestOneInput, CustomMutator)
