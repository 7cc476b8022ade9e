"""The short path for the common case: native bytes in, sealed blob out, and back.

:func:`seal_native` decodes a channel's native migration payload strictly, validates it and seals
it for one migration; :func:`open_native` authenticates a blob, checks it against what the target
expects, records it as used and returns the native bytes the target spice-server expects. Both
choose the schema version themselves (the one the payload decodes to, and the newest this
gateway knows, respectively). For anything else (several trusted sources, other directions, a
custom :class:`~gateway.envelope.Policy`, the two-step verify and consume) use
:mod:`gateway.envelope` directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway import native
from gateway.envelope import (
    ANY_MIGRATION,
    DEFAULT_POLICY,
    DEFAULT_TTL,
    Context,
    ExpectedContext,
    Opened,
    Policy,
    open_envelope,
    seal,
)
from gateway.errors import ConfigError
from gateway.keys import Keyring
from gateway.replay import ReplayGuard
from schemas import ChannelType, StateModel, latest_version
from schemas.display import JpegWanCompression

__all__ = ["OpenedNative", "open_native", "seal_native"]


def _channel(channel: ChannelType | str) -> ChannelType:
    if isinstance(channel, ChannelType):
        return channel
    if isinstance(channel, str) and channel in native.CHANNEL_NAMES:
        return native.CHANNEL_NAMES[channel]
    raise ConfigError(
        f"channel must be a ChannelType or one of: {', '.join(native.CHANNEL_NAMES)}"
    )


def _uuid(value: uuid.UUID | str, name: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(f"{name} must be a UUID") from None


@dataclass(frozen=True)
class OpenedNative:
    """What :func:`open_native` returns: the native bytes and what they were authenticated for."""

    payload: bytes = field(repr=False)
    """The native payload to hand to the target spice-server."""
    opened: Opened = field(repr=False)
    """The validated state, the authenticated context, the lifetime and the ids."""

    @property
    def context(self) -> Context:
        return self.opened.context

    @property
    def state(self) -> StateModel:
        return self.opened.state


def seal_native(
    channel: ChannelType | str,
    payload: bytes,
    *,
    vm: uuid.UUID | str,
    migration: uuid.UUID | str,
    source: str,
    target: str,
    keyring: Keyring,
    channel_id: int = 0,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """Decode ``payload`` as ``channel``'s native migration data, validate it and seal it for
    this migration of ``vm`` from host ``source`` to host ``target``, valid ``ttl`` seconds.

    Raises a :class:`~gateway.errors.GatewayError` subclass for anything refused.
    """
    channel_type = _channel(channel)
    state = native.decode(channel_type, payload)
    context = Context(
        channel_type=channel_type,
        channel_id=channel_id,
        vm_id=_uuid(vm, "vm"),
        migration_id=_uuid(migration, "migration"),
        source_host=source,
        target_host=target,
        schema_version=type(state).schema_version,
    )
    return seal(state, context, keyring, ttl=ttl)


def open_native(
    blob: bytes,
    *,
    channel: ChannelType | str,
    vm: uuid.UUID | str,
    migration: uuid.UUID | str,
    source: str | Iterable[str],
    target: str,
    keyring: Keyring,
    replay_guard: ReplayGuard,
    channel_id: int = 0,
    policy: Policy = DEFAULT_POLICY,
    jpeg_wan_compression: JpegWanCompression = "auto",
) -> OpenedNative:
    """Authenticate ``blob``, check that it was sealed for exactly this channel, VM, migration,
    source host (or one of several) and target host, within its lifetime, record it as used in
    ``replay_guard`` and return the native payload rebuilt from its validated state.

    ``jpeg_wan_compression`` is the target QEMU's ``-spice jpeg-wan-compression=`` (QEMU's
    default ``auto``): a display state's surface list is written in the format that target's
    spice-server reads, whatever format the source wrote (the wrong one aborts it).

    ``migration`` may be ``"any"`` for the first channel of a client session; pin the returned
    ``context.migration_id`` for the session's other channels. Raises a
    :class:`~gateway.errors.GatewayError` subclass for every refusal, and records nothing then.
    """
    channel_type = _channel(channel)
    expected = ExpectedContext(
        channel_type=channel_type,
        channel_id=channel_id,
        vm_id=_uuid(vm, "vm"),
        migration_id=(
ANY_MIGRATION if migration == "any" else _uuid(migration, "migration")
        ),
        sources=frozenset([source] if isinstance(source, str) else source),
        target_host=target,
        schema_version=latest_version(channel_type),
    )
    opened = open_envelope(blob, expected, keyring, replay_guard, policy=policy)
    payload = native.encode(
        opened.state, channel_type, jpeg_wan_compression=jpeg_wan_compression
    )
    return OpenedNative(payload, opened)
