"""Benchmark: the sealed envelope against raw AES-256-GCM and Fernet, and the per-blob pipeline.

Run: ``python bench/envelope.py [--quick | --tiny] [--dir DIR]``. Prints medians; asserts
nothing. ``--tiny`` only checks that every part still runs (figures meaningless).

What is measured
----------------
* **Sizes** 64 B to 4 MiB. The state is a ``SpicevmcState`` (a port channel: opaque bytes) whose
  ``write_data`` has the given size, so seal and open include everything a real blob costs:
  ``model_dump`` and msgpack packing on the way in; authentication, decryption, strict msgpack
  decoding and strict schema validation on the way out. The baselines get the bare bytes: raw
  AES-256-GCM with one pre-built key (no derivation, no MAC, no encoding), and Fernet (what a
  Python user might reach for). Ratios are envelope time / raw GCM time. The cases take turns
  (one call each in turn for the large sizes, a batch each for the small ones, where the timer
  would cost as much as the call), and ratios are medians of the paired turns.
* **open** is shown twice: ``verify`` (every check, no replay guard) and ``open_envelope`` with
  the real guard (an SQLite commit per blob, written to the kernel; an fsync where the system
  has no boot id), since that commit depends on the system far more than on this code. The
  guard's own commit is also timed alone, and six concurrent ones (a migration's channels on
  the target), which share commits.
* **Floor** at 1 KiB and 4 MiB: the steps the construction cannot avoid, each timed alone in
  turn with raw GCM: the key derivation's three HMACs, the signature's HMAC, AES-256-GCM under
  the blob's own key (with the key setup, and for a large blob streamed into the blob's
  buffer as seal does), and msgpack packing or strict unpacking of the same payload. Their sum
  against raw GCM is the best ratio this construction can reach with these libraries, and the
  goal lines name it.
* **Pipeline** on the display sample: native decode + validate, then seal; and back: open,
  then native encode. In microseconds each way.
* **Identity suite** beside the shared keyring: the per-attempt handshake as the peer link
  runs it (the target's challenge with its signed hello, the source's signed offer, the
  target's check; once per attempt, off the critical path), then the display sample's seal
  and open under the agreed attempt key and under the shared keyring (the critical path).

Goals (reported, not asserted): at 4 MiB, envelope throughput at least half of raw GCM;
at 1 KiB, at most 4x raw GCM per operation; the display pipeline at most 30 us each way
(without the replay commit).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgpack
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import gateway
from gateway import native
from gateway.envelope import (
    _INFO_ENC,
    _INFO_MAC,
    _NONCE,
    _STREAM_MIN,
    DEFAULT_POLICY,
    HEADER_SIZE,
    MAC_SIZE,
    TAG_SIZE,
    Context,
    ExpectedContext,
    Policy,
    _decode_context,
    _derive,
    _hmac,
    _pieces,
    _unpack,
    open_envelope,
    read_header,
    seal,
    verify,
)
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, CharDeviceState, SpicevmcState

SIZES = (64, 1024, 16 * 1024, 256 * 1024, 4 * 1024 * 1024)
VM = uuid.UUID("6f1c1b9e-0d5e-4d8a-9a53-2f43c0a5f0a1")
MIGRATION = uuid.UUID("0b7e2a58-8c36-4f0e-9f0b-6c1d2e3f4a5b")


class NullGuard(ReplayGuard):
    """Benchmark only: a guard that records nothing, to show open's cost without the commit."""

    def __init__(self) -> None:
        self._db = None

    def consume(
        self,
        blob_id: bytes,
        keep_until: int,
        *,
        now: int,
        issued_at: int | None = None,
        claim: Callable[[], None] | None = None,
    ) -> None:
        return None


def measure(
    cases: dict[str, Callable[[], object]], ops: int, rounds: int
) -> dict[str, list[float]]:
    """Per-op seconds of each case, ``rounds`` samples each of ``ops`` calls.

    The cases take turns within each round, so a machine whose load drifts during the run
    slows all of them alike and the ratios stay fair.
    """
    for fn in cases.values():
        fn()  # warm up (imports, caches, first allocation)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(ops):
                fn()
            samples[name].append((time.perf_counter() - start) / ops)
    return samples


