"""(channel type, schema version) -> model: how a decoder finds the model for a blob."""

from __future__ import annotations

from collections.abc import Iterator

from schemas._base import ChannelType, StateModel

_REGISTRY: dict[tuple[ChannelType, int], type[StateModel]] = {}


def register(model: type[StateModel]) -> type[StateModel]:
    """Class decorator: make ``model`` the schema of its channels at its version."""
    keys = [(channel, model.schema_version) for channel in model.channel_types]
    for channel, version in keys:
        if (channel, version) in _REGISTRY:
            raise RuntimeError(f"schema for {channel.name} v{version} registered twice")
    for key in keys:
        _REGISTRY[key] = model
    return model


def model_for(channel: ChannelType | int, version: int) -> type[StateModel] | None:
    """The model for ``channel`` at schema ``version``, or None when there is none."""
    try:
        return _REGISTRY.get((ChannelType(channel), version))
    except ValueError:
        return None


def latest_version(channel: ChannelType) -> int:
    """The newest schema version known for ``channel``."""
    versions = [v for (c, v) in _REGISTRY if c == channel]
    if not versions:
        raise LookupError(f"no schema for channel {channel.name}")
    return max(versions)


def entries() -> Iterator[tuple[ChannelType, int, type[StateModel]]]:
    for (channel, version), model in sorted(_REGISTRY.items()):
        yield channel, version, model
