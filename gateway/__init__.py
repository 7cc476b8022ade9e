"""spice-migration-gateway: validate, seal and open SPICE seamless-migration state.

Library use::

    from gateway import native
    state = native.decode(ChannelType.DISPLAY, payload)   # strict; raises GatewayError
"""

from gateway.errors import GatewayError

__all__ = ["GatewayError"]
__version__ = "0.1.0"
