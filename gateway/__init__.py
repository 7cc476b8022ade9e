"""spice-migration-gateway: validate, seal and open SPICE seamless-migration state.

Library use::

    from gateway import native, seal, open_envelope
    state = native.decode(ChannelType.DISPLAY, payload)   # strict; raises GatewayError
    blob = seal(state, context, keyring)                  # source host
    opened = open_envelope(blob, expected, keyring, replay_guard)   # target host
"""

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
    "Policy",
    "ReplayGuard",
    "Verified",
    "load_keyring",
    "open",
    "open_envelope",
    "save_keyring",
    "seal",
    "verify",
]
__version__ = "0.1.0"

#: ``gateway.open`` reads as the counterpart of ``gateway.seal``; the module never shadows the
#: builtin for its own code.
open = open_envelope
