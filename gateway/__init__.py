"""spice-migration-gateway: validate, seal and open SPICE seamless-migration state.

The common case, native bytes in and out (:mod:`gateway.api`)::

    import gateway
    blob = gateway.seal_native("display", payload, vm=vm, migration=migration,
                               source="host-a", target="host-b", keyring=keyring)
    opened = gateway.open_native(blob, channel="display", vm=vm, migration=migration,
                                 source="host-a", target="host-b", keyring=keyring,
                                 replay_guard=guard)
    opened.payload   # the native bytes for the target spice-server

Finer control: :mod:`gateway.native` (codecs), :mod:`gateway.envelope` (``seal``,
``open_envelope``, ``verify``, contexts and policy), :mod:`gateway.keys`, :mod:`gateway.replay`;
the inline proxy is :mod:`gateway.proxy`, logs, metrics and the control API :mod:`gateway.service`.
"""

from gateway.api import OpenedNative, open_native, seal_native
from gateway.envelope import (
    ANY_MIGRATION,
    Context,
    Direction,
    ExpectedContext,
    Opened,
    Policy,
    Verified,
    open_envelope,
    seal,
    verify,
)
from gateway.errors import GatewayError
from gateway.keys import Keyring, KeyringFile, KeyState, load_keyring, save_keyring
from gateway.replay import ReplayGuard

__all__ = [
    "ANY_MIGRATION",
    "Context",
    "Direction",
    "ExpectedContext",
    "GatewayError",
    "KeyState",
    "Keyring",
    "KeyringFile",
    "Opened",
    "OpenedNative",
    "Policy",
    "ReplayGuard",
    "Verified",
    "load_keyring",
    "open_envelope",
    "open_native",
    "save_keyring",
    "seal",
    "seal_native",
    "verify",
]
__version__ = "0.1.0"
