#!/usr/bin/env python3
"""libvirt domain XML bytes (what the qemu hook reads on standard input) -> Domain -> routes
(``parse_domain`` and ``routes_for``).

Oracle: only GatewayError escapes and its message stays short; an input over the size limit is
refused as TooLarge; every route produced is a valid route whose upstream is a loopback address
of the domain's XML and whose vm_id is the domain's UUID.
"""

import ipaddress

import _harness

with _harness.instrumented("gateway.libvirt"):
    from gateway.errors import GatewayError
    from gateway.libvirt import MAX_DOMAIN_XML, parse_domain, routes_for
    from gateway.proxy.config import LibvirtHook, Route, parse_address

__all__ = ["TestOneInput"]

SETTINGS = LibvirtHook(listen_host="192.0.2.11", port_offset=-10000, tls_cert="c", tls_key="k")


def TestOneInput(data: bytes) -> None:
    try:
        domain = parse_domain(data)
        routes = routes_for(domain, SETTINGS)
    except GatewayError as error:
        _harness.check_refusal(error, len(data), MAX_DOMAIN_XML)
        return
    for table in routes:
        route = Route.model_validate(table)
        host, _ = parse_address(route.upstream)
        if not ipaddress.ip_address(host).is_loopback:
            raise _harness.OracleFailure(f"route to a non-loopback upstream {host}")
        if route.vm_id != domain.uuid:
            raise _harness.OracleFailure("route bound to another VM than the domain")


if __name__ == "__main__":
    _harness.main(TestOneInput)
