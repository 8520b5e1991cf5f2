"""Validators: every finding about the heap and the page metadata, never the first only.

Each ``validate_*`` takes the :class:`Program` (and the walk where one is needed), never raises
on corrupt data, and returns a list of :class:`Finding`. Codes are stable (scripts and tests
match on them). One corruption should give one code: where a first fault explains the next
(a broken size explains the gap after it; a cycle's back link explains its wrong length) only
the first is reported. :func:`check` bundles the walk, all findings and a verdict.

The default check reads the heap plus the ``page_t`` entries of the kernel image and the heap
and the ``free_pages`` head; ``full=True`` also reads the whole page array and walks the free
list, which on a live target costs about one packet per 2 KiB (a few thousand packets).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field as dc_field
from itertools import compress, repeat
from operator import add, and_, itemgetter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .heap import (STOP_BAD_HEAD, STOP_BOUND, STOP_CYCLE, STOP_END, STOP_FAULT, STOP_LEFT_HEAP,
                   HeapWalk, HeapWalker, extend_columns, walk_heap)
from .layout import HEAP_ALIGN, PAGE_SIZE
from .memory import MemoryFault
from .pages import (KIND_ALLOCATED, KIND_BAD, KIND_FREE, KIND_HEAP, KIND_KERNEL, PageRange, page_index, page_kind,
                    read_free_list_head, read_pages, walk_free_list)
from .program import Program
from .text import escape_bytes, printable_ratio

__all__ = ["Finding", "Culprit", "CheckReport", "CODES", "classify_bytes", "validate_heap",
           "validate_poison", "validate_stats", "validate_pages", "validate_segments", "pages_checked", "check"]

ERROR, WARNING = "error", "warning"

CODES = {
    "HEAP-HEAD": "list head unreadable, NULL or outside the heap",
    "HEAP-BOUNDS": "a next link leads outside the heap",
    "HEAP-ALIGN": "segment address or size not a multiple of 16",
    "HEAP-SIZE": "segment size smaller than a header, zero, or past the heap end",
    "HEAP-GAP": "next is past address + size",
    "HEAP-OVERLAP": "next is before address + size",
    "HEAP-BACKLINK": "next's prev is not this segment (or the head's prev is not NULL)",
    "HEAP-CYCLE": "the list leads back to a segment already visited",
    "HEAP-FLAG": "is_allocated is neither 0 nor 1",
    "HEAP-COVERAGE": "the segments do not cover the heap exactly",
    "HEAP-UNMERGED": "two adjacent free segments (warning)",
    "HEAP-POISON": "a free payload's poison was overwritten (use after free?)",
    "HEAP-STATS": "heap_stats disagree with the walk",
    "HEAP-UNREADABLE": "the walk stopped at an unreadable address",
    "PAGE-FLAGS": "a page's flags (or identity) differ from the layout",
    "PAGE-FREELIST": "free_pages holds a non-free page, has a cycle, or its count is wrong",
}

MAX_PAGE_FINDINGS = 16        # per kind of page problem: a wiped array must not give 245k lines


@dataclass(frozen=True)
class Culprit:
    """Who probably did it: a segment address, why we think so, and what the bytes look like.

    ``classification``: 'ascii' (``detail`` is the escaped text), 'zeros', 'poison', 'pointer'
    (``detail`` is ``symbol+0xoff``), 'binary' (``detail`` is hex) or '' when not classified.
    """

    address: Optional[int]
    reason: str
    classification: str = ""
    detail: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"address": self.address, "reason": self.reason,
                "classification": self.classification, "detail": self.detail}


@dataclass(frozen=True)
class Finding:
    """One problem: stable ``code``, ``severity``, ``address``, one-line ``message``, values read."""

    code: str
    severity: str
    address: Optional[int]
    message: str
    values: Dict[str, Any] = dc_field(default_factory=dict)
    culprit: Optional[Culprit] = None

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "address": self.address,
                "message": self.message, "values": dict(self.values),
                "culprit": self.culprit.to_json() if self.culprit else None}


def classify_bytes(prog: Program, data: bytes) -> tuple:
    """What overwrote something: ('zeros'|'poison'|'ascii'|'pointer'|'binary', detail)."""
    if not data:
        return "", ""
    if not any(data):
        return "zeros", f"{len(data)} zero bytes"
    poison = prog.poison_byte()
    if poison is not None and data.count(poison) == len(data):
        return "poison", f"0x{poison:02x} fill"
    if printable_ratio(data) >= 0.75 and sum(1 for b in data if 0x20 < b < 0x7F) >= 4:
        return "ascii", escape_bytes(data.rstrip(b"\0"))
    p = prog.pointer_size
    order = prog.byteorder
    for off in range(0, len(data) - p + 1, p):
        value = int.from_bytes(data[off:off + p], order)
        if value and prog.elf.in_image(value):
            name = prog.elf.symbolize(value)
            if name:
                return "pointer", name
    return "binary", data[:32].hex()


def _is_error(code: str, findings: Sequence[Finding]) -> bool:
    return any(f.code == code for f in findings)


# -- the heap list ------------------------------------------------------------------------------

def _culprit_for_header(prog: Program, walk: HeapWalk, index: int) -> Culprit:
    """The segment physically before record ``index`` and what its header now holds."""
    recs = walk.records
    a = recs[index][0]
    try:
        raw = prog.read(a, prog.header_size)
    except MemoryFault:
        raw = b""
    kind, detail = classify_bytes(prog, raw)
    if index == 0:
        return Culprit(None, "first segment of the heap: nothing before it to overflow", kind, detail)
    pa, _, _, pf, ps = recs[index - 1]
    if pf == 1:
        return Culprit(pa, "overflow from the allocated segment before it", kind, detail)
    if pf == 0:
        return Culprit(pa, "write past the free segment before it (use after free?)", kind, detail)
    return Culprit(pa, "the segment before it is corrupt too", kind, detail)


def validate_heap(prog: Program, walk: Optional[HeapWalk] = None) -> List[Finding]:
    """Structure of the ``heap_segment_t`` list: HEAP-HEAD ... HEAP-UNMERGED, HEAP-UNREADABLE.

    ``prog``: the :class:`Program`; ``walk``: a :class:`HeapWalk` of it (walked if None).
    """
    if walk is None:
        walk = walk_heap(prog)
    out: List[Finding] = []
    fmt = prog.fmt
    hs, he, hdr = walk.heap_start, walk.heap_end, walk.header_size
    n = len(walk.addresses)

    if walk.stop_reason == STOP_BAD_HEAD:
        head_sym = prog.elf.address_of("heap_segment_list_head")
        out.append(Finding("HEAP-HEAD", ERROR, walk.stop_address if walk.stop_address is not None else head_sym,
                           f"heap_segment_list_head: {walk.stop_detail}"
                           + (f" ({fmt(walk.stop_address)})" if walk.stop_address else ""),
                           {"list_head": walk.stop_address, "heap_start": hs, "heap_end": he}))
        return out

    # The last record's next link is explained by the stop reason, not by GAP/OVERLAP.
    last_link_explained = walk.stop_reason in (STOP_CYCLE, STOP_LEFT_HEAP, STOP_BOUND)
    expected_prev = 0
    prev_alloc = -1
    prev_end = -1
    i = -1
    for a, (nx, pv, f, s) in ([] if _records_all_sound(walk) else zip(walk.addresses, walk.fields)):
        i += 1
        end = a + s
        if (a & 15) or (s & 15) or f > 1 or s < hdr or end > he or (nx != end and nx != 0) or pv != expected_prev:
            _slow_segment_checks(prog, walk, i, expected_prev, last_link_explained and i == n - 1, out)
        elif f == 0 and prev_alloc == 0 and prev_end == a:
            out.append(Finding("HEAP-UNMERGED", WARNING, a,
                               f"free segment at {fmt(a)} follows the free segment at {fmt(expected_prev)} unmerged",
                               {"address": a, "previous": expected_prev, "size": s,
                                "previous_size": prev_end - expected_prev}))
        expected_prev, prev_alloc, prev_end = a, f, end

    # Why the walk stopped.
    frm = walk.stop_from
    from_index = n - 1 if n else None
    if walk.stop_reason == STOP_LEFT_HEAP:
        culprit = _culprit_for_header(prog, walk, from_index) if from_index is not None else None
        out.append(Finding("HEAP-BOUNDS", ERROR, walk.stop_address,
                           f"segment at {fmt(frm)} links to {fmt(walk.stop_address)}, outside the heap "
                           f"[{fmt(hs)}, {fmt(he)})",
                           {"from": frm, "next": walk.stop_address, "heap_start": hs, "heap_end": he},
                           culprit))
    elif walk.stop_reason in (STOP_CYCLE, STOP_BOUND):
        msg = (f"segment at {fmt(frm)} links back to {fmt(walk.stop_address)}, already visited"
               if walk.stop_reason == STOP_CYCLE else
               f"the list is longer than the heap can hold ({walk.bound} segments)")
        out.append(Finding("HEAP-CYCLE", ERROR, frm, msg,
                           {"from": frm, "next": walk.stop_address, "steps": n}))
    elif walk.stop_reason == STOP_FAULT:
        out.append(Finding("HEAP-UNREADABLE", ERROR, walk.stop_address,
                           f"walk stopped: {walk.stop_detail} (fault at {fmt(walk.stop_address)})",
                           {"from": frm, "fault_address": walk.stop_address, "segments_read": n}))

    # Coverage: the list must start at heap_start and, when it ended normally, end at heap_end.
    # (The first and last entries only: building every record tuple here cost a walk's time.)
    if n and walk.addresses[0] != hs:
        first = walk.addresses[0]
        out.append(Finding("HEAP-COVERAGE", ERROR, first,
                           f"the list starts at {fmt(first)} but the heap starts at {fmt(hs)}",
                           {"first": first, "heap_start": hs}))
    if walk.stop_reason == STOP_END and n:
        a, s = walk.addresses[-1], walk.fields[-1][3]
        if hdr <= s and a + s <= he and a + s != he:
            out.append(Finding("HEAP-COVERAGE", ERROR, a,
                               f"the last segment ends at {fmt(a + s)} but the heap ends at {fmt(he)} "
                               f"({he - a - s} bytes not covered)",
                               {"last": a, "last_end": a + s, "heap_end": he, "uncovered": he - a - s}))
    return out


def _records_all_sound(walk: HeapWalk) -> bool:
    """True when no record can give :func:`validate_heap`'s per-record loop a finding (the
    records a :class:`_Prescreen` cleared while the heap was read are not looked at again)."""
    pre = walk._prescreen
    if pre is not None and not pre.sound:
        return False
    first = pre.records if pre is not None else 0
    return _records_sound(walk.addresses, walk.columns, first, len(walk.addresses),
                          walk.header_size, walk.heap_end)


def _records_sound(addresses: List[int], columns: Sequence[List[int]], lo: int, hi: int, hdr: int,
                   heap_end: int) -> bool:
    """The loop's tests for records ``[lo, hi)``, as a few whole-list operations run in C.

    Flags 0 or 1 and no two free segments in a row, sizes aligned and at least a header, every
    next the end of its segment, every prev the segment before. With those links sound the
    list is contiguous and ascending, so the first address being aligned makes every address
    aligned, the last end bounds them all, and a second free segment in a row always starts
    where the first ends (the loop's HEAP-UNMERGED). The last record's next may be NULL: on a
    walk still under way it cannot be (the walk would have ended there). Records before ``lo``
    were cleared already: the tests that look back (prev, two free in a row) reach one record
    before ``lo``. Any doubt and the loop decides. (``bytes(flags)`` raising on a flag outside
    0..255 is one more doubt.)
    """
    if lo >= hi:
        return True
    nexts, prevs, flags, sizes = columns
    try:
        flag_bytes = bytes(flags[max(lo - 1, 0):hi])
    except ValueError:
        return False
    if flag_bytes.translate(None, b"\0\1") or b"\0\0" in flag_bytes:
        return False
    size_run = sizes[lo:hi]
    if min(size_run) < hdr or any(map(and_, size_run, repeat(HEAP_ALIGN - 1))):
        return False
    ends = list(map(add, addresses[lo:hi], size_run))
    if ends[-1] > heap_end:
        return False
    if lo == 0 and (addresses[0] & (HEAP_ALIGN - 1) or prevs[0] != 0):
        return False
    back = max(lo, 1)
    if prevs[back:hi] != addresses[back - 1:hi - 1]:
        return False
    next_run = nexts[lo:hi]
    return next_run[:-1] == ends[:-1] and next_run[-1] in (0, ends[-1])


def _slow_segment_checks(prog: Program, walk: HeapWalk, i: int, expected_prev: int,
                         link_explained: bool, out: List[Finding]) -> None:
    """Per-field checks for a record that failed the fast test in :func:`validate_heap`."""
    fmt = prog.fmt
    he, hdr = walk.heap_end, walk.header_size
    a, nx, pv, f, s = walk.records[i]
    end = a + s
    here: List[Finding] = []
    vals = {"address": a, "next": nx, "prev": pv, "is_allocated": f, "segment_size": s}
    if a % HEAP_ALIGN:
        here.append(Finding("HEAP-ALIGN", ERROR, a, f"segment at {fmt(a)} is not {HEAP_ALIGN}-byte aligned", vals))
    if f > 1:
        here.append(Finding("HEAP-FLAG", ERROR, a,
                            f"segment at {fmt(a)} has is_allocated = {f} (0x{f:x}), neither 0 nor 1", vals))
    size_ok = hdr <= s and end <= he
    if s < hdr:
        here.append(Finding("HEAP-SIZE", ERROR, a,
                            f"segment at {fmt(a)} has segment_size {s}, smaller than a header ({hdr})", vals))
    elif end > he:
        here.append(Finding("HEAP-SIZE", ERROR, a,
                            f"segment at {fmt(a)} has segment_size {s}, running {end - he} bytes past the heap end",
                            vals))
    elif s % HEAP_ALIGN:
        here.append(Finding("HEAP-ALIGN", ERROR, a,
                            f"segment at {fmt(a)} has segment_size {s}, not a multiple of {HEAP_ALIGN}", vals))
    if nx != 0 and nx != end and size_ok and not link_explained:
        if nx > end:
            here.append(Finding("HEAP-GAP", ERROR, a,
                                f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} ({nx - end} bytes lost)",
                                dict(vals, end=end, gap=nx - end)))
        else:
            here.append(Finding("HEAP-OVERLAP", ERROR, a,
                                f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} ({end - nx} bytes overlap)",
                                dict(vals, end=end, overlap=end - nx)))
    if pv != expected_prev:
        what = ("the first segment's prev is not NULL" if i == 0 else
                f"prev is {fmt(pv)}, expected {fmt(expected_prev)}")
        here.append(Finding("HEAP-BACKLINK", ERROR, a, f"segment at {fmt(a)}: {what}",
                            dict(vals, expected_prev=expected_prev)))
    if not here:
        return
    if all(x.code == "HEAP-BACKLINK" for x in here) and f <= 1 and size_ok and i > 0:
        # Everything else in the header is sane: a list update that skipped the back link
        # (or a write of exactly that word) rather than an overflow across the header.
        if walk.heap_start <= pv < walk.heap_end:
            culprit = Culprit(expected_prev, "stale back link: prev points at another heap address, "
                              "a list update (split, merge, unlink) probably skipped it",
                              "heap-pointer", f"prev = {fmt(pv)}")
        else:
            kind, detail = classify_bytes(prog, pv.to_bytes(prog.pointer_size, prog.byteorder))
            culprit = Culprit(expected_prev, "only the prev word was overwritten", kind, detail)
    else:
        # A header with wrong fields was probably overwritten: name the likely culprit once.
        culprit = _culprit_for_header(prog, walk, i)
    out.extend(Finding(x.code, x.severity, x.address, x.message, x.values, culprit) for x in here)


# -- a few segments (incremental checks) -----------------------------------------------------

def validate_segments(prog: Program, start: int, count: int = 4) -> List[Finding]:
    """The structure checks of :func:`validate_heap` on at most ``count`` segments from ``start``.

    For incremental checks (``kheap watch``): reads only the headers of the segments walked,
    their successors' and the first one's predecessor (a few small reads instead of the whole
    heap). ``start``: a ``heap_segment_t`` header address. Checks HEAP-ALIGN, HEAP-FLAG,
    HEAP-SIZE, HEAP-BOUNDS, HEAP-GAP/HEAP-OVERLAP, HEAP-BACKLINK (both directions of every link
    it crosses), HEAP-COVERAGE for a last segment that does not end at the heap end,
    HEAP-UNMERGED (warning), HEAP-UNREADABLE. Poison and counters are :func:`check`'s.
    """
    out: List[Finding] = []
    b = prog.bounds
    layout = prog.layouts.segment
    hdr, hs, he = layout.header_size, b.start, b.end
    fmt = prog.fmt

    def header(address: int) -> Optional[tuple]:
        try:
            return layout.unpack_from(prog.read(address, layout.decode_size), 0)
        except MemoryFault:
            return None

    def culprit(address: int, before: Optional[int], before_flag: Optional[int]) -> Culprit:
        try:
            kind, detail = classify_bytes(prog, prog.read(address, hdr))
        except MemoryFault:
            kind, detail = "", ""
        if before is None:
            return Culprit(None, "first segment of the heap: nothing before it to overflow", kind, detail)
        if before_flag == 1:
            return Culprit(before, "overflow from the allocated segment before it", kind, detail)
        if before_flag == 0:
            return Culprit(before, "write past the free segment before it (use after free?)", kind, detail)
        return Culprit(before, "the segment before it is corrupt too", kind, detail)

    a = start
    first = header(a) if hs <= a and a + hdr <= he else None
    if first is None:
        return [Finding("HEAP-UNREADABLE", ERROR, a, f"no readable segment header at {fmt(a)}",
                        {"address": a})]
    before: Optional[int] = None
    before_flag: Optional[int] = None
    pv0 = first[1]
    if pv0 == 0:
        if a != b.list_head:
            out.append(Finding("HEAP-BACKLINK", ERROR, a, f"segment at {fmt(a)} has prev NULL but is not "
                               f"the list head ({fmt(b.list_head)})", {"address": a, "prev": 0},
                               culprit(a, None, None)))
    else:
        ph = header(pv0) if hs <= pv0 and pv0 + hdr <= he else None
        if ph is None or ph[0] != a:
            out.append(Finding("HEAP-BACKLINK", ERROR, a,
                               f"segment at {fmt(a)}: prev {fmt(pv0)} does not link back to it",
                               {"address": a, "prev": pv0, "prev_next": ph[0] if ph else None}))
        else:
            before, before_flag = pv0, ph[2]
    fields = first
    expected_prev: Optional[int] = None        # the first segment's prev was checked above
    nh = None
    for _ in range(max(1, count)):
        nx, pv, f, s = fields[:4]
        here: List[Finding] = []
        values = {"address": a, "next": nx, "prev": pv, "is_allocated": f, "segment_size": s}
        if a % HEAP_ALIGN or s % HEAP_ALIGN:
            here.append(Finding("HEAP-ALIGN", ERROR, a, f"segment at {fmt(a)}: address or size {s} "
                                "not a multiple of 16", values))
        if f not in (0, 1):
            here.append(Finding("HEAP-FLAG", ERROR, a, f"segment at {fmt(a)}: is_allocated = {f}", values))
        bad_size = s < hdr or a + s > he
        if bad_size:
            here.append(Finding("HEAP-SIZE", ERROR, a, f"segment at {fmt(a)}: segment_size {s} "
                                + ("is smaller than a header" if s < hdr else "runs past the heap end"),
                                values))
        if expected_prev is not None and pv != expected_prev:
            here.append(Finding("HEAP-BACKLINK", ERROR, a, f"segment at {fmt(a)}: prev is {fmt(pv)}, "
                                f"expected {fmt(expected_prev)}", values))
        if nx:
            if not (hs <= nx and nx + hdr <= he):
                here.append(Finding("HEAP-BOUNDS", ERROR, a, f"segment at {fmt(a)}: next {fmt(nx)} "
                                    "is outside the heap", values))
            elif nx != a + s and not bad_size:
                code = "HEAP-GAP" if nx > a + s else "HEAP-OVERLAP"
                here.append(Finding(code, ERROR, a, f"segment at {fmt(a)}: next is {fmt(nx)} but "
                                    f"address + size is {fmt(a + s)}", values))
        elif a + s != he and not bad_size:
            here.append(Finding("HEAP-COVERAGE", ERROR, a, f"the last segment at {fmt(a)} ends at "
                                f"{fmt(a + s)}, not at the heap end {fmt(he)}", values))
        if here:
            c = culprit(a, before, before_flag)
            out.extend(Finding(x.code, x.severity, x.address, x.message, x.values, c) for x in here)
            return out
        if not nx:
            return out
        nh = header(nx)
        if nh is None:
            out.append(Finding("HEAP-UNREADABLE", ERROR, nx, f"header at {fmt(nx)} is unreadable", values))
            return out
        if f == 0 and nh[2] == 0:
            out.append(Finding("HEAP-UNMERGED", WARNING, nx, f"free segment at {fmt(nx)} follows the "
                               f"free segment at {fmt(a)} unmerged", {"address": nx, "previous": a}))
        before, before_flag, expected_prev, a, fields = a, f, a, nx, nh
    # The last segment walked was reached but not checked: its back link at least.
    if fields[1] != expected_prev:
        out.append(Finding("HEAP-BACKLINK", ERROR, a, f"segment at {fmt(a)}: prev is {fmt(fields[1])}, "
                           f"expected {fmt(expected_prev)}", {"address": a, "prev": fields[1],
                                                              "expected": expected_prev},
                           culprit(a, before, before_flag)))
    return out


# -- poison -------------------------------------------------------------------------------------

def _free_payloads(addresses: List[int], columns: Sequence[List[int]], lo: int, hi: int, hs: int, hdr: int,
                   limit: int) -> List[Tuple[int, int]]:
    """``(address, segment_size)`` of the free segments among records ``[lo, hi)`` that have a
    payload ending by ``limit`` (a comprehension over ``compress``: no Python test per used one)."""
    _, _, flags, sizes = columns
    return [(a, s) for a, s in compress(zip(addresses[lo:hi], sizes[lo:hi]), map((0).__eq__, flags[lo:hi]))
            if s > hdr and a + hdr >= hs and a + s <= limit]


def _all_poison(buf: Any, base: int, hdr: int, poison: int, free: List[Tuple[int, int]]) -> bool:
    """Whether every payload of ``free`` (in ``buf``, the bytes from ``base``) is all poison.

    Each is compared with as much poison by memcmp (the stress heap's 800 KiB of free payload:
    ~0.05 ms, against ~0.5 ms of counting); :func:`validate_poison`'s loop looks only when one
    differs, and names them all."""
    longest = max((s for _, s in free), default=0)
    run = _poison_run(poison, 1 << max(16, longest.bit_length()))    # a few sizes: cache hits
    return all(map(buf.startswith, map(run.__getitem__, map(slice, [s - hdr for _, s in free])),
                   [a + hdr - base for a, _ in free], [a + s - base for a, s in free]))


@functools.lru_cache(maxsize=4)
def _poison_run(poison: int, size: int) -> memoryview:
    """``size`` poison bytes, kept between checks: a fresh 1 MiB costs 256 page faults."""
    return memoryview(bytes([poison]) * size)


def validate_poison(prog: Program, walk: HeapWalk) -> List[Finding]:
    """HEAP-POISON: a free payload (``heap_segment_t`` with is_allocated 0) that is not all poison.

    Only when ``heap_poison`` (ELF .rodata or target memory) says poison is on.
    """
    poison = prog.poison_byte()
    if poison is None:
        return []
    out: List[Finding] = []
    buf = prog.heap_bytes()
    hs, he, hdr = walk.heap_start, walk.heap_end, walk.header_size
    pb = bytes([poison])
    fmt = prog.fmt
    nbuf = len(buf)
    count = buf.count
    pre = walk._prescreen
    first = pre.payloads if pre is not None and pre.poisoned else 0
    free = _free_payloads(walk.addresses, walk.columns, first, len(walk.addresses), hs, hdr, min(he, hs + nbuf))
    if _all_poison(buf, hs, hdr, poison, free):
        return out
    if first:                                   # one differs after all: name every one
        free = _free_payloads(walk.addresses, walk.columns, 0, len(walk.addresses), hs, hdr, min(he, hs + nbuf))
    for a, s in free:
        lo = a + hdr - hs
        hi = lo + s - hdr
        if count(pb, lo, hi) == hi - lo:
            continue
        payload = buf[lo:hi]
        first = len(payload) - len(payload.lstrip(pb))
        last = len(payload.rstrip(pb))
        changed = (hi - lo) - payload.count(pb)
        kind, detail = classify_bytes(prog, payload[first:min(last, first + 64)])
        out.append(Finding("HEAP-POISON", ERROR, a + hdr + first,
                           f"free segment at {fmt(a)}: {changed} byte{'s' if changed != 1 else ''} of poison "
                           f"0x{poison:02x} overwritten from payload offset {first}",
                           {"segment": a, "payload": a + hdr, "offset": first, "last_offset": last - 1,
                            "changed_bytes": changed, "poison": poison},
                           Culprit(a, "written after it was freed (use after free)", kind, detail)))
    return out


# -- the kernel's own counters ------------------------------------------------------------------

def validate_stats(prog: Program, walk: HeapWalk, structure_ok: bool = True) -> List[Finding]:
    """HEAP-STATS: ``heap_stats`` (heap_stats_t) against the walk and against itself.

    The comparison with the walk is only made on a complete, structurally sound walk
    (``structure_ok``): on a broken list the walk's totals mean nothing.
    """
    ks = prog.read_kernel_stats()
    if ks is None:
        return []
    out: List[Finding] = []
    fmt = prog.fmt
    addr = prog.elf.address_of("heap_stats")
    mask = (1 << (8 * prog.pointer_size)) - 1
    alloc, frees = ks.get("allocations"), ks.get("frees")
    cur = ks.get("current_usage")
    if {"bytes_allocated", "bytes_freed"} <= ks.keys() and cur is not None:
        if (ks["bytes_allocated"] - ks["bytes_freed"]) & mask != cur:
            out.append(Finding("HEAP-STATS", ERROR, addr,
                               f"heap_stats: bytes_allocated - bytes_freed = {(ks['bytes_allocated'] - ks['bytes_freed']) & mask}"
                               f" but current_usage = {cur}", dict(ks)))
    if cur is not None and ks.get("peak_usage") is not None and ks["peak_usage"] < cur:
        out.append(Finding("HEAP-STATS", ERROR, addr,
                           f"heap_stats: peak_usage {ks['peak_usage']} is below current_usage {cur}", dict(ks)))
    if structure_ok and walk.complete and alloc is not None and frees is not None:
        _, _, flags, sizes = walk.columns
        used_count, used_bytes = flags.count(1), sum(compress(sizes, map((1).__eq__, flags)))
        live = (alloc - frees) & 0xFFFFFFFF
        if live != used_count:
            out.append(Finding("HEAP-STATS", ERROR, addr,
                               f"heap_stats: allocations - frees = {live} but the walk found {used_count} used segments",
                               {"kernel_live": live, "walk_used": used_count, **ks}))
        if cur is not None and cur != used_bytes:
            out.append(Finding("HEAP-STATS", ERROR, addr,
                               f"heap_stats: current_usage = {cur} but used segments total {used_bytes} bytes",
                               {"current_usage": cur, "walk_used_bytes": used_bytes, **ks}))
    return out


# -- pages --------------------------------------------------------------------------------------

_KIND_FLAGS = {KIND_KERNEL: "allocated|kernel_page", KIND_HEAP: "allocated|kernel_heap_page",
               KIND_FREE: "0", KIND_ALLOCATED: "allocated"}


def _flag_text(prog: Program, word: int) -> str:
    names = prog.layouts.page.flag_names(word)
    return "|".join(names) if names else "0"


def _kernel_and_heap_pages_sound(entries: List[Any], kernel_end: int, heap_end: int, fv: Any) -> bool:
    """True when none of ``entries`` (all kernel or heap pages) can give :func:`validate_pages`'
    per-entry loop a finding: the loop's tests as whole-list operations. Each distinct flags
    word is decoded once, vaddr_mapped must be the identity map, and no kernel or heap page may
    carry free-list links. Entries beyond the heap (``full``) are left to the loop.
    """
    if len(entries) > heap_end:
        return False
    vaddrs, words, nexts, prevs = (list(map(itemgetter(k), entries)) for k in range(4))
    return (vaddrs == list(range(0, len(entries) * PAGE_SIZE, PAGE_SIZE))
            and not any(nexts) and not any(prevs)
            and all(page_kind(fv(w)) == KIND_KERNEL for w in set(words[:kernel_end]))
            and all(page_kind(fv(w)) == KIND_HEAP for w in set(words[kernel_end:])))


def pages_checked(prog: Program, full: bool = False) -> int:
    """How many ``page_t`` entries from index 0 :func:`validate_pages` reads: every one with
    ``full``, else the kernel's and the heap's."""
    b = prog.bounds
    if not b.num_pages:
        return 0
    return b.num_pages if full else min(b.num_pages, -(-b.end // PAGE_SIZE))


def validate_pages(prog: Program, full: bool = False, pages: Any = None,
                   free_list: Any = None, prescreened: bool = False) -> List[Finding]:
    """PAGE-FLAGS and PAGE-FREELIST over ``all_pages_array`` (page_t) and ``free_pages``.

    Default: the entries of the kernel image and page array, and of the heap (a few hundred
    to a few thousand entries), plus a sanity check of ``free_pages``' head, tail and size.
    ``full``: every entry, and a walk of the whole free list; ``pages`` (the whole array from
    :func:`read_pages`) and ``free_list`` (from :func:`walk_free_list`) reuse a caller's reads.
    ``prescreened``: :func:`check` found every default entry sound while it arrived.
    """
    out: List[Finding] = []
    b = prog.bounds
    if b.page_array is None or not b.num_pages:
        return out
    fmt = prog.fmt
    layout = prog.layouts.page
    fv = layout.flag_value
    kernel_end = b.start // PAGE_SIZE
    heap_end = -(-b.end // PAGE_SIZE)
    prescreened = prescreened and not full
    if prescreened:
        rng = PageRange(0, [], None)         # every entry was read whole and found sound
    else:
        rng = pages if full and pages is not None else read_pages(prog, 0, pages_checked(prog, full))
    if rng.fault is not None:
        out.append(Finding("PAGE-FLAGS", ERROR, rng.fault,
                           f"page array unreadable at {fmt(rng.fault)} (entry {len(rng.entries)})",
                           {"fault_address": rng.fault, "entries_read": len(rng.entries)}))
    flag_findings: List[Finding] = []
    link_findings: List[Finding] = []
    more_flags = more_links = 0
    size = layout.size
    base = b.page_array
    free_indexes = []
    sound = prescreened or _kernel_and_heap_pages_sound(rng.entries, kernel_end, heap_end, fv)
    for i, (vaddr, word, nxt, prv) in enumerate([] if sound else rng.entries):
        kind = page_kind(fv(word))
        want = KIND_KERNEL if i < kernel_end else KIND_HEAP if i < heap_end else None
        entry = base + i * size
        bad_kind = kind != want if want is not None else kind not in (KIND_FREE, KIND_ALLOCATED)
        if bad_kind or vaddr != i * PAGE_SIZE:
            if len(flag_findings) >= MAX_PAGE_FINDINGS:
                more_flags += 1
            else:
                expect = _KIND_FLAGS[want] if want else "0 or allocated"
                msg = (f"page {i} ({fmt(i * PAGE_SIZE)}) has flags {_flag_text(prog, word)}, expected {expect}"
                       if bad_kind else
                       f"page {i} has vaddr_mapped {fmt(vaddr)}, expected {fmt(i * PAGE_SIZE)}")
                flag_findings.append(Finding("PAGE-FLAGS", ERROR, entry, msg,
                                             {"index": i, "entry": entry, "vaddr_mapped": vaddr,
                                              "flags": fv(word), "expected": want or "free|allocated"}))
        if kind == KIND_FREE and want is None:
            free_indexes.append(i)
        elif (nxt or prv) and (want is not None or kind == KIND_ALLOCATED):
            # (a page with impossible flags beyond the heap is PAGE-FLAGS' business alone)
            if len(link_findings) >= MAX_PAGE_FINDINGS:
                more_links += 1
            else:
                what = f"a {want} page" if want else "in use (handed out by alloc_page)"
                link_findings.append(Finding("PAGE-FREELIST", ERROR, entry,
                                             f"page {i} is {what} but has free-list links "
                                             f"next={fmt(nxt)} prev={fmt(prv)}",
                                             {"index": i, "entry": entry, "nextpage": nxt, "prevpage": prv}))
    out += flag_findings
    if more_flags:
        out.append(Finding("PAGE-FLAGS", ERROR, None, f"... and {more_flags} more pages with wrong flags",
                           {"more": more_flags}))
    out += link_findings
    if more_links:
        out.append(Finding("PAGE-FREELIST", ERROR, None, f"... and {more_links} more in-use pages with links",
                           {"more": more_links}))

    hts = read_free_list_head(prog)
    if hts is None:
        return out
    head, tail, lsize = hts
    fl_addr = prog.elf.address_of("free_pages")
    vals = {"head": head, "tail": tail, "size": lsize}
    for name, value in (("head", head), ("tail", tail)):
        if not value:
            continue
        idx = page_index(prog, value)
        if idx is None:
            out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                               f"free_pages.{name} = {fmt(value)} is not an entry of the page array", vals))
        elif idx < heap_end:
            out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                               f"free_pages.{name} is page {idx}, a {'kernel' if idx < kernel_end else 'heap'} page",
                               dict(vals, index=idx)))
    if (head == 0) != (tail == 0) or (head == 0 and lsize != 0):
        out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                           f"free_pages is inconsistent: head={fmt(head)} tail={fmt(tail)} size={lsize}", vals))
    if lsize > b.num_pages - min(heap_end, b.num_pages):
        out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                           f"free_pages.size = {lsize} but only {b.num_pages - min(heap_end, b.num_pages)} pages "
                           "can be free", vals))
    if full:
        out += _validate_free_list(prog, set(free_indexes), vals, fl_addr, kernel_end, heap_end, rng,
                                   free_list)
    return out


def _validate_free_list(prog: Program, free_pages: set, vals: Dict[str, int], fl_addr: Optional[int],
                        kernel_end: int, heap_end: int, rng: Any, walk: Any = None) -> List[Finding]:
    out: List[Finding] = []
    fmt = prog.fmt
    if walk is None:
        walk = walk_free_list(prog)
    fv = prog.layouts.page.flag_value
    if walk.stop_reason == "cycle":
        out.append(Finding("PAGE-FREELIST", ERROR, walk.stop_address,
                           f"free_pages has a cycle: it returns to {fmt(walk.stop_address)} after "
                           f"{len(walk.indexes)} pages", dict(vals, walked=len(walk.indexes))))
    elif walk.stop_reason in ("not-a-page", "fault", "bound"):
        out.append(Finding("PAGE-FREELIST", ERROR, walk.stop_address,
                           f"free_pages walk stopped ({walk.stop_reason}) at {fmt(walk.stop_address)}",
                           dict(vals, walked=len(walk.indexes))))
    bad = 0
    for idx in walk.indexes:
        if idx < len(rng.entries):
            word = rng.entries[idx][1]
            kind = page_kind(fv(word))
            if kind not in (KIND_FREE, KIND_BAD):     # impossible flags: PAGE-FLAGS says it
                bad += 1
                if bad <= MAX_PAGE_FINDINGS:
                    entry = prog.bounds.page_array + idx * prog.layouts.page.size
                    out.append(Finding("PAGE-FREELIST", ERROR, entry,
                                       f"free_pages holds page {idx}, which is not free ({_flag_text(prog, word)})",
                                       {"index": idx, "flags": fv(word)}))
    if walk.stop_reason == "end":
        if len(walk.indexes) != walk.size:
            out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                               f"free_pages.size = {walk.size} but the list holds {len(walk.indexes)} pages",
                               dict(vals, walked=len(walk.indexes))))
        last = walk.indexes[-1] if walk.indexes else None
        if last is not None and page_index(prog, walk.tail) != last:
            out.append(Finding("PAGE-FREELIST", ERROR, fl_addr,
                               f"free_pages.tail = {fmt(walk.tail)} is not the last page of the list", vals))
        missing = free_pages - set(walk.indexes)
        if missing:
            first = min(missing)
            out.append(Finding("PAGE-FREELIST", ERROR, prog.bounds.page_array + first * prog.layouts.page.size,
                               f"{len(missing)} free pages are not on free_pages (first: page {first})",
                               {"missing": len(missing), "first": first}))
    if walk.bad_prev:
        idx = walk.bad_prev[0]
        out.append(Finding("PAGE-FREELIST", ERROR, prog.bounds.page_array + idx * prog.layouts.page.size,
                           f"{len(walk.bad_prev)} free-list pages have a wrong prevpage (first: page {idx})",
                           {"count": len(walk.bad_prev), "first": idx}))
    return out


# -- everything ---------------------------------------------------------------------------------

class _Prescreen:
    """The screens of :func:`validate_heap` and :func:`validate_poison`, run on a walk while
    it grows: :func:`check` gives :meth:`progress` to the remote read as its callback, so the
    walk and these tests use the time the client would spend waiting for the stub. What was
    cleared then is not looked at again; anything in doubt stops the prescreen and is left to
    the validators, which decide as they always do.

    It only ever reads the bytes the read hands it (the connection is busy with the stream).
    """

    def __init__(self, prog: Program, walker: HeapWalker, page_range: Optional[Tuple[int, int]] = None) -> None:
        self.walker = walker
        self.poison = prog.poison_byte()
        # The kernel's and heap's page_t entries, when they come as a range of their own
        # before the heap: screened in the heap's first wait after they have all arrived.
        self.page_range = page_range if page_range and page_range[0] + page_range[1] <= walker.hs else None
        self.page_chunks: Optional[List[bytes]] = None
        self.page_run = 0
        self.pages_sound = False
        self._page_facts = (prog.layouts.page, prog.bounds.start // PAGE_SIZE, -(-prog.bounds.end // PAGE_SIZE))
        self.columns: Tuple[List[int], ...] = ([], [], [], [])
        self.records = 0            # records [0, records) cleared of every validate_heap test
        self.sound = True
        self.payloads = 0           # free payloads of records [0, payloads) found all poison
        self.poisoned = True
        # The part of the heap still to be looked at, as one buffer: the replies that arrived
        # since, appended; what no test needs any more, dropped from the front (cheap for a
        # bytearray), so it stays a few KiB where a copy of the whole heap would cost a
        # millisecond of copying and page faults.
        self.window = bytearray()
        self.window_base = 0
        self.window_range: Optional[int] = None     # the address of the range it follows
        self.chunks_seen = 0
        self.done = False

    # Records a round of screens waits for: each round has a fixed cost of some tens of
    # microseconds, and the read calls progress a few hundred times.
    BATCH = 512

    def progress(self, address: int, chunks: List[bytes]) -> None:
        """The read's progress callback: ``chunks`` arrived so far of the range at ``address``."""
        walker = self.walker
        if self.page_range is not None and address <= self.page_range[0]:
            self.page_chunks, self.page_run = chunks, address   # the stream's own list: it fills up
        elif self.page_chunks is not None:
            self._screen_pages()                 # the next range's first wait: all there
        if address > walker.hs or self.done:
            return                               # another range than the heap's, or all done
        if address != self.window_range:
            self.window_range, self.window, self.window_base, self.chunks_seen = address, bytearray(), address, 0
        window = self.window
        for chunk in chunks[self.chunks_seen:]:
            window += chunk
        self.chunks_seen = len(chunks)
        base = self.window_base
        walker.advance(window, base)
        addresses = walker.addresses
        n = len(addresses)
        if walker.walk is not None:
            # The walk has ended: a last round, and what is left (the last segment's payload,
            # the free tail on a healthy heap) is validate_poison's, from the whole heap.
            if n > self.records:
                self._round(window, base)
            self.window, self.done = bytearray(), True
            return
        if n - self.records >= self.BATCH:
            self._round(window, base)
        # Drop what is behind both the walk and the first payload still to be screened.
        keep = walker.addr
        if self.sound and self.poisoned and self.payloads < n:
            keep = min(keep, addresses[self.payloads])
        cut = min(keep - base, len(window))
        if cut > 0 and cut >= len(window) // 2:
            del window[:cut]
            self.window_base = base + cut

    def _screen_pages(self) -> None:
        chunks, self.page_chunks = self.page_chunks, None
        start, size = self.page_range            # type: ignore[misc]
        offset = start - self.page_run
        data = b"".join(chunks)[offset:offset + size]    # type: ignore[arg-type]
        if len(data) != size:
            return                               # not all there: validate_pages reads them
        layout, kernel_end, heap_end = self._page_facts
        self.pages_sound = _kernel_and_heap_pages_sound(list(layout.iter_unpack(data)), kernel_end,
                                                        heap_end, layout.flag_value)

    def _round(self, window: bytearray, base: int) -> None:
        walker = self.walker
        addresses = walker.addresses
        n = len(addresses)
        extend_columns(self.columns, self.walker.fields)
        if self.sound:
            self.sound = _records_sound(addresses, self.columns, self.records, n, walker.hdr, walker.he)
            self.records = n
        # With the links sound, the payload of every record but the last has arrived.
        if self.sound and self.poisoned and self.poison is not None and n - 1 > self.payloads:
            if addresses[self.payloads] < base:
                self.poisoned = False                # not in the window: validate_poison does all
                return
            free = _free_payloads(addresses, self.columns, self.payloads, n - 1, walker.hs, walker.hdr,
                                  min(walker.he, base + len(window)))
            self.poisoned = _all_poison(window, base, walker.hdr, self.poison, free)
            self.payloads = n - 1

    def attach(self, walk: HeapWalk) -> None:
        """Hand what was done to the finished walk (its columns, what was cleared)."""
        extend_columns(self.columns, self.walker.fields)
        walk._columns = self.columns
        walk._prescreen = self


STRUCTURAL = frozenset({"HEAP-HEAD", "HEAP-BOUNDS", "HEAP-ALIGN", "HEAP-SIZE", "HEAP-GAP", "HEAP-OVERLAP",
                        "HEAP-BACKLINK", "HEAP-CYCLE", "HEAP-FLAG", "HEAP-COVERAGE", "HEAP-UNREADABLE"})


@dataclass
class CheckReport:
    """A heap walk, every finding, and the verdict ('ok', 'warnings' or 'corrupt')."""

    walk: HeapWalk
    findings: List[Finding]
    full: bool
    notes: List[str]

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def verdict(self) -> str:
        if self.errors:
            return "corrupt"
        return "warnings" if self.findings else "ok"

    @property
    def codes(self) -> List[str]:
        return sorted({f.code for f in self.findings})


def check(prog: Program, full: bool = False, pages: bool = True) -> CheckReport:
    """Walk the heap and run every validator; ``full`` adds the whole page array and free list.

    ``prog``: the :class:`Program`. Raises only :class:`ProgramError` (heap not locatable).
    """
    # Everything the validators read from the heap and the page array, asked for at once:
    # over the remote protocol that is one pipelined stream instead of one per range, and
    # the walk goes on while the client waits for the stub's next reply.
    b = prog.bounds
    wanted = [(b.start, b.size)]
    if pages and b.page_array is not None:
        wanted.append((b.page_array, pages_checked(prog, full) * prog.layouts.page.size))
    walker = HeapWalker(prog)
    prescreen = _Prescreen(prog, walker, wanted[1] if len(wanted) > 1 and not full else None)
    prog.memory.prefetch_ranges(wanted, progress=prescreen.progress)
    walk = walker.finish()
    prescreen.attach(walk)
    findings = validate_heap(prog, walk)
    notes = list(prog.notes)
    structure_ok = not any(f.code in STRUCTURAL for f in findings)
    if walk.stop_reason != STOP_BAD_HEAD:
        findings += validate_poison(prog, walk)
    if prog.poison_byte() is None:
        notes.append("poison check off (heap_poison is -1 or unknown)")
    findings += validate_stats(prog, walk, structure_ok)
    if prog.read_kernel_stats() is None:
        notes.append("heap_stats not available: kernel counters not compared")
    if pages:
        if prog.bounds.page_array is None or not prog.bounds.num_pages:
            notes.append("page array unknown (no __end/num_pages): page checks skipped")
        else:
            findings += validate_pages(prog, full, prescreened=prescreen.pages_sound)
    return CheckReport(walk, findings, full, notes)