def pick(mode: str, full: int, quick: int, tiny: int) -> int:
    """A repetition count for the run's mode."""
    return {"full": full, "quick": quick, "tiny": tiny}[mode]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def ratio(slow: list[float], fast: list[float]) -> float:
    """Median of the per-round ratios (paired, so load drift cancels)."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def ops_for(size: int, mode: str) -> tuple[int, int]:
    """Calls per turn and turns: single calls in many turns where a call is long enough to
    time alone (pairs them closely), batches where it is not."""
    ops = max(1, min(2000, (1 << 20) // size))
    rounds = 15 if ops < 8 else 5
    if mode == "tiny":
        return 1, 1
    return (max(1, ops // 10), 5) if mode == "quick" else (ops, rounds)


def context(channel: ChannelType) -> Context:
    return Context(channel, 0, VM, MIGRATION, "src.example", "dst.example", 1)


def state_of(size: int) -> SpicevmcState:
    data = os.urandom(size)
    return SpicevmcState(
        device=CharDeviceState(
            connected=True, num_client_tokens=1, num_send_tokens=1, write_size=size,
            write_num_client_tokens=1, write_data=data,
        )
    )


def fs_type(path: Path) -> str:
    """The filesystem under ``path`` (Linux), since the guard's commit cost depends on it."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, point, fstype, *_ = line.split()
                if str(path.resolve()).startswith(point) and len(point) > len(best):
                    best, kind = point, fstype
    except OSError:
        pass
    return kind


Samples = dict[str, list[float]]


def bench_size(size: int, directory: Path, mode: str) -> Samples:
    keyring = Keyring.create()
    ctx = context(ChannelType.PORT)
    expected = ExpectedContext.of(ctx)
    policy = Policy(max_blob_size=8 << 20)
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    fernet = Fernet(Fernet.generate_key())
    ops, rounds = ops_for(size, mode)
    state = state_of(size)
    data = state.device.write_data
    raw_ct = gcm.encrypt(nonce, data, None)
    token = fernet.encrypt(data)
    blob = seal(state, ctx, keyring)
    # Each pair in its own turns, so that neither Fernet's allocations nor the guard's disk
    # weigh on one side of a pair only. open verifies one blob over and over, as raw GCM
    # decrypts one ciphertext (both warm, like a blob just received); open_guarded consumes
    # each blob once: a fresh one per timed call (+1 for the warm-up).
    samples = measure(
        {
            "gcm_enc": lambda: gcm.encrypt(nonce, data, None),
            "seal": lambda: seal(state, ctx, keyring),
        },
        ops,
        rounds,
    )
    samples |= measure(
        {
            "gcm_dec": lambda: gcm.decrypt(nonce, raw_ct, None),
            "open": lambda: verify(blob, expected, keyring, policy=policy),
        },
        ops,
        rounds,
    )
    guarded = iter([seal(state, ctx, keyring) for _ in range(ops * rounds + 1)])
    with ReplayGuard(directory / f"replay-{size}.db") as guard:
        samples |= measure(
            {
                "fernet_enc": lambda: fernet.encrypt(data),
                "fernet_dec": lambda: fernet.decrypt(token),
                "open_guarded": lambda: open_envelope(
                    next(guarded), expected, keyring, guard, policy=policy
                ),
            },
            ops,
            rounds,
        )
    samples["blob"] = [float(len(blob))]
    return samples


def bench_guard(directory: Path, mode: str) -> float:
    counter = itertools.count()
    now = int(time.time())
    with ReplayGuard(directory / "replay-alone.db") as guard:
        samples = measure(
            {"consume": lambda: guard.consume(next(counter).to_bytes(32, "big"), now + 300,
                                              now=now)},
            pick(mode, 300, 50, 2),
            pick(mode, 5, 5, 1),
        )
    return median(samples["consume"])


