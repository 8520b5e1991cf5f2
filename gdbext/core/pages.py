"""The page array (``page_t all_pages_array[num_pages]``) and the free-page list (``free_pages``):
their walkers and, beside them, their validator (:func:`validate_pages`).

The array is large (about 245k entries on the real kernel: 3.75 MiB on ARMv7, 7.5 MiB on
AArch64), so it is read in bulk through the cache and decoded with ``struct.iter_unpack``;
callers that only need the kernel and heap pages ask for that index range alone, because a
live target pays about one packet per 2 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from itertools import compress, count
from operator import ne, or_
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .findings import ERROR, Finding, register_code
from .layout import PAGE_SIZE
from .memory import MemoryFault
from .program import Program

__all__ = ["Page", "PageRange", "FreeListWalk", "PageSummary", "read_pages", "for_each_page",
           "walk_free_list", "page_summary", "page_kind", "expected_kind", "read_free_list_head",
           "KIND_KERNEL", "KIND_HEAP", "KIND_FREE", "KIND_ALLOCATED", "KIND_BAD", "validate_pages", "pages_checked"]

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


# -- validation ---------------------------------------------------------------------------------

PAGE_FLAGS = register_code("PAGE-FLAGS", "a page's flags (or identity) differ from the layout")
PAGE_FREELIST = register_code("PAGE-FREELIST", "free_pages holds a non-free page, has a cycle, or its count is wrong")

MAX_PAGE_FINDINGS = 16        # per kind of page problem: a wiped array must not give 245k lines

_KIND_FLAGS = {KIND_KERNEL: "allocated|kernel_page", KIND_HEAP: "allocated|kernel_heap_page",
               KIND_FREE: "0", KIND_ALLOCATED: "allocated"}


def _flag_text(prog: Program, word: int) -> str:
    names = prog.layouts.page.flag_names(word)
    return "|".join(names) if names else "0"


def pages_checked(prog: Program, full: bool = False) -> int:
    """How many ``page_t`` entries from index 0 :func:`validate_pages` reads: every one with
    ``full``, else the kernel's and the heap's."""
    b = prog.bounds
    if not b.num_pages:
        return 0
    return b.num_pages if full else min(b.num_pages, -(-b.end // PAGE_SIZE))


def _capped(findings: List[Finding], more: int, what: str, code: str) -> List[Finding]:
    out = findings[:MAX_PAGE_FINDINGS]
    rest = len(findings) - len(out) + more
    if rest:
        out.append(Finding(code, ERROR, None, f"... and {rest} more {what}", {"more": rest}))
    return out


def validate_pages(prog: Program, full: bool = False, pages: Any = None, free_list: Any = None) -> List[Finding]:
    """PAGE-FLAGS and PAGE-FREELIST over ``all_pages_array`` (page_t) and ``free_pages``.

    The rule for entry ``i``: the kernel image's pages are allocated|kernel_page, the heap's
    allocated|kernel_heap_page, any other page free or allocated; ``vaddr_mapped`` is the
    identity (``i * 4096``); only a free page past the heap may carry free-list links. It is
    stated once, over whole columns of the array (each distinct flags word is decoded once,
    the identity and the links compared list against list), so the few thousand entries of
    a default check cost a fraction of a millisecond.

    Default: the entries of the kernel image and page array, and of the heap, plus a sanity
    check of ``free_pages``' head, tail and size. ``full``: every entry, and a walk of the whole
    free list; ``pages`` (the whole array from :func:`read_pages`) and ``free_list`` (from
    :func:`walk_free_list`) reuse a caller's reads.
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
    rng = pages if full and pages is not None else read_pages(prog, 0, pages_checked(prog, full))
    if rng.fault is not None:
        out.append(Finding(PAGE_FLAGS, ERROR, rng.fault,
                           f"page array unreadable at {fmt(rng.fault)} (entry {len(rng.entries)})",
                           {"fault_address": rng.fault, "entries_read": len(rng.entries)}))
    entries = rng.entries
    n = len(entries)
    vaddrs, words, nexts, prevs = ([e[k] for e in entries] for k in range(4)) if entries else ([], [], [], [])
    kind_of = {w: page_kind(fv(w)) for w in set(words)}

    def want(i: int) -> Optional[str]:
        return KIND_KERNEL if i < kernel_end else KIND_HEAP if i < heap_end else None

    def bad_kind_in(i: int, word: int) -> bool:
        """Whether flags ``word`` are wrong for page ``i``."""
        w = want(i)
        kind = kind_of[word]
        return kind != w if w is not None else kind not in (KIND_FREE, KIND_ALLOCATED)

    suspects = set(compress(count(), map(ne, vaddrs, range(0, n * PAGE_SIZE, PAGE_SIZE))))
    for lo, hi in ((0, kernel_end), (kernel_end, heap_end), (heap_end, n)):
        lo, hi = min(lo, n), min(hi, n)
        region = words[lo:hi]
        bad_words = {w for w in set(region) if bad_kind_in(lo, w)}
        if bad_words:
            suspects.update(i for i, w in enumerate(region, lo) if w in bad_words)
    flag_findings: List[Finding] = []
    for i in sorted(suspects):
        vaddr, word = vaddrs[i], words[i]
        w = want(i)
        entry = b.page_array + i * layout.size
        if bad_kind_in(i, word):
            expect = _KIND_FLAGS[w] if w else "0 or allocated"
            msg = f"page {i} ({fmt(i * PAGE_SIZE)}) has flags {_flag_text(prog, word)}, expected {expect}"
        else:
            msg = f"page {i} has vaddr_mapped {fmt(vaddr)}, expected {fmt(i * PAGE_SIZE)}"
        flag_findings.append(Finding(PAGE_FLAGS, ERROR, entry, msg,
                                     {"index": i, "entry": entry, "vaddr_mapped": vaddr, "flags": fv(word),
                                      "expected": w or "free|allocated"}))
    link_findings: List[Finding] = []
    for i in compress(count(), map(or_, nexts, prevs)):
        w = want(i)
        if w is None and kind_of[words[i]] != KIND_ALLOCATED:
            continue                 # a free page's links are the free list's; impossible flags are PAGE-FLAGS'
        entry = b.page_array + i * layout.size
        what = f"a {w} page" if w else "in use (handed out by alloc_page)"
        link_findings.append(Finding(PAGE_FREELIST, ERROR, entry,
                                     f"page {i} is {what} but has free-list links "
                                     f"next={fmt(nexts[i])} prev={fmt(prevs[i])}",
                                     {"index": i, "entry": entry, "nextpage": nexts[i], "prevpage": prevs[i]}))
    out += _capped(flag_findings, 0, "pages with wrong flags", PAGE_FLAGS)
    out += _capped(link_findings, 0, "in-use pages with links", PAGE_FREELIST)

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
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"free_pages.{name} = {fmt(value)} is not an entry of the page array", vals))
        elif idx < heap_end:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"free_pages.{name} is page {idx}, a {'kernel' if idx < kernel_end else 'heap'} page",
                               dict(vals, index=idx)))
    if (head == 0) != (tail == 0) or (head == 0 and lsize != 0):
        out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                           f"free_pages is inconsistent: head={fmt(head)} tail={fmt(tail)} size={lsize}", vals))
    can_be_free = b.num_pages - min(heap_end, b.num_pages)
    if lsize > can_be_free:
        out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                           f"free_pages.size = {lsize} but only {can_be_free} pages can be free", vals))
    if full:
        free_pages = {i for i in range(heap_end, n) if kind_of[words[i]] == KIND_FREE}
        out += _validate_free_list(prog, free_pages, vals, fl_addr, words, kind_of, free_list)
    return out


