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
from collections import Counter
from dataclasses import dataclass
from itertools import compress, count, islice, repeat
from operator import add, and_, eq, ge, gt, itemgetter, le, lt, ne, not_, or_, sub
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..findings import ERROR, WARNING, Culprit, Finding, classify_bytes, register_code
from ..layout import HEAP_ALIGN
from ..memory import MemoryFault
from ..text import plural
from .walk import (STOP_BAD_HEAD, STOP_BOUND, STOP_CYCLE, STOP_END, STOP_FAULT, STOP_LEFT_HEAP, Header,
                   HeapWalk, NotArrived, Segment, layout_of, segment_state, walk_heap)

__all__ = ["Place", "header_problems", "culprit_for", "extent", "validate_heap", "validate_segments",
           "validate_poison", "plausible_header", "check_header_at", "find_segment", "SegmentMatch"]

HEAD = register_code("HEAP-HEAD", "list head NULL or outside the heap", structural=True)
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
UNREADABLE = register_code("HEAP-UNREADABLE", "the walk stopped at an unreadable address", structural=True,
                           unread=True)
# The problems of a header's own fields, whatever its neighbours say (kfree's pointer check).
OWN_FIELD_CODES = (ALIGN, FLAG, SIZE)


@dataclass(frozen=True)
class Place:
    """What surrounds one header read on its own: the facts the rule judges it against.

    ``before``: the segment the header's ``prev`` must name (the one before it on the list, or
    the header its ``prev`` points at when that is all one knows); None when unknown.
    ``first``: it is the list's first segment (its ``prev`` must be NULL).
    """

    heap_start: int
    heap_end: int
    header_size: int
    before: Optional[Header] = None
    first: bool = False
    alignment: int = HEAP_ALIGN


def extent(address: int, segment_size: int, heap_end: int, header_size: int) -> int:
    """The bytes a segment covers: its size, or only its header when the size is corrupt."""
    return segment_size if header_size <= segment_size and address + segment_size <= heap_end else header_size


class Columns:
    """Consecutive headers as parallel lists (``address``, ``next``, ``prev``, ``flag``, ``size``,
    ``end``), each with what it must agree with: ``expected_prev`` (the address its ``prev`` must
    hold: 0 for the list's first, None when unknown), and the header before it (``before_next``,
    which must be its address, ``before_flag``, ``before_end``).

    Why columns: the rule's tests run as whole-list operations in C (``map`` over ``operator``
    functions), so a healthy heap of 100,000 headers costs no Python step per header; a header
    read on its own is simply a column of one.
    """

    __slots__ = ("address", "next", "prev", "flag", "size", "end", "expected_prev", "before_next", "before_flag",
                 "before_end", "heap_start", "heap_end", "header_size", "last_header", "explained", "picked",
                 "alignment", "align_mask")

    def __init__(self, address: List[int], columns: Sequence[List[int]], expected_prev: List[Any],
                 before_next: List[int], before_flag: List[Any], before_end: List[Any], heap_start: int,
                 heap_end: int, header_size: int, explained: Optional[int] = None, alignment: int = HEAP_ALIGN) -> None:
        self.address = address
        self.next, self.prev, self.flag, self.size = columns
        self.end = list(map(add, address, self.size))
        self.expected_prev, self.before_next = expected_prev, before_next
        self.before_flag, self.before_end = before_flag, before_end
        self.heap_start, self.heap_end, self.header_size = heap_start, heap_end, header_size
        self.last_header = heap_end - header_size      # the last address a header fits at
        self.explained = explained
        self.alignment, self.align_mask = alignment, alignment - 1     # the layout's, 16 by default
        self.picked: Dict[int, List[int]] = {}         # what each term picked (clauses share terms)          # the index whose next the walk's stop explains

    def __len__(self) -> int:
        return len(self.address)

    def values(self, i: int) -> Dict[str, int]:
        return {"address": self.address[i], "next": self.next[i], "prev": self.prev[i],
                "is_allocated": self.flag[i], "segment_size": self.size[i]}


# -- the rule's language: tests over columns ---------------------------------------------------
#
# A clause of the rule is written once, as a test over the columns (a small expression of the
# terms below); :func:`picked` answers "which headers does it pick" for a whole column, or
# for a column of one. Its speed comes from how each term is evaluated, not from a second
# statement of the rule: an inequality between two columns first compares the lists whole
# (equal lists pick nobody), a bound first looks at the column's max or min, an equality with
# a constant is found with list.index; only what remains is looked at header by header.

class Term:
    """A test of header ``i`` of :class:`Columns` ``c``: ``holds(c, i)``; :meth:`picked` finds
    every ``i`` it holds for (once per columns: clauses share terms)."""

    def holds(self, c: "Columns", i: int) -> bool:
        raise NotImplementedError

    def pick(self, c: "Columns") -> Iterable[int]:
        return [i for i in range(len(c)) if self.holds(c, i)]

    def picked(self, c: "Columns") -> List[int]:
        found = c.picked.get(id(self))
        if found is None:
            found = c.picked[id(self)] = list(self.pick(c))
        return found