def bench_concurrent_guard(directory: Path, quick: bool, count: int = 6) -> tuple[float, float]:
    """Seconds for ``count`` consumes: started together in threads (they share commits), and
    one after another in one thread (a commit each)."""
    counter = itertools.count()
    now = int(time.time())
    together, in_a_row = [], []
    with ReplayGuard(directory / "replay-concurrent.db") as guard:

        def consume(blob_id: bytes) -> None:
            guard.consume(blob_id, now + 300, now=now)

        for _ in range(20 if quick else 100):
            ids = [next(counter).to_bytes(32, "big") for _ in range(count)]
            start = threading.Barrier(count + 1)

            def run(blob_id: bytes, start: threading.Barrier = start) -> None:
                start.wait()
                consume(blob_id)

            workers = [threading.Thread(target=run, args=(i,)) for i in ids]
            for worker in workers:
                worker.start()
            start.wait()
            began = time.perf_counter()
            for worker in workers:
                worker.join()
            together.append(time.perf_counter() - began)

            began = time.perf_counter()
            for _ in range(count):
                consume(next(counter).to_bytes(32, "big"))
            in_a_row.append(time.perf_counter() - began)
    return median(together), median(in_a_row)


def bench_parts(mode: str) -> dict[str, float]:
    """Where a 1 KiB blob's time goes: each step of seal and open on its own."""
    keyring = Keyring.create()
    key = keyring.active
    state = state_of(1024)
    ctx = context(ChannelType.PORT)
    salt = os.urandom(32)
    enc_key, mac_key = _derive(key.secret, salt)
    dumped = state.model_dump(mode="python")
    payload = msgpack.packb(dumped, use_bin_type=True)
    blob = seal(state, ctx, keyring)
    header = read_header(blob)
    context_bytes = blob[HEADER_SIZE : HEADER_SIZE + header.context_length]
    unpacked = _unpack(payload, DEFAULT_POLICY)
    expected = ExpectedContext.of(ctx)
    ops, rounds = pick(mode, 3000, 300, 2), pick(mode, 7, 3, 1)
    samples = measure(
        {
            "hkdf (3 HMACs)": lambda: _derive(key.secret, salt),
            "signature (1 HMAC)": lambda: _hmac(mac_key, blob[:150]),
            "AES-GCM, per-blob key": lambda: AESGCM(enc_key).encrypt(b"\0" * 12, payload, b"x"),
            "model_dump + msgpack": lambda: msgpack.packb(
                state.model_dump(mode="python"), use_bin_type=True
            ),
            "fixed header": lambda: read_header(blob),
            "context decode": lambda: _decode_context(context_bytes, expected),
            "strict msgpack decode": lambda: _unpack(payload, DEFAULT_POLICY),
            "strict schema validation": lambda: SpicevmcState.model_validate(unpacked),
        },
        ops,
        rounds,
    )
    return {name: median(values) for name, values in samples.items()}


FLOOR_SIZES = (1024, 4 * 1024 * 1024)


def bench_floor(mode: str) -> dict[int, dict[str, Samples]]:
    """Per size, for "seal" and "open": the samples of each step the construction cannot avoid,
    taking turns with the raw primitive ("raw")."""
    keyring = Keyring.create()
    secret, salt = keyring.active.secret, os.urandom(32)
    prk = _hmac(salt, secret)
    enc_key, mac_key = _derive(secret, salt)
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    signed = os.urandom(HEADER_SIZE + 40 + TAG_SIZE)
    aad = signed[:-TAG_SIZE]
    hmacs: dict[str, Callable[[], object]] = {
        "HKDF extract (HMAC)": lambda: _hmac(salt, secret),
        "HKDF expand, encryption key (HMAC)": lambda: _hmac(prk, _INFO_ENC + b"\x01"),
        "HKDF expand, MAC key (HMAC)": lambda: _hmac(prk, _INFO_MAC + b"\x01"),
        "signature (HMAC)": lambda: _hmac(mac_key, signed),
    }

    def at(size: int) -> dict[str, Samples]:
        state = state_of(size)
        data = state.device.write_data
        dumped = state.model_dump(mode="python")
        payload = msgpack.packb(dumped, use_bin_type=True)
        raw_ct = gcm.encrypt(nonce, data, None)
        blob_ct = AESGCM(enc_key).encrypt(_NONCE, payload, aad)
        ops, rounds = ops_for(size, mode)

        def pack() -> object:
            # As seal packs: in one call, or in pieces around a large byte string.
            if size >= _STREAM_MIN:
                return _pieces(dumped)
            return msgpack.packb(dumped, use_bin_type=True)

        def encrypt() -> bytes:
            if size < _STREAM_MIN:
                return AESGCM(enc_key).encrypt(_NONCE, payload, aad)
            # As seal streams a large payload: into a buffer of the blob's size.
            out = io.BytesIO(bytes(len(aad) + len(payload) + TAG_SIZE + MAC_SIZE))
            with out.getbuffer() as view:
                encryptor = Cipher(algorithms.AES(enc_key), modes.GCM(_NONCE)).encryptor()
                encryptor.authenticate_additional_data(aad)
                encryptor.update_into(payload, view[len(aad) :])
                encryptor.finalize()
            return out.getvalue()

        return {
            "seal": measure(
                {
                    "raw": lambda: gcm.encrypt(nonce, data, None),
                    **hmacs,
                    "AES-256-GCM, the blob's key": encrypt,
                    "msgpack pack": pack,
                },
                ops,
                rounds,
            ),
            "open": measure(
                {
                    "raw": lambda: gcm.decrypt(nonce, raw_ct, None),
                    **hmacs,
                    "AES-256-GCM, the blob's key": lambda: AESGCM(enc_key).decrypt(
                        _NONCE, blob_ct, aad
                    ),
                    "msgpack unpack (strict)": lambda: _unpack(payload, DEFAULT_POLICY),
                },
                ops,
                rounds,
            ),
        }

    return {size: at(size) for size in FLOOR_SIZES}


