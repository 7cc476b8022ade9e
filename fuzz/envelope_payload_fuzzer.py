#!/usr/bin/env python3
"""The envelope's post-authentication layer: msgpack bytes -> strict schema model, fed directly.

Input: one byte choosing the schema (an entry of the registry, as the authenticated context
would), then the decrypted payload. What the fuzzer reaches here only a holder of a valid key
could send, so this is defence in depth; it runs without the sealing cost.

The step is ``gateway.envelope.decode_state``, the very function ``verify`` calls after
decryption.

Oracle: only GatewayError escapes; a payload nested deeper than the policy allows is refused by
the msgpack limits (MalformedInput), never left for the schema to trip over; an accepted state
re-encodes natively and survives the sealer's own msgpack encoding unchanged.
"""

import _harness

with _harness.instrumented("gateway.envelope", "schemas"):
    from gateway import envelope, native
    from gateway.envelope import DEFAULT_POLICY
    from gateway.errors import GatewayError, MalformedInput
    from schemas import ChannelType, StateModel, entries

import msgpack

__all__ = ["SCHEMAS", "TestOneInput", "check", "decode_payload", "depth"]

#: (channel, schema version, model) in registry order; the input's first byte picks one.
SCHEMAS = list(entries())


def decode_payload(payload: bytes, channel: ChannelType, version: int) -> StateModel:
    """What open_envelope does between decryption and the context checks."""
    return envelope.decode_state(payload, channel, version, policy=DEFAULT_POLICY)


#: Nesting depth of a payload's containers (see ``_harness.msgpack_depth``).
depth = _harness.msgpack_depth


def TestOneInput(data: bytes) -> None:
    if data:
        check(data[0], data[1:])


def check(selector: int, payload: bytes) -> None:
    """The oracle, for the schema ``selector`` picks and a payload."""
    channel, version, _ = SCHEMAS[selector % len(SCHEMAS)]
    try:
        state = decode_payload(payload, channel, version)
    except GatewayError as error:
        _harness.check_refusal(error, len(payload), DEFAULT_POLICY.max_blob_size)
        if not isinstance(error, MalformedInput):
            nesting = depth(payload)
            if nesting is not None and nesting > DEFAULT_POLICY.max_depth:
                raise _harness.OracleFailure(
                    f"payload nested {nesting} deep (limit {DEFAULT_POLICY.max_depth}) reached "
                    f"the schema and was refused as {type(error).__name__}"
                ) from error
        return
    if native.decode(channel, native.encode(state, channel)) != state:
        raise _harness.OracleFailure("accepted state does not survive native encoding")
    resealed = msgpack.packb(state.model_dump(mode="python"), use_bin_type=True)
    if decode_payload(resealed, channel, version) != state:
        raise _harness.OracleFailure("accepted state does not survive the sealer's encoding")


if __name__ == "__main__":
    _harness.main(TestOneInput)