def _column(c: "Columns", operand: Any) -> Any:
    """A column by its name, or a constant: an int, or the name of one of ``c``'s bounds."""
    if isinstance(operand, str):
        return getattr(c, operand)
    return operand


class Cmp(Term):
    """``column OP other`` (``other``: a column, a bound of ``c``, or an int)."""

    def __init__(self, op: Callable[[Any, Any], bool], column: str, other: Any) -> None:
        self.op, self.column, self.other = op, column, other

    def holds(self, c: "Columns", i: int) -> bool:
        other = _column(c, self.other)
        return bool(self.op(getattr(c, self.column)[i], other[i] if isinstance(other, list) else other))

    def pick(self, c: "Columns") -> Iterable[int]:
        x, y, op = getattr(c, self.column), _column(c, self.other), self.op
        if isinstance(y, list):
            if op is ne:
                return _differences(x, y, 0)
            return compress(count(), map(op, x, y))
        if not x or (op is gt and max(x) <= y) or (op is lt and min(x) >= y) or (op is eq and y not in x):
            return ()
        if op is eq:
            return _indexes_of(x, y)
        return compress(count(), map(op, x, repeat(y)))


def _differences(x: List[Any], y: List[Any], base: int) -> List[int]:
    """Where two equally long columns differ, by halving: equal halves are compared whole (in
    C), so a few differences among thousands of headers cost a few list comparisons."""
    if x == y:
        return []
    if len(x) <= 32:
        return [base + i for i, (a, b) in enumerate(zip(x, y)) if a != b]
    half = len(x) // 2
    return _differences(x[:half], y[:half], base) + _differences(x[half:], y[half:], base + half)


def _indexes_of(x: List[Any], value: Any) -> List[int]:
    """Where ``value`` stands in ``x``, found by list.index (a scan in C)."""
    out, i = [], -1
    try:
        while True:
            i = x.index(value, i + 1)
            out.append(i)
    except ValueError:
        return out


class Bits(Term):
    """``column & mask`` is not 0 (alignment; ``mask``: an int or the name of one of ``c``'s bounds)."""

    def __init__(self, column: str, mask: Any) -> None:
        self.column, self.mask = column, mask

    def holds(self, c: "Columns", i: int) -> bool:
        return bool(getattr(c, self.column)[i] & _column(c, self.mask))

    def pick(self, c: "Columns") -> Iterable[int]:
        column, mask = getattr(c, self.column), _column(c, self.mask)
        if not any(map(and_, column, repeat(mask))):
            return ()                             # the usual case, in one pass with no list
        return compress(count(), map(and_, column, repeat(mask)))


class NoneOf(Term):
    """Both columns are 0 (two free neighbours)."""

    def __init__(self, column: str, other: str) -> None:
        self.column, self.other = column, other

    def holds(self, c: "Columns", i: int) -> bool:
        return getattr(c, self.column)[i] == 0 and getattr(c, self.other)[i] == 0

    def pick(self, c: "Columns") -> Iterable[int]:
        x, y = getattr(c, self.column), getattr(c, self.other)
        if 0 not in map(or_, x, y):
            return ()                             # the usual case, in one pass with no list
        return _indexes_of(list(map(or_, x, y)), 0)


class Outside(Term):
    """``column`` is neither 0 nor within ``[low, high]`` (a link that leaves the heap)."""

    def __init__(self, column: str, low: str, high: str) -> None:
        self.column, self.low, self.high = column, low, high

    def holds(self, c: "Columns", i: int) -> bool:
        v = getattr(c, self.column)[i]
        return bool(v) and not (getattr(c, self.low) <= v <= getattr(c, self.high))

    def pick(self, c: "Columns") -> Iterable[int]:
        x, low, high = getattr(c, self.column), getattr(c, self.low), getattr(c, self.high)
        if not x or (max(x) <= high and (min(x) >= low or min(filter(None, x), default=low) >= low)):
            return ()                             # (a 0 is no link: only the list's last has one)
        return [i for i, v in enumerate(x) if v and not low <= v <= high]


class NotExplained(Term):
    """The walk's stop does not explain this header's ``next`` (it is not the cycle's last)."""

    def holds(self, c: "Columns", i: int) -> bool:
        return i != c.explained


class All(Term):
    """Every term holds; the first is the selective one (it picks, the others filter)."""

    def __init__(self, *terms: Term) -> None:
        self.terms = terms

    def holds(self, c: "Columns", i: int) -> bool:
        return all(t.holds(c, i) for t in self.terms)

    def pick(self, c: "Columns") -> Iterable[int]:
        first, rest = self.terms[0], self.terms[1:]
        return [i for i in first.picked(c) if all(t.holds(c, i) for t in rest)]


class AnyOf(Term):
    """One of the terms holds."""

    def __init__(self, *terms: Term) -> None:
        self.terms = terms

    def holds(self, c: "Columns", i: int) -> bool:
        return any(t.holds(c, i) for t in self.terms)

    def pick(self, c: "Columns") -> Iterable[int]:
        return sorted(set().union(*(t.picked(c) for t in self.terms)))


