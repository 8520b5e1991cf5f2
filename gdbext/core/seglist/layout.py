"""``heap_segment_t``: what the family's header looks like in memory, and its fast decoder.

The family reads four fields of every header (``next``, ``prev``, ``is_allocated``,
``segment_size``); a kernel may call them differently or add more (a magic, a tag), which stay
visible as ``extra`` fields. The names the header type and its fields may have are listed here
and nowhere else.
"""

from __future__ import annotations

import sys
from operator import itemgetter
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

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
        four = [self.fields[n] for n in FIELD_ORDER]
        packer, index = packed_struct(struct_layout.endian, four, 0)
        self.decode_size = packer.size
        self._packer = packer
        self._reorder = None if index == (0, 1, 2, 3) else itemgetter(*index)
        if self._reorder is None:
            self.unpack_from: Callable[..., Tuple[int, int, int, int]] = packer.unpack_from
        else:
            raw, reorder = packer.unpack_from, self._reorder

            def unpack_from(buf: Any, offset: int = 0) -> Tuple[int, int, int, int]:
                return reorder(raw(buf, offset))
            self.unpack_from = unpack_from
        # Whole columns straight from the bytes (memoryview.cast) when the target's byte order
        # is this machine's and each field sits at a multiple of its own size.
        self._casts: Optional[List[Tuple[str, int, int]]] = None
        if (struct_layout.endian == "<") == (sys.byteorder == "little") and all(
                f.size in (4, 8) and f.offset % f.size == 0 and self.decode_size % f.size == 0 for f in four):
            self._casts = [("I" if f.size == 4 else "Q", f.offset // f.size, self.decode_size // f.size) for f in four]

    def iter_fields(self, raw: Any) -> Iterator[Tuple[int, int, int, int]]:
        """``(next, prev, is_allocated, segment_size)`` of each header in ``raw``, headers'
        bytes one after the other (what a walk keeps)."""
        fields = self._packer.iter_unpack(raw)
        return fields if self._reorder is None else map(self._reorder, fields)

    def columns(self, raw: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
        """The headers in ``raw`` as four lists: nexts, prevs, flags, sizes."""
        if self._casts is not None:
            view = memoryview(raw)
            words = {code: view.cast(code) for code in {c for c, _, _ in self._casts}}
            return tuple(words[code][first::step].tolist() for code, first, step in self._casts)  # type: ignore
        fields = list(self.iter_fields(raw))
        return tuple(list(map(itemgetter(k), fields)) for k in range(4))  # type: ignore

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
