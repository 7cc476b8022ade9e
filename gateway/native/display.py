"""Display channel payload (``DCMD``, 80-byte fixed body, then the surfaces-at-client list).

The list is ``u32 num_surfaces`` followed by 4-byte lossless entries (surface id) or 20-byte lossy
entries (id and rect). Nothing in the bytes says which: the variant is inferred from the length,
as the only two sizes a source can write. An empty list is the same 4 bytes either way and is
always decoded as lossless (the canonical form; ``SurfacesLossy`` refuses to be empty).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from gateway.errors import CountOutOfRange, UnaccountedBytes
from gateway.native._layout import Field, Layout
from schemas.display import NUM_SURFACES, DisplayState, SurfacesLossless

__all__ = ["LAYOUT", "decode", "encode"]

_COUNT = struct.Struct("<I")
_LOSSLESS = struct.Struct("<I")
_LOSSY = struct.Struct("<Iiiii")


@dataclass(frozen=True)
class SurfaceList:
    """The surfaces-at-client tail block."""

    path: str = "surfaces"
    ptr: str = "surfaces_at_client_ptr"

    def decode(self, layout: Layout[Any], data: bytes, start: int) -> tuple[Any, int]:
        size = len(data)
        if size - start < _COUNT.size:
            raise layout.fail(
                CountOutOfRange, f"num_surfaces at offset {start} runs past the end ({size} bytes)"
            )
        (count,) = _COUNT.unpack_from(data, start)
        if count > NUM_SURFACES:
            raise layout.fail(
                CountOutOfRange,
                f"num_surfaces {count} at offset {start} exceeds the {NUM_SURFACES} surfaces limit",
            )
        first = start + _COUNT.size
        room = size - first
        if room == count * _LOSSLESS.size:
            ids = tuple(i for (i,) in _LOSSLESS.iter_unpack(data[first:]))
            return {"kind": "lossless", "ids": ids}, size
        if room == count * _LOSSY.size:
            surfaces = tuple(
                {
                    "id": sid,
                    "lossy_rect": {"left": left, "top": top, "right": right, "bottom": bottom},
                }
                for sid, left, top, right, bottom in _LOSSY.iter_unpack(data[first:])
            )
            return {"kind": "lossy", "surfaces": surfaces}, size
        if room < count * _LOSSLESS.size:
            raise layout.fail(
                CountOutOfRange,
                f"num_surfaces {count} at offset {start} needs {count * _LOSSLESS.size} bytes, "
                f"{room} remain",
            )
        raise layout.fail(
            UnaccountedBytes,
            f"{room} bytes after num_surfaces {count} at offset {start} fit neither "
            f"lossless ({count * _LOSSLESS.size}) nor lossy ({count * _LOSSY.size}) entries",
        )

    def encode(self, state: DisplayState) -> bytes:
        surfaces = state.surfaces
        if isinstance(surfaces, SurfacesLossless):
            return _COUNT.pack(len(surfaces.ids)) + b"".join(
                _LOSSLESS.pack(i) for i in surfaces.ids
            )
        return _COUNT.pack(len(surfaces.surfaces)) + b"".join(
            _LOSSY.pack(
                s.id, s.lossy_rect.left, s.lossy_rect.top, s.lossy_rect.right, s.lossy_rect.bottom
            )
            for s in surfaces.surfaces
        )


LAYOUT: Layout[DisplayState] = Layout(
    channel="display",
    magic=b"DCMD",
    version=1,
    fields=[
        Field("message_serial", "Q"),
        Field("low_bandwidth", "B", "bool"),
        Field("pixmap_cache_id", "B"),
        Field("pixmap_cache_size", "q"),
        Field("pixmap_cache_freezer", "B", "bool"),
        Field("pixmap_cache_clients.0", "Q"),
        Field("pixmap_cache_clients.1", "Q"),
        Field("pixmap_cache_clients.2", "Q"),
        Field("pixmap_cache_clients.3", "Q"),
        Field("glz_dict_id", "B"),
        Field("glz_dict.window_size", "I"),
        Field("glz_dict.max_encoders", "I"),
        Field("glz_dict.last_image_id", "Q"),
        Field("surfaces_at_client_ptr", "I", "ptr"),
    ],
    blocks=[SurfaceList()],
    model=DisplayState,
)


def decode(data: bytes) -> DisplayState:
    return LAYOUT.decode(data)


def encode(state: DisplayState) -> bytes:
    return LAYOUT.encode(state)