class Clause(NamedTuple):
    """One test of the header rule: which headers fail it (``test``) and the finding for
    header ``i`` (``finding(c, i, fmt)``)."""

    code: str
    test: Term
    finding: Callable[["Columns", int, Any], Finding]


def _aligned_address(c: Columns, i: int, fmt: Any) -> Finding:
    a = c.address[i]
    return Finding(ALIGN, ERROR, a, f"segment at {fmt(a)} is not {c.alignment}-byte aligned", c.values(i))


def _flag(c: Columns, i: int, fmt: Any) -> Finding:
    a, f = c.address[i], c.flag[i]
    return Finding(FLAG, ERROR, a, f"segment at {fmt(a)} has is_allocated = {f} (0x{f:x}), neither 0 nor 1", c.values(i))


def _too_small(c: Columns, i: int, fmt: Any) -> Finding:
    a = c.address[i]
    return Finding(SIZE, ERROR, a, f"segment at {fmt(a)} has segment_size {c.size[i]}, smaller than a header "
                   f"({c.header_size})", c.values(i))


def _past_end(c: Columns, i: int, fmt: Any) -> Finding:
    a = c.address[i]
    return Finding(SIZE, ERROR, a, f"segment at {fmt(a)} has segment_size {c.size[i]}, running "
                   f"{c.end[i] - c.heap_end} bytes past the heap end", c.values(i))


def _aligned_size(c: Columns, i: int, fmt: Any) -> Finding:
    a = c.address[i]
    return Finding(ALIGN, ERROR, a, f"segment at {fmt(a)} has segment_size {c.size[i]}, not a multiple of "
                   f"{c.alignment}", c.values(i))


def _gap(c: Columns, i: int, fmt: Any) -> Finding:
    a, nx, end = c.address[i], c.next[i], c.end[i]
    return Finding(GAP, ERROR, a, f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} ({nx - end} bytes lost)",
                   dict(c.values(i), end=end, gap=nx - end))


def _overlap(c: Columns, i: int, fmt: Any) -> Finding:
    a, nx, end = c.address[i], c.next[i], c.end[i]
    return Finding(OVERLAP, ERROR, a, f"segment at {fmt(a)} ends at {fmt(end)} but next is {fmt(nx)} "
                   f"({end - nx} bytes overlap)", dict(c.values(i), end=end, overlap=end - nx))


def _backlink(c: Columns, i: int, fmt: Any) -> Finding:
    a, pv, want = c.address[i], c.prev[i], c.expected_prev[i]
    if want == 0:
        what = "the first segment's prev is not NULL"
    elif want is None:
        what = "prev is NULL but it is not the list head" if pv == 0 else f"prev {fmt(pv)} does not link back to it"
    elif pv != want:
        what = f"prev is {fmt(pv)}, expected {fmt(want)}"
    else:
        what = f"prev {fmt(pv)} does not link back to it (its next is {fmt(c.before_next[i])})"
    return Finding(BACKLINK, ERROR, a, f"segment at {fmt(a)}: {what}", dict(c.values(i), expected_prev=want))


def _bounds(c: Columns, i: int, fmt: Any) -> Finding:
    a, nx, hs, he = c.address[i], c.next[i], c.heap_start, c.heap_end
    return Finding(BOUNDS, ERROR, nx, f"segment at {fmt(a)} links to {fmt(nx)}, outside the heap [{fmt(hs)}, {fmt(he)})",
                   {"from": a, "next": nx, "heap_start": hs, "heap_end": he})


def _coverage(c: Columns, i: int, fmt: Any) -> Finding:
    a, end, he = c.address[i], c.end[i], c.heap_end
    return Finding(COVERAGE, ERROR, a, f"the last segment ends at {fmt(end)} but the heap ends at {fmt(he)} "
                   f"({he - end} bytes not covered)", {"last": a, "last_end": end, "heap_end": he, "uncovered": he - end})


def _unmerged(c: Columns, i: int, fmt: Any) -> Finding:
    a, before = c.address[i], c.expected_prev[i]
    return Finding(UNMERGED, WARNING, a, f"free segment at {fmt(a)} follows the free segment at {fmt(before)} unmerged",
                   {"address": a, "previous": before, "size": c.size[i],
                    "previous_size": c.before_end[i] - before})


SIZE_OK = All(Cmp(ge, "size", "header_size"), Cmp(le, "end", "heap_end"))
NEXT_INSIDE = All(Cmp(ge, "next", "heap_start"), Cmp(le, "next", "last_header"))
NEXT_ELSEWHERE = (Cmp(ne, "next", "end"), Cmp(ne, "next", 0), NEXT_INSIDE, SIZE_OK, NotExplained())