def _validate_free_list(prog: Program, free_pages: set, vals: Dict[str, int], fl_addr: Optional[int],
                        words: List[int], kind_of: Dict[int, str], walk: Any = None) -> List[Finding]:
    out: List[Finding] = []
    fmt = prog.fmt
    if walk is None:
        walk = walk_free_list(prog)
    entry_size = prog.layouts.page.size
    base = prog.bounds.page_array
    if walk.stop_reason == "cycle":
        out.append(Finding(PAGE_FREELIST, ERROR, walk.stop_address,
                           f"free_pages has a cycle: it returns to {fmt(walk.stop_address)} after "
                           f"{len(walk.indexes)} pages", dict(vals, walked=len(walk.indexes))))
    elif walk.stop_reason in ("not-a-page", "fault", "bound"):
        out.append(Finding(PAGE_FREELIST, ERROR, walk.stop_address,
                           f"free_pages walk stopped ({walk.stop_reason}) at {fmt(walk.stop_address)}",
                           dict(vals, walked=len(walk.indexes))))
    bad = 0
    for idx in walk.indexes:
        if idx < len(words) and kind_of[words[idx]] not in (KIND_FREE, KIND_BAD):   # bad: PAGE-FLAGS says it
            bad += 1
            if bad <= MAX_PAGE_FINDINGS:
                out.append(Finding(PAGE_FREELIST, ERROR, base + idx * entry_size,
                                   f"free_pages holds page {idx}, which is not free ({_flag_text(prog, words[idx])})",
                                   {"index": idx, "flags": prog.layouts.page.flag_value(words[idx])}))
    if walk.stop_reason == "end":
        if len(walk.indexes) != walk.size:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"free_pages.size = {walk.size} but the list holds {len(walk.indexes)} pages",
                               dict(vals, walked=len(walk.indexes))))
        last = walk.indexes[-1] if walk.indexes else None
        if last is not None and page_index(prog, walk.tail) != last:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"free_pages.tail = {fmt(walk.tail)} is not the last page of the list", vals))
        missing = free_pages - set(walk.indexes)
        if missing:
            first = min(missing)
            out.append(Finding(PAGE_FREELIST, ERROR, base + first * entry_size,
                               f"{len(missing)} free pages are not on free_pages (first: page {first})",
                               {"missing": len(missing), "first": first}))
    if walk.bad_prev:
        idx = walk.bad_prev[0]
        out.append(Finding(PAGE_FREELIST, ERROR, base + idx * entry_size,
                           f"{len(walk.bad_prev)} free-list pages have a wrong prevpage (first: page {idx})",
                           {"count": len(walk.bad_prev), "first": idx}))
    return out
