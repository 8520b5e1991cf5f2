"""What is wrong with a ``heap_segment_t`` list: one rule per header, one culprit inference.

:func:`header_problems` is the one statement of what makes a header sane given what surrounds
it (its :class:`Place`). Everything that judges a header goes through it: the full check
(:func:`validate_heap`), watch's incremental check (:func:`validate_segments`), ``find``'s
test that an address is a real header (:func:`plausible_header`) and kfree's pointer check
(:func:`check_header_at`). :func:`culprit_for` is the one guess at who broke a header, and
:func:`extent` the one answer to "which bytes does this segment cover" (a corrupt size covers
only the header). The finding codes are declared here, beside the rule that produces them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import compress
from typing import Any, List, Optional, Sequence, Tuple

from ..findings import ERROR, WARNING, Culprit, Finding, classify_bytes, register_code
from ..layout import HEAP_ALIGN
from ..memory import MemoryFault
from .walk import (STOP_BAD_HEAD, STOP_BOUND, STOP_CYCLE, STOP_END, STOP_FAULT, STOP_LEFT_HEAP, Header,
                   HeapWalk, Segment, segment_state, walk_heap)

__all__ = ["Place", "header_problems", "culprit_for", "extent", "validate_heap", "validate_segments",
           "validate_poison", "plausible_header", "check_header_at", "find_segment", "SegmentMatch"]

HEAD = register_code("HEAP-HEAD", "list head unreadable, NULL or outside the heap", structural=True)
BOUNDS = register_code("HEAP-BOUNDS", "a next link leads outside the heap", structural=True)
ALIGN = register_code("HEAP-ALIGN", "segment address or size not a multiple of 16", structural=True)
SIZE = register_code("HEAP-SIZE", "segment size smaller than a header, zero, or past the heap end", structural=True)
GAP = register_code("HEAP-GAP", "next is past address + size", structural=True)
OVERLAP = register_code("HEAP-OVERLAP", "next is before address + size", structural=True)
BACKLINK = register_code("HEAP-BACKLINK", "next's prev is not this segment (or the head's prev is not NULL)",
                         structural=True)
CYCLE = register_code("HEAP-CYCLE", "the list leads back to a segment already visited", structural=True)
FLAG = register_code("HEAP-FLAG", "is_allocated is neither 0 nor 1", structural=True)
COVERAGE = register_code("HEAP-COVERAGE", "the segments do not cover the heap exactly", structural=True)
UNMERGED = register_code("HEAP-UNMERGED", "two adjacent free segments (warning)")
POISON = register_code("HEAP-POISON", "a free payload's poison was overwritten (use after free?)")
UNREADABLE = register_code("HEAP-UNREADABLE", "the walk stopped at an unreadable address", structural=True)
# The problems of a header's own fields, whatever its neighbours say (kfree's pointer check).
OWN_FIELD_CODES = (ALIGN, FLAG, SIZE)


@dataclass(frozen=True)
class Place:
    """What surrounds a header: the facts :func:`header_problems` judges it against.

    ``before``: the segment the header's ``prev`` must name (the one before it on the list, or
    the header its ``prev`` points at when that is all one knows); None when unknown.
    ``first``: it is the list's first segment (its ``prev`` must be NULL).
    ``link_explained``: its ``next`` is judged elsewhere (the walk stopped on a cycle there).
    """

    heap_start: int
    heap_end: int
    header_size: int
    before: Optional[Header] = None
    first: bool = False
    link_explained: bool = False


def extent(address: int, segment_size: int, heap_end: int, header_size: int) -> int:
    """The bytes a segment covers: its size, or only its header when the size is corrupt."""
    return segment_size if header_size <= segment_size and address + segment_size <= heap_end else header_size


def header_problems(h: Header, place: Place, fmt: Any) -> List[Finding]:
    """Every way header ``h`` is wrong where it stands (no culprit: :func:`culprit_for` adds it).

    A header is sane when it is 16-byte aligned, its flag is 0 or 1, its size is a multiple of
    16, at least a header and inside the heap, its ``next`` is NULL (then it must end where the
    heap ends) or its own end (and inside the heap), and its ``prev`` names ``place.before``
    (NULL for the first segment) whose ``next`` names it. Two free neighbours are a warning,
    given only when nothing else is wrong. ``fmt``: how addresses are written in messages.
    """
    a, nx, pv, f, s = h
    hs, he, hdr = place.heap_start, place.heap_end, place.header_size
    end = a + s
    out: List[Finding] = []
    vals = {"address": a, "next": nx, "prev": pv, "is_allocated": f, "segment_size": s}
    if a % HEAP_ALIGN:
        out.append(Finding(ALIGN, ERROR, a, f"segment at {fmt(a)} is not {HEAP_ALIGN}-byte aligned", vals))
    if f > 1:
        out.append(Finding(FLAG, ERROR, a, f"segment at {fmt(a)} has is_allocated = {f} (0x{f:x}), neither 0 nor 1",
                           vals))
    size_ok = hdr <= s and end <= he
    if s < hdr:
        out.append(Finding(SIZE, ERROR, a, f"segment at {fmt(a)} has segment_size {s}, smaller than a header ({hdr})",
                           vals))
    elif end > he:
        out.append(Finding(SIZE, ERROR, a,
                           f"segment at {fmt(a)} has segment_size {s}, running {end - he} bytes past the heap end",
                           vals))
    elif s % HEAP_ALIGN:
        out.append(Finding(ALIGN, ERROR, a,
                           f"segment at {fmt(a)} has segment_size {s}, not a multiple of {HEAP_ALIGN}", vals))
    before = place.before
    if place.first:
        if pv != 0:
            out.append(Finding(BACKLINK, ERROR, a, f"segment at {fmt(a)}: the first segment's prev is not NULL",
                               dict(vals, expected_prev=0)))
    elif before is None:
        what = "prev is NULL but it is not the list head" if pv == 0 else f"prev {fmt(pv)} does not link back to it"
        out.append(Finding(BACKLINK, ERROR, a, f"segment at {fmt(a)}: {what}", dict(vals, expected_prev=None)))
    elif pv != before.address:
        out.append(Finding(BACKLINK, ERROR, a, f"segment at {fmt(a)}: prev is {fmt(pv)}, expected {fmt(before.address)}",
                           dict(vals, expected_prev=before.address)))
    elif before.next != a:
        out.append(Finding(BACKLINK, ERROR, a, f"segment at {fmt(a)}: prev {fmt(pv)} does not link back to it "
                           f"(its next is {fmt(before.next)})", dict(vals, expected_prev=before.address)))
    if nx and not (hs <= nx and nx + hdr <= he):
        out.append(Finding(BOUNDS, ERROR, nx, f"segment at {fmt(a)} links to {fmt(nx)}, outside the heap "
                           f"[{fmt(hs)}, {fmt(he)})", {"from": a, "next": nx, "heap_start": hs, "heap_end": he}))
    elif nx and nx != end and size_ok and not place.link_explained:
        if nx > end:
            out.append(Finding(GAP, ERROR, a, f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} "
                               f"({nx - end} bytes lost)", dict(vals, end=end, gap=nx - end)))
        else:
            out.append(Finding(OVERLAP, ERROR, a, f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} "
                               f"({end - nx} bytes overlap)", dict(vals, end=end, overlap=end - nx)))
    elif not nx and size_ok and end != he:
        out.append(Finding(COVERAGE, ERROR, a, f"the last segment ends at {fmt(end)} but the heap ends at {fmt(he)} "
                           f"({he - end} bytes not covered)",
                           {"last": a, "last_end": end, "heap_end": he, "uncovered": he - end}))
    if all(p.code == COVERAGE for p in out) and f == 0 and before is not None and before.is_allocated == 0 \
            and before.end == a:
        out.append(Finding(UNMERGED, WARNING, a,
                           f"free segment at {fmt(a)} follows the free segment at {fmt(before.address)} unmerged",
                           {"address": a, "previous": before.address, "size": s,
                            "previous_size": before.segment_size}))
    return out


# Problems a culprit does not explain: the list's extent and two free neighbours.
_NO_CULPRIT = (COVERAGE, UNMERGED)


def culprit_for(prog: Any, h: Header, place: Place, problems: Sequence[Finding]) -> Optional[Culprit]:
    """Who probably broke header ``h``, given its :func:`header_problems`.

    Only a wrong ``prev`` in an otherwise sane header points at a list update that skipped the
    back link (or a write of exactly that word); anything else is a header overwritten from
    the segment before it, whose bytes are classified (text, zeros, poison, a pointer).
    """
    codes = {p.code for p in problems if p.code not in _NO_CULPRIT}
    if not codes:
        return None
    fmt = prog.fmt
    before = place.before
    size_ok = place.header_size <= h.segment_size and h.end <= place.heap_end
    if codes == {BACKLINK} and h.is_allocated <= 1 and size_ok and not place.first and before is not None:
        if place.heap_start <= h.prev < place.heap_end:
            return Culprit(before.address, "stale back link: prev points at another heap address, "
                           "a list update (split, merge, unlink) probably skipped it", "heap-pointer",
                           f"prev = {fmt(h.prev)}")
        kind, detail = classify_bytes(prog, h.prev.to_bytes(prog.pointer_size, prog.byteorder))
        return Culprit(before.address, "only the prev word was overwritten", kind, detail)
    try:
        raw = prog.read(h.address, place.header_size)
    except MemoryFault:
        raw = b""
    kind, detail = classify_bytes(prog, raw)
    if before is None or place.first:
        return Culprit(None, "first segment of the heap: nothing before it to overflow", kind, detail)
    if before.is_allocated == 1:
        return Culprit(before.address, "overflow from the allocated segment before it", kind, detail)
    if before.is_allocated == 0:
        return Culprit(before.address, "write past the free segment before it (use after free?)", kind, detail)
    return Culprit(before.address, "the segment before it is corrupt too", kind, detail)


def _judged(prog: Any, h: Header, place: Place) -> List[Finding]:
    """:func:`header_problems` with :func:`culprit_for`'s culprit on each problem it explains."""
    problems = header_problems(h, place, prog.fmt)
    if not problems:
        return problems
    culprit = culprit_for(prog, h, place, problems)
    return [p if p.code in _NO_CULPRIT else p.with_culprit(culprit) for p in problems]