# The header rule: a header is sane when no clause picks it. In the order findings are listed.
HEADER_RULE: Tuple[Clause, ...] = (
    Clause(ALIGN, Bits("address", "align_mask"), _aligned_address),
    Clause(FLAG, Cmp(gt, "flag", 1), _flag),
    Clause(SIZE, Cmp(lt, "size", "header_size"), _too_small),
    Clause(SIZE, All(Cmp(gt, "end", "heap_end"), Cmp(ge, "size", "header_size")), _past_end),
    Clause(ALIGN, All(Bits("size", "align_mask"), SIZE_OK), _aligned_size),
    Clause(GAP, All(*NEXT_ELSEWHERE, Cmp(gt, "next", "end")), _gap),
    Clause(OVERLAP, All(*NEXT_ELSEWHERE, Cmp(lt, "next", "end")), _overlap),
    Clause(BACKLINK, AnyOf(Cmp(ne, "prev", "expected_prev"), Cmp(ne, "before_next", "address")), _backlink),
    Clause(BOUNDS, Outside("next", "heap_start", "last_header"), _bounds),
    Clause(COVERAGE, All(Cmp(eq, "next", 0), SIZE_OK, Cmp(ne, "end", "heap_end")), _coverage),
)
# Two free neighbours, told only of a header nothing else is wrong with.
UNMERGED_CLAUSE = Clause(UNMERGED, All(NoneOf("flag", "before_flag"), Cmp(eq, "before_end", "address")), _unmerged)


def judge(c: Columns, fmt: Any) -> Dict[int, List[Finding]]:
    """The header rule over every header of ``c``: {index: its findings, in rule order}, for
    the headers with any (no culprit: :func:`culprit_for` adds it)."""
    out: Dict[int, List[Finding]] = {}
    for clause in HEADER_RULE:
        for i in clause.test.picked(c):
            out.setdefault(i, []).append(clause.finding(c, i, fmt))
    for i in UNMERGED_CLAUSE.test.picked(c):
        if all(f.code == COVERAGE for f in out.get(i, ())):
            out.setdefault(i, []).append(UNMERGED_CLAUSE.finding(c, i, fmt))
    return out


def header_problems(h: Header, place: Place, fmt: Any) -> List[Finding]:
    """What the header rule says of one header where it stands (a column of one)."""
    before = place.before
    want = 0 if place.first else before.address if before is not None else None
    c = Columns([h.address], ([h.next], [h.prev], [h.is_allocated], [h.segment_size]), [want],
                [before.next if before is not None else h.address],
                [before.is_allocated if before is not None else -1],
                [before.end if before is not None else -1], place.heap_start, place.heap_end, place.header_size,
                alignment=place.alignment)
    return judge(c, fmt).get(0, [])


# Problems a culprit does not explain: the list's extent and two free neighbours.
_NO_CULPRIT = (COVERAGE, UNMERGED)


# What a size that disagrees with sound links can be reported as (the header's own fields are fine).
_SIZE_CODES = {GAP, OVERLAP, SIZE}


def _well_formed(prog: Any, h: Header, place: Place) -> bool:
    """Whether ``h``'s bytes are a plausible header whose links are consistent: a flag of 0 or
    1, an aligned size of at least a header, ``prev`` naming the segment before it (NULL for
    the first), and ``next`` NULL or a header inside the heap whose ``prev`` names ``h``. Such
    a header was written by the allocator, whatever is wrong with its size."""
    if h.is_allocated > 1 or h.segment_size < place.header_size or h.segment_size % place.alignment:
        return False
    if h.prev != (0 if place.first else place.before.address if place.before is not None else -1):
        return False
    if h.next == 0:
        return True
    if h.next % place.alignment or not place.heap_start <= h.next <= place.heap_end - place.header_size:
        return False
    layout = prog.layouts.segment
    try:
        nxt = layout.unpack_from(prog.read(h.next, layout.decode_size), 0)
    except MemoryFault:
        return False
    return nxt[1] == h.address


