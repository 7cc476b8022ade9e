#!/usr/bin/env python3
"""Structure-aware attack on the post-authentication caps: what a compromised source holding a
valid key can make the target decode.

The fuzz input drives a builder of msgpack trees made to stress the caps rather than the
schemas: containers repeated hundreds or thousands of times (one-byte empty maps and arrays,
small integers, nil, short strings and byte strings), nested a few levels deep, so that a short
input expands to a payload of up to 65,536 objects, around the object cap, with every
per-container limit kept. Optionally a few bytes of the encoding are then altered (a length
made larger, a truncation), and the object cap is lowered to a value the input chooses, so both
sides of every boundary are reached.

The step is ``gateway.envelope.decode_state`` (what ``verify`` calls after decryption).

Oracle: only GatewayError escapes; a well-formed payload of more objects than the cap is refused
as CountOutOfRange before anything else looks at it, and one within the cap never is for its
object count; every refusal's message is short.
"""

import _harness
import atheris

with _harness.instrumented("gateway.envelope"):
    from gateway import envelope
    from gateway.envelope import MAX_OBJECTS, Policy
    from gateway.errors import CountOutOfRange, GatewayError
    from schemas import entries

import msgpack

__all__ = ["SCHEMAS", "TestOneInput", "build", "count"]

#: (channel, schema version, model) in registry order; the input picks one.
SCHEMAS = list(entries())
#: Largest tree the harness encodes, in objects: over every cap worth reaching, quick to encode.
MAX_BUILT = 4 * MAX_OBJECTS
_LEAVES = (lambda fdp: {}, lambda fdp: (), lambda fdp: fdp.ConsumeIntInRange(0, 127),
           lambda fdp: None, lambda fdp: "k" * fdp.ConsumeIntInRange(0, 8),
           lambda fdp: b"\x00" * fdp.ConsumeIntInRange(0, 64))  # fmt: skip


def build(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    """A tree of arrays and maps (each at most 1,024 entries) over one-byte-ish leaves."""
    shape = fdp.ConsumeIntInRange(0, 3 if depth < 4 else 0)
    if shape == 0:
        return _LEAVES[fdp.ConsumeIntInRange(0, len(_LEAVES) - 1)](fdp)
    if shape == 1:  # one child repeated: the amplifier
        return (build(fdp, depth + 1),) * fdp.ConsumeIntInRange(0, 1024)
    if shape == 2:  # a few distinct children
        return tuple(build(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    keys = fdp.ConsumeIntInRange(0, 64)
    child = build(fdp, depth + 1)
    return {f"f{index}": child for index in range(keys)}


def count(node: object, memo: dict[int, int] | None = None) -> int:
    """msgpack objects in ``node`` as encoded: every value, key and container. Repeated
    children are one Python object, so each is counted once and multiplied (the tree can
    stand for far more objects than it holds)."""
    memo = {} if memo is None else memo
    known = memo.get(id(node))
    if known is not None:
        return known
    if isinstance(node, dict):
        total = 1 + len(node) + sum(count(child, memo) for child in node.values())
    elif isinstance(node, tuple):
        total = 1 + sum(count(child, memo) for child in node)
    else:
        total = 1
    memo[id(node)] = total
    return total


def _alter(fdp: atheris.FuzzedDataProvider, payload: bytes) -> bytes:
    """A few byte-level changes a hostile encoder could make after building."""
    data = bytearray(payload)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        if not data:
            break
        action = fdp.ConsumeIntInRange(0, 2)
        offset = fdp.ConsumeIntInRange(0, len(data) - 1)
        if action == 0:
            data[offset] = fdp.ConsumeIntInRange(0, 255)
        elif action == 1:
            del data[offset:]
        else:
            data[offset:offset] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
    return bytes(data)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    channel, version, _ = SCHEMAS[fdp.ConsumeIntInRange(0, len(SCHEMAS) - 1)]
    cap = MAX_OBJECTS if fdp.ConsumeBool() else fdp.ConsumeIntInRange(1, MAX_OBJECTS)
    policy = Policy(max_objects=cap)
    tree = build(fdp)
    objects = count(tree)
    if objects > MAX_BUILT:
        return  # the builder's own bound: encoding it here would be the slow part
    payload: bytes = msgpack.packb(tree, use_bin_type=True)
    altered = fdp.ConsumeBool()
    if altered:
        payload = _alter(fdp, payload)
    try:
        envelope.decode_state(payload, channel, version, policy=policy)
    except CountOutOfRange as error:
        if not altered and objects <= cap and "msgpack objects" in str(error):
            raise _harness.OracleFailure(
                f"{objects} objects refused by a cap of {cap}"
            ) from error
        _harness.check_refusal(error, len(payload))
        return
    except GatewayError as error:
        if not altered and objects > cap:
            raise _harness.OracleFailure(
                f"{objects} objects over a cap of {cap} reached the decoder and were refused "
                f"as {type(error).__name__}"
            ) from error
        _harness.check_refusal(error, len(payload))
        return
    if not altered and objects > cap:
        raise _harness.OracleFailure(f"{objects} objects decoded under a cap of {cap}")


if __name__ == "__main__":
    _harness.main(TestOneInput)