def floor_ratio(steps: Samples) -> float:
    """Median over the turns of (sum of the steps) / raw: the construction's best ratio."""
    raw = steps["raw"]
    parts = [samples for name, samples in steps.items() if name != "raw"]
    return statistics.median(sum(turn) / r for r, *turn in zip(raw, *parts, strict=True))


def bench_pipeline(mode: str) -> dict[str, float]:
    sample = (Path(gateway.__file__).parent / "samples" / "display.bin").read_bytes()
    keyring = Keyring.create()
    ctx = context(ChannelType.DISPLAY)
    expected = ExpectedContext.of(ctx)
    ops, rounds = pick(mode, 3000, 300, 2), pick(mode, 7, 3, 1)
    state = native.decode(ChannelType.DISPLAY, sample)
    blobs = iter([seal(state, ctx, keyring) for _ in range(2 * ops * rounds + 2)])
    null = NullGuard()

    def forward() -> bytes:
        return seal(native.decode(ChannelType.DISPLAY, sample), ctx, keyring)

    def back() -> bytes:
        got = verify(next(blobs), expected, keyring).consume(null)
        return native.encode(got.state, ChannelType.DISPLAY)

    samples = measure(
        {
            "decode": lambda: native.decode(ChannelType.DISPLAY, sample),
            "seal": lambda: seal(state, ctx, keyring),
            "forward": forward,
            "open": lambda: verify(next(blobs), expected, keyring),
            "encode": lambda: native.encode(state, ChannelType.DISPLAY),
            "back": back,
        },
        ops,
        rounds,
    )
    result = {name: median(values) for name, values in samples.items()}
    result["size"] = float(len(sample))
    return result