# -- the whole list -----------------------------------------------------------------------------

def validate_heap(prog: Any, walk: Optional[HeapWalk] = None) -> List[Finding]:
    """Structure of the ``heap_segment_t`` list: every header by :func:`header_problems`, then
    why the walk stopped and whether the list starts where the heap starts.

    ``prog``: the :class:`~gdbext.core.program.Program`; ``walk``: a walk of it (walked if None).
    Coverage findings come last: they are about the list as a whole.
    """
    if walk is None:
        walk = walk_heap(prog)
    fmt = prog.fmt
    hs, he, hdr = walk.heap_start, walk.heap_end, walk.header_size
    out: List[Finding] = []
    coverage: List[Finding] = []
    if walk.stop_reason == STOP_BAD_HEAD:
        head_sym = prog.elf.address_of("heap_segment_list_head")
        out.append(Finding(HEAD, ERROR, walk.stop_address if walk.stop_address is not None else head_sym,
                           f"heap_segment_list_head: {walk.stop_detail}"
                           + (f" ({fmt(walk.stop_address)})" if walk.stop_address else ""),
                           {"list_head": walk.stop_address, "heap_start": hs, "heap_end": he}))
        return out
    n = len(walk)
    last = n - 1
    explained = walk.stop_reason in (STOP_CYCLE, STOP_BOUND)
    before: Optional[Header] = None
    # One call of the rule per header: a million headers take about a third of a second.
    for i, h in enumerate(walk.headers()):
        place = Place(hs, he, hdr, before, i == 0, explained and i == last)
        problems = header_problems(h, place, fmt)
        if problems:
            culprit = culprit_for(prog, h, place, problems)
            for p in problems:
                if p.code == COVERAGE:
                    coverage.append(p)
                else:
                    out.append(p if p.code in _NO_CULPRIT else p.with_culprit(culprit))
        before = h
    frm = walk.stop_from
    if walk.stop_reason in (STOP_CYCLE, STOP_BOUND):
        msg = (f"segment at {fmt(frm)} links back to {fmt(walk.stop_address)}, already visited"
               if walk.stop_reason == STOP_CYCLE else
               f"the list is longer than the heap can hold ({walk.bound} segments)")
        out.append(Finding(CYCLE, ERROR, frm, msg, {"from": frm, "next": walk.stop_address, "steps": n}))
    elif walk.stop_reason == STOP_FAULT:
        out.append(Finding(UNREADABLE, ERROR, walk.stop_address,
                           f"walk stopped: {walk.stop_detail} (fault at {fmt(walk.stop_address)})",
                           {"from": frm, "fault_address": walk.stop_address, "segments_read": n}))
    if n and walk.addresses[0] != hs:
        first = walk.addresses[0]
        out.append(Finding(COVERAGE, ERROR, first, f"the list starts at {fmt(first)} but the heap starts at {fmt(hs)}",
                           {"first": first, "heap_start": hs}))
    if walk.stop_reason == STOP_END:
        out += coverage
    return out


