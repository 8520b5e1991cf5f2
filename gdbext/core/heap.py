"""Heap walkers over ``heap_segment_t`` lists: ``walk_heap``, ``for_each_segment``, ``find_segment``.

Walkers follow the kernel's own ``next`` links (the list is what kmalloc trusts) and assume
nothing: a walk is bounded by ``heap_size // header_size + 1`` steps, stops at a NULL link, at
the first address outside the heap, at the first unreadable header, or on a revisited header,
and records why. Judging what it found is :mod:`validate`'s job.

Speed: the heap is read in bulk once (:meth:`Program.heap_bytes`) and headers are decoded with
one ``struct.Struct.unpack_from`` each; the walk keeps raw tuples and builds :class:`Segment`
objects only when asked, so a walk of a million segments stays around a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from operator import itemgetter
from typing import Dict, Iterator, List, Optional, Tuple

from .memory import MemoryFault
from .program import Program

__all__ = ["Segment", "HeapWalk", "HeapWalker", "SegmentMatch", "walk_heap", "extend_columns", "for_each_segment", "find_segment",
           "segment_state", "STOP_END", "STOP_FAULT", "STOP_BOUND", "STOP_CYCLE", "STOP_LEFT_HEAP",
           "STOP_BAD_HEAD"]

STOP_END = "end"              # a NULL next: the list ended normally
STOP_FAULT = "fault"          # a header could not be read
STOP_BOUND = "bound"          # more steps than the heap can hold segments
STOP_CYCLE = "cycle"          # next led back to a header already visited
STOP_LEFT_HEAP = "outside-heap"  # next points outside the heap (the kernel dump's word for it)
STOP_BAD_HEAD = "bad-head"    # the list head is unknown, NULL or outside the heap

# (address, next, prev, is_allocated, segment_size): how the walk keeps what it read.
Record = Tuple[int, int, int, int, int]


def segment_state(is_allocated: int) -> str:
    """'used' (1), 'free' (0) or 'bad' (anything else: the header is corrupt)."""
    return "used" if is_allocated == 1 else "free" if is_allocated == 0 else "bad"


@dataclass(frozen=True)
class Segment:
    """One ``heap_segment_t`` as read from memory (values raw, even when corrupt)."""

    address: int
    size: int                 # segment_size, header included
    is_allocated: int         # raw value: 0 free, 1 used, other = corrupt
    next: int
    prev: int
    payload: int              # address + sizeof(heap_segment_t)
    state: str                # 'used' | 'free' | 'bad'
    extra: Dict[str, int] = dc_field(default_factory=dict)   # fields beyond the known four

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def payload_size(self) -> int:
        return max(0, self.size - (self.payload - self.address))

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {"address": self.address, "size": self.size, "state": self.state,
                                  "is_allocated": self.is_allocated, "next": self.next,
                                  "prev": self.prev, "payload": self.payload}
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


@dataclass
class HeapWalk:
    """What a walk found and why it stopped.

    ``addresses`` and ``fields`` hold what was read in list order (``fields[i]`` is
    ``(next, prev, is_allocated, segment_size)`` of the header at ``addresses[i]``): two flat
    lists are the cheapest thing to build in the walk's hot loop. :attr:`records` zips them
    into ``(address, next, prev, is_allocated, segment_size)`` tuples and :attr:`segments`
    into :class:`Segment` objects, both on first use. ``stop_address`` is the address that
    stopped the walk (the NULL-terminated segment for ``end``, the fault address, the
    out-of-heap or revisited address); ``stop_from`` is the segment whose ``next`` led there
    (None for the head).
    """

    addresses: List[int]
    fields: List[Tuple[int, int, int, int]]
    stop_reason: str
    stop_address: Optional[int]
    stop_from: Optional[int]
    stop_detail: str
    heap_start: int
    heap_end: int
    header_size: int
    list_head: Optional[int]
    bound: int
    _records: Optional[List[Record]] = dc_field(default=None, repr=False)
    _segments: Optional[List[Segment]] = dc_field(default=None, repr=False)
    _extra: Optional[Dict[int, Dict[str, int]]] = dc_field(default=None, repr=False)
    _columns: Optional[Tuple[List[int], ...]] = dc_field(default=None, repr=False, compare=False)
    # What validate's screens cleared while the heap was being read (validate._Prescreen).
    _prescreen: Optional[object] = dc_field(default=None, repr=False, compare=False)

    @property
    def columns(self) -> Tuple[List[int], List[int], List[int], List[int]]:
        """``(nexts, prevs, flags, sizes)``: each field of every header, in list order.

        Why columns: the validators screen a healthy heap with whole-list operations that run
        in C (``==`` on lists, ``max``, ``count``, ``compress``) instead of a Python step per
        segment; built once, on first use, by ``map(itemgetter)``.
        """
        if self._columns is None:
            self._columns = extend_columns(([], [], [], []), self.fields)
        return self._columns  # type: ignore[return-value]


    @property
    def complete(self) -> bool:
        """True when the list ended with a NULL link (corruption may still be present)."""
        return self.stop_reason == STOP_END

    def __len__(self) -> int:
        return len(self.addresses)

    @property
    def records(self) -> List[Record]:
        if self._records is None:
            self._records = [(a, n, p, f, s) for a, (n, p, f, s) in zip(self.addresses, self.fields)]
        return self._records

    @property
    def segments(self) -> List[Segment]:
        if self._segments is None:
            hdr = self.header_size
            extra = self._extra or {}
            self._segments = [Segment(a, s, f, n, p, a + hdr, segment_state(f), extra.get(a, {}))
                              for a, (n, p, f, s) in zip(self.addresses, self.fields)]
        return self._segments

    def stop_json(self) -> Dict[str, object]:
        return {"reason": self.stop_reason, "address": self.stop_address, "from": self.stop_from,
                "detail": self.stop_detail}


def extend_columns(columns: Tuple[List[int], ...], fields: List[Tuple[int, int, int, int]]) -> Tuple[List[int], ...]:
    """Append to ``columns`` (see :attr:`HeapWalk.columns`) the records of ``fields`` they do
    not hold yet: a walk still under way grows them as it goes."""
    done = len(columns[0])
    if len(fields) > done:
        new = fields[done:]
        for k, column in enumerate(columns):
            column.extend(map(itemgetter(k), new))
    return columns


def walk_heap(prog: Program, start: Optional[int] = None, max_steps: Optional[int] = None,
              extra_fields: bool = True) -> HeapWalk:
    """Walk the ``heap_segment_t`` list from ``heap_segment_list_head`` (or ``start``).

    ``prog``: the :class:`Program` of the kernel. Never raises on corrupt data; raises
    :class:`~gdbext.core.program.ProgramError` only when the heap cannot be located at all.
    """
    return HeapWalker(prog, start, max_steps, extra_fields).finish()


class HeapWalker:
    """:func:`walk_heap` in steps: :meth:`advance` walks the headers found in the part of the
    heap that has arrived so far, :meth:`finish` walks the rest and says why it stopped.

    Why: over the remote protocol the heap arrives in 2 KiB replies, and the client spends
    part of the read waiting for the stub; ``validate.check`` advances the walk from the read's
    progress callback, so it is done in those waits.
    """

    def __init__(self, prog: Program, start: Optional[int] = None, max_steps: Optional[int] = None,
                 extra_fields: bool = True) -> None:
        bounds = prog.bounds
        self.prog = prog
        self.layout = prog.layouts.segment
        self.extra_fields = extra_fields
        self.hs, self.he = bounds.start, bounds.end
        self.hdr = self.layout.header_size
        bound = bounds.size // max(self.hdr, 1) + 1
        self.bound = min(bound, max_steps) if max_steps is not None else bound
        self.head = bounds.list_head if start is None else start
        self.addresses: List[int] = []
        self.fields: List[Tuple[int, int, int, int]] = []
        self.addr, self.frm = self.head, None
        self.seen: Optional[set] = None
        self.walk: Optional[HeapWalk] = None
        head, hs, hdr = self.head, self.hs, self.hdr
        if head is None:
            self._stop(STOP_BAD_HEAD, None, None, bounds.list_head_error or "list head unknown")
        elif head == 0:
            self._stop(STOP_BAD_HEAD, 0, None, "list head is NULL")
        elif not (hs <= head and head + hdr <= self.he):
            self._stop(STOP_BAD_HEAD, head, None, "list head is outside the heap")

    def _stop(self, reason: str, address: Optional[int], frm: Optional[int], detail: str) -> None:
        walk = HeapWalk(self.addresses, self.fields, reason, address, frm, detail, self.hs, self.he,
                        self.hdr, self.head, self.bound)
        if self.extra_fields and self.layout.extra_fields and self.addresses:
            walk._extra = _read_extra(self.prog, self.addresses)
        self.walk = walk

    def advance(self, data, address: int) -> None:
        """Walk on through ``data``, the bytes from ``address`` that have arrived so far (more
        will follow); they must start at or before the header the walk has reached."""
        if self.walk is None and address <= max(self.addr or 0, self.hs):
            self._run(data, address, final=False)

    def finish(self) -> HeapWalk:
        """The whole walk: on through :meth:`Program.heap_bytes` and past it to the end."""
        if self.walk is None:
            self._run(self.prog.heap_bytes(), self.hs, final=True)
        assert self.walk is not None
        return self.walk

    def _run(self, buf, base: int, final: bool) -> None:
        """Walk on through ``buf``, the bytes from ``base``; ``final``: nothing more will come."""
        prog, layout = self.prog, self.layout
        hs, he, hdr = self.hs, self.he, self.hdr
        # Headers at [fast_lo, fast_hi] are inside the heap and inside ``buf``.
        fast_lo = max(hs, base)
        fast_hi = min(he - hdr, base + len(buf) - layout.decode_size)
        unpack = layout.unpack_from
        addresses, fields = self.addresses, self.fields
        add_address = addresses.append
        add_fields = fields.append
        addr, frm, seen = self.addr, self.frm, self.seen
        # Hot loop: a healthy, ascending list pays for one chained compare, one unpack, two
        # appends and one compare per segment.
        for _ in range(self.bound - len(addresses)):
            if fast_lo <= addr <= fast_hi:
                t = unpack(buf, addr - base)
            elif not final:
                break                        # not here yet: the next call goes on from addr
            elif addr < hs or addr + hdr > he:
                return self._stop(STOP_LEFT_HEAP, addr, frm, "next points outside the heap")
            else:
                try:
                    t = unpack(prog.read(addr, layout.decode_size), 0)
                except MemoryFault as fault:
                    return self._stop(STOP_FAULT, fault.address, frm, f"header at {prog.fmt(addr)} is unreadable")
            add_address(addr)
            add_fields(t)
            nxt = t[0]
            if nxt <= addr:
                if nxt == 0:
                    return self._stop(STOP_END, addr, frm, "end of list")
                # Only a backward (or self) link can close a cycle: from here on, remember.
                if seen is None:
                    seen = self.seen = set(addresses)
            if seen is not None:
                if nxt in seen:
                    return self._stop(STOP_CYCLE, nxt, addr, "next leads back to a segment already visited")
                seen.add(nxt)
            frm, addr = addr, nxt
        else:
            if final or len(addresses) >= self.bound:
                return self._stop(STOP_BOUND, addr, frm, f"more than {self.bound} segments: the heap cannot hold that many")
        self.addr, self.frm = addr, frm


def _read_extra(prog: Program, addresses: List[int]) -> Dict[int, Dict[str, int]]:
    layout = prog.layouts.segment
    out: Dict[int, Dict[str, int]] = {}
    for a in addresses:
        try:
            out[a] = layout.decode_extra(prog.read(a, layout.header_size))
        except (MemoryFault, ValueError):
            continue
    return out


def for_each_segment(prog: Program) -> Iterator[Segment]:
    """Every segment on the list, in list order, stopping silently where the walk stops.

    ``prog``: the :class:`Program`. Use :func:`walk_heap` to learn why it stopped.
    """
    yield from walk_heap(prog).segments


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

    def to_json(self) -> Dict[str, object]:
        return {"segment": self.segment.to_json(), "offset": self.offset, "where": self.where,
                "payload_offset": self.payload_offset, "method": self.method}


def _plausible_header(prog: Program, address: int) -> Optional[Segment]:
    """A header at ``address`` that looks right and whose neighbours link back to it."""
    b = prog.bounds
    layout = prog.layouts.segment
    hdr = layout.header_size
    if address % 16 or address < b.start or address + hdr > b.end:
        return None
    try:
        nxt, prv, alloc, size = layout.unpack_from(prog.read(address, layout.decode_size), 0)
        if alloc not in (0, 1) or size < hdr or size % 16 or address + size > b.end:
            return None
        if nxt not in (0, address + size):
            return None
        if prv == 0:
            if address != b.list_head:
                return None
        else:
            if not (b.start <= prv < address) or layout.unpack_from(prog.read(prv, layout.decode_size), 0)[0] != address:
                return None
        extra = layout.decode_extra(prog.read(address, hdr)) if layout.extra_fields else {}
    except (MemoryFault, ValueError):
        return None
    return Segment(address, size, alloc, nxt, prv, address + hdr, segment_state(alloc), extra)


def find_segment(prog: Program, address: int) -> Optional[SegmentMatch]:
    """The segment whose ``[address, address + segment_size)`` holds ``address``, or None.

    ``address`` may be a header address, a payload pointer (as kmalloc returned it) or any
    interior address. A header or payload pointer is confirmed from the header and its
    neighbours' links without a walk; other addresses take one walk over the bulk-read heap.
    """
    b = prog.bounds
    if not b.start <= address < b.end:
        return None
    hdr = prog.header_size
    for cand in (address - hdr, address):
        seg = _plausible_header(prog, cand)
        if seg is not None and seg.address <= address < seg.end:
            off = address - seg.address
            return SegmentMatch(seg, off, "header" if off < hdr else "payload", "direct")
    walk = walk_heap(prog)
    for a, n, p, f, s in walk.records:
        extent = s if hdr <= s and a + s <= b.end else hdr   # a corrupt size covers nothing
        if a <= address < a + extent:
            seg = next(x for x in walk.segments if x.address == a)
            off = address - a
            return SegmentMatch(seg, off, "header" if off < hdr else "payload", "walk")
    return None