def culprit_for(prog: Any, h: Header, place: Place, problems: Sequence[Finding]) -> Optional[Culprit]:
    """Who probably broke header ``h``, given what the rule found wrong with it.

    Only a wrong ``prev`` in an otherwise sane header points at a list update that skipped the
    back link (or a write of exactly that word). A wrong size in a header whose bytes are
    otherwise a consistent header (flag, alignment, both links agreeing with its neighbours)
    was written by the allocator itself: its split or merge computed the size (a merge that
    added the wrong neighbour's size), not an overwrite. Anything else is a header overwritten
    from the segment before it, whose bytes are classified (text, zeros, poison, a pointer).
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
        return Culprit(before.address, "only the prev word was overwritten", kind, detail,
                       h.address + prog.layouts.segment.fields["prev"].offset, "prev")
    if codes <= _SIZE_CODES and _well_formed(prog, h, place):
        nxt = "NULL" if h.next == 0 else fmt(h.next)
        what = (f"it ends at {fmt(h.end)} but its next is {nxt}" if h.next else
                f"it is the last segment but ends at {fmt(h.end)}, not at the heap end {fmt(place.heap_end)}")
        return Culprit(h.address, "the header is well formed and its links agree with its neighbours, but its "
                       f"segment_size ({h.segment_size}) does not: {what}; the allocator's own split or merge "
                       "computed that size (e.g. a merge that added the wrong neighbour's size), not an overwrite",
                       "header", f"is_allocated={h.is_allocated} segment_size={h.segment_size} next={nxt} "
                       f"prev={'NULL' if h.prev == 0 else fmt(h.prev)}", h.address, "header")
    try:
        raw = prog.read(h.address, place.header_size)
    except MemoryFault:
        raw = b""
    kind, detail = classify_bytes(prog, raw)
    seen = (h.address, "header") if kind else (None, "")      # whose bytes these are
    if before is None or place.first:
        return Culprit(None, "first segment of the heap: nothing before it to overflow", kind, detail, *seen)
    if before.is_allocated == 1:
        return Culprit(before.address, "overflow from the allocated segment before it", kind, detail, *seen)
    if before.is_allocated == 0:
        return Culprit(before.address, "write past the free segment before it (use after free?)", kind, detail,
                       *seen)
    return Culprit(before.address, "the segment before it is corrupt too", kind, detail, *seen)


def _with_culprit(prog: Any, h: Header, place: Place, problems: List[Finding]) -> List[Finding]:
    """``problems`` with :func:`culprit_for`'s culprit on each problem it explains."""
    if not problems:
        return problems
    culprit = culprit_for(prog, h, place, problems)
    return [p if p.code in _NO_CULPRIT else p.with_culprit(culprit) for p in problems]


# -- the whole list -----------------------------------------------------------------------------

CHUNK = 1 << 16       # headers judged at once: columns of a million headers would need ~200 MiB


class ColumnCursor:
    """A walk's headers as :class:`Columns` of at most :data:`CHUNK` headers, taken in order as
    far as the walk has gone: the one decoding of the heap a check needs.

    Why a cursor: over the remote protocol the walk grows while the heap streams in, and the
    headers already walked can be decoded (and judged) in those waits; the cursor remembers
    where it stopped and the header before it, so the columns come out the same however the
    walk was cut. ``explained`` (the index whose ``next`` the walk's stop explains) is only
    known once the walk has stopped: until then the last header walked is not taken.
    """

    def __init__(self, heap_start: int, heap_end: int, header_size: int, alignment: int, layout: Any) -> None:
        self.heap_start, self.heap_end, self.header_size = heap_start, heap_end, header_size
        self.alignment, self.layout = alignment, layout
        self.done = 0                                             # headers taken so far
        self.before: Tuple[int, int, int, int] = (0, -1, -1, -1)  # (address, next, flag, end) of the last one

    @classmethod
    def of(cls, walk: HeapWalk) -> "ColumnCursor":
        return cls(walk.heap_start, walk.heap_end, walk.header_size, walk.alignment, walk._layout)

    def take(self, addresses: Any, raw: Any, upto: int, explained: Optional[int] = None) -> Iterator[Tuple[int, Columns]]:
        """Headers ``[done, upto)`` of ``addresses``/``raw`` (a walk's, whole or growing)."""
        ds = self.layout.decode_size
        while self.done < upto:
            lo = self.done
            hi = min(upto, lo + CHUNK)
            with memoryview(addresses) as a, memoryview(raw) as view:   # released at once: the walk may grow
                address = a[lo:hi].tolist()
                columns = self.layout.columns(view[lo * ds:hi * ds])
            before = self.before
            c = Columns(address, columns, _after(before[0], address), [], [], [], self.heap_start, self.heap_end,
                        self.header_size, None if explained is None else explained - lo, self.alignment)
            c.before_next = _after(address[0] if lo == 0 else before[1], c.next)
            c.before_flag = _after(before[2], c.flag)
            c.before_end = _after(before[3], c.end)
            self.done, self.before = hi, (address[-1], c.next[-1], c.flag[-1], c.end[-1])
            yield lo, c


def _after(first: Any, column: List[Any]) -> List[Any]:
    """``[first] + column[:-1]``: each header's predecessor's value, in one copy."""
    out = [first]
    out += column
    del out[-1]
    return out


def _explained(walk: HeapWalk) -> Optional[int]:
    """The index of the header whose ``next`` the walk's stop (a cycle, the bound) explains."""
    return len(walk) - 1 if walk.stop_reason in (STOP_CYCLE, STOP_BOUND) else None


def walk_columns(walk: HeapWalk) -> Iterator[Tuple[int, Columns]]:
    """The walk's headers as :class:`Columns` of at most :data:`CHUNK` headers, with the index
    of each chunk's first header."""
    return ColumnCursor.of(walk).take(walk.addresses, walk.raw, len(walk), _explained(walk))


class _Judged(NamedTuple):
    """A header the rule found something wrong with, and the header before it (if any)."""

    index: int
    header: Header
    before: Optional[Header]
    problems: List[Finding]