def _header_at(prog: Any, address: int) -> Optional[Header]:
    """The header at ``address`` when it lies inside the heap and can be read, else None."""
    b = prog.bounds
    layout = prog.layouts.segment
    if not (b.start <= address and address + layout.header_size <= b.end):
        return None
    try:
        return Header(address, *layout.unpack_from(prog.read(address, layout.decode_size), 0))
    except MemoryFault:
        return None


def _place_of(prog: Any, h: Header) -> Place:
    """Where a header read on its own stands: its ``prev`` header is the one before it."""
    b = prog.bounds
    first = h.prev == 0 and h.address == b.list_head
    before = None if first or h.prev == 0 else _header_at(prog, h.prev)
    return Place(b.start, b.end, prog.layouts.segment.header_size, before, first)


def check_header_at(prog: Any, address: int) -> Tuple[Optional[Header], List[Finding]]:
    """The header at ``address`` and what :func:`header_problems` says of it where it stands
    (its neighbour read through its ``prev``); ``(None, [])`` when nothing can be read there."""
    h = _header_at(prog, address)
    if h is None:
        return None, []
    return h, _judged(prog, h, _place_of(prog, h))


def validate_segments(prog: Any, start: int, count: int = 4) -> List[Finding]:
    """:func:`header_problems` on at most ``count`` segments from ``start``, following ``next``.

    For incremental checks (``kheap watch``): reads only the headers it judges and the first
    one's predecessor (a few small reads instead of the whole heap). Stops at the first header
    with an error. Poison and counters are :func:`check`'s.
    """
    fmt = prog.fmt
    h = _header_at(prog, start)
    if h is None:
        return [Finding(UNREADABLE, ERROR, start, f"no readable segment header at {fmt(start)}", {"address": start})]
    place = _place_of(prog, h)
    out: List[Finding] = []
    for _ in range(max(1, count)):
        found = _judged(prog, h, place)
        out += found
        if any(x.severity == ERROR for x in found) or not h.next:
            return out
        nxt = _header_at(prog, h.next)
        if nxt is None:
            out.append(Finding(UNREADABLE, ERROR, h.next, f"header at {fmt(h.next)} is unreadable",
                               {"address": h.address, "next": h.next}))
            return out
        place = Place(place.heap_start, place.heap_end, place.header_size, h, False)
        h = nxt
    return out