def bench_identity(mode: str) -> dict[str, float]:
    """The identity suite: its handshake's three steps over the peer link (sans I/O), then the
    display blob's seal and open under an attempt key beside the shared keyring."""
    from gateway.identity import HostIdentity, TrustStore
    from gateway.peerlink import SourceLink, TargetLink

    source, target = HostIdentity.create("src.example"), HostIdentity.create("dst.example")
    source_trust, _ = TrustStore().with_peer(target.public)
    target_trust, _ = TrustStore().with_peer(source.public)
    shared = Keyring.create()
    channels = [(t, 0) for t in (1, 2, 3, 6, 9, 11)]
    rounds = pick(mode, 200, 20, 2)
    steps: dict[str, list[float]] = {"hello": [], "offer": [], "accept": []}
    attempt = None
    for _ in range(rounds):
        now = time.time()
        t0 = time.perf_counter()
        target_link = TargetLink(
            "dst.example", shared, {"src.example"}, {VM}, now=now, clock_skew=5,
            identity=(target, target_trust), identity_sources={"src.example"},
        )
        challenge = target_link.start()
        t1 = time.perf_counter()
        source_link = SourceLink(
            host_id="src.example", target_host="dst.example", keyring=None, vm_id=VM,
            migration_id=MIGRATION, channels=channels, now=now,
            identity=(source, source_trust),
        )
        (answer,) = source_link.receive(challenge)
        t2 = time.perf_counter()
        (verified,) = target_link.receive(answer.data)  # type: ignore[union-attr]
        t3 = time.perf_counter()
        steps["hello"].append(t1 - t0)
        steps["offer"].append(t2 - t1)
        steps["accept"].append(t3 - t2)
        attempt = verified.key
    assert attempt is not None
    result = {name: median(values) for name, values in steps.items()}
    result["handshake"] = median([sum(parts) for parts in zip(*steps.values(), strict=True)])
    sample = (Path(gateway.__file__).parent / "samples" / "display.bin").read_bytes()
    state = native.decode(ChannelType.DISPLAY, sample)
    ctx = context(ChannelType.DISPLAY)
    ctx = Context(ctx.channel_type, 0, VM, MIGRATION, "src.example", "dst.example", 1)
    expected = ExpectedContext.of(ctx)
    ops, rounds = pick(mode, 3000, 300, 2), pick(mode, 7, 3, 1)
    blobs = {
        "shared": iter([seal(state, ctx, shared) for _ in range(ops * rounds + 1)]),
        "attempt": iter([seal(state, ctx, attempt.keyring) for _ in range(ops * rounds + 1)]),
    }
    samples = measure(
        {
            "seal shared": lambda: seal(state, ctx, shared),
            "seal attempt": lambda: seal(state, ctx, attempt.keyring),
            "open shared": lambda: verify(next(blobs["shared"]), expected, shared),
            "open attempt": lambda: verify(next(blobs["attempt"]), expected, attempt.keyring),
        },
        ops,
        rounds,
    )
    result |= {name: median(values) for name, values in samples.items()}
    return result