class HeapJudge:
    """:func:`validate_heap` in steps: :meth:`follow` judges the headers a walker has walked so
    far (while the rest of the heap streams in), :meth:`finish` judges the rest, adds the
    culprits (they may read memory, so never during a read) and why the walk stopped.

    ``observe``: called with each chunk of :class:`Columns` once judged (the family's figures
    and the poison check's free segments come from the same decoding).
    """

    STEP = 512        # headers worth judging at once while the heap streams in

    def __init__(self, prog: Any, observe: Optional[Callable[[Columns], None]] = None) -> None:
        self.prog = prog
        self.observe = observe
        self.cursor: Optional[ColumnCursor] = None
        self.judged: List[_Judged] = []

    def _judge(self, addresses: Any, raw: Any, upto: int, explained: Optional[int]) -> None:
        assert self.cursor is not None
        fmt = self.prog.fmt
        for lo, c in self.cursor.take(addresses, raw, upto, explained):
            for i, problems in sorted(judge(c, fmt).items()):
                h = Header(c.address[i], c.next[i], c.prev[i], c.flag[i], c.size[i])
                b = None if lo + i == 0 else Header(c.expected_prev[i], c.before_next[i], 0, c.before_flag[i],
                                                    c.before_end[i] - c.expected_prev[i])
                self.judged.append(_Judged(lo + i, h, b, problems))
            if self.observe is not None:
                self.observe(c)

    @property
    def done(self) -> int:
        """How many headers have been judged."""
        return 0 if self.cursor is None else self.cursor.done

    def follow(self, walker: Any) -> None:
        """Judge what ``walker`` (a :class:`HeapWalker` being fed) has walked: all of it once
        the walk has stopped, else all but its last header (whether the walk's stop explains
        that one's ``next`` is not known yet)."""
        if self.cursor is None:
            layout = walker.layout
            self.cursor = ColumnCursor(walker.hs, walker.he, walker.hdr, layout.alignment.value, layout)
        n = len(walker.addresses)
        stop = walker.stop_reason
        if stop is not None:
            if stop != STOP_BAD_HEAD and self.cursor.done < n:
                self._judge(walker.addresses, walker.raw, n, n - 1 if stop in (STOP_CYCLE, STOP_BOUND) else None)
        elif n - 1 - self.cursor.done >= self.STEP:
            self._judge(walker.addresses, walker.raw, n - 1, None)

    def finish(self, walk: HeapWalk) -> List[Finding]:
        """Every finding of ``walk`` (the walk the followed walker finished, or any walk)."""
        prog, fmt = self.prog, self.prog.fmt
        hs, he, hdr = walk.heap_start, walk.heap_end, walk.header_size
        out: List[Finding] = []
        coverage: List[Finding] = []
        if walk.stop_reason == STOP_BAD_HEAD:
            head_sym = prog.elf.address_of("heap_segment_list_head")
            head_name = prog.elf.symbol_name("heap_segment_list_head") or "heap_segment_list_head"
            out.append(Finding(HEAD, ERROR, walk.stop_address if walk.stop_address is not None else head_sym,
                               f"{head_name}: {walk.stop_detail}"
                               + (f" ({fmt(walk.stop_address)})" if walk.stop_address else ""),
                               {"list_head": walk.stop_address, "heap_start": hs, "heap_end": he}))
            return out
        if self.cursor is None:
            self.cursor = ColumnCursor.of(walk)
        n = len(walk)
        self._judge(walk.addresses, walk.raw, n, _explained(walk))
        for j in self.judged:
            place = Place(hs, he, hdr, j.before, j.index == 0, walk.alignment)
            for p in _with_culprit(prog, j.header, place, j.problems):
                (coverage if p.code == COVERAGE else out).append(p)
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


def validate_heap(prog: Any, walk: Optional[HeapWalk] = None,
                  observe: Optional[Callable[[Columns], None]] = None) -> List[Finding]:
    """Structure of the ``heap_segment_t`` list: every header by the header rule, then why the
    walk stopped and whether the list starts where the heap starts (:class:`HeapJudge` in one
    step).

    ``prog``: the :class:`~gdbext.core.program.Program`; ``walk``: a walk of it (walked if None).
    ``observe``: called with each chunk of :class:`Columns` once judged. Coverage findings come
    last: they are about the list as a whole.
    """
    return HeapJudge(prog, observe).finish(walk_heap(prog) if walk is None else walk)


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
    layout = prog.layouts.segment
    return Place(b.start, b.end, layout.header_size, before, first, layout.alignment.value)


def check_header_at(prog: Any, address: int) -> Tuple[Optional[Header], List[Finding]]:
    """The header at ``address`` and what :func:`header_problems` says of it where it stands
    (its neighbour read through its ``prev``); ``(None, [])`` when nothing can be read there."""
    h = _header_at(prog, address)
    if h is None:
        return None, []
    place = _place_of(prog, h)
    return h, _with_culprit(prog, h, place, header_problems(h, place, prog.fmt))


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
        found = _with_culprit(prog, h, place, header_problems(h, place, fmt))
        out += found
        if any(x.severity == ERROR for x in found) or not h.next:
            return out
        nxt = _header_at(prog, h.next)
        if nxt is None:
            out.append(Finding(UNREADABLE, ERROR, h.next, f"header at {fmt(h.next)} is unreadable",
                               {"address": h.address, "next": h.next}))
            return out
        place = Place(place.heap_start, place.heap_end, place.header_size, h, False, place.alignment)
        h = nxt
    return out


