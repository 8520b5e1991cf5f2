"""The page array (``page_t all_pages_array[num_pages]``) and the free-page list (``free_pages``).

The array is large (about 245k entries on the real kernel: 3.75 MiB on ARMv7, 7.5 MiB on
AArch64), so it is read in bulk through the cache and decoded with ``struct.iter_unpack``;
callers that only need the kernel and heap pages ask for that index range alone, because a
live target pays about one packet per 2 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Dict, Iterator, List, Optional, Tuple

from .layout import PAGE_SIZE
from .memory import MemoryFault
from .program import Program

__all__ = ["Page", "PageRange", "FreeListWalk", "PageSummary", "read_pages", "for_each_page",
           "walk_free_list", "page_summary", "page_kind", "expected_kind", "read_free_list_head",
           "KIND_KERNEL", "KIND_HEAP", "KIND_FREE", "KIND_ALLOCATED", "KIND_BAD"]

KIND_KERNEL = "kernel"        # allocated | kernel_page: the image and the page array
KIND_HEAP = "heap"            # allocated | kernel_heap_page: the kmalloc heap
KIND_FREE = "free"            # no flags: should be on free_pages
KIND_ALLOCATED = "allocated"  # allocated only: handed out by alloc_page
KIND_BAD = "bad"              # any other combination

# The contract's flag values (allocated=1, kernel_page=2, kernel_heap_page=4) -> kind.
_KINDS = {3: KIND_KERNEL, 5: KIND_HEAP, 0: KIND_FREE, 1: KIND_ALLOCATED}


def page_kind(flags: int) -> str:
    """The kind of a page from its flag value (allocated=1, kernel_page=2, kernel_heap_page=4)."""
    return _KINDS.get(flags, KIND_BAD)


@dataclass(frozen=True)
class Page:
    """One ``page_t`` entry."""

    index: int
    address: int           # &all_pages_array[index]
    vaddr_mapped: int
    flags: int             # contract form: allocated=1 | kernel_page=2 | kernel_heap_page=4
    flags_word: int        # the raw page_flags_t storage (reserved bits included)
    nextpage: int
    prevpage: int

    @property
    def kind(self) -> str:
        return page_kind(self.flags)

    def to_json(self) -> Dict[str, object]:
        return {"index": self.index, "address": self.address, "vaddr_mapped": self.vaddr_mapped,
                "flags": self.flags, "kind": self.kind, "nextpage": self.nextpage,
                "prevpage": self.prevpage}


@dataclass
class PageRange:
    """Raw entries ``first .. first+len(entries)-1``; ``fault`` is set when the read stopped early."""

    first: int
    entries: List[Tuple[int, int, int, int]]      # (vaddr_mapped, flags_word, nextpage, prevpage)
    fault: Optional[int] = None


def read_pages(prog: Program, first: int = 0, count: Optional[int] = None) -> PageRange:
    """Entries ``[first, first+count)`` of ``all_pages_array`` (``page_t``), in one bulk read.

    Stops at the first unreadable entry and says where.
    """
    b = prog.bounds
    base, num = b.page_array, b.num_pages
    if base is None or num is None:
        return PageRange(first, [], None)
    if count is None:
        count = num - first
    count = max(0, min(count, num - first))
    layout = prog.layouts.page
    size = layout.size
    start = base + first * size
    data = prog.memory.read_prefix(start, count * size)
    whole = len(data) // size * size
    entries = list(layout.iter_unpack(memoryview(data)[:whole]))
    fault = None if whole == count * size else start + whole
    return PageRange(first, entries, fault)


def for_each_page(prog: Program, first: int = 0, count: Optional[int] = None) -> Iterator[Page]:
    """Every ``page_t`` from ``first`` (all of them by default), stopping at a fault."""
    rng = read_pages(prog, first, count)
    layout = prog.layouts.page
    base = prog.bounds.page_array or 0
    size = layout.size
    fv = layout.flag_value
    for k, (vaddr, word, nxt, prv) in enumerate(rng.entries):
        i = rng.first + k
        yield Page(i, base + i * size, vaddr, fv(word), word, nxt, prv)


def expected_kind(prog: Program, index: int) -> Optional[str]:
    """What the contract says page ``index`` is: kernel, heap, or None (free or alloc_page's)."""
    b = prog.bounds
    if index < b.start // PAGE_SIZE:
        return KIND_KERNEL
    if index < -(-b.end // PAGE_SIZE):
        return KIND_HEAP
    return None


def page_index(prog: Program, entry_address: int) -> Optional[int]:
    """The index of a ``page_t *`` into the array, or None if it is not one."""
    b = prog.bounds
    if b.page_array is None or b.num_pages is None:
        return None
    off = entry_address - b.page_array
    size = prog.layouts.page.size
    if off < 0 or off % size or off // size >= b.num_pages:
        return None
    return off // size


@dataclass
class FreeListWalk:
    """The ``free_pages`` list (``page_list_t``) as walked: entry indexes and why it stopped."""

    head: int
    tail: int
    size: int                         # page_list_t.size as the kernel keeps it
    indexes: List[int] = dc_field(default_factory=list)
    stop_reason: str = "end"          # end | cycle | bound | fault | not-a-page | no-list
    stop_address: Optional[int] = None
    bad_prev: List[int] = dc_field(default_factory=list)   # indexes whose prevpage is wrong

    def to_json(self) -> Dict[str, object]:
        return {"head": self.head, "tail": self.tail, "size": self.size, "walked": len(self.indexes),
                "stop": {"reason": self.stop_reason, "address": self.stop_address},
                "bad_prev": list(self.bad_prev)}


def read_free_list_head(prog: Program) -> Optional[Tuple[int, int, int]]:
    """``free_pages`` as (head, tail, size), or None when absent or unreadable."""
    addr = prog.elf.address_of("free_pages")
    if addr is None:
        return None
    pl = prog.layouts.page_list
    try:
        d = pl.decode(prog.read(addr, pl.size))
    except (MemoryFault, ValueError):
        return None
    return d.get("head", 0), d.get("tail", 0), d.get("size", 0)


def walk_free_list(prog: Program) -> FreeListWalk:
    """Follow ``free_pages.head`` through ``nextpage``: bounded by num_pages, cycle-safe.

    Never raises on corruption: a link that is not an entry of the array, a revisited entry
    or a fault ends the walk with its reason.
    """
    hts = read_free_list_head(prog)
    if hts is None:
        return FreeListWalk(0, 0, 0, stop_reason="no-list")
    head, tail, size = hts
    walk = FreeListWalk(head, tail, size)
    num = prog.bounds.num_pages or 0
    layout = prog.layouts.page
    seen = set()
    addr, prev = head, 0
    while addr:
        idx = page_index(prog, addr)
        if idx is None:
            walk.stop_reason, walk.stop_address = "not-a-page", addr
            return walk
        if idx in seen:
            walk.stop_reason, walk.stop_address = "cycle", addr
            return walk
        if len(walk.indexes) >= num:
            walk.stop_reason, walk.stop_address = "bound", addr
            return walk
        seen.add(idx)
        try:
            _, _, nxt, prv = layout.unpack_from(prog.read(addr, layout.size), 0)
        except MemoryFault as fault:
            walk.stop_reason, walk.stop_address = "fault", fault.address
            return walk
        if prv != prev:
            walk.bad_prev.append(idx)
        walk.indexes.append(idx)
        prev, addr = addr, nxt
    return walk


@dataclass
class PageSummary:
    """Counts of pages by kind, and the free list's own count beside the walked one."""

    num_pages: int
    counts: Dict[str, int]
    scanned: int
    free_list: Optional[FreeListWalk]
    fault: Optional[int] = None

    def to_json(self) -> Dict[str, object]:
        return {"num_pages": self.num_pages, "scanned": self.scanned, "counts": dict(self.counts),
                "free_list": self.free_list.to_json() if self.free_list else None, "fault": self.fault}


def page_summary(prog: Program, walk_list: bool = True, pages: Optional[PageRange] = None,
                 free_list: Optional[FreeListWalk] = None) -> PageSummary:
    """Read the whole page array and count pages by kind (and walk the free list).

    ``pages`` (the whole array from :func:`read_pages`) and ``free_list`` (from
    :func:`walk_free_list`) reuse what a caller already read: on the real kernel each costs
    tens to hundreds of milliseconds, and ``kheap pages`` validates the same data.
    """
    rng = pages if pages is not None else read_pages(prog)
    counts = {KIND_KERNEL: 0, KIND_HEAP: 0, KIND_FREE: 0, KIND_ALLOCATED: 0, KIND_BAD: 0}
    fv = prog.layouts.page.flag_value
    by_word: Dict[int, int] = {}
    for _, word, _, _ in rng.entries:
        by_word[word] = by_word.get(word, 0) + 1
    for word, n in by_word.items():
        counts[page_kind(fv(word))] += n
    return PageSummary(prog.bounds.num_pages or 0, counts, len(rng.entries),
                       (free_list if free_list is not None else walk_free_list(prog))
                       if walk_list else None, rng.fault)
