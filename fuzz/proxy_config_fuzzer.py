#!/usr/bin/env python3
"""Proxy config file bytes -> ProxyConfig (``parse_config``: everything load_config does after
reading the file).

Oracle: only GatewayError escapes and its message stays short; a config that parses keeps its
invariants (unique route names and listen addresses, peers distinct from this host, every
address parseable), and looking up a peer by each of its own addresses finds it.
"""

import _harness

with _harness.instrumented("gateway.proxy.config"):
    from gateway.errors import GatewayError
    from gateway.proxy.config import parse_address, parse_config

__all__ = ["TestOneInput"]


def TestOneInput(data: bytes) -> None:
    try:
        config = parse_config(data)
    except GatewayError as error:
        _harness.check_refusal(error, len(data))
        return
    names = [route.name for route in config.routes]
    listens = [parse_address(route.listen) for route in config.routes]
    if len(set(names)) != len(names) or len(set(listens)) != len(listens):
        raise _harness.OracleFailure("two routes share a name or a listen address")
    for route in config.routes:
        parse_address(route.upstream)
    if config.trusted_sources != {peer.host_id for peer in config.peers}:
        raise _harness.OracleFailure("trusted sources differ from the peers")
    if config.peer_for_address("0.0.0.0", 1) is not None and not any(
        parse_address(a) == ("0.0.0.0", 1) for p in config.peers for a in p.addresses
    ):
        raise _harness.OracleFailure("a peer found by an address it does not have")
    for peer in config.peers:
        if peer.host_id == config.host_id:
            raise _harness.OracleFailure("a peer has this host's id")
        for address in peer.addresses:
            host, port = parse_address(address)
            found = config.peer_for_address(host, port)
            if found is None:
                raise _harness.OracleFailure(f"peer {peer.host_id} not found by its address")


if __name__ == "__main__":
    _harness.main(TestOneInput)
