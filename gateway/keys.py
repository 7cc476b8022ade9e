"""Keyrings: the shared secrets that seal and open envelopes, their ids, states and rotation.

A keyring holds 32-byte secrets under 16-byte random key ids. Each key is in one state:

``pending``
    distributed ahead of use: opens, never seals. Lets every host learn a key before any
    host seals with it.
``active``
    exactly one per keyring: seals, and opens.
``decrypt-only``
    the previous active key: opens blobs still in flight after a rotation, never seals.
``retired``
    opens nothing. Its secret is erased from the file; the id stays so that a blob naming it
    is refused with a clear "retired" error rather than "unknown".

The file is JSON (documented in SECURITY.md) and must be readable by its owner only.
Everything here is pure except :func:`load_keyring`, :func:`save_keyring` and
:class:`KeyringFile`; clock and randomness are passed in so tests can fix them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from gateway.errors import GatewayError, KeyringError, UnknownKey

__all__ = [
    "KEY_ID_SIZE",
    "MIN_DISTINCT_SECRET_BYTES",
    "SECRET_SIZE",
    "Key",
    "KeyState",
    "Keyring",
    "KeyringFile",
    "check_secret_strength",
    "dump_keyring",
    "hex_field",
    "load_keyring",
    "parse_keyring",
    "read_protected_file",
    "save_keyring",
    "strict_json",
    "unknown_members",
    "write_private_file",
]

KEY_ID_SIZE: Final = 16
SECRET_SIZE: Final = 32
#: Identifies the file's content, so a misplaced JSON file is refused clearly.
FILE_KIND: Final = "spice-migration-gateway keyring"
FILE_VERSION: Final = 1
#: A keyring of a few hundred keys is far below this; a larger file is not a keyring.
MAX_FILE_SIZE: Final = 1024 * 1024
#: A secret with fewer distinct byte values than this is refused as obviously not random:
#: 32 random bytes show about 30 distinct values, and fewer than 12 happens with probability
#: below 2^-80, while 0x41 repeated or 31 zero bytes and a one show 1 or 2.
MIN_DISTINCT_SECRET_BYTES: Final = 12

RandomBytes = Callable[[int], bytes]


class KeyState(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    RETIRED = "retired"

    @property
    def opens(self) -> bool:
        return self is not KeyState.RETIRED


@dataclass(frozen=True, eq=False, repr=False)
class Key:
    """One keyring entry. ``secret`` is empty for a retired key and never shown by repr/str.

    ``eq=False``: keys compare by identity, so no code path compares secrets in variable time.
    """

    key_id: bytes
    state: KeyState
    created: int
    """Creation time, integer seconds since the Unix epoch (UTC)."""
    secret: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_SIZE:
            raise KeyringError(f"key id must be {KEY_ID_SIZE} bytes, got {len(self.key_id)}")
        if self.created < 0:
            raise KeyringError(f"key {self.key_id.hex()}: negative creation time")
        if self.state is KeyState.RETIRED:
            if self.secret:
                raise KeyringError(f"key {self.key_id.hex()}: a retired key keeps no secret")
            return
        if len(self.secret) != SECRET_SIZE:
            raise KeyringError(
                f"key {self.key_id.hex()}: secret must be {SECRET_SIZE} bytes, "
                f"got {len(self.secret)}"
            )
        if not any(self.secret):
            raise KeyringError(f"key {self.key_id.hex()}: secret is all zero")

    @property
    def id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def created_iso(self) -> str:
        return _iso(self.created)

    def __repr__(self) -> str:
        return f"Key(id={self.id_hex}, state={self.state.value}, created={self.created_iso})"

    __str__ = __repr__

    @classmethod
    def generate(
        cls, state: KeyState, *, now: float | None = None, random_bytes: RandomBytes | None = None
    ) -> Key:
        """A fresh key with a random id and secret."""
        rand = random_bytes or os.urandom
        created = int(time.time() if now is None else now)
        key = cls(rand(KEY_ID_SIZE), state, created, rand(SECRET_SIZE))
        check_secret_strength(key)
        return key


def check_secret_strength(key: Key) -> None:
    """Refuse a secret that is obviously not random (the message never shows the secret)."""
    if key.secret and len(set(key.secret)) < MIN_DISTINCT_SECRET_BYTES:
        raise KeyringError(
            f"key {key.id_hex}: secret is too regular to be random (fewer than "
            f"{MIN_DISTINCT_SECRET_BYTES} distinct byte values); generate it with `keys generate`"
        )


class Keyring:
    """An immutable, validated set of keys: exactly one active, ids unique.

    Operations that change the ring return a new one; save it with :func:`save_keyring`.
    """

    __slots__ = ("_by_id", "_keys", "active")

    def __init__(self, keys: Iterable[Key]) -> None:
        self._keys = tuple(keys)
        self._by_id: dict[bytes, Key] = {}
        #: Which key holds each secret: one secret under two ids would stay usable after one
        #: of them is retired. Compared as dictionary keys, at load time, never with outside data.
        owners: dict[bytes, Key] = {}
        for key in self._keys:
            if key.key_id in self._by_id:
                raise KeyringError(f"duplicate key id {key.id_hex}")
            self._by_id[key.key_id] = key
            if key.secret:
                other = owners.setdefault(key.secret, key)
                if other is not key:
                    raise KeyringError(
                        f"keys {other.id_hex} and {key.id_hex} share one secret; "
                        "each key needs its own"
                    )
        active = [k for k in self._keys if k.state is KeyState.ACTIVE]
        if len(active) != 1:
            raise KeyringError(f"a keyring needs exactly one active key, found {len(active)}")
        self.active: Key = active[0]
        """The one key that seals."""

    @property
    def keys(self) -> tuple[Key, ...]:
        return self._keys

    def __repr__(self) -> str:
        return f"Keyring({list(self._keys)!r})"

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: bytes) -> Key | None:
        return self._by_id.get(key_id)

    def for_opening(self, key_id: bytes) -> Key:
        """The key that may open a blob naming ``key_id``; unknown and retired ids are refused."""
        key = self._by_id.get(key_id)
        if key is None:
            raise UnknownKey(f"key id {key_id.hex()} is not in the keyring")
        if not key.state.opens:
            raise UnknownKey(f"key id {key_id.hex()} is retired")
        return key

    # --- rotation ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, *, now: float | None = None, random_bytes: RandomBytes | None = None
    ) -> Keyring:
        """A new keyring with a single active key."""
        return cls([Key.generate(KeyState.ACTIVE, now=now, random_bytes=random_bytes)])

    def with_new_key(
        self,
        state: KeyState = KeyState.PENDING,
        *,
        now: float | None = None,
        random_bytes: RandomBytes | None = None,
    ) -> tuple[Keyring, Key]:
        """Add a fresh key (pending by default, so every host can learn it before it seals)."""
        if state not in (KeyState.PENDING, KeyState.DECRYPT_ONLY):
            raise KeyringError("only pending or decrypt-only keys can be added; use rotate")
        key = Key.generate(state, now=now, random_bytes=random_bytes)
        return Keyring([*self._keys, key]), key

    def rotated(
        self, *, now: float | None = None, random_bytes: RandomBytes | None = None
    ) -> tuple[Keyring, Key]:
        """Promote the pending key to active (or create one) and demote the active key.

        The old active key becomes decrypt-only, so blobs sealed before the rotation still open.
        Deterministic when a pending key exists: every host that applies the rotation to the
        same file gets the same keyring.
        """
        pending = [k for k in self._keys if k.state is KeyState.PENDING]
        if len(pending) > 1:
            raise KeyringError(
                f"{len(pending)} pending keys: retire all but the one to promote, then rotate"
            )
        keys = [
            replace(k, state=KeyState.DECRYPT_ONLY) if k.state is KeyState.ACTIVE else k
            for k in self._keys
        ]
        if pending:
            promoted = replace(pending[0], state=KeyState.ACTIVE)
            keys = [promoted if k.key_id == promoted.key_id else k for k in keys]
        else:
            promoted = Key.generate(KeyState.ACTIVE, now=now, random_bytes=random_bytes)
            keys.append(promoted)
        return Keyring(keys), promoted

    def retired(self, key_id: bytes) -> Keyring:
        """Retire ``key_id``: it opens nothing from now on, and its secret is dropped."""
        key = self._by_id.get(key_id)
        if key is None:
            raise KeyringError(f"key id {key_id.hex()} is not in the keyring")
        if key.state is KeyState.ACTIVE:
            raise KeyringError(f"key {key.id_hex} is active: rotate before retiring it")
        if key.state is KeyState.RETIRED:
            return self
        done = Key(key.key_id, KeyState.RETIRED, key.created)
        return Keyring(done if k is key else k for k in self._keys)


# --- the file ------------------------------------------------------------------------------


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str, where: str) -> int:
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise KeyringError(f"{where}: 'created' is not YYYY-MM-DDTHH:MM:SSZ") from None
    return int(parsed.timestamp())


def _member(name: str) -> str:
    """A member name fit for an error message: short known-looking names quoted, others not.

    An arbitrary name could be long, or hold secret digits pasted in the wrong place.
    """
    if len(name) <= 24 and name.replace("_", "").isalpha() and name.isascii():
        return repr(name)
    return f"<a {len(name)}-character name>"


def _members(names: list[str]) -> str:
    shown = ", ".join(_member(name) for name in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def strict_json(text: str | bytes, *, what: str, error: type[GatewayError]) -> Any:
    """JSON with duplicate members refused; every failure is ``error``, naming no input."""

    def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in pairs:
            if name in out:
                raise error(f"duplicate JSON member {_member(name)}")
            out[name] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=unique_pairs)
    except (ValueError, RecursionError):
        # json's messages quote input fragments, which could be secret digits: name the file.
        raise error(f"{what} is not valid JSON") from None


def unknown_members(names: Iterable[str], allowed: set[str], where: str) -> str | None:
    """``where: unknown member(s) ...`` when ``names`` has any outside ``allowed``."""
    extra = sorted(set(names) - allowed)
    return f"{where}: unknown member(s) {_members(extra)}" if extra else None


def hex_field(
    entry: Mapping[str, Any],
    name: str,
    size: int,
    where: str,
    error: type[GatewayError] = KeyringError,
) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise error(f"{where}: {name!r} must be {2 * size} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise error(f"{where}: {name!r} is not hex") from None


def _key_from_json(entry: object, index: int) -> Key:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise KeyringError(f"{where} is not an object")
    allowed = {"id", "state", "created", "secret"}
    if extra := sorted(set(entry) - allowed):
        raise KeyringError(f"{where}: unknown member(s) {_members(extra)}")
    key_id = hex_field(entry, "id", KEY_ID_SIZE, where)
    try:
        state = KeyState(entry.get("state"))
    except ValueError:
        raise KeyringError(
            f"{where}: 'state' must be one of {', '.join(s.value for s in KeyState)}"
        ) from None
    created = entry.get("created")
    if not isinstance(created, str):
        raise KeyringError(f"{where}: 'created' must be a string")
    if state is KeyState.RETIRED:
        if "secret" in entry:
            raise KeyringError(f"{where}: a retired key must not keep its secret")
        secret = b""
    else:
        secret = hex_field(entry, "secret", SECRET_SIZE, where)
    key = Key(key_id, state, _parse_iso(created, where), secret)
    check_secret_strength(key)
    return key


def parse_keyring(text: str | bytes) -> Keyring:
    """Parse and validate a keyring document (no file-permission checks: see load_keyring)."""
    doc = strict_json(text, what="keyring", error=KeyringError)
    if not isinstance(doc, dict):
        raise KeyringError("keyring must be a JSON object")
    if extra := sorted(set(doc) - {"kind", "version", "keys"}):
        raise KeyringError(f"unknown member(s) {_members(extra)}")
    if doc.get("kind") != FILE_KIND:
        raise KeyringError(f"'kind' must be {FILE_KIND!r}")
    if doc.get("version") != FILE_VERSION:
        raise KeyringError(f"unsupported keyring version (this gateway reads {FILE_VERSION})")
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise KeyringError("'keys' must be a list")
    return Keyring(_key_from_json(e, i) for i, e in enumerate(entries))


def dump_keyring(keyring: Keyring) -> bytes:
    """The file form of ``keyring``; contains secrets."""
    entries: list[dict[str, str]] = []
    for key in keyring.keys:
        entry = {"id": key.id_hex, "state": key.state.value, "created": key.created_iso}
        if key.state is not KeyState.RETIRED:
            entry["secret"] = key.secret.hex()
        entries.append(entry)
    doc = {"kind": FILE_KIND, "version": FILE_VERSION, "keys": entries}
    return (json.dumps(doc, indent=2) + "\n").encode()


def read_protected_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[GatewayError],
    max_size: int,
    forbidden_mode: int = 0o077,
) -> bytes:
    """The bytes of a file only its owner may touch: ``forbidden_mode`` bits must be clear.

    The checks run on the opened descriptor (no symlinks followed), so the file checked is the
    file read. Shared by every local file that holds keys or decides trust.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                f"cannot open {what} {path}: it is a symbolic link, and symlinks are refused "
                "so that the file whose owner and mode are checked is the file read and whoever "
                "can change the link cannot swap the keys; name the file itself"
            ) from None
        raise error(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_mode & forbidden_mode:
            access = "accessible" if forbidden_mode & 0o044 else "writable"
            required = f"{0o666 & ~forbidden_mode:04o}"
            raise error(
                f"{what} {path} is {access} to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be {required}"
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise error(f"{what} {path} is owned by uid {info.st_uid}, not by this user")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_size + 1)
    if len(data) > max_size:
        raise error(f"{what} {path} is larger than {max_size} bytes")
    return data


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring file, refusing one that others could read or replace."""
    data = read_protected_file(path, what="keyring", error=KeyringError, max_size=MAX_FILE_SIZE)
    try:
        return parse_keyring(data)
    except KeyringError as exc:
        raise KeyringError(f"keyring {Path(path)}: {exc}") from None


def write_private_file(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    what: str,
    error: type[GatewayError],
    mode: int = 0o600,
) -> None:
    """Write atomically: a temporary file of ``mode`` in the same directory, fsync, rename,
    fsync the directory. A reader sees the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise error(f"cannot write {what} next to {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_keyring(keyring: Keyring, path: str | os.PathLike[str]) -> None:
    """Write atomically with mode 0600 (see :func:`write_private_file`).

    A reader (another process, or a SIGHUP reload) sees the old file or the new one, never a mix.
    """
    write_private_file(path, dump_keyring(keyring), what="keyring", error=KeyringError)


class KeyringFile:
    """The keyring a long-running process uses, reloadable (for instance on SIGHUP).

    A reload that fails keeps the keyring in use and raises, so a bad edit never leaves the
    process without keys.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keyring = load_keyring(self.path)

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def reload(self) -> Keyring:
        # One attribute store: readers in other threads see the old ring or the new one.
        self._keyring = load_keyring(self.path)
        return self._keyring

    def __repr__(self) -> str:
        return f"KeyringFile({str(self.path)!r}, {len(self._keyring)} keys)"