# -- what a check counts on the way -----------------------------------------------------------

class Tally:
    """Counts of a walk taken from its :class:`Columns` as they are judged (``observe`` of
    :func:`validate_heap`): used/free counts and bytes, the largest free segment, the free
    segments the poison check reads, and with ``histogram`` the size histogram."""

    def __init__(self, histogram: bool = False) -> None:
        self.used_count = self.used_bytes = self.free_count = self.free_bytes = 0
        self.largest_free = self.total_bytes = 0
        self.by_bucket: Optional[Counter] = Counter() if histogram else None  # (bit length, 0 used/1 free) -> n
        self.free_addresses: List[int] = []
        self.free_sizes: List[int] = []

    def __call__(self, c: Columns) -> None:
        is_free = list(map(not_, c.flag))
        free = list(compress(c.size, is_free))
        total = sum(c.size)
        free_bytes = sum(free)
        bad = list(compress(count(), map(gt, c.flag, repeat(1)))) if max(c.flag) > 1 else []
        bad_bytes = sum(c.size[i] for i in bad)
        self.used_count += len(c) - len(free) - len(bad)
        self.used_bytes += total - free_bytes - bad_bytes
        self.free_count += len(free)
        self.free_bytes += free_bytes
        self.largest_free = max(self.largest_free, max(free, default=0))
        self.total_bytes += total
        self.free_addresses += compress(c.address, is_free)
        self.free_sizes += free
        if self.by_bucket is not None:
            used = list(compress(c.size, map(eq, c.flag, repeat(1))))
            self.by_bucket.update(zip(map(int.bit_length, used), repeat(0)))
            self.by_bucket.update(zip(map(int.bit_length, free), repeat(1)))

    def buckets(self) -> Optional[Dict[int, List[int]]]:
        """size_bucket -> [used, free] (bucket k holds sizes 2**k .. 2**(k+1)-1)."""
        if self.by_bucket is None:
            return None
        out: Dict[int, List[int]] = {}
        for (bits, state), n in self.by_bucket.items():
            out.setdefault(max(bits - 1, 0), [0, 0])[state] += n
        return out


# -- poison -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _poison_run(poison: int, size: int) -> bytes:
    """``size`` poison bytes, kept between checks: a fresh 1 MiB costs 256 page faults."""
    return bytes([poison]) * size


def _poison_findings(prog: Any, poison: int, off: int, buf: Any, base: int,
                     addresses: List[int], sizes: List[int]) -> List[Finding]:
    """The poison rule: each payload ``[a + off, a + s)`` (all inside ``buf``, which holds the
    bytes from ``base``) is all ``poison``. One memcmp per payload against a slice of a run of
    poison; only one that differs is looked at byte by byte."""
    run = memoryview(_poison_run(poison, 1 << max(16, max(sizes, default=0).bit_length())))
    # A payload of size - off bytes from a + off.
    lengths = list(map(sub, sizes, repeat(off)))
    starts = list(map(add, addresses, repeat(off - base)))
    # One run of poison per distinct length (a heap has few), lazily compared.
    runs = {n: run[:n] for n in set(lengths)}
    intact = map(buf.startswith, map(runs.__getitem__, lengths), starts, map(add, starts, lengths))
    damaged = compress(zip(addresses, sizes), map(not_, intact))
    out: List[Finding] = []
    pb = bytes([poison])
    fmt = prog.fmt
    for a, s in damaged:
        payload = bytes(buf[a + off - base:a + s - base])
        first = len(payload) - len(payload.lstrip(pb))
        last = len(payload.rstrip(pb))
        changed = len(payload) - payload.count(pb)
        kind, detail = classify_bytes(prog, payload[first:min(last, first + 64)])
        out.append(Finding(POISON, ERROR, a + off + first,
                           f"free segment at {fmt(a)}: {plural(changed, 'byte')} of poison "
                           f"0x{poison:02x} overwritten from payload offset {first}",
                           {"segment": a, "payload": a + off, "offset": first, "last_offset": last - 1,
                            "changed_bytes": changed, "poison": poison},
                           Culprit(a, "written after it was freed (use after free)", kind, detail,
                                   a + off + first, "payload")))
    return out


