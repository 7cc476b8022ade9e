#!/usr/bin/env python3
"""Trust store file bytes -> TrustStore (``parse_trust_store``: everything load_trust_store
does after the permission checks and the size cap).

Oracle: only GatewayError escapes, with a short message; a parsed store dumps to a file that
parses back to the same entries, dumping is stable, no peer has two active generations, and
every accepted entry's keys give its key id.
"""

import _harness

with _harness.instrumented("gateway.identity"):
    from gateway.errors import GatewayError
    from gateway.identity import IdentityState, TrustStore, dump_trust_store, parse_trust_store

__all__ = ["TestOneInput"]


def _summary(store: TrustStore) -> list[tuple[str, bytes, str, int]]:
    return [(e.host_id, e.key_id, e.state.value, e.created) for e in store.entries]


def TestOneInput(data: bytes) -> None:
    try:
        store = parse_trust_store(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        return
    dumped = dump_trust_store(store)
    again = parse_trust_store(dumped)
    if _summary(again) != _summary(store) or dump_trust_store(again) != dumped:
        raise _harness.OracleFailure("trust store does not survive dump and parse")
    active = [e.host_id for e in store.entries if e.state is IdentityState.ACTIVE]
    if len(active) != len(set(active)):
        raise _harness.OracleFailure("a peer has two active generations")
    for entry in store.entries:
        if entry.public is not None and entry.public.key_id != entry.key_id:
            raise _harness.OracleFailure("an entry's keys do not give its id")


if __name__ == "__main__":
    _harness.main(TestOneInput)
