"""Host identities: each host's own signing and KEM keys, and the trust store of its peers'.

A host identity is a set of *generations* under one host id. Each generation holds three key
pairs, all derived from seeds the operating system gave once:

* Ed25519 and ML-DSA-65, used together: a **hybrid signature** is both signatures over the
  same message, and it verifies only when both do (forging one needs breaking both schemes);
* ML-KEM-768 + X25519 (the hybrid KEM of HPKE, RFC 9180), which peers can encrypt to.

Its public half (:class:`PublicIdentity`) is what other hosts trust. A generation's
**fingerprint** is SHA-256 of its canonical public encoding (host id, creation time and the
three public keys); operators compare it out of band, and its first 16 bytes are the
generation's **key id**, which handshake messages name.

Generations rotate like the keyring's keys, with overlap: a host's own file holds one
``active`` generation (the one that signs), any ``pending`` ones (published to peers ahead of
use) and ``retired`` ones (secrets erased). A trust store holds peers' public generations, each
``pending`` (accepted), ``active`` (accepted, and the one to encrypt to) or ``retired``
(refused, kept so that the refusal is clear).

Everything here is pure except the ``load_*``/``save_*`` functions; clock and randomness are
passed in. SECURITY.md ("Host identities") documents the file formats and the encodings.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gateway.errors import (
    AuthenticationFailed,
    ContextMismatch,
    GatewayError,
    IdentityError,
    UnknownKey,
)
from gateway.keys import (
    hex_field,
    read_protected_file,
    strict_json,
    unknown_members,
    write_private_file,
)

__all__ = [
    "FINGERPRINT_SIZE",
    "KEM_PUBLIC_SIZE",
    "KEY_ID_SIZE",
    "MAX_HOST_ID",
    "SIGNATURE_SIZE",
    "HostIdentity",
    "HostKey",
    "IdentityFiles",
    "IdentityState",
    "PublicIdentity",
    "TrustEntry",
    "TrustStore",
    "check_host_id",
    "check_identity_files",
    "dump_identity",
    "dump_public",
    "dump_trust_store",
    "load_identity",
    "load_trust_store",
    "parse_fingerprint",
    "parse_identity",
    "parse_public",
    "parse_trust_store",
    "save_identity",
    "save_trust_store",
]

KEY_ID_SIZE: Final = 16
FINGERPRINT_SIZE: Final = 32
#: The config's host-id rule (gateway.proxy.config.HostId), which also fits the envelope's.
MAX_HOST_ID: Final = 128
_HOST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

ED25519_SEED: Final = 32
MLDSA65_SEED: Final = 32
MLKEM768_SEED: Final = 64
X25519_SEED: Final = 32
SEEDS_SIZE: Final = ED25519_SEED + MLDSA65_SEED + MLKEM768_SEED + X25519_SEED

ED25519_PUBLIC: Final = 32
MLDSA65_PUBLIC: Final = 1952
MLKEM768_PUBLIC: Final = 1184
X25519_PUBLIC: Final = 32
KEM_PUBLIC_SIZE: Final = MLKEM768_PUBLIC + X25519_PUBLIC
ED25519_SIGNATURE: Final = 64
MLDSA65_SIGNATURE: Final = 3309
SIGNATURE_SIZE: Final = ED25519_SIGNATURE + MLDSA65_SIGNATURE

IDENTITY_KIND: Final = "spice-migration-gateway host identity"
PUBLIC_KIND: Final = "spice-migration-gateway public host identity"
TRUST_KIND: Final = "spice-migration-gateway trust store"
FILE_VERSION: Final = 1
MAX_IDENTITY_FILE: Final = 256 * 1024
MAX_PUBLIC_FILE: Final = 64 * 1024
MAX_TRUST_FILE: Final = 64 * 1024 * 1024
MAX_GENERATIONS: Final = 64
MAX_TRUST_ENTRIES: Final = 16384

#: Domain separation: every signed or hashed encoding starts with its own label, and no label
#: is a prefix of another (each ends in NUL).
LABEL_PUBLIC: Final = b"spice-migration-gateway public identity v1\x00"
LABEL_SELF: Final = b"spice-migration-gateway identity self-signature v1\x00"

RandomBytes = Callable[[int], bytes]

#: host id length, created (u64), then the public keys.
_PUBLIC_FIXED: Final = struct.Struct(">Q")


class IdentityState(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"

    @property
    def accepted(self) -> bool:
        return self is not IdentityState.RETIRED


def check_host_id(value: object, where: str = "host id") -> str:
    if not isinstance(value, str) or not _HOST_ID.fullmatch(value):
        raise IdentityError(f"{where} must be 1 to {MAX_HOST_ID} of A-Z a-z 0-9 . _ : -")
    return value


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_created(created: object, where: str) -> int:
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < 1 << 40:
        raise IdentityError(f"{where}: creation time out of range")
    return created


# --- public identities ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class PublicIdentity:
    """One generation of a host's public identity. Immutable; keys are checked on creation."""

    host_id: str
    created: int
    ed25519: bytes
    mldsa65: bytes
    kem: bytes
    """ML-KEM-768 public key (1,184 bytes) followed by the X25519 public key (32)."""
    _encoded: bytes = field(init=False)
    _ed: Ed25519PublicKey = field(init=False)
    _ml: MLDSA65PublicKey = field(init=False)
    _kem: hpke.MLKEM768X25519PublicKey = field(init=False)

    def __post_init__(self) -> None:
        check_host_id(self.host_id)
        _check_created(self.created, "public identity")
        for name, value, size in (
            ("ed25519", self.ed25519, ED25519_PUBLIC),
            ("mldsa65", self.mldsa65, MLDSA65_PUBLIC),
            ("kem", self.kem, KEM_PUBLIC_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise IdentityError(f"public identity: {name} key must be {size} bytes")
        try:
            ed = Ed25519PublicKey.from_public_bytes(self.ed25519)
            ml = MLDSA65PublicKey.from_public_bytes(self.mldsa65)
            kem = hpke.MLKEM768X25519PublicKey(
                MLKEM768PublicKey.from_public_bytes(self.kem[:MLKEM768_PUBLIC]),
                X25519PublicKey.from_public_bytes(self.kem[MLKEM768_PUBLIC:]),
            )
        except (ValueError, UnsupportedAlgorithm):
            raise IdentityError("public identity: a public key is not valid") from None
        host = self.host_id.encode()
        encoded = b"".join(
            (
                LABEL_PUBLIC,
                bytes([len(host)]),
                host,
                _PUBLIC_FIXED.pack(self.created),
                self.ed25519,
                self.mldsa65,
                self.kem,
            )
        )
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_ed", ed)
        object.__setattr__(self, "_ml", ml)
        object.__setattr__(self, "_kem", kem)

    @property
    def encoded(self) -> bytes:
        """The canonical encoding that the fingerprint and the self-signature cover."""
        return self._encoded

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha256(self._encoded).digest()

    @property
    def fingerprint_text(self) -> str:
        """``sha256:`` and 64 hex digits in groups of four, for reading aloud."""
        digits = self.fingerprint.hex()
        return "sha256:" + " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))

    @property
    def key_id(self) -> bytes:
        return self.fingerprint[:KEY_ID_SIZE]

    @property
    def kem_public_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self._kem

    def same_keys(self, other: PublicIdentity) -> bool:
        return self._encoded == other._encoded

    def verify(self, label: bytes, data: bytes, signature: bytes) -> None:
        """Check a hybrid signature: both halves must verify (AuthenticationFailed if not)."""
        if len(signature) != SIGNATURE_SIZE:
            raise AuthenticationFailed(f"{label_name(label)}: signature has the wrong size")
        message = label + data
        try:
            self._ed.verify(signature[:ED25519_SIGNATURE], message)
            self._ml.verify(signature[ED25519_SIGNATURE:], message)
        except InvalidSignature:
            raise AuthenticationFailed(
                f"{label_name(label)}: signature of {self.host_id} key {self.key_id.hex()} "
                "does not verify"
            ) from None

    def __repr__(self) -> str:
        return (
            f"PublicIdentity(host_id={self.host_id!r}, key_id={self.key_id.hex()}, "
            f"created={_iso(self.created)})"
        )

    __str__ = __repr__


def label_name(label: bytes) -> str:
    """A label as text for messages: its words without the version and the NUL."""
    return label.rstrip(b"\x00").decode("ascii").removeprefix("spice-migration-gateway ")


# --- private identities --------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Seeds:
    ed25519: bytes
    mldsa65: bytes
    mlkem768: bytes
    x25519: bytes

    @classmethod
    def split(cls, raw: bytes) -> _Seeds:
        if len(raw) != SEEDS_SIZE:
            raise IdentityError(f"identity seeds must be {SEEDS_SIZE} bytes, got {len(raw)}")
        a = ED25519_SEED
        b = a + MLDSA65_SEED
        c = b + MLKEM768_SEED
        return cls(raw[:a], raw[a:b], raw[b:c], raw[c:])

    def joined(self) -> bytes:
        return self.ed25519 + self.mldsa65 + self.mlkem768 + self.x25519

    def __repr__(self) -> str:
        return "_Seeds(<secret>)"


@dataclass(frozen=True, eq=False, repr=False)
class HostKey:
    """One generation of this host's own identity. A retired one keeps no secret."""

    host_id: str
    state: IdentityState
    created: int
    key_id: bytes
    _seeds: _Seeds | None = field(default=None)
    _public: PublicIdentity | None = field(default=None)
    _ed: Ed25519PrivateKey | None = field(default=None)
    _ml: MLDSA65PrivateKey | None = field(default=None)
    _kem: hpke.MLKEM768X25519PrivateKey | None = field(default=None)

    @classmethod
    def from_seeds(cls, host_id: str, state: IdentityState, created: int, seeds: bytes) -> HostKey:
        """A live generation from its 160 bytes of seeds (deterministic, so testable)."""
        if state is IdentityState.RETIRED:
            raise IdentityError("a retired generation keeps no seeds")
        split = _Seeds.split(seeds)
        if not any(split.ed25519) or not any(split.mldsa65) or not any(split.mlkem768):
            raise IdentityError("identity seeds contain an all-zero key")
        try:
            ed = Ed25519PrivateKey.from_private_bytes(split.ed25519)
            ml = MLDSA65PrivateKey.from_seed_bytes(split.mldsa65)
            kem_ml = MLKEM768PrivateKey.from_seed_bytes(split.mlkem768)
            kem_x = X25519PrivateKey.from_private_bytes(split.x25519)
        except (ValueError, UnsupportedAlgorithm):
            raise IdentityError("identity seeds do not form valid keys") from None
        public = PublicIdentity(
            host_id,
            created,
            ed.public_key().public_bytes_raw(),
            ml.public_key().public_bytes_raw(),
            kem_ml.public_key().public_bytes_raw() + kem_x.public_key().public_bytes_raw(),
        )
        kem = hpke.MLKEM768X25519PrivateKey(kem_ml, kem_x)
        return cls(host_id, state, created, public.key_id, split, public, ed, ml, kem)

    @classmethod
    def generate(
        cls,
        host_id: str,
        state: IdentityState,
        *,
        now: float | None = None,
        random_bytes: RandomBytes | None = None,
    ) -> HostKey:
        created = int(time.time() if now is None else now)
        return cls.from_seeds(host_id, state, created, (random_bytes or os.urandom)(SEEDS_SIZE))

    @classmethod
    def retired_record(cls, host_id: str, created: int, key_id: bytes) -> HostKey:
        if len(key_id) != KEY_ID_SIZE:
            raise IdentityError(f"key id must be {KEY_ID_SIZE} bytes")
        return cls(host_id, IdentityState.RETIRED, created, key_id)

    @property
    def public(self) -> PublicIdentity:
        if self._public is None:
            raise IdentityError(f"generation {self.key_id.hex()} is retired")
        return self._public

    @property
    def kem_private_key(self) -> hpke.MLKEM768X25519PrivateKey:
        if self._kem is None:
            raise IdentityError(f"generation {self.key_id.hex()} is retired")
        return self._kem

    def sign(self, label: bytes, data: bytes) -> bytes:
        """The hybrid signature (Ed25519 then ML-DSA-65) over ``label || data``."""
        if self._ed is None or self._ml is None:
            raise IdentityError(f"generation {self.key_id.hex()} is retired")
        message = label + data
        return self._ed.sign(message) + self._ml.sign(message)

    def with_state(self, state: IdentityState) -> HostKey:
        if state is IdentityState.RETIRED:
            return HostKey.retired_record(self.host_id, self.created, self.key_id)
        if self._seeds is None:
            raise IdentityError(f"generation {self.key_id.hex()} is retired")
        return HostKey(
            self.host_id,
            state,
            self.created,
            self.key_id,
            self._seeds,
            self._public,
            self._ed,
            self._ml,
            self._kem,
        )

    def __repr__(self) -> str:
        return (
            f"HostKey(host_id={self.host_id!r}, key_id={self.key_id.hex()}, "
            f"state={self.state.value}, created={_iso(self.created)})"
        )

    __str__ = __repr__


class HostIdentity:
    """This host's identity: one host id, exactly one active generation, ids unique."""

    __slots__ = ("_by_id", "_keys", "active", "host_id")

    def __init__(self, host_id: str, keys: Iterable[HostKey]) -> None:
        self.host_id = check_host_id(host_id)
        self._keys = tuple(keys)
        if len(self._keys) > MAX_GENERATIONS:
            raise IdentityError(f"an identity holds at most {MAX_GENERATIONS} generations")
        self._by_id: dict[bytes, HostKey] = {}
        for key in self._keys:
            if key.host_id != host_id:
                raise IdentityError(f"generation {key.key_id.hex()} belongs to another host id")
            if key.key_id in self._by_id:
                raise IdentityError(f"duplicate generation {key.key_id.hex()}")
            self._by_id[key.key_id] = key
        active = [k for k in self._keys if k.state is IdentityState.ACTIVE]
        if len(active) != 1:
            raise IdentityError(
                f"an identity needs exactly one active generation, found {len(active)}"
            )
        self.active: HostKey = active[0]
        """The generation that signs."""

    @property
    def keys(self) -> tuple[HostKey, ...]:
        return self._keys

    @property
    def public(self) -> PublicIdentity:
        return self.active.public

    def get(self, key_id: bytes) -> HostKey | None:
        return self._by_id.get(key_id)

    def __repr__(self) -> str:
        return f"HostIdentity({self.host_id!r}, {list(self._keys)!r})"

    @classmethod
    def create(
        cls, host_id: str, *, now: float | None = None, random_bytes: RandomBytes | None = None
    ) -> HostIdentity:
        check_host_id(host_id)
        key = HostKey.generate(host_id, IdentityState.ACTIVE, now=now, random_bytes=random_bytes)
        return cls(host_id, [key])

    def with_new_generation(
        self, *, now: float | None = None, random_bytes: RandomBytes | None = None
    ) -> tuple[HostIdentity, HostKey]:
        """Add a pending generation: export it to every peer before :meth:`rotated`."""
        key = HostKey.generate(
            self.host_id, IdentityState.PENDING, now=now, random_bytes=random_bytes
        )
        return HostIdentity(self.host_id, [*self._keys, key]), key

    def rotated(self) -> tuple[HostIdentity, HostKey]:
        """Promote the one pending generation to active; the old active one is retired."""
        pending = [k for k in self._keys if k.state is IdentityState.PENDING]
        if len(pending) != 1:
            raise IdentityError(
                f"{len(pending)} pending generations: rotation promotes exactly one "
                "(add one with host-init, retire extras)"
            )
        promoted = pending[0].with_state(IdentityState.ACTIVE)
        keys = []
        for key in self._keys:
            if key is pending[0]:
                keys.append(promoted)
            elif key.state is IdentityState.ACTIVE:
                keys.append(key.with_state(IdentityState.RETIRED))
            else:
                keys.append(key)
        return HostIdentity(self.host_id, keys), promoted


# --- trust store ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class TrustEntry:
    """A peer's generation in the trust store. A retired one keeps only its id."""

    host_id: str
    key_id: bytes
    state: IdentityState
    created: int
    public: PublicIdentity | None = None

    def __post_init__(self) -> None:
        check_host_id(self.host_id)
        _check_created(self.created, f"trust entry {self.key_id.hex()}")
        if len(self.key_id) != KEY_ID_SIZE:
            raise IdentityError(f"key id must be {KEY_ID_SIZE} bytes")
        if self.state is IdentityState.RETIRED:
            if self.public is not None:
                raise IdentityError("a retired trust entry keeps no keys")
            return
        if self.public is None:
            raise IdentityError(f"trust entry {self.key_id.hex()} has no keys")
        if self.public.key_id != self.key_id:
            raise IdentityError(f"trust entry {self.key_id.hex()}: keys do not match its id")
        if self.public.host_id != self.host_id or self.public.created != self.created:
            raise IdentityError(f"trust entry {self.key_id.hex()}: host id or time differs")

    @classmethod
    def of(cls, public: PublicIdentity, state: IdentityState) -> TrustEntry:
        return cls(public.host_id, public.key_id, state, public.created, public)

    def __repr__(self) -> str:
        return (
            f"TrustEntry(host_id={self.host_id!r}, key_id={self.key_id.hex()}, "
            f"state={self.state.value})"
        )


class TrustStore:
    """Peers' public identities: ids unique, at most one active generation per peer."""

    __slots__ = ("_by_id", "_entries")

    def __init__(self, entries: Iterable[TrustEntry] = ()) -> None:
        self._entries = tuple(entries)
        if len(self._entries) > MAX_TRUST_ENTRIES:
            raise IdentityError(f"a trust store holds at most {MAX_TRUST_ENTRIES} entries")
        self._by_id: dict[bytes, TrustEntry] = {}
        active: set[str] = set()
        for entry in self._entries:
            if entry.key_id in self._by_id:
                raise IdentityError(f"duplicate trust entry {entry.key_id.hex()}")
            self._by_id[entry.key_id] = entry
            if entry.state is IdentityState.ACTIVE:
                if entry.host_id in active:
                    raise IdentityError(f"peer {entry.host_id} has two active generations")
                active.add(entry.host_id)

    @property
    def entries(self) -> tuple[TrustEntry, ...]:
        return self._entries

    @property
    def hosts(self) -> frozenset[str]:
        """Hosts with at least one accepted generation."""
        return frozenset(e.host_id for e in self._entries if e.state.accepted)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TrustStore({list(self._entries)!r})"

    def lookup(self, host_id: str, key_id: bytes) -> PublicIdentity:
        """The accepted generation ``key_id`` of ``host_id``, or a refusal that says why."""
        entry = self._by_id.get(key_id)
        if entry is None:
            raise UnknownKey(f"identity {key_id.hex()} is not in the trust store")
        if entry.host_id != host_id:
            raise ContextMismatch(
                "host_id", f"identity {key_id.hex()} belongs to another host than {host_id}"
            )
        if entry.public is None:
            raise UnknownKey(f"identity {key_id.hex()} of {host_id} is retired")
        return entry.public

    def active_for(self, host_id: str) -> PublicIdentity:
        """The generation of ``host_id`` to encrypt to."""
        for entry in self._entries:
            if entry.host_id == host_id and entry.state is IdentityState.ACTIVE:
                assert entry.public is not None
                return entry.public
        raise UnknownKey(f"no active identity of {host_id} in the trust store")

    def newest_for(self, host_id: str) -> PublicIdentity:
        """The generation of ``host_id`` to encrypt to without a peer link: the newest accepted
        one (a pending generation already exists in the peer's own file, since the peer made
        it before exporting it, so encrypting to it is safe during a rotation)."""
        newest: PublicIdentity | None = None
        for entry in self._entries:
            public = entry.public
            if entry.host_id != host_id or public is None:
                continue
            if newest is None or public.created >= newest.created:
                newest = public
        if newest is None:
            raise UnknownKey(f"no accepted identity of {host_id} in the trust store")
        return newest

    def with_peer(
        self, public: PublicIdentity, state: IdentityState | None = None
    ) -> tuple[TrustStore, TrustEntry]:
        """Add a peer generation: active when the peer has none yet, else pending."""
        if public.key_id in self._by_id:
            raise IdentityError(f"identity {public.key_id.hex()} is already in the trust store")
        if state is None:
            has_active = any(
                e.host_id == public.host_id and e.state is IdentityState.ACTIVE
                for e in self._entries
            )
            state = IdentityState.PENDING if has_active else IdentityState.ACTIVE
        if state is IdentityState.RETIRED:
            raise IdentityError("a new trust entry is pending or active")
        entry = TrustEntry.of(public, state)
        return TrustStore([*self._entries, entry]), entry

    def retired(self, key_id: bytes) -> tuple[TrustStore, TrustEntry | None]:
        """Retire ``key_id``. Retiring a peer's active generation promotes its one pending
        generation, if it has exactly one (the end of a rotation); returns the promoted one."""
        entry = self._by_id.get(key_id)
        if entry is None:
            raise IdentityError(f"identity {key_id.hex()} is not in the trust store")
        if entry.state is IdentityState.RETIRED:
            return self, None
        done = TrustEntry(entry.host_id, entry.key_id, IdentityState.RETIRED, entry.created)
        promoted: TrustEntry | None = None
        if entry.state is IdentityState.ACTIVE:
            pending = [
                e
                for e in self._entries
                if e.host_id == entry.host_id and e.state is IdentityState.PENDING
            ]
            if len(pending) == 1:
                promoted = TrustEntry.of(_public(pending[0]), IdentityState.ACTIVE)
        out = []
        for e in self._entries:
            if e is entry:
                out.append(done)
            elif promoted is not None and e.key_id == promoted.key_id:
                out.append(promoted)
            else:
                out.append(e)
        return TrustStore(out), promoted


def _public(entry: TrustEntry) -> PublicIdentity:
    assert entry.public is not None
    return entry.public


# --- files ---------------------------------------------------------------------------------


def _document(text: str | bytes, kind: str, members: set[str], what: str) -> dict[str, Any]:
    doc = strict_json(text, what=what, error=IdentityError)
    if not isinstance(doc, dict):
        raise IdentityError(f"{what} must be a JSON object")
    _no_extra(doc, members, what)
    if doc.get("kind") != kind:
        raise IdentityError(f"{what}: 'kind' must be {kind!r}")
    if doc.get("version") != FILE_VERSION:
        raise IdentityError(f"{what}: unsupported version (this gateway reads {FILE_VERSION})")
    return doc


def _no_extra(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    problem = unknown_members(obj, allowed, where)
    if problem:
        raise IdentityError(problem)


def _hex(obj: Mapping[str, Any], name: str, size: int, where: str) -> bytes:
    return hex_field(obj, name, size, where, IdentityError)


def _b64(obj: Mapping[str, Any], name: str, size: int, where: str) -> bytes:
    """Public keys and signatures are long: base64 keeps the files readable."""
    value = obj.get(name)
    if not isinstance(value, str) or len(value) != 4 * ((size + 2) // 3):
        raise IdentityError(f"{where}: {name!r} must be {size} bytes in base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise IdentityError(f"{where}: {name!r} is not base64") from None
    if len(raw) != size or base64.b64encode(raw).decode() != value:
        raise IdentityError(f"{where}: {name!r} is not canonical base64 of {size} bytes")
    return raw


def _created(obj: Mapping[str, Any], where: str) -> int:
    text = obj.get("created")
    if not isinstance(text, str):
        raise IdentityError(f"{where}: 'created' must be a string")
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise IdentityError(f"{where}: 'created' is not YYYY-MM-DDTHH:MM:SSZ") from None
    return _check_created(int(parsed.timestamp()), where)


def _state(obj: Mapping[str, Any], where: str) -> IdentityState:
    try:
        return IdentityState(obj.get("state"))
    except ValueError:
        names = ", ".join(s.value for s in IdentityState)
        raise IdentityError(f"{where}: 'state' must be one of {names}") from None


def _list(doc: Mapping[str, Any], name: str, limit: int, what: str) -> list[Any]:
    items = doc.get(name)
    if not isinstance(items, list):
        raise IdentityError(f"{what}: {name!r} must be a list")
    if len(items) > limit:
        raise IdentityError(f"{what}: more than {limit} {name}")
    return items


def parse_identity(text: str | bytes) -> HostIdentity:
    """Parse a private identity file (no permission checks: see :func:`load_identity`).

    Public keys are derived from the seeds, and each generation's stored id must be the id of
    those keys: an edited seed or id is refused.
    """
    doc = _document(text, IDENTITY_KIND, {"kind", "version", "host_id", "keys"}, "identity")
    host_id = check_host_id(doc.get("host_id"), "identity: 'host_id'")
    keys = []
    for index, entry in enumerate(_list(doc, "keys", MAX_GENERATIONS, "identity")):
        where = f"identity keys[{index}]"
        if not isinstance(entry, dict):
            raise IdentityError(f"{where} is not an object")
        _no_extra(entry, {"id", "state", "created", "seeds"}, where)
        key_id = _hex(entry, "id", KEY_ID_SIZE, where)
        state = _state(entry, where)
        created = _created(entry, where)
        if state is IdentityState.RETIRED:
            if "seeds" in entry:
                raise IdentityError(f"{where}: a retired generation must not keep its seeds")
            keys.append(HostKey.retired_record(host_id, created, key_id))
            continue
        key = HostKey.from_seeds(host_id, state, created, _hex(entry, "seeds", SEEDS_SIZE, where))
        if key.key_id != key_id:
            raise IdentityError(f"{where}: the seeds do not give key id {key_id.hex()}")
        keys.append(key)
    return HostIdentity(host_id, keys)


def dump_identity(identity: HostIdentity) -> bytes:
    """The private file form; contains secrets."""
    entries: list[dict[str, str]] = []
    for key in identity.keys:
        entry = {"id": key.key_id.hex(), "state": key.state.value, "created": _iso(key.created)}
        if key._seeds is not None:
            entry["seeds"] = key._seeds.joined().hex()
        entries.append(entry)
    doc = {
        "kind": IDENTITY_KIND,
        "version": FILE_VERSION,
        "host_id": identity.host_id,
        "keys": entries,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _public_members(public: PublicIdentity) -> dict[str, str]:
    return {
        "host_id": public.host_id,
        "id": public.key_id.hex(),
        "created": _iso(public.created),
        "ed25519": base64.b64encode(public.ed25519).decode(),
        "mldsa65": base64.b64encode(public.mldsa65).decode(),
        "kem": base64.b64encode(public.kem).decode(),
    }


_PUBLIC_MEMBERS: Final = {"host_id", "id", "created", "ed25519", "mldsa65", "kem"}


def _public_from(obj: Mapping[str, Any], where: str) -> PublicIdentity:
    host_id = check_host_id(obj.get("host_id"), f"{where}: 'host_id'")
    key_id = _hex(obj, "id", KEY_ID_SIZE, where)
    public = PublicIdentity(
        host_id,
        _created(obj, where),
        _b64(obj, "ed25519", ED25519_PUBLIC, where),
        _b64(obj, "mldsa65", MLDSA65_PUBLIC, where),
        _b64(obj, "kem", KEM_PUBLIC_SIZE, where),
    )
    if public.key_id != key_id:
        raise IdentityError(f"{where}: the keys do not give key id {key_id.hex()}")
    return public


def dump_public(key: HostKey) -> bytes:
    """The public identity file of one generation, self-signed (``host-export``)."""
    public = key.public
    doc: dict[str, Any] = {"kind": PUBLIC_KIND, "version": FILE_VERSION}
    doc.update(_public_members(public))
    doc["self_signature"] = base64.b64encode(key.sign(LABEL_SELF, public.encoded)).decode()
    doc["fingerprint"] = public.fingerprint_text
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_public(text: str | bytes) -> PublicIdentity:
    """Parse an exported public identity and check its self-signature (proof that whoever
    exported it holds both signing keys). Authenticity comes from the fingerprint, compared
    out of band; this function cannot provide it."""
    members = {"kind", "version", "self_signature", "fingerprint", *_PUBLIC_MEMBERS}
    doc = _document(text, PUBLIC_KIND, members, "public identity")
    public = _public_from(doc, "public identity")
    fingerprint = doc.get("fingerprint")
    if not isinstance(fingerprint, str) or parse_fingerprint(fingerprint) != public.fingerprint:
        raise IdentityError("public identity: 'fingerprint' does not match its keys")
    signature = _b64(doc, "self_signature", SIGNATURE_SIZE, "public identity")
    try:
        public.verify(LABEL_SELF, public.encoded, signature)
    except AuthenticationFailed:
        raise IdentityError("public identity: the self-signature does not verify") from None
    return public


def parse_fingerprint(text: str) -> bytes:
    """A fingerprint as printed (``sha256:`` optional; spaces and colons ignored)."""
    digits = text.strip().lower().removeprefix("sha256:").replace(" ", "").replace(":", "")
    if len(digits) != 2 * FINGERPRINT_SIZE:
        raise IdentityError(f"a fingerprint is {2 * FINGERPRINT_SIZE} hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise IdentityError("a fingerprint is hex digits") from None


def parse_trust_store(text: str | bytes) -> TrustStore:
    """Parse a trust store file (no permission checks: see :func:`load_trust_store`)."""
    doc = _document(text, TRUST_KIND, {"kind", "version", "peers"}, "trust store")
    entries = []
    for index, item in enumerate(_list(doc, "peers", MAX_TRUST_ENTRIES, "trust store")):
        where = f"trust store peers[{index}]"
        if not isinstance(item, dict):
            raise IdentityError(f"{where} is not an object")
        state = _state(item, where)
        if state is IdentityState.RETIRED:
            _no_extra(item, {"host_id", "id", "state", "created"}, where)
            host_id = check_host_id(item.get("host_id"), f"{where}: 'host_id'")
            key_id = _hex(item, "id", KEY_ID_SIZE, where)
            entries.append(TrustEntry(host_id, key_id, state, _created(item, where)))
            continue
        _no_extra(item, {"state", *_PUBLIC_MEMBERS}, where)
        entries.append(TrustEntry.of(_public_from(item, where), state))
    return TrustStore(entries)


def dump_trust_store(store: TrustStore) -> bytes:
    peers: list[dict[str, str]] = []
    for entry in store.entries:
        if entry.public is None:
            peers.append(
                {
                    "host_id": entry.host_id,
                    "id": entry.key_id.hex(),
                    "state": entry.state.value,
                    "created": _iso(entry.created),
                }
            )
        else:
            item = _public_members(entry.public)
            item["state"] = entry.state.value
            peers.append(item)
    doc = {"kind": TRUST_KIND, "version": FILE_VERSION, "peers": peers}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _wrapped(path: Path, what: str, parse: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return parse(data)
    except GatewayError as exc:
        raise IdentityError(f"{what} {path}: {exc}") from None


def load_identity(path: str | os.PathLike[str]) -> HostIdentity:
    """Read a private identity file: mode 0600, no symlink, owned by this user or root."""
    data = read_protected_file(
        path, what="identity", error=IdentityError, max_size=MAX_IDENTITY_FILE
    )
    identity: HostIdentity = _wrapped(Path(path), "identity", parse_identity, data)
    return identity


def save_identity(identity: HostIdentity, path: str | os.PathLike[str]) -> None:
    write_private_file(path, dump_identity(identity), what="identity", error=IdentityError)


def load_trust_store(path: str | os.PathLike[str]) -> TrustStore:
    """Read a trust store: no symlink, not writable by group or others (whoever can write it
    decides whom this host trusts), owned by this user or root."""
    data = read_protected_file(
        path,
        what="trust store",
        error=IdentityError,
        max_size=MAX_TRUST_FILE,
        forbidden_mode=0o022,
    )
    store: TrustStore = _wrapped(Path(path), "trust store", parse_trust_store, data)
    return store


def save_trust_store(store: TrustStore, path: str | os.PathLike[str]) -> None:
    write_private_file(
        path, dump_trust_store(store), what="trust store", error=IdentityError, mode=0o644
    )


class IdentityFiles:
    """This host's identity and trust store as a long-running process uses them, reloadable
    together (for instance on SIGHUP). A reload that fails keeps both in use and raises, so a
    bad edit never leaves the process without keys or with half of a rotation."""

    def __init__(
        self,
        identity_path: str | os.PathLike[str],
        trust_path: str | os.PathLike[str],
        host_id: str,
    ) -> None:
        self.identity_path = Path(identity_path)
        self.trust_path = Path(trust_path)
        self.host_id = host_id
        self._pair = self._load()

    def _load(self) -> tuple[HostIdentity, TrustStore]:
        identity = load_identity(self.identity_path)
        if identity.host_id != self.host_id:
            raise IdentityError(
                f"identity {self.identity_path} is for host {identity.host_id}, not {self.host_id}"
            )
        store = load_trust_store(self.trust_path)
        if self.host_id in store.hosts:
            raise IdentityError(f"trust store {self.trust_path} lists this host ({self.host_id})")
        return identity, store

    @property
    def identity(self) -> HostIdentity:
        return self._pair[0]

    @property
    def trust(self) -> TrustStore:
        return self._pair[1]

    @property
    def pair(self) -> tuple[HostIdentity, TrustStore]:
        """Both, from one load (a reader never sees half of a reload)."""
        return self._pair

    def reload(self) -> tuple[HostIdentity, TrustStore]:
        # One attribute store: readers see the old pair or the new one, never a mix.
        self._pair = self._load()
        return self._pair

    def __repr__(self) -> str:
        return f"IdentityFiles({self.host_id!r}, {len(self.trust)} trust entries)"


def check_identity_files(
    identity_path: str | os.PathLike[str],
    trust_path: str | os.PathLike[str],
    host_id: str,
    identity_peers: Iterable[str] = (),
) -> str:
    """What ``proxy --check`` verifies: both files load safely, the identity is this host's,
    it does not trust itself, and every peer that requires the identity suite has an active
    generation in the trust store. Returns a one-line summary."""
    files = IdentityFiles(identity_path, trust_path, host_id)
    identity, store = files.identity, files.trust
    for peer in identity_peers:
        try:
            store.active_for(peer)
        except UnknownKey:
            raise IdentityError(
                f"peer {peer} requires the identity suite but has no active identity in "
                f"trust store {Path(trust_path)}"
            ) from None
    return (
        f"identity {identity.active.key_id.hex()} ({identity.public.fingerprint_text}), "
        f"{len(store.hosts)} trusted peer(s)"
    )