def validate_poison(prog: Any, walk: HeapWalk, tally: Optional[Tally] = None, first: int = 0) -> List[Finding]:
    """HEAP-POISON: a free payload (``is_allocated`` 0) that is not all poison.

    Only when ``heap_poison`` (ELF .rodata or target memory) says poison is on. ``tally``: the
    walk's :class:`Tally` when the caller has it (its free segments); ``first``: how many of
    them :class:`PoisonCheck` already looked at while the heap arrived.
    """
    poison = prog.poison_byte()
    if poison is None or walk.stop_reason == STOP_BAD_HEAD:
        return []
    if tally is None:
        tally = Tally()
        for _, c in walk_columns(walk):
            tally(c)
    addresses, sizes = tally.free_addresses, tally.free_sizes
    if first:
        addresses, sizes = addresses[first:], sizes[first:]
    if not addresses:
        return []
    buf = prog.heap_bytes()
    hs, he, off = walk.heap_start, walk.heap_end, walk.payload_offset
    limit = min(he, hs + len(buf))
    if min(sizes, default=off + 1) <= off or any(map(gt, map(add, addresses, sizes), repeat(limit))):
        # Segments with no payload (or a corrupt size), or a heap cut short: only those with a
        # payload inside what was read.
        keep = list(map(and_, map(gt, sizes, repeat(off)), map(le, map(add, addresses, sizes), repeat(limit))))
        addresses, sizes = list(compress(addresses, keep)), list(compress(sizes, keep))
    return _poison_findings(prog, poison, off, buf, hs, addresses, sizes)


class PoisonCheck:
    """:func:`validate_poison` in steps: while the heap streams in, the free segments the
    :class:`Tally` has counted are held to the poison rule as their payloads arrive, in list
    order; a payload still arriving is looked at piece by piece (so its bytes need not be
    kept: the free tail of a heap is most of it). :meth:`finish` does the rest from the whole
    heap, and everything from the first payload that is not all poison (its finding needs
    the whole payload), or that cannot be looked at in order. The payload offset must be
    known first: the family's probe (:func:`layout_of`) runs on the bytes that have arrived.
    """

    def __init__(self, prog: Any, tally: Tally) -> None:
        self.prog, self.tally = prog, tally
        self.poison = prog.poison_byte()        # now, before the read: it may read the target
        self.offset: Optional[int] = None
        self.done = 0                           # free segments of the tally looked at
        self.partial: Optional[int] = None      # free segment ``done``'s payload is poison up to here
        self.stopped = False                    # the rest is :meth:`finish`'s
        self.found: List[Finding] = []

    def needs_from(self) -> Optional[int]:
        """The lowest address whose bytes it still needs while the heap arrives (None: none)."""
        if self.poison is None or self.stopped:
            return None
        if self.offset is None:
            return self.prog.bounds.start
        if self.partial is not None:
            return self.partial
        free = self.tally.free_addresses
        return free[self.done] + self.offset if self.done < len(free) else None

    def waiting(self) -> bool:
        """Whether free payloads counted so far are still to be looked at while the heap arrives."""
        return not self.stopped and self.poison is not None and (
            self.partial is not None or self.done < len(self.tally.free_addresses))

    def _intact(self, window: Any, base: int, start: int, stop: int) -> bool:
        """Whether ``[start, stop)`` (inside ``window``) is all poison: the rule on a piece."""
        assert self.poison is not None
        run = _poison_run(self.poison, 1 << max(16, (stop - start).bit_length()))
        return window.startswith(memoryview(run)[:stop - start], start - base, stop - base)

    def follow(self, window: Any, base: int) -> None:
        """Look at the free payloads that lie in ``window`` (the bytes from ``base``)."""
        if self.poison is None or self.stopped:
            return
        end = base + len(window)
        if self.offset is None:
            def arrived(address: int, size: int) -> bytes:
                if address < base or address + size > end:
                    raise NotArrived(address)
                return bytes(window[address - base:address - base + size])
            try:
                layout = layout_of(self.prog, arrived)
            except NotArrived:
                return
            if not layout.payload_known:
                return
            self.offset = layout.payload_offset
        off, he = self.offset, self.prog.bounds.end
        limit = min(he, end)
        addresses, sizes = self.tally.free_addresses, self.tally.free_sizes
        n = len(addresses)
        if self.partial is not None:             # a payload begun in an earlier round
            a, s = addresses[self.done], sizes[self.done]
            stop = min(a + s, limit)
            if self.partial < base or not self._intact(window, base, self.partial, stop):
                self.stopped = True
                return
            if stop < a + s:
                self.partial = stop
                return
            self.partial = None
            self.done += 1
        lo = hi = self.done
        while hi < n and addresses[hi] + off >= base and addresses[hi] + sizes[hi] <= limit:
            hi += 1
        if hi > lo:
            a_, s_ = addresses[lo:hi], sizes[lo:hi]
            if min(s_) <= off:                   # no payload: nothing to look at
                keep = list(map(gt, s_, repeat(off)))
                a_, s_ = list(compress(a_, keep)), list(compress(s_, keep))
            self.found += _poison_findings(self.prog, self.poison, off, window, base, a_, s_)
            self.done = hi
        if hi < n:
            a, s = addresses[hi], sizes[hi]
            if a + off < base or a + s > he:
                self.stopped = True              # out of order, or past the heap: finish's
            elif s > off and a + off < limit:    # arriving: the part that is here
                if self._intact(window, base, a + off, limit):
                    self.partial = limit
                else:
                    self.stopped = True

    def finish(self, walk: HeapWalk) -> List[Finding]:
        return self.found + validate_poison(self.prog, walk, self.tally, self.done)


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
    layout = layout_of(prog)
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
    layout = layout_of(prog)
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
