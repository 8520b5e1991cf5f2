"""``heap_segment_t``: what the family's header looks like in memory, and its fast decoder.

The family reads four fields of every header (``next``, ``prev``, ``is_allocated``,
``segment_size``); a kernel may call them differently or add more (a magic, a tag), which stay
visible as ``extra`` fields. The names the header type and its fields may have are listed here
and nowhere else.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from ..layout import HEAP_ALIGN, Field, StructLayout, packed_struct, round_up

__all__ = ["SegmentLayout", "SEGMENT_NAMES", "SEGMENT_FIELD_ALIASES", "default_segment_struct"]

# The struct (or typedef) names a kernel of this design gives its header, most usual first.
SEGMENT_NAMES = ("heap_segment_t", "heap_segment", "heapSegment", "heapSegment_t", "heap_segment_s")
SEGMENT_FIELD_ALIASES = {
    "next": ("next",),
    "prev": ("prev",),
    "is_allocated": ("is_allocated", "isAllocated", "allocated"),
    "segment_size": ("segment_size", "segmentSize", "size"),
}
FIELD_ORDER = ("next", "prev", "is_allocated", "segment_size")


class SegmentLayout:
    """``heap_segment_t``: the four fields kheap needs, and a fast decoder for the walk.

    ``unpack_from(buffer, offset)`` returns ``(next, prev, is_allocated, segment_size)``; with
    the usual field order it is ``struct.Struct.unpack_from`` itself (no Python call per field).
    ``payload_offset``: where the payload starts, counted from the header (the header's size).
    """

    def __init__(self, struct_layout: StructLayout) -> None:
        self.struct = struct_layout
        self.fields: Dict[str, Field] = {}
        for canon, aliases in SEGMENT_FIELD_ALIASES.items():
            for alias in aliases:
                f = struct_layout.field(alias)
                if f is not None and not f.is_bitfield:
                    self.fields[canon] = f
                    break
            else:
                raise ValueError(f"{struct_layout.name} has no field {canon}")
        self.header_size = struct_layout.size
        self.payload_offset = struct_layout.size
        self.extra_fields = tuple(f for f in struct_layout.fields
                                  if f not in self.fields.values() and f.size <= 8)
        packer, index = packed_struct(struct_layout.endian, [self.fields[n] for n in FIELD_ORDER], 0)
        self.decode_size = packer.size
        if index == (0, 1, 2, 3):
            self.unpack_from: Callable[..., Tuple[int, int, int, int]] = packer.unpack_from
        else:
            raw = packer.unpack_from

            def unpack_from(buf: Any, offset: int = 0) -> Tuple[int, int, int, int]:
                t = raw(buf, offset)
                return (t[index[0]], t[index[1]], t[index[2]], t[index[3]])
            self.unpack_from = unpack_from

    @property
    def source(self) -> str:
        return self.struct.source

    def decode_extra(self, data: bytes, base: int = 0) -> Dict[str, int]:
        """Fields beyond the four known ones (a kernel variant may add a magic or a tag)."""
        if not self.extra_fields:
            return {}
        return self.struct.decode(data, base, [f.name for f in self.extra_fields])


def default_segment_struct(pointer_size: int, endian: str) -> StructLayout:
    """``heap_segment_t`` as GCC lays it out: next@0, prev@P, is_allocated@2P, segment_size@2P+4."""
    p = pointer_size
    ptype = "struct heap_segment *"
    return StructLayout("heap_segment_t", round_up(2 * p + 8, HEAP_ALIGN), (
        Field("next", 0, p, ptype, is_pointer=True),
        Field("prev", p, p, ptype, is_pointer=True),
        Field("is_allocated", 2 * p, 4, "uint32_t"),
        Field("segment_size", 2 * p + 4, 4, "uint32_t"),
    ), endian, "default")
