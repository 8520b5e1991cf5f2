"""``heap_segment_t``: what the family's header looks like in memory, and its fast decoder.

The family reads four fields of every header (``next``, ``prev``, ``is_allocated``,
``segment_size``) by role. A kernel may name them differently (the ``renamed`` variant's
``in_use``/``block_size``, Go's ``isAllocated``/``segmentSize``), order them differently, pack
the flag and the size as bit-fields of one word (the tutorial's ``is_allocated:1;
segment_size:31``), or add fields (a magic, Mazarin's ``isReserved``) which stay visible as
``extra`` fields. Its payload may start past the header (Mazarin's later layout: 16-aligned,
with the header's address stored just before it). All of that is data here: the roles' storage
words, shifts and masks, the payload offset and the alignment, each with where it came from.
The names the header type and its fields may have are registered here in the one table of
names (:mod:`gdbext.core.names`), and nowhere else.
"""

from __future__ import annotations

import copy
import sys
from itertools import repeat
from operator import and_, itemgetter, rshift
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .. import names
from ..names import Fact
from ..layout import HEAP_ALIGN, INT_CODES, Field, StructLayout, packed_struct, round_up

__all__ = ["SegmentLayout", "SEGMENT_NAMES", "SEGMENT_FIELD_ALIASES", "default_segment_struct", "ROLES"]

ROLES = ("next", "prev", "is_allocated", "segment_size")

# The struct (or typedef) names a kernel of this design gives its header, most usual first
# (Go's are qualified with the package by names.candidates: main.heapSegment).
names.register("type", "heap_segment_t", ("heap_segment", "heapSegment", "heapSegment_t", "heap_segment_s",
                                           "mem_block_t", "mem_block"))
SEGMENT_NAMES = names.candidates("type", "heap_segment_t")
SEGMENT_FIELD_ALIASES = {
    "next": ("next",),
    "prev": ("prev",),
    "is_allocated": ("is_allocated", "in_use", "isAllocated", "allocated"),
    "segment_size": ("segment_size", "block_size", "segmentSize", "size"),
}
for _role, _aliases in SEGMENT_FIELD_ALIASES.items():
    names.register("field:heap_segment_t", _role, _aliases)
# Where a payload starts, counted from its header, when the kernel names it (Go: a constant).
names.register("constant", "payload_offset", ("PAYLOAD_OFFSET", "payloadOffset", "HEAP_PAYLOAD_OFFSET"))


class _Role(NamedTuple):
    unit: int                 # index of the storage unit in the unpacked tuple (offset order)
    word: int                 # index of the storage unit in declaration order (the casts')
    shift: int
    mask: Optional[int]       # None: the whole unit


def _storage(f: Field, endian: str) -> Tuple[int, int, int]:
    """(offset, size, shift) of the naturally aligned 4- or 8-byte word holding a bit-field."""
    dbo = f.data_bit_offset if f.data_bit_offset is not None else f.offset * 8 + (f.bit_shift or 0)
    bits = f.bit_size or 0
    for size in (4, 8):
        offset = dbo // (8 * size) * size
        if dbo + bits <= (offset + size) * 8:
            rel = dbo - offset * 8
            return offset, size, rel if endian == "<" else size * 8 - rel - bits
    raise ValueError(f"bit-field {f.name} spans two words")


