"""Benchmark: the identity suite's handshake, and its critical path against the shared keyring.

Run: ``python bench/identity.py [--quick]``. Prints medians; asserts nothing.

What is measured
----------------
* **Raw primitives**, in the same run: Ed25519 and ML-DSA-65 sign and verify, HPKE
  (ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM) single-shot encrypt and decrypt of 32 bytes,
  and an ephemeral KEM key pair from a seed.
* **The handshake**, off the critical path (once per migration attempt, when it begins):
  ``hello`` (target), ``offer`` (source: verify the hello, encapsulate, sign), ``accept``
  (target: verify the offer, decapsulate, derive). Each is compared with the sum of the raw
  primitives it is made of, so the ratio is this code's overhead over the cryptography itself.
* **The critical path**, per blob: seal and verify of the display sample under the shared
  keyring and under an agreed attempt key. The identity suite seals every blob with the same
  symmetric construction, so the two should be equal.

Goals (reported, not asserted): handshake overhead at most 1.5x its raw primitives; the whole
handshake well under the 100 ms between ``MIGRATE_BEGIN_SEAMLESS`` and the first blob; the
per-blob critical path within 10 % of the shared keyring's.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# The sibling benchmark's timing loop and statistics (run as a script, its folder is on sys.path).
from envelope import measure, median, ratio

import gateway
from gateway import handshake, native
from gateway.envelope import Context, ExpectedContext, seal, verify
from gateway.identity import HostIdentity, TrustStore
from gateway.keys import Keyring
from schemas import ChannelType

VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")
ANNOUNCEMENT = b"vm=6f1c1b9e migration=0b7e2a58 host-a->host-b channels=6"


def bench_handshake(ops: int, rounds: int) -> dict[str, list[float]]:
    a, b = HostIdentity.create("host-a"), HostIdentity.create("host-b")
    trust_a, _ = TrustStore().with_peer(b.public)
    trust_b, _ = TrustStore().with_peer(a.public)
    ed, ml = Ed25519PrivateKey.generate(), MLDSA65PrivateKey.generate()
    ed_pub, ml_pub = ed.public_key(), ml.public_key()
    message = os.urandom(4600)
    ed_sig, ml_sig = ed.sign(message), ml.sign(message)
    kem = hpke.MLKEM768X25519PrivateKey(MLKEM768PrivateKey.generate(), X25519PrivateKey.generate())
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    sealed = suite.encrypt(b"s" * 32, kem.public_key(), info=b"i")
    seed = os.urandom(96)

    hellos: list[tuple[bytes, handshake.PendingHello]] = []
    offers: list[tuple[bytes, handshake.PendingHello]] = []

    def do_hello() -> None:
        hellos.append(handshake.hello(b))

    def do_offer() -> None:
        hello, pending = hellos.pop() if hellos else handshake.hello(b)
        offers.append((handshake.offer(hello, ANNOUNCEMENT, a, trust_a, "host-b")[0], pending))

    def do_accept() -> None:
        if not offers:
            do_offer()
        offer, pending = offers.pop()
        handshake.accept(offer, pending, trust_b)

    def do_round() -> None:
        hello, pending = handshake.hello(b)
        offer, _ = handshake.offer(hello, ANNOUNCEMENT, a, trust_a, "host-b")
        handshake.accept(offer, pending, trust_b)

    def keypair() -> None:
        MLKEM768PrivateKey.from_seed_bytes(seed[:64]).public_key().public_bytes_raw()
        X25519PrivateKey.from_private_bytes(seed[64:]).public_key().public_bytes_raw()

    return measure(
        {
            "ed25519 sign": lambda: ed.sign(message),
            "ed25519 verify": lambda: ed_pub.verify(ed_sig, message),
            "mldsa65 sign": lambda: ml.sign(message),
            "mldsa65 verify": lambda: ml_pub.verify(ml_sig, message),
            "hpke encrypt": lambda: suite.encrypt(b"s" * 32, kem.public_key(), info=b"i"),
            "hpke decrypt": lambda: suite.decrypt(sealed, kem, info=b"i"),
            "kem keypair": keypair,
            "hello": do_hello,
            "offer": do_offer,
            "accept": do_accept,
            "handshake": do_round,
        },
        ops,
        rounds,
    )


def bench_critical_path(ops: int, rounds: int) -> dict[str, list[float]]:
    sample = (Path(gateway.__file__).parent / "samples" / "display.bin").read_bytes()
    state = native.decode(ChannelType.DISPLAY, sample)
    ctx = Context(ChannelType.DISPLAY, 0, VM, MIGRATION, "host-a", "host-b", 1)
    expected = ExpectedContext.of(ctx)
    shared = Keyring.create()
    a, b = HostIdentity.create("host-a"), HostIdentity.create("host-b")
    hello, pending = handshake.hello(b)
    offer, _ = handshake.offer(
        hello, ANNOUNCEMENT, a, TrustStore().with_peer(b.public)[0], "host-b"
    )
    _, attempt = handshake.accept(offer, pending, TrustStore().with_peer(a.public)[0])
    count = ops * rounds + 2
    shared_blobs = iter([seal(state, ctx, shared) for _ in range(count)])
    attempt_blobs = iter([seal(state, ctx, attempt.keyring) for _ in range(count)])
    policy = handshake.SuitePolicy(handshake.Suite.IDENTITY)

    def open_attempt() -> object:
        blob = next(attempt_blobs)
        return verify(blob, expected, policy.opening_keyring(blob, attempt, shared))

    return measure(
        {
            "seal shared": lambda: seal(state, ctx, shared),
            "seal attempt": lambda: seal(state, ctx, attempt.keyring),
            "verify shared": lambda: verify(next(shared_blobs), expected, shared),
            "verify attempt": open_attempt,
        },
        ops,
        rounds,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    hs_ops, hs_rounds = (20, 3) if args.quick else (100, 7)
    cp_ops, cp_rounds = (300, 3) if args.quick else (3000, 7)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    hs = bench_handshake(hs_ops, hs_rounds)
    print("\nRaw primitives and handshake steps (median us per operation):")
    for name, values in hs.items():
        print(f"  {name:<16} {median(values) * 1e6:9.1f}")

    def raw(*names: str) -> list[float]:
        return [sum(hs[n][i] for n in names) for i in range(hs_rounds)]

    parts = {
        "hello": raw("kem keypair", "ed25519 sign", "mldsa65 sign"),
        "offer": raw(
            "ed25519 verify", "mldsa65 verify", "hpke encrypt", "ed25519 sign", "mldsa65 sign"
        ),
        "accept": raw("ed25519 verify", "mldsa65 verify", "hpke decrypt"),
    }
    parts["handshake"] = [
        parts["hello"][i] + parts["offer"][i] + parts["accept"][i] for i in range(hs_rounds)
    ]
    print("\nHandshake over its raw primitives (paired median ratio; goal <= 1.5x):")
    for name, base in parts.items():
        print(
            f"  {name:<10} {median(hs[name]) * 1e6:9.1f} us  raw {median(base) * 1e6:9.1f} us  "
            f"{ratio(hs[name], base):5.2f}x"
        )
    cp = bench_critical_path(cp_ops, cp_rounds)
    print("\nCritical path per blob, display sample (median us; goal: attempt within 10 %):")
    for op in ("seal", "verify"):
        shared, attempt = cp[f"{op} shared"], cp[f"{op} attempt"]
        print(
            f"  {op:<7} shared {median(shared) * 1e6:7.1f}  attempt {median(attempt) * 1e6:7.1f}  "
            f"{ratio(attempt, shared):5.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
