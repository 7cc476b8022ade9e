"""Host identities and the trust store: keys, files and their permissions, rotation, hygiene."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import AuthenticationFailed, ContextMismatch, IdentityError, UnknownKey
from gateway.identity import (
    LABEL_SELF,
    SEEDS_SIZE,
    SIGNATURE_SIZE,
    HostIdentity,
    HostKey,
    IdentityFiles,
    IdentityState,
    PublicIdentity,
    TrustStore,
    check_identity_files,
    dump_identity,
    dump_public,
    dump_trust_store,
    load_identity,
    load_trust_store,
    parse_fingerprint,
    parse_identity,
    parse_public,
    parse_trust_store,
    save_identity,
    save_trust_store,
)

NOW = 1_800_000_000


def seeded(fill: int) -> Any:
    """Deterministic, distinct, never all-zero 'random' bytes."""
    state = {"n": fill * 1000}

    def random_bytes(size: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 7 + i) % 251 + 1 for i in range(size))

    return random_bytes


@pytest.fixture(scope="module")
def host_a() -> HostIdentity:
    return HostIdentity.create("host-a", now=NOW, random_bytes=seeded(1))


@pytest.fixture(scope="module")
def host_b() -> HostIdentity:
    return HostIdentity.create("host-b", now=NOW, random_bytes=seeded(2))


# --- keys and signatures -------------------------------------------------------------------


def test_seeds_determine_the_keys_and_the_fingerprint() -> None:
    one = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(1))
    two = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(1))
    other = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(3))
    assert one.public.same_keys(two.public)
    assert one.public.fingerprint == two.public.fingerprint
    assert one.public.fingerprint != other.public.fingerprint
    assert one.public.key_id == one.public.fingerprint[:16] == one.active.key_id


def test_the_fingerprint_covers_host_id_and_creation_time() -> None:
    seeds = seeded(1)(SEEDS_SIZE)
    base = HostKey.from_seeds("host-a", IdentityState.ACTIVE, NOW, seeds).public
    renamed = HostKey.from_seeds("host-z", IdentityState.ACTIVE, NOW, seeds).public
    later = HostKey.from_seeds("host-a", IdentityState.ACTIVE, NOW + 1, seeds).public
    assert len({base.fingerprint, renamed.fingerprint, later.fingerprint}) == 3


def test_hybrid_signature_needs_both_halves(host_a: HostIdentity, host_b: HostIdentity) -> None:
    label = b"test label\x00"
    signature = host_a.active.sign(label, b"data")
    assert len(signature) == SIGNATURE_SIZE
    host_a.public.verify(label, b"data", signature)
    other = host_a.active.sign(label, b"other data")
    mixed_ed = signature[:64] + other[64:]  # valid Ed25519, ML-DSA over another message
    mixed_ml = other[:64] + signature[64:]  # valid ML-DSA, Ed25519 over another message
    for bad in (mixed_ed, mixed_ml, signature[:-1], signature + b"\x00"):
        with pytest.raises(AuthenticationFailed):
            host_a.public.verify(label, b"data", bad)
    with pytest.raises(AuthenticationFailed):
        host_a.public.verify(b"another label\x00", b"data", signature)
    with pytest.raises(AuthenticationFailed):
        host_b.public.verify(label, b"data", signature)


def test_refuses_bad_seeds_and_host_ids() -> None:
    with pytest.raises(IdentityError, match="seeds must be"):
        HostKey.from_seeds("host-a", IdentityState.ACTIVE, NOW, b"\x01" * (SEEDS_SIZE - 1))
    with pytest.raises(IdentityError, match="all-zero"):
        HostKey.from_seeds("host-a", IdentityState.ACTIVE, NOW, bytes(SEEDS_SIZE))
    for bad in ("", "a" * 129, "host a", "hôte", "a/b"):
        with pytest.raises(IdentityError, match="host id"):
            HostIdentity.create(bad, now=NOW)


def test_no_secret_in_reprs(host_a: HostIdentity) -> None:
    seeds = host_a.active._seeds
    assert seeds is not None
    texts = [repr(host_a), str(host_a.active), repr(host_a.active), repr(seeds)]
    texts.append(repr(TrustStore().with_peer(host_a.public)[0]))
    for text in texts:
        for part in (seeds.ed25519, seeds.mldsa65, seeds.mlkem768, seeds.x25519):
            assert part.hex() not in text
            assert part.hex()[:16] not in text


# --- rotation ------------------------------------------------------------------------------


def test_own_rotation_with_overlap() -> None:
    identity = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(4))
    old = identity.active
    with pytest.raises(IdentityError, match="0 pending"):
        identity.rotated()
    identity, new = identity.with_new_generation(now=NOW + 10, random_bytes=seeded(5))
    assert new.state is IdentityState.PENDING
    assert identity.active is old  # the pending generation does not sign yet
    identity, promoted = identity.rotated()
    assert promoted.key_id == new.key_id
    assert identity.active.key_id == new.key_id
    retired = identity.get(old.key_id)
    assert retired is not None
    assert retired.state is IdentityState.RETIRED
    assert retired._seeds is None
    with pytest.raises(IdentityError, match="retired"):
        retired.sign(b"x", b"y")
    again = parse_identity(dump_identity(identity))
    assert [k.key_id for k in again.keys] == [k.key_id for k in identity.keys]
    assert old.key_id.hex() in dump_identity(identity).decode()


def test_trust_store_rotation_overlap_and_retirement(host_a: HostIdentity) -> None:
    next_a, pending = host_a.with_new_generation(now=NOW + 5, random_bytes=seeded(6))
    store, first = TrustStore().with_peer(host_a.public)
    assert first.state is IdentityState.ACTIVE
    store, second = store.with_peer(pending.public)
    assert second.state is IdentityState.PENDING
    # During the overlap both generations are accepted; the active one is encrypted to.
    assert store.lookup("host-a", host_a.active.key_id).same_keys(host_a.public)
    assert store.lookup("host-a", pending.key_id).same_keys(pending.public)
    assert store.active_for("host-a").key_id == host_a.active.key_id
    # Retiring the active generation promotes the one pending.
    store, promoted = store.retired(host_a.active.key_id)
    assert promoted is not None
    assert promoted.key_id == pending.key_id
    assert store.active_for("host-a").key_id == pending.key_id
    with pytest.raises(UnknownKey, match="retired"):
        store.lookup("host-a", host_a.active.key_id)
    # Retiring the last one leaves the peer untrusted.
    store, none = store.retired(pending.key_id)
    assert none is None
    assert "host-a" not in store.hosts
    with pytest.raises(UnknownKey, match="no active identity"):
        store.active_for("host-a")
    round_trip = parse_trust_store(dump_trust_store(store))
    assert [e.state for e in round_trip.entries] == [IdentityState.RETIRED] * 2
    assert next_a.host_id == "host-a"


def test_trust_store_refusals(host_a: HostIdentity, host_b: HostIdentity) -> None:
    store, _ = TrustStore().with_peer(host_a.public)
    with pytest.raises(IdentityError, match="already in the trust store"):
        store.with_peer(host_a.public)
    with pytest.raises(UnknownKey, match="not in the trust store"):
        store.lookup("host-b", host_b.active.key_id)
    with pytest.raises(ContextMismatch, match="another host"):
        store.lookup("host-b", host_a.active.key_id)
    with pytest.raises(IdentityError, match="not in the trust store"):
        store.retired(b"\x07" * 16)


# --- files ---------------------------------------------------------------------------------


def test_identity_file_round_trip_and_mode(tmp_path: Path, host_a: HostIdentity) -> None:
    path = tmp_path / "identity.json"
    old_umask = os.umask(0)
    try:
        save_identity(host_a, path)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_identity(path)
    assert loaded.public.same_keys(host_a.public)
    assert dump_identity(loaded) == dump_identity(host_a)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_identity_file_refuses_group_or_world_access(
    tmp_path: Path, host_a: HostIdentity, mode: int
) -> None:
    path = tmp_path / "identity.json"
    save_identity(host_a, path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match=f"mode {mode:04o}"):
        load_identity(path)


def test_identity_and_trust_files_refuse_symlinks(tmp_path: Path, host_a: HostIdentity) -> None:
    save_identity(host_a, tmp_path / "real.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(IdentityError, match="cannot open"):
        load_identity(tmp_path / "link.json")
    save_trust_store(TrustStore().with_peer(host_a.public)[0], tmp_path / "trust.json")
    (tmp_path / "trust-link.json").symlink_to(tmp_path / "trust.json")
    with pytest.raises(IdentityError, match="cannot open"):
        load_trust_store(tmp_path / "trust-link.json")


def test_trust_store_may_be_read_by_all_but_written_by_its_owner_only(
    tmp_path: Path, host_a: HostIdentity
) -> None:
    path = tmp_path / "trust.json"
    save_trust_store(TrustStore().with_peer(host_a.public)[0], path)
    assert path.stat().st_mode & 0o777 == 0o644
    assert len(load_trust_store(path)) == 1
    for mode in (0o664, 0o646):
        path.chmod(mode)
        with pytest.raises(IdentityError, match="writable to group or others"):
            load_trust_store(path)


def identity_doc(identity: HostIdentity) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(dump_identity(identity))
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(kind="other"), "'kind' must be"),
        (lambda d: d.update(version=2), "unsupported version"),
        (lambda d: d.update(extra=1), "unknown member"),
        (lambda d: d.update(host_id="bad host"), "host_id"),
        (lambda d: d.update(keys={}), "'keys' must be a list"),
        (lambda d: d.update(keys=[]), "exactly one active generation, found 0"),
        (lambda d: d.update(keys=d["keys"] * 65), "more than 64 keys"),
        (lambda d: d.update(keys=d["keys"] * 2), "duplicate generation"),
        (lambda d: d["keys"][0].update(seeds="00" * 5), "'seeds' must be"),
        (lambda d: d["keys"][0].update(seeds="zz" * SEEDS_SIZE), "not hex"),
        (lambda d: d["keys"][0].update(id="ab" * 16), "do not give key id"),
        # An edited seed gives other keys, hence another id.
        (
            lambda d: d["keys"][0].update(seeds="07" + d["keys"][0]["seeds"][2:]),
            "do not give key id",
        ),
        (lambda d: d["keys"][0].update(state="retired"), "must not keep its seeds"),
        (lambda d: d["keys"][0].update(state="on"), "'state' must be one of"),
        (lambda d: d["keys"][0].update(created="now"), "'created' is not"),
        (lambda d: d["keys"][0].update(colour="red"), "unknown member"),
        (lambda d: d["keys"].append("x"), "is not an object"),
    ],
)
def test_identity_parse_refuses(host_a: HostIdentity, change: Any, message: str) -> None:
    doc = identity_doc(host_a)
    change(doc)
    with pytest.raises(IdentityError, match=message) as caught:
        parse_identity(json.dumps(doc))
    seeds = host_a.active._seeds
    assert seeds is not None
    assert seeds.joined().hex()[:24] not in str(caught.value)


def test_identity_parse_refuses_non_json_and_duplicates(host_a: HostIdentity) -> None:
    with pytest.raises(IdentityError, match="not valid JSON"):
        parse_identity(b"\xff not json")
    text = dump_identity(host_a).decode()
    with pytest.raises(IdentityError, match="duplicate JSON member 'keys'"):
        parse_identity(text.rstrip()[:-1] + ', "keys": []}')


def test_identity_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(b" " * (256 * 1024 + 1))
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="larger than"):
        load_identity(path)


def test_public_export_round_trip_and_fingerprint(host_a: HostIdentity) -> None:
    text = dump_public(host_a.active)
    public = parse_public(text)
    assert public.same_keys(host_a.public)
    doc = json.loads(text)
    assert parse_fingerprint(doc["fingerprint"]) == host_a.public.fingerprint
    assert parse_fingerprint(host_a.public.fingerprint.hex()) == host_a.public.fingerprint
    assert "seeds" not in text.decode()
    seeds = host_a.active._seeds
    assert seeds is not None
    assert seeds.ed25519.hex() not in text.decode()


def _b64_flip(value: str, index: int = 10) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(self_signature=_b64_flip(d["self_signature"])), "self-signature"),
        (
            lambda d: d.update(self_signature=_b64_flip(d["self_signature"], 2000)),
            "self-signature",
        ),
        (lambda d: d.update(ed25519=_b64_flip(d["ed25519"])), "do not give key id"),
        (lambda d: d.update(kem=_b64_flip(d["kem"], 1200)), "do not give key id"),
        (lambda d: d.update(fingerprint="sha256:" + "00" * 32), "'fingerprint' does not match"),
        (lambda d: d.update(fingerprint="sha256:00"), "64 hex digits"),
        (lambda d: d.update(host_id="host-z"), "do not give key id"),
        (lambda d: d.update(mldsa65=d["mldsa65"][:-4]), "'mldsa65' must be"),
        (lambda d: d.update(ed25519="!" * 44), "not base64"),
        (lambda d: d.update(kind="spice-migration-gateway host identity"), "'kind' must be"),
        (lambda d: d.update(seeds="00"), "unknown member"),
    ],
)
def test_public_parse_refuses(host_a: HostIdentity, change: Any, message: str) -> None:
    doc = json.loads(dump_public(host_a.active))
    change(doc)
    with pytest.raises(IdentityError, match=message):
        parse_public(json.dumps(doc))


def test_trust_store_parse_refuses_edited_keys(host_a: HostIdentity, host_b: HostIdentity) -> None:
    store, _ = TrustStore().with_peer(host_a.public)
    store, _ = store.with_peer(host_b.public)
    doc = json.loads(dump_trust_store(store))
    doc["peers"][1]["mldsa65"] = _b64_flip(doc["peers"][1]["mldsa65"])
    with pytest.raises(IdentityError, match=r"peers\[1\].*do not give key id"):
        parse_trust_store(json.dumps(doc))
    doc = json.loads(dump_trust_store(store))
    doc["peers"][1]["host_id"] = "host-a"  # same keys claimed for another host
    with pytest.raises(IdentityError, match="do not give key id"):
        parse_trust_store(json.dumps(doc))
    doc = json.loads(dump_trust_store(store))
    doc["peers"][1]["state"] = "retired"
    with pytest.raises(IdentityError, match="unknown member"):
        parse_trust_store(json.dumps(doc))
    two_active, _ = TrustStore().with_peer(host_a.public)
    other = HostIdentity.create("host-a", now=NOW, random_bytes=seeded(9)).public
    doc = json.loads(dump_trust_store(two_active))
    extra = json.loads(dump_trust_store(TrustStore().with_peer(other)[0]))["peers"][0]
    doc["peers"].append(extra)
    with pytest.raises(IdentityError, match="two active generations"):
        parse_trust_store(json.dumps(doc))


def test_check_identity_files(tmp_path: Path, host_a: HostIdentity, host_b: HostIdentity) -> None:
    save_identity(host_a, tmp_path / "identity.json")
    save_trust_store(TrustStore().with_peer(host_b.public)[0], tmp_path / "trust.json")
    summary = check_identity_files(
        tmp_path / "identity.json", tmp_path / "trust.json", "host-a", ["host-b"]
    )
    assert host_a.active.key_id.hex() in summary
    assert "1 trusted peer" in summary
    with pytest.raises(IdentityError, match="is for host host-a, not host-c"):
        check_identity_files(tmp_path / "identity.json", tmp_path / "trust.json", "host-c")
    with pytest.raises(IdentityError, match="peer host-c requires the identity suite"):
        check_identity_files(
            tmp_path / "identity.json", tmp_path / "trust.json", "host-a", ["host-c"]
        )
    save_trust_store(TrustStore().with_peer(host_a.public)[0], tmp_path / "self.json")
    with pytest.raises(IdentityError, match="lists this host"):
        check_identity_files(tmp_path / "identity.json", tmp_path / "self.json", "host-a")


def test_public_identity_refuses_wrong_sizes(host_a: HostIdentity) -> None:
    good = host_a.public
    with pytest.raises(IdentityError, match="ed25519 key must be 32 bytes"):
        PublicIdentity("host-a", NOW, good.ed25519[:-1], good.mldsa65, good.kem)
    with pytest.raises(IdentityError, match="kem key must be"):
        PublicIdentity("host-a", NOW, good.ed25519, good.mldsa65, good.kem + b"\x00")


def test_self_signature_uses_its_own_label(host_a: HostIdentity) -> None:
    doc = json.loads(dump_public(host_a.active))
    signature = base64.b64decode(doc["self_signature"])
    host_a.public.verify(LABEL_SELF, host_a.public.encoded, signature)


def test_identity_files_reload_together_or_not_at_all(
    tmp_path: Path, host_a: HostIdentity, host_b: HostIdentity
) -> None:
    identity_path, trust_path = tmp_path / "identity.json", tmp_path / "trust.json"
    save_identity(host_a, identity_path)
    save_trust_store(TrustStore().with_peer(host_b.public)[0], trust_path)
    files = IdentityFiles(identity_path, trust_path, "host-a")
    assert files.trust.hosts == frozenset({"host-b"})
    rotated, _ = host_a.with_new_generation(now=NOW, random_bytes=seeded(8))
    save_identity(rotated, identity_path)
    identity, _ = files.reload()
    assert len(identity.keys) == 2
    # A broken trust store: the reload fails and both files' old contents stay in use.
    trust_path.write_text("{}")
    with pytest.raises(IdentityError, match="trust store"):
        files.reload()
    assert len(files.identity.keys) == 2
    assert files.trust.hosts == frozenset({"host-b"})
    assert "seeds" not in repr(files)
