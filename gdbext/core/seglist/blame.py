"""Which bytes of this family's data ``kheap blame`` should watch for a finding or an address.

The header format is this package's business: a finding names a segment and a code, and only
here is that turned into "the ``prev`` field of the segment at X" or "the bytes of the free
payload that lost their poison". :mod:`gdbext.core.blame` asks through
:meth:`~gdbext.core.seglist.SegmentList.blame_range` and :meth:`~.SegmentList.range_at`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ..findings import Finding
from .rules import (ALIGN, BACKLINK, BOUNDS, COVERAGE, CYCLE, FLAG, GAP, HEAD, OVERLAP, POISON, SIZE,
                    UNMERGED, UNREADABLE, find_segment)

__all__ = ["blame_range", "range_at"]

Range = Tuple[int, int, str]          # (address, size, what it is, in words)

# The field a code says is wrong, of the segment at the finding's address ("from": of the
# segment whose link it followed).
_FIELD_OF = {FLAG: "is_allocated", SIZE: "segment_size", GAP: "next", OVERLAP: "next"}


def _field(prog: Any, segment: int, name: str) -> Range:
    f = prog.layouts.segment.fields[name]
    return segment + f.offset, f.size, f"{name} of the segment at {prog.fmt(segment)}"


def _header(prog: Any, segment: int) -> Range:
    return segment, prog.layouts.segment.header_size, f"the header of the segment at {prog.fmt(segment)}"


def blame_range(prog: Any, finding: Finding) -> Optional[Range]:
    """The bytes whose last writer explains ``finding``, or None for a code of no bytes of
    this family (the caller falls back to the finding's address)."""
    code, v, a = finding.code, finding.values or {}, finding.address
    if code == HEAD:
        sym = prog.elf.symbol("heap_segment_list_head")
        if sym is None:
            return None
        return sym.address, prog.pointer_size, "heap_segment_list_head"
    if code in (BOUNDS, CYCLE, UNREADABLE) and v.get("from") is not None:
        return _field(prog, v["from"], "next")
    if code == BACKLINK and a is not None:
        want, prev = v.get("expected_prev"), v.get("prev")
        if want and prev == want:
            # The prev is right: it is the segment before whose next does not come back here.
            return _field(prog, want, "next")
        return _field(prog, a, "prev")
    if code in _FIELD_OF and a is not None:
        return _field(prog, a, _FIELD_OF[code])
    if code == POISON and v.get("payload") is not None:
        first, last = v.get("offset", 0), v.get("last_offset", v.get("offset", 0))
        start = v["payload"] + first
        return start, max(1, last - first + 1), \
            f"payload bytes {first}..{last} of the free segment at {prog.fmt(v.get('segment'))}"
    if code in (ALIGN, COVERAGE, UNMERGED) and a is not None:
        return _header(prog, a)
    return None


def range_at(prog: Any, address: int) -> Optional[Range]:
    """For an address inside a segment's header: that field (the whole header at its first
    byte); None elsewhere (a payload, outside the heap, a header kheap cannot find)."""
    try:
        match = find_segment(prog, address)
    except Exception:  # noqa: BLE001 - an unreadable or corrupt heap: no header to name
        match = None
    if match is None or match.where != "header":
        return None
    segment = match.segment.address
    if address == segment:
        return _header(prog, segment)
    for name, f in prog.layouts.segment.fields.items():
        if f.offset <= address - segment < f.offset + f.size:
            return _field(prog, segment, name)
    return address, 1, f"byte {address - segment} of the header of the segment at {prog.fmt(segment)}"