# -- poison -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _poison_run(poison: int, size: int) -> memoryview:
    """``size`` poison bytes, kept between checks: a fresh 1 MiB costs 256 page faults."""
    return memoryview(bytes([poison]) * size)


def validate_poison(prog: Any, walk: HeapWalk) -> List[Finding]:
    """HEAP-POISON: a free payload (``is_allocated`` 0) that is not all poison.

    Only when ``heap_poison`` (ELF .rodata or target memory) says poison is on. Each payload is
    compared with a run of poison by memcmp (the stress heap has 800 KiB of free payload);
    only one that differs is looked at byte by byte.
    """
    poison = prog.poison_byte()
    if poison is None or walk.stop_reason == STOP_BAD_HEAD:
        return []
    buf = prog.heap_bytes()
    hs, he, off = walk.heap_start, walk.heap_end, walk.payload_offset
    limit = min(he, hs + len(buf))
    free = [(a, s) for a, (_, _, f, s) in zip(walk.addresses, walk.all_fields())
            if f == 0 and s > off and a + off >= hs and a + s <= limit]
    run = _poison_run(poison, 1 << max(16, max((s for _, s in free), default=0).bit_length()))
    intact = map(buf.startswith, map(run.__getitem__, map(slice, [s - off for _, s in free])),
                 [a + off - hs for a, _ in free], [a + s - hs for a, s in free])
    out: List[Finding] = []
    pb = bytes([poison])
    fmt = prog.fmt
    for a, s in compress(free, map((False).__eq__, intact)):
        payload = buf[a + off - hs:a + s - hs]
        first = len(payload) - len(payload.lstrip(pb))
        last = len(payload.rstrip(pb))
        changed = len(payload) - payload.count(pb)
        kind, detail = classify_bytes(prog, payload[first:min(last, first + 64)])
        out.append(Finding(POISON, ERROR, a + off + first,
                           f"free segment at {fmt(a)}: {changed} byte{'s' if changed != 1 else ''} of poison "
                           f"0x{poison:02x} overwritten from payload offset {first}",
                           {"segment": a, "payload": a + off, "offset": first, "last_offset": last - 1,
                            "changed_bytes": changed, "poison": poison},
                           Culprit(a, "written after it was freed (use after free)", kind, detail)))
    return out