def us(seconds: float) -> str:
    return f"{seconds * 1e6:10.1f}"


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:9.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="fewer repetitions")
    speed.add_argument(
        "--tiny", action="store_true", help="a smoke run of every part (figures meaningless)"
    )
    parser.add_argument("--dir", type=Path, help="directory for the replay databases")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"replay databases on {fs_type(directory)}")
        sizes = {size: bench_size(size, directory, mode) for size in SIZES}
        guard = bench_guard(directory, mode)
        together, in_a_row = bench_concurrent_guard(directory, quick=mode != "full")
    parts = bench_parts(mode)
    floor = bench_floor(mode)
    pipe = bench_pipeline(mode)
    ident = bench_identity(mode)

    print("\nSeal vs encrypt: median us per op; ratio = seal / raw AES-256-GCM (paired per round)")
    print(f"{'size':>8} {'blob':>8} {'raw-gcm':>10} {'fernet':>10} {'seal':>10} {'ratio':>6}"
          f" {'gcm MB/s':>9} {'seal MB/s':>9}")
    for size, r in sizes.items():
        enc, sl = median(r["gcm_enc"]), median(r["seal"])
        print(f"{size:>8} {int(r['blob'][0]):>8} {us(enc)} {us(median(r['fernet_enc']))}"
              f" {us(sl)} {ratio(r['seal'], r['gcm_enc']):6.1f} {mbps(size, enc)}"
              f" {mbps(size, sl)}")

    print("\nOpen vs decrypt: median us per op; open = everything but the replay commit,"
          " +guard = with it")
    print(f"{'size':>8} {'raw-gcm':>10} {'fernet':>10} {'open':>10} {'ratio':>6} {'+guard':>10}"
          f" {'gcm MB/s':>9} {'open MB/s':>9}")
    for size, r in sizes.items():
        dec, op = median(r["gcm_dec"]), median(r["open"])
        print(f"{size:>8} {us(dec)} {us(median(r['fernet_dec']))} {us(op)}"
              f" {ratio(r['open'], r['gcm_dec']):6.1f} {us(median(r['open_guarded']))}"
              f" {mbps(size, dec)} {mbps(size, op)}")

    print(f"\nReplay guard alone (one SQLite commit): {guard * 1e6:.1f} us\n"
          f"Six consumes (a migration's channels), started together in threads: "
          f"{together * 1e6:.1f} us; one after another: {in_a_row * 1e6:.1f} us")
    print("\nWhere a 1 KiB blob's time goes (median us per step):")
    for name, seconds in parts.items():
        print(f"  {name:<26} {seconds * 1e6:8.1f}")
    print("\nFloor: the steps the construction cannot avoid, each alone, in turn with raw GCM"
          " (median us)")
    for op in ("seal", "open"):
        steps = {name: [floor[size][op][name] for size in FLOOR_SIZES]
                 for name in floor[FLOOR_SIZES[0]][op]}
        print(f"  {op:<36} {'1 KiB':>10} {'4 MiB':>10}")
        for name, samples in steps.items():
            if name != "raw":
                print(f"    {name:<34} {us(median(samples[0]))} {us(median(samples[1]))}")
        print(f"    {'raw AES-256-GCM, one key':<34} {us(median(steps['raw'][0]))}"
              f" {us(median(steps['raw'][1]))}")
        small, large = (floor_ratio(floor[size][op]) for size in FLOOR_SIZES)
        print(f"    {'floor: steps / raw':<34} {small:9.2f}x {1 / large:8.2f}x raw throughput")
    print(
        f"\nPipeline on the {int(pipe['size'])}-byte display sample (median us):\n"
        f"  forward: native decode+validate {pipe['decode'] * 1e6:.1f}"
        f" + dump/msgpack/seal {pipe['seal'] * 1e6:.1f};"
        f" together {pipe['forward'] * 1e6:.1f}\n"
        f"  back:    open (no guard) {pipe['open'] * 1e6:.1f}"
        f" + native encode {pipe['encode'] * 1e6:.1f}; together {pipe['back'] * 1e6:.1f}"
        f" (+{guard * 1e6:.1f} for the replay commit)"
    )

    print(
        "\nIdentity suite (median us):\n"
        f"  handshake, once per attempt, off the critical path: {ident['handshake'] * 1e6:.0f}"
        f" (target hello {ident['hello'] * 1e6:.0f}, source offer {ident['offer'] * 1e6:.0f},"
        f" target check {ident['accept'] * 1e6:.0f})\n"
        f"  display blob, critical path:   {'shared keyring':>15} {'attempt key':>12}\n"
        f"    seal {'':<24} {ident['seal shared'] * 1e6:15.1f}"
        f" {ident['seal attempt'] * 1e6:12.1f}\n"
        f"    open (no guard) {'':<13} {ident['open shared'] * 1e6:15.1f}"
        f" {ident['open attempt'] * 1e6:12.1f}"
    )

    big, kib = sizes[SIZES[-1]], sizes[1024]
    small, large = floor[FLOOR_SIZES[0]], floor[FLOOR_SIZES[1]]
    goals = (
        ("4 MiB seal >= 1/2 raw GCM throughput", 1 / ratio(big["seal"], big["gcm_enc"]), 0.5,
         "x raw", f"floor {1 / floor_ratio(large['seal']):.2f}x"),
        ("4 MiB open >= 1/2 raw GCM throughput", 1 / ratio(big["open"], big["gcm_dec"]), 0.5,
         "x raw", f"floor {1 / floor_ratio(large['open']):.2f}x"),
        ("1 KiB seal <= 4x raw GCM per op", -ratio(kib["seal"], kib["gcm_enc"]), -4.0, "x",
         f"floor {floor_ratio(small['seal']):.2f}x"),
        ("1 KiB open <= 4x raw GCM per op", -ratio(kib["open"], kib["gcm_dec"]), -4.0, "x",
         f"floor {floor_ratio(small['open']):.2f}x"),
        ("display pipeline forward <= 30 us", -pipe["forward"] * 1e6, -30.0, " us", ""),
        ("display pipeline back <= 30 us (no guard)", -pipe["back"] * 1e6, -30.0, " us", ""),
    )
    print("\nGoals (reported, not asserted; the floor is the best the construction can reach):")
    for label, value, threshold, unit, note in goals:
        print(f"  {'met   ' if value >= threshold else 'missed'} {label}: {abs(value):.2f}{unit}"
              + (f" ({note})" if note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
