"""The walk of a ``heap_segment_t`` list: :func:`walk_heap`, :class:`HeapWalk`, :class:`Header`.

The walker follows the kernel's own ``next`` links (the list is what kmalloc trusts) and
assumes nothing: a walk is bounded by ``heap_size // header_size + 1`` steps, stops at a NULL
link, at the first address outside the heap, at the first unreadable header, or on a revisited
header, and records why. Judging what it found is :mod:`.rules`' job.

Speed and memory: the heap is read in bulk once (:meth:`Program.heap_bytes`); the walk keeps
each header's address (8 bytes in an ``array``) and its raw bytes, one after the other, in a
``bytearray``. A million headers cost about 30 MiB beyond the heap itself, and the validators
decode them again in C, sequentially, as whole columns (:meth:`SegmentLayout.columns`) instead
of chasing pointers through a heap that no longer fits in the CPU's caches.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field as dc_field, replace
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..memory import MemoryFault
from ..names import Fact
from ..text import plural

__all__ = ["Header", "Segment", "HeapWalk", "HeapWalker", "walk_heap", "layout_of", "list_extent", "for_each_segment",
           "segment_state", "STOP_END", "STOP_FAULT",
           "STOP_BOUND", "STOP_CYCLE", "STOP_LEFT_HEAP", "STOP_BAD_HEAD"]

STOP_END = "end"              # a NULL next: the list ended normally
STOP_FAULT = "fault"          # a header could not be read
STOP_BOUND = "bound"          # more steps than the heap can hold segments
STOP_CYCLE = "cycle"          # next led back to a header already visited
STOP_LEFT_HEAP = "outside-heap"  # next points outside the heap (the kernel dump's word for it)
STOP_BAD_HEAD = "bad-head"    # the list head is unknown, NULL or outside the heap

Fields = Tuple[int, int, int, int]     # (next, prev, is_allocated, segment_size) as decoded


def segment_state(is_allocated: int) -> str:
    """'used' (1), 'free' (0) or 'bad' (anything else: the header is corrupt)."""
    return "used" if is_allocated == 1 else "free" if is_allocated == 0 else "bad"


class Header(NamedTuple):
    """One ``heap_segment_t`` header as read, values raw even when corrupt."""

    address: int
    next: int
    prev: int
    is_allocated: int
    segment_size: int

    @property
    def state(self) -> str:
        return segment_state(self.is_allocated)

    @property
    def end(self) -> int:
        return self.address + self.segment_size


@dataclass(frozen=True)
class Segment:
    """One segment for reports: the header's fields by name, its payload and state."""

    address: int
    size: int                 # segment_size, header included
    is_allocated: int         # raw value: 0 free, 1 used, other = corrupt
    next: int
    prev: int
    payload: int              # address + the layout's payload offset
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

    ``addresses``: every header walked, in list order. ``stop_address`` is the address that
    stopped the walk (the NULL-terminated segment for ``end``, the fault address, the
    out-of-heap or revisited address); ``stop_from`` is the segment whose ``next`` led there
    (None for the head). The fields of header ``i`` are :meth:`fields_at` ``(i)``, all of them
    :meth:`all_fields`, and as named records :meth:`headers`.
    """

    addresses: "array[int]"
    stop_reason: str
    stop_address: Optional[int]
    stop_from: Optional[int]
    stop_detail: str
    heap_start: int
    heap_end: int
    header_size: int
    payload_offset: int
    list_head: Optional[int]
    bound: int
    # Each walked header's bytes (the layout's decode_size each), in list order.
    raw: bytearray = dc_field(default_factory=bytearray, repr=False)
    _layout: Any = dc_field(default=None, repr=False)
    _extra: Optional[Dict[int, Dict[str, int]]] = dc_field(default=None, repr=False)
    _segments: Optional[List[Segment]] = dc_field(default=None, repr=False)
    _figures: Any = dc_field(default=None, repr=False)      # the family's figures, once counted
    alignment: int = 16                                      # segments' and sizes' alignment

    @property
    def complete(self) -> bool:
        """True when the list ended with a NULL link (corruption may still be present)."""
        return self.stop_reason == STOP_END

    def __len__(self) -> int:
        return len(self.addresses)

    def fields_at(self, index: int) -> Fields:
        """``(next, prev, is_allocated, segment_size)`` of the ``index``-th header walked."""
        return self._layout.unpack_from(self.raw, index * self._layout.decode_size)

    def all_fields(self) -> Iterator[Fields]:
        """The fields of every header, in list order (decoded in C, sequentially)."""
        return self._layout.iter_fields(self.raw)

    def columns(self, first: int = 0, count: Optional[int] = None) -> Tuple[List[int], List[int], List[int], List[int]]:
        """Headers ``[first, first + count)`` as four lists: nexts, prevs, flags, sizes."""
        ds = self._layout.decode_size
        end = len(self.addresses) if count is None else min(len(self.addresses), first + count)
        return self._layout.columns(memoryview(self.raw)[first * ds:end * ds])

    def headers(self) -> Iterator[Header]:
        """Every header walked as a named record, in list order."""
        return (Header(a, n, p, f, s) for a, (n, p, f, s) in zip(self.addresses, self.all_fields()))

    def header(self, index: int) -> Header:
        return Header(self.addresses[index], *self.fields_at(index))

    @property
    def segments(self) -> List[Segment]:
        """Every header walked as a :class:`Segment` (built on first use)."""
        if self._segments is None:
            off = self.payload_offset
            extra = self._extra or {}
            self._segments = [Segment(a, s, f, n, p, a + off, segment_state(f), extra.get(a, {}))
                              for a, (n, p, f, s) in zip(self.addresses, self.all_fields())]
        return self._segments

    def stop_json(self) -> Dict[str, object]:
        return {"reason": self.stop_reason, "address": self.stop_address, "from": self.stop_from,
                "detail": self.stop_detail}


def walk_heap(prog: Any, start: Optional[int] = None, max_steps: Optional[int] = None) -> HeapWalk:
    """Walk the ``heap_segment_t`` list from ``heap_segment_list_head`` (or ``start``).

    ``prog``: the :class:`~gdbext.core.program.Program` of the kernel. Never raises on corrupt
    data; raises :class:`~gdbext.core.program.ProgramError` only when the heap cannot be located.
    """
    return HeapWalker(prog, start, max_steps).finish()

class HeapWalker:
    """:func:`walk_heap` in steps: :meth:`feed` walks the headers that lie inside the bytes that
    have arrived so far, :meth:`finish` walks the rest and says why the walk stopped.

    Why: over the remote protocol the heap arrives in 2 KiB replies while the client waits for
    the stub; ``check`` feeds the walker from the read's progress calls, so the walk is done in
    those waits. One loop (:meth:`_run`) serves both.
    """

    def __init__(self, prog: Any, start: Optional[int] = None, max_steps: Optional[int] = None) -> None:
        bounds = prog.bounds
        self.prog = prog
        self.layout = layout = prog.layouts.segment
        self.hs, self.he, self.hdr = bounds.start, bounds.end, layout.header_size
        bound = bounds.size // max(self.hdr, 1) + 1
        self.bound = min(bound, max_steps) if max_steps is not None else bound
        self.head = bounds.list_head if start is None else start
        self.addresses: "array[int]" = array("Q")
        self.raw = bytearray()
        self.addr: Optional[int] = self.head
        self.frm: Optional[int] = None
        self.seen: Optional[set] = None
        self.walk: Optional[HeapWalk] = None
        self._stopped: Optional[Tuple[str, Optional[int], Optional[int], str]] = None
        head, hs, he = self.head, self.hs, self.he
        if head is None:
            self._stop(STOP_BAD_HEAD, None, None, bounds.list_head_error or "list head unknown")
        elif head == 0:
            self._stop(STOP_BAD_HEAD, 0, None, "list head is NULL")
        elif not (hs <= head and head + self.hdr <= he):
            self._stop(STOP_BAD_HEAD, head, None, "list head is outside the heap")

    @property
    def next_address(self) -> Optional[int]:
        """The header the walk needs next (None once it has stopped)."""
        return None if self._stopped is not None else self.addr

    @property
    def stop_reason(self) -> Optional[str]:
        """Why the walk stopped (None while it goes on)."""
        return None if self._stopped is None else self._stopped[0]

    def feed(self, data: Any, base: int) -> None:
        """Walk on through ``data``, the bytes from ``base`` that have arrived (more will come)."""
        if self._stopped is None:
            self._run(data, base, final=False)

    def finish(self) -> HeapWalk:
        """The whole walk: on through :meth:`Program.heap_bytes` and past it to the end.

        What needs more memory than the headers (the payload offset when the ELF does not give
        it, the extra fields) is read here, after the stream a ``check`` feeds the walk from."""
        if self._stopped is None:
            self._run(self.prog.heap_bytes(), self.hs, final=True)
        if self.walk is None:
            assert self._stopped is not None
            reason, address, frm, detail = self._stopped
            layout = layout_of(self.prog)       # the ELF's, or with the payload offset learnt from memory
            walk = HeapWalk(self.addresses, reason, address, frm, detail, self.hs, self.he, self.hdr,
                            layout.payload_offset, self.head, self.bound, self.raw, layout,
                            alignment=layout.alignment.value)
            if layout.extra_fields and self.addresses:
                walk._extra = _read_extra(self.prog, layout, self.addresses)
            self.walk = walk
        return self.walk

    def _stop(self, reason: str, address: Optional[int], frm: Optional[int], detail: str) -> None:
        self._stopped = (reason, address, frm, detail)

    def _run(self, buf: Any, base: int, final: bool) -> None:
        prog, layout = self.prog, self.layout
        hs, he, hdr = self.hs, self.he, self.hdr
        ds = layout.decode_size
        unpack = layout.unpack_from
        addresses = self.addresses
        # Headers at [lo, hi] are inside the heap and inside ``buf``.
        lo, hi = max(hs, base), min(he - hdr, base + len(buf) - ds)
        add = addresses.append
        keep = self.raw.extend
        addr, frm, seen = self.addr, self.frm, self.seen
        # Hot loop: a healthy, ascending list pays for one chained compare, one unpack, one copy
        # of the header's bytes, one append and one compare per segment.
        for _ in range(self.bound - len(addresses)):
            if lo <= addr <= hi:
                at = addr - base
                t = unpack(buf, at)
                keep(buf[at:at + ds])
            elif not final:
                break                            # not here yet: the next feed goes on from addr
            elif addr < hs or addr + hdr > he:
                return self._stop(STOP_LEFT_HEAP, addr, frm, "next points outside the heap")
            else:
                try:
                    data = prog.read(addr, ds)
                except MemoryFault as fault:
                    return self._stop(STOP_FAULT, fault.address, frm, f"header at {prog.fmt(addr)} is unreadable")
                t = unpack(data, 0)
                keep(data)
            add(addr)
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
                return self._stop(STOP_BOUND, addr, frm,
                                  f"more than {self.bound} segments: the heap cannot hold that many")
        self.addr, self.frm = addr, frm


# -- what the ELF may not say: the payload offset, the list's extent ---------------------------------

PROBE_SEGMENTS = 64           # headers followed from the head when looking for a back pointer
PROBE_USED = 8                # used segments whose payloads are looked at
PROBE_SPAN = 64               # bytes past the header where the back pointer may sit


class NotArrived(Exception):
    """Bytes a computation needs have not arrived yet (a check's read is still streaming)."""


def layout_of(prog: Any, read: Optional[Callable[[int, int], bytes]] = None) -> Any:
    """The header layout for ``prog``: the ELF's, with the payload offset learnt from memory
    when the ELF gives none (no payload-offset constant).

    A layout that 16-aligns payloads and stores the header's address just before the payload
    (Mazarin's later layout, ``segmentOf(payload) = *(payload - 8)``) shows it in every used
    segment: the offset ``k`` past the header where ``*(header + k - P) == header`` in all of
    the first used segments is the payload offset. Without such a word the payload follows
    the header (``sizeof``). The answer is kept in ``prog.layouts`` until the program's memory
    is dropped; when memory cannot be read yet the ELF's layout is used and nothing is kept.
    ``read``: where the bytes come from (``prog.read`` by default; a check passes the bytes
    that have arrived so far, and may get :class:`NotArrived`)."""
    layout = prog.layouts.segment
    if layout.payload_known:
        return layout
    from ..program import ProgramError      # program -> families -> this package
    try:
        fact = _probe_payload(prog, layout, read or prog.read)
    except (ProgramError, MemoryFault):      # no bounds or no memory yet: the ELF's layout, not kept
        return layout
    resolved = layout.with_payload(fact)
    prog.layouts = replace(prog.layouts, segment=resolved)
    return resolved


def _probe_payload(prog: Any, layout: Any, read: Callable[[int, int], bytes]) -> Fact:
    b = prog.bounds
    hs, he, hdr, p = b.start, b.end, layout.header_size, prog.pointer_size
    order = prog.byteorder
    head = b.list_head
    used: List[Tuple[int, int]] = []
    address, seen = head, 0
    while address and hs <= address and address + layout.decode_size <= he and seen < PROBE_SEGMENTS \
            and len(used) < PROBE_USED:
        nxt, _, flag, size = layout.unpack_from(read(address, layout.decode_size), 0)
        if flag == 1 and hdr + p <= size:
            used.append((address, size))
        seen += 1
        if nxt <= address:
            break
        address = nxt
    common: Optional[set] = None
    for a, size in used:
        span = min(size, hdr + PROBE_SPAN)
        try:
            data = read(a, span)
        except MemoryFault:
            continue
        found = {k for k in range(hdr + p, span + 1, p)
                 if int.from_bytes(data[k - p:k], order) == a}
        common = found if common is None else common & found
    if common and (len(used) >= 2 or seen < PROBE_SEGMENTS):
        k = min(common)
        return Fact(k, "inferred", None,
                    f"the header's address is stored at payload - {p} in the {plural(len(used), 'used segment')} "
                    "looked at")
    return Fact(hdr, "sizeof", layout.struct.name,
                "no payload-offset constant in the ELF and no header address stored before the payload "
                f"of the {plural(len(used), 'used segment')} looked at")


def list_extent(prog: Any, head: int, start: int, limit: int) -> Optional[int]:
    """Where the segment list from ``head`` ends (the last segment's address + size), following
    ``next`` while it ascends, at most ``limit`` bytes past ``start``; None when the list does
    not look like one (a header outside that range, a size that is not positive). Used to
    infer the heap's size when the ELF does not say it (no bounds exist yet)."""
    layout = prog.layouts.segment
    hdr = layout.header_size
    address, end, steps = head, None, limit // max(hdr, 1) + 1
    try:
        while address and steps:
            if not start <= address <= start + limit - hdr:
                return None
            nxt, _, _, size = layout.unpack_from(prog.read(address, layout.decode_size), 0)
            if size < hdr or address + size > start + limit:
                return None
            end = address + size
            if nxt == 0:
                return end
            if nxt <= address:
                return None
            address, steps = nxt, steps - 1
    except MemoryFault:
        return None
    return None


def for_each_segment(prog: Any) -> Iterator[Segment]:
    """Every segment on the list, in list order, stopping silently where the walk stops.

    ``prog``: the :class:`~gdbext.core.program.Program`. Use :func:`walk_heap` to learn why."""
    yield from walk_heap(prog).segments


def _read_extra(prog: Any, layout: Any, addresses: "array[int]") -> Dict[int, Dict[str, int]]:
    out: Dict[int, Dict[str, int]] = {}
    for a in addresses:
        try:
            out[a] = layout.decode_extra(prog.read(a, layout.header_size))
        except (MemoryFault, ValueError):
            continue
    return out