# -- find ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentMatch:
    """The segment holding an address: ``offset`` from the segment start, ``where`` it falls."""

    segment: Segment
    offset: int
    where: str            # 'header' | 'payload'
    method: str           # 'direct' (header found without walking) | 'walk'

    @property
    def payload_offset(self) -> int:
        return self.segment.address + self.offset - self.segment.payload

    def to_json(self) -> dict:
        return {"segment": self.segment.to_json(), "offset": self.offset, "where": self.where,
                "payload_offset": self.payload_offset, "method": self.method}


def _segment(prog: Any, h: Header) -> Segment:
    layout = prog.layouts.segment
    extra = {}
    if layout.extra_fields:
        try:
            extra = layout.decode_extra(prog.read(h.address, layout.header_size))
        except (MemoryFault, ValueError):
            extra = {}
    return Segment(h.address, h.segment_size, h.is_allocated, h.next, h.prev,
                   h.address + layout.payload_offset, segment_state(h.is_allocated), extra)


def plausible_header(prog: Any, address: int) -> Optional[Segment]:
    """The segment at ``address`` when a header there passes :func:`header_problems` (its
    extent and free neighbours aside) where it stands; else None."""
    h, problems = check_header_at(prog, address)
    if h is None or any(p.code not in _NO_CULPRIT for p in problems):
        return None
    return _segment(prog, h)


def find_segment(prog: Any, address: int) -> Optional[SegmentMatch]:
    """The segment whose :func:`extent` holds ``address``, or None.

    ``address`` may be a header address, a payload pointer (as kmalloc returned it) or any
    interior address. A header or payload pointer is confirmed from the header and its
    neighbours' links without a walk; other addresses take one walk over the bulk-read heap.
    """
    b = prog.bounds
    if not b.start <= address < b.end:
        return None
    layout = prog.layouts.segment
    hdr, off = layout.header_size, layout.payload_offset
    for cand in (address - off, address):
        seg = plausible_header(prog, cand)
        if seg is not None and seg.address <= address < seg.end:
            where = address - seg.address
            return SegmentMatch(seg, where, "header" if where < hdr else "payload", "direct")
    walk = walk_heap(prog)
    for i, (a, (_, _, _, s)) in enumerate(zip(walk.addresses, walk.all_fields())):
        if a <= address < a + extent(a, s, b.end, hdr):
            where = address - a
            return SegmentMatch(walk.segments[i], where, "header" if where < hdr else "payload", "walk")
    return None
