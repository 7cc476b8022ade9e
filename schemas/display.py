"""Display channel (``DCMD``): pixmap cache, GLZ dictionary and the surfaces the client holds."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import Discriminator, Field, Tag, model_validator

from schemas._base import U8, U64, ChannelType, StateModel, StrictModel
from schemas.registry import register

__all__ = [
    "GLZ_MAX_ENCODERS",
    "GLZ_MAX_WINDOW",
    "JPEG_WAN_COMPRESSION",
    "MAX_COORDINATE",
    "MAX_PIXMAP_CACHE_SIZE",
    "NUM_SURFACES",
    "DisplayState",
    "GlzDictionary",
    "JpegWanCompression",
    "LossyRect",
    "LossySurface",
    "SurfacesLossless",
    "SurfacesLossy",
    "reads_lossy_list",
]

#: spice-server's per-client surface arrays have NUM_SURFACES entries; an id is an index.
NUM_SURFACES = 1024
#: LZ_MAX_WINDOW_SIZE: a larger GLZ window makes the target abort.
GLZ_MAX_WINDOW = 1 << 25
#: MAX_LZ_ENCODERS: the only value a real source sends; others under- or over-size the target's
#: per-encoder arrays.
GLZ_MAX_ENCODERS = 4
#: Pixmap cache size as a client asks for in DISPLAY_INIT; bounded well above real clients
#: (tens of MiB) and far from the int64 edge the target does not check.
MAX_PIXMAP_CACHE_SIZE = 1 << 32
#: Lossy rects are the bounding boxes of regions on a surface; QXL surfaces are far smaller.
MAX_COORDINATE = 1 << 16

JpegWanCompression: TypeAlias = Literal["auto", "always", "never"]
"""QEMU's ``-spice jpeg-wan-compression=``: whether spice-server may send lossy (JPEG) images."""
JPEG_WAN_COMPRESSION: tuple[JpegWanCompression, ...] = ("auto", "always", "never")

SurfaceId = Annotated[int, Field(ge=0, lt=NUM_SURFACES)]
Coordinate = Annotated[int, Field(ge=0, le=MAX_COORDINATE)]


class GlzDictionary(StrictModel):
    """``GlzEncDictRestoreData``."""

    window_size: Annotated[int, Field(ge=1, le=GLZ_MAX_WINDOW)]
    max_encoders: Annotated[int, Field(ge=GLZ_MAX_ENCODERS, le=GLZ_MAX_ENCODERS)]
    last_image_id: U64


class LossyRect(StrictModel):
    """``SpiceMigrateDataRect`` (left, top, right, bottom: not spice.proto's order)."""

    left: Coordinate
    top: Coordinate
    right: Coordinate
    bottom: Coordinate

    @model_validator(mode="after")
    def _ordered(self) -> LossyRect:
        if self.left > self.right or self.top > self.bottom:
            raise ValueError("rect edges are out of order")
        return self


class LossySurface(StrictModel):
    id: SurfaceId
    lossy_rect: LossyRect


def _check_ascending(ids: list[int]) -> None:
    # The source walks its surfaces in id order; a repeated id aborts the target.
    for before, after in itertools.pairwise(ids):
        if after <= before:
            raise ValueError(f"surface ids must be strictly ascending ({before} then {after})")


class SurfacesLossless(StrictModel):
    """Surfaces at the client when the source did not use lossy (JPEG) compression."""

    kind: Literal["lossless"] = "lossless"
    ids: Annotated[tuple[SurfaceId, ...], Field(max_length=NUM_SURFACES)]

    @model_validator(mode="after")
    def _ascending(self) -> SurfacesLossless:
        _check_ascending(list(self.ids))
        return self


class SurfacesLossy(StrictModel):
    """Surfaces at the client with the bounding box of each one's lossy region."""

    kind: Literal["lossy"] = "lossy"
    surfaces: Annotated[tuple[LossySurface, ...], Field(min_length=1, max_length=NUM_SURFACES)]

    @model_validator(mode="after")
    def _ascending(self) -> SurfacesLossy:
        # min_length=1: an empty list is the same bytes either way and is always lossless.
        _check_ascending([s.id for s in self.surfaces])
        return self


def _surface_kind(value: Any) -> str | None:
    # A callable discriminator, so an unknown tag is reported by our message; pydantic's own
    # would quote the offending value.
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in ("lossless", "lossy") else None


@register
class DisplayState(StateModel):
    """``SpiceMigrateDataDisplay`` with its surfaces-at-client list."""

    schema_version: ClassVar[int] = 1
    channel_types: ClassVar[tuple[ChannelType, ...]] = (ChannelType.DISPLAY,)

    message_serial: U64
    low_bandwidth: bool
    pixmap_cache_id: U8
    pixmap_cache_size: Annotated[int, Field(ge=0, le=MAX_PIXMAP_CACHE_SIZE)]
    pixmap_cache_freezer: bool
    pixmap_cache_clients: tuple[U64, U64, U64, U64]
    glz_dict_id: U8
    glz_dict: GlzDictionary
    surfaces: Annotated[
        Annotated[SurfacesLossless, Tag("lossless")] | Annotated[SurfacesLossy, Tag("lossy")],
        Discriminator(
            _surface_kind,
            custom_error_type="surfaces_kind",
            custom_error_message="kind must be 'lossless' or 'lossy'",
        ),
    ]

    def for_target(self, jpeg_wan_compression: JpegWanCompression) -> DisplayState:
        """This state with its surface list in the format the target's spice-server will read.

        A source with another ``jpeg-wan-compression`` than the target writes the other format
        (for instance ``always`` with ``low_bandwidth`` 0 writes lossy entries that an ``auto``
        target reads as lossless ids, and aborts). Lossless to lossy is exact (empty rects);
        lossy to lossless drops the rects: the target then treats the client's copy of every
        surface as lossless.
        """
        return _for_target(self, jpeg_wan_compression)


def reads_lossy_list(jpeg_wan_compression: JpegWanCompression, low_bandwidth: bool) -> bool:
    """Whether a spice-server with this setting reads the surface list as lossy entries.

    ``DisplayChannelClient::handle_migrate_data`` ignores the body's length: it reads 20-byte
    lossy entries iff its own ``enable_jpeg``, which ``auto`` (QEMU's default) switches on from
    the body's ``low_bandwidth``; ``always`` and ``never`` ignore the body.
    """
    if jpeg_wan_compression == "always":
        return True
    if jpeg_wan_compression == "never":
        return False
    return low_bandwidth


def _for_target(state: DisplayState, jpeg_wan_compression: JpegWanCompression) -> DisplayState:
    surfaces = state.surfaces
    lossy = reads_lossy_list(jpeg_wan_compression, state.low_bandwidth)
    if isinstance(surfaces, SurfacesLossless):
        if not lossy or not surfaces.ids:
            return state
        # An empty lossy region is exactly what a lossless entry means.
        empty = LossyRect(left=0, top=0, right=0, bottom=0)
        converted: SurfacesLossless | SurfacesLossy = SurfacesLossy(
            surfaces=tuple(LossySurface(id=i, lossy_rect=empty) for i in surfaces.ids)
        )
    else:
        if lossy:
            return state
        # The target will take every surface as lossless at the client: it forgets where the
        # client holds JPEG-approximated pixels (display quality, not safety).
        converted = SurfacesLossless(ids=tuple(s.id for s in surfaces.surfaces))
    return state.model_copy(update={"surfaces": converted})