class SegmentLayout:
    """``heap_segment_t``: the four roles kheap needs, and a fast decoder for the walk.

    ``unpack_from(buffer, offset)`` returns ``(next, prev, is_allocated, segment_size)``; with
    four plain fields in the usual order it is ``struct.Struct.unpack_from`` itself. Bit-fields
    are read as their storage word and shifted and masked. ``payload_offset``: where the
    payload starts, counted from the header (``payload``: that value and its source;
    ``payload_known`` is False when it is only the header's size and the family may look for
    a back pointer in memory). ``alignment``: the heap's alignment of segments and sizes.
    """

    def __init__(self, struct_layout: StructLayout, payload: Optional[Fact] = None,
                 alignment: Optional[Fact] = None) -> None:
        self.struct = struct_layout
        self.fields: Dict[str, Field] = {}
        for canon in ROLES:
            for alias in names.field_candidates("heap_segment_t", canon):
                f = struct_layout.field(alias)
                if f is not None and (f.size in INT_CODES or f.is_bitfield):
                    self.fields[canon] = f
                    break
            else:
                raise ValueError(f"{struct_layout.name} has no field {canon} "
                                 f"(looked for {', '.join(names.field_candidates('heap_segment_t', canon))})")
        self.header_size = struct_layout.size
        self.payload = payload if payload is not None else Fact(struct_layout.size, "sizeof",
                                                                struct_layout.name)
        self.payload_known = payload is not None
        self.payload_offset = self.payload.value
        self.alignment = alignment if alignment is not None else Fact(HEAP_ALIGN, "default")
        used = set(self.fields.values())
        self.extra_fields = tuple(f for f in struct_layout.fields
                                  if f not in used and f.size <= 8)
        self._build(struct_layout.endian)

    def _build(self, endian: str) -> None:
        # Storage units: each plain field, and the word holding each bit-field (shared).
        units: List[Tuple[int, int]] = []
        roles: List[Tuple[int, int, Optional[int]]] = []       # (unit offset, shift, mask) per role
        for canon in ROLES:
            f = self.fields[canon]
            if f.is_bitfield:
                offset, size, shift = _storage(f, endian)
                mask: Optional[int] = (1 << (f.bit_size or 0)) - 1
            else:
                offset, size, shift, mask = f.offset, f.size, 0, None
            if (offset, size) not in units:
                units.append((offset, size))
            roles.append((units.index((offset, size)), shift, mask))
        for a in units:
            for b in units:
                if a != b and a[0] < b[0] + b[1] and b[0] < a[0] + a[1]:
                    raise ValueError(f"{self.struct.name}: overlapping fields")
        end = max(o + s for o, s in units)
        widest = max(s for _, s in units)
        self.decode_size = round_up(end, widest) if round_up(end, widest) <= self.header_size else end
        unit_fields = [Field(f"unit{i}", o, s) for i, (o, s) in enumerate(units)]
        packer, index = packed_struct(endian, unit_fields, self.decode_size)
        self._packer = packer
        self._roles = tuple(_Role(index[u], u, shift, mask) for u, shift, mask in roles)
        plain = all(r.mask is None for r in self._roles) and len(units) == 4
        order = tuple(r.unit for r in self._roles)
        self._decode: Optional[Callable[[Tuple[int, ...]], Tuple[int, int, int, int]]] = None
        if plain and order == (0, 1, 2, 3):
            self.unpack_from: Callable[..., Tuple[int, int, int, int]] = packer.unpack_from
        else:
            if plain:
                self._decode = itemgetter(*order)
            else:
                specs = self._roles

                def decode(t: Tuple[int, ...]) -> Tuple[int, int, int, int]:
                    return tuple(t[u] if m is None else (t[u] >> s) & m for u, _, s, m in specs)  # type: ignore
                self._decode = decode
            raw, dec = packer.unpack_from, self._decode

            def unpack_from(buf: Any, offset: int = 0) -> Tuple[int, int, int, int]:
                return dec(raw(buf, offset))
            self.unpack_from = unpack_from
        # Whole columns straight from the bytes (memoryview.cast) when the target's byte order
        # is this machine's and each storage unit sits at a multiple of its own size.
        self._casts: Optional[List[Tuple[str, int, int]]] = None
        if (endian == "<") == (sys.byteorder == "little") and all(
                s in (4, 8) and o % s == 0 and self.decode_size % s == 0 for o, s in units):
            self._casts = [("I" if s == 4 else "Q", o // s, self.decode_size // s) for o, s in units]

    @property
    def bitfields(self) -> bool:
        return any(r.mask is not None for r in self._roles)

    def iter_fields(self, raw: Any) -> Iterator[Tuple[int, int, int, int]]:
        """``(next, prev, is_allocated, segment_size)`` of each header in ``raw``, headers'
        bytes one after the other (what a walk keeps)."""
        fields = self._packer.iter_unpack(raw)
        return fields if self._decode is None else map(self._decode, fields)

    def columns(self, raw: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
        """The headers in ``raw`` as four lists: nexts, prevs, flags, sizes (a bit-field's
        column is its storage word's column, shifted and masked whole)."""
        if self._casts is not None:
            view = memoryview(raw)
            words = {code: view.cast(code) for code in {c for c, _, _ in self._casts}}
            units = [words[code][first::step].tolist() for code, first, step in self._casts]
            out = []
            for r in self._roles:
                col = units[r.word]
                if r.mask is not None:
                    col = list(map(and_, map(rshift, col, repeat(r.shift)) if r.shift else col, repeat(r.mask)))
                out.append(col)
            return tuple(out)  # type: ignore
        fields = list(self.iter_fields(raw))
        return tuple(list(map(itemgetter(k), fields)) for k in range(4))  # type: ignore

    @property
    def source(self) -> str:
        return self.struct.source

    def field_names(self) -> Dict[str, str]:
        """Role -> the field's name in this kernel's header."""
        return {role: f.name for role, f in self.fields.items()}

    def decode_extra(self, data: bytes, base: int = 0) -> Dict[str, int]:
        """Fields beyond the four known ones (a kernel variant may add a magic or a tag)."""
        if not self.extra_fields:
            return {}
        return self.struct.decode(data, base, [f.name for f in self.extra_fields])

    def with_payload(self, payload: Fact) -> "SegmentLayout":
        """The same layout with a payload offset learnt elsewhere (memory); a copy, the
        decoders are the same."""
        out = copy.copy(self)
        out.payload, out.payload_known, out.payload_offset = payload, True, payload.value
        return out

    def describe(self) -> Dict[str, Any]:
        """For ``kheap info``: the struct, the roles' names, the payload offset and alignment."""
        out = self.struct.describe()
        out["roles"] = self.field_names()
        out["payload_offset"] = self.payload.to_json()
        out["alignment"] = self.alignment.to_json()
        if self.extra_fields:
            out["extra"] = [f.name for f in self.extra_fields]
        return out


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


def segment_layout_from(struct_layout: StructLayout, constant: Callable[[str], Optional[Fact]]) -> SegmentLayout:
    """The layout of a header type, with the payload offset and alignment the ELF's constants
    give (``constant(name)``: a :class:`Fact` for a conventional constant name, or None)."""
    payload = constant("payload_offset")
    align = constant("HEAP_ALIGN")
    if payload is not None and not struct_layout.size <= payload.value <= struct_layout.size + 4096:
        payload = None
    if align is not None and (align.value <= 0 or align.value & (align.value - 1) or align.value > 4096):
        align = None
    return SegmentLayout(struct_layout, payload, align)
