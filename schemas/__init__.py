"""Strict pydantic v2 models of every SPICE channel's seamless-migration state.

Importable on its own as a validation library: ``from schemas import DisplayState``.
"""

from schemas._base import I32, I64, U8, U16, U32, U64, ChannelType, StateModel, StrictModel
from schemas.chardev import CharDeviceState
from schemas.display import (
    DisplayState,
    GlzDictionary,
    LossyRect,
    LossySurface,
    SurfacesLossless,
    SurfacesLossy,
)
from schemas.inputs import InputsState
from schemas.main import AgentReadState, AgentWriteState, MainState
from schemas.registry import entries, latest_version, model_for
from schemas.smartcard import SmartcardState
from schemas.spicevmc import SpicevmcState, UsbredirState

__all__ = [
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "AgentReadState",
    "AgentWriteState",
    "ChannelType",
    "CharDeviceState",
    "DisplayState",
    "GlzDictionary",
    "InputsState",
    "LossyRect",
    "LossySurface",
    "MainState",
    "SmartcardState",
    "SpicevmcState",
    "StateModel",
    "StrictModel",
    "SurfacesLossless",
    "SurfacesLossy",
    "UsbredirState",
    "entries",
    "latest_version",
    "model_for",
]
