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
from .text import plural

__all__ = ["Page", "PageRange", "FreeListWalk", "PageSummary", "PageConvention", "page_convention", "kind_at",
           "parse_page_convention", "PAGE_CONVENTIONS", "read_pages", "for_each_page",
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


# -- the kernel's page conventions --------------------------------------------------------------

VADDR_IDENTITY = "identity"        # vaddr_mapped = i * 4096 on every page (the contract)
VADDR_MAPPED = "mapped-only"       # i * 4096 on the pages the kernel maps (image, heap), 0 elsewhere
HEAP_BIT = "heap-bit"              # heap pages: allocated|kernel_heap_page (the contract)
NO_HEAP_BIT = "no-heap-bit"        # heap pages: allocated|kernel_page (Mazarin: no heap-page bit)
EITHER = "either"
# The setting's words (gdb/lldb 'page-convention', the CLI's --page-convention), comma-separated,
# one per question; 'auto' leaves both to the ELF or, where it cannot tell, to either alternative.
PAGE_CONVENTIONS = ("auto", VADDR_IDENTITY, VADDR_MAPPED, HEAP_BIT, NO_HEAP_BIT)


def parse_page_convention(text: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(vaddr convention, heap-page convention)`` chosen by the setting (None: automatic).
    Raises ValueError on an unknown word."""
    vaddr = heap = None
    for word in (text or "auto").replace(" ", "").lower().split(","):
        if word in ("", "auto"):
            continue
        if word in (VADDR_IDENTITY, VADDR_MAPPED, "mapped"):
            vaddr = VADDR_MAPPED if word == "mapped" else word
        elif word in (HEAP_BIT, NO_HEAP_BIT, "allocated-kernel"):
            heap = NO_HEAP_BIT if word == "allocated-kernel" else word
        else:
            raise ValueError(f"unknown page convention {word!r}: expected a comma-separated choice of "
                             f"{', '.join(PAGE_CONVENTIONS)}")
    return vaddr, heap


@dataclass(frozen=True)
class PageConvention:
    """What a healthy page array looks like in this kernel: ``vaddr`` (identity, mapped-only or
    either) and ``heap`` (heap-bit, no-heap-bit or either), each with where it came from."""

    vaddr: str
    heap: str
    vaddr_source: str
    heap_source: str

    def heap_kinds(self) -> Tuple[str, ...]:
        """The kinds a heap page may have."""
        return {HEAP_BIT: (KIND_HEAP,), NO_HEAP_BIT: (KIND_KERNEL,)}.get(self.heap, (KIND_HEAP, KIND_KERNEL))

    def other_kinds(self) -> Tuple[str, ...]:
        """The kinds a page past the heap may have: free, or handed out by alloc_page (which
        flags it allocated|kernel_page in a kernel without a heap-page bit)."""
        return (KIND_FREE, KIND_ALLOCATED) + (() if self.heap == HEAP_BIT else (KIND_KERNEL,))

    def to_json(self) -> Dict[str, str]:
        return {"vaddr_mapped": self.vaddr, "vaddr_source": self.vaddr_source,
                "heap_pages": self.heap, "heap_source": self.heap_source}


def page_convention(prog: Program) -> PageConvention:
    """The page conventions of ``prog``'s kernel: the setting's choice, else what the layout
    establishes (a heap-page bit-field, or constants naming the bits without one), else either
    alternative (the report then says which one the pages followed)."""
    try:
        vaddr, heap = parse_page_convention(prog.overrides.page_convention)
    except ValueError:
        vaddr = heap = None
    layout = prog.layouts.page
    vaddr_source = "setting" if vaddr else "not known from the ELF: either accepted"
    if heap:
        heap_source = "setting"
    elif layout.heap_bit is not None:
        heap = HEAP_BIT if layout.heap_bit else NO_HEAP_BIT
        heap_source = layout.flag_source
    else:
        heap, heap_source = EITHER, "not known from the ELF: either accepted"
    return PageConvention(vaddr or EITHER, heap, vaddr_source, heap_source)


def kind_at(conv: PageConvention, index: int, kind: str, kernel_end: int, heap_end: int) -> str:
    """A page's kind where it stands: allocated|kernel_page on a heap page is a heap page in a
    kernel without a heap-page bit, and one past the heap a page alloc_page handed out."""
    if kind == KIND_KERNEL and index >= kernel_end and conv.heap != HEAP_BIT:
        return KIND_HEAP if index < heap_end else KIND_ALLOCATED
    return kind


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
    tail: Optional[int]               # None: the kernel keeps only a head pointer (Go)
    size: Optional[int]               # page_list_t.size as the kernel keeps it (None: no count)
    indexes: List[int] = dc_field(default_factory=list)
    stop_reason: str = "end"          # end | cycle | bound | fault | not-a-page | no-list
    stop_address: Optional[int] = None
    bad_prev: List[int] = dc_field(default_factory=list)   # indexes whose prevpage is wrong

    def to_json(self) -> Dict[str, object]:
        return {"head": self.head, "tail": self.tail, "size": self.size, "walked": len(self.indexes),
                "stop": {"reason": self.stop_reason, "address": self.stop_address},
                "bad_prev": list(self.bad_prev)}


def free_list_is_head_only(prog: Program) -> bool:
    """Whether ``free_pages`` is a bare pointer to the first free page (Go's ``freePages
    *Page``: no tail, no count) rather than a ``page_list_t``."""
    vt = prog.elf.variable_type("free_pages")
    return vt is not None and vt[0].endswith("*")


def read_free_list_head(prog: Program) -> Optional[Tuple[int, Optional[int], Optional[int]]]:
    """``free_pages`` as (head, tail, size), or None when absent or unreadable; tail and size
    are None when the kernel keeps only a head pointer."""
    addr = prog.elf.address_of("free_pages")
    if addr is None:
        return None
    if free_list_is_head_only(prog):
        try:
            return prog.read_pointer(addr), None, None
        except MemoryFault:
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
    conv = page_convention(prog)
    b = prog.bounds
    kernel_end, heap_end = b.start // PAGE_SIZE, -(-b.end // PAGE_SIZE)
    words = [e[1] for e in rng.entries]
    # Each region's words counted once (allocated|kernel_page means kernel, heap or an
    # alloc_page page by where it stands in a kernel without a heap-page bit).
    last = rng.first + len(words)
    for lo, hi in ((0, kernel_end), (kernel_end, heap_end), (heap_end, last)):
        by_word: Dict[int, int] = {}
        for word in words[max(0, lo - rng.first):max(0, min(hi, last) - rng.first)]:
            by_word[word] = by_word.get(word, 0) + 1
        for word, n in by_word.items():
            counts[kind_at(conv, lo, page_kind(fv(word)), kernel_end, heap_end)] += n
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


def _convention_notes(prog: Program, conv: PageConvention, unmapped: int, heap_words: List[int],
                      kind_of: Dict[int, str]) -> None:
    """Say which convention the pages followed where the ELF could not tell (no note when the
    pages follow the contract, or the setting chose)."""
    if unmapped and conv.vaddr == EITHER:
        prog.add_note(f"page convention: {plural(unmapped, 'page')} past the heap {'has' if unmapped == 1 else 'have'} "
                      f"{prog.layouts.page.vaddr.name} 0: assumed the kernel sets it only on the pages it maps "
                      "(mapped-only; the ELF does not say; 'page-convention identity' makes them errors)")
    if conv.heap == EITHER and any(kind_of[w] == KIND_KERNEL for w in set(heap_words)):
        prog.add_note("page convention: heap pages are flagged allocated|kernel_page: assumed the kernel has no "
                      "heap-page bit (no-heap-bit; the ELF does not say; 'page-convention heap-bit' makes them errors)")


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
    conv = page_convention(prog)
    kernel_end = b.start // PAGE_SIZE
    heap_end = -(-b.end // PAGE_SIZE)
    rng = pages if full and pages is not None else read_pages(prog, 0, pages_checked(prog, full))
    if rng.fault is not None:
        out.append(Finding(PAGE_FLAGS, ERROR, rng.fault,
                           f"page array unreadable at {fmt(rng.fault)} (entry {len(rng.entries)})",
                           {"fault_address": rng.fault, "entries_read": len(rng.entries)}))
    entries = rng.entries
    n = len(entries)
    vaddrs, words, nexts, prevs = map(list, zip(*entries)) if entries else ([], [], [], [])     # columns, in C
    kind_of = {w: page_kind(fv(w)) for w in set(words)}
    heap_kinds, other_kinds = conv.heap_kinds(), conv.other_kinds()

    def want(i: int) -> Optional[str]:
        return KIND_KERNEL if i < kernel_end else KIND_HEAP if i < heap_end else None

    def bad_kind_in(i: int, word: int) -> bool:
        """Whether flags ``word`` are wrong for page ``i``."""
        w = want(i)
        kind = kind_of[word]
        return kind != KIND_KERNEL if w == KIND_KERNEL else kind not in heap_kinds if w == KIND_HEAP else \
            kind not in other_kinds

    # vaddr_mapped: the identity on the kernel's and the heap's pages; past the heap, the
    # identity or 0 as the convention says (either: both, and the report says which it saw).
    suspects = set()
    unmapped = 0                      # pages past the heap with vaddr_mapped 0 (mapped-only)
    for i in compress(count(), map(ne, vaddrs, range(0, n * PAGE_SIZE, PAGE_SIZE))):
        if i >= heap_end and vaddrs[i] == 0 and conv.vaddr != VADDR_IDENTITY:
            unmapped += 1
        else:
            suspects.add(i)
    if conv.vaddr == VADDR_MAPPED:
        suspects.update(i for i in range(heap_end, n) if vaddrs[i] != 0)
    for lo, hi in ((0, kernel_end), (kernel_end, heap_end), (heap_end, n)):
        lo, hi = min(lo, n), min(hi, n)
        region = words[lo:hi]
        bad_words = {w for w in set(region) if bad_kind_in(lo, w)}
        if bad_words:
            suspects.update(i for i, w in enumerate(region, lo) if w in bad_words)
    _convention_notes(prog, conv, unmapped, words[min(kernel_end, n):min(heap_end, n)], kind_of)
    expect_vaddr = {VADDR_IDENTITY: "the identity", VADDR_MAPPED: "0 (not mapped)"}
    flag_findings: List[Finding] = []
    for i in sorted(suspects):
        vaddr, word = vaddrs[i], words[i]
        w = want(i)
        entry = b.page_array + i * layout.size
        if bad_kind_in(i, word):
            expect = _KIND_FLAGS[w] if w == KIND_KERNEL else " or ".join(_KIND_FLAGS[k] for k in heap_kinds) \
                if w == KIND_HEAP else " or ".join(dict.fromkeys(_KIND_FLAGS[k] for k in other_kinds))
            msg = f"page {i} ({fmt(i * PAGE_SIZE)}) has flags {_flag_text(prog, word)}, expected {expect}"
        else:
            wanted = 0 if w is None and conv.vaddr == VADDR_MAPPED else i * PAGE_SIZE
            msg = f"page {i} has {layout.vaddr.name} {fmt(vaddr)}, expected {fmt(wanted)}"
            if w is None and conv.vaddr == VADDR_MAPPED:
                msg += f" ({expect_vaddr[VADDR_MAPPED]}: page-convention {conv.vaddr})"
        flag_findings.append(Finding(PAGE_FLAGS, ERROR, entry, msg,
                                     {"index": i, "entry": entry, "vaddr_mapped": vaddr, "flags": fv(word),
                                      "expected": w or "free|allocated"}))
    link_findings: List[Finding] = []
    in_use = (KIND_ALLOCATED,) if conv.heap == HEAP_BIT else (KIND_ALLOCATED, KIND_KERNEL)
    for i in compress(count(), map(or_, nexts, prevs)):
        w = want(i)
        if w is None and kind_of[words[i]] not in in_use:
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
    fl_name = prog.elf.symbol_name("free_pages") or "free_pages"
    vals = {"head": head, "tail": tail, "size": lsize}
    if tail is None:
        vals = {"head": head}
    for name, value in (("head", head), ("tail", tail)):
        if not value:
            continue
        idx = page_index(prog, value)
        if idx is None:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"{fl_name if tail is None else fl_name + '.' + name} = {fmt(value)} is not an entry "
                               "of the page array", vals))
        elif idx < heap_end:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"{fl_name if tail is None else fl_name + '.' + name} is page {idx}, a "
                               f"{'kernel' if idx < kernel_end else 'heap'} page",
                               dict(vals, index=idx)))
    if tail is None or lsize is None:
        pass                          # a bare head pointer: nothing to compare it with
    elif (head == 0) != (tail == 0) or (head == 0 and lsize != 0):
        out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                           f"free_pages is inconsistent: head={fmt(head)} tail={fmt(tail)} size={lsize}", vals))
    can_be_free = b.num_pages - min(heap_end, b.num_pages)
    if lsize is not None and lsize > can_be_free:
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
    fl_name = prog.elf.symbol_name("free_pages") or "free_pages"
    if walk.stop_reason == "cycle":
        out.append(Finding(PAGE_FREELIST, ERROR, walk.stop_address,
                           f"{fl_name} has a cycle: it returns to {fmt(walk.stop_address)} after "
                           f"{len(walk.indexes)} pages", dict(vals, walked=len(walk.indexes))))
    elif walk.stop_reason in ("not-a-page", "fault", "bound"):
        out.append(Finding(PAGE_FREELIST, ERROR, walk.stop_address,
                           f"{fl_name} walk stopped ({walk.stop_reason}) at {fmt(walk.stop_address)}",
                           dict(vals, walked=len(walk.indexes))))
    bad = 0
    for idx in walk.indexes:
        if idx < len(words) and kind_of[words[idx]] not in (KIND_FREE, KIND_BAD):   # bad: PAGE-FLAGS says it
            bad += 1
            if bad <= MAX_PAGE_FINDINGS:
                out.append(Finding(PAGE_FREELIST, ERROR, base + idx * entry_size,
                                   f"{fl_name} holds page {idx}, which is not free ({_flag_text(prog, words[idx])})",
                                   {"index": idx, "flags": prog.layouts.page.flag_value(words[idx])}))
    if walk.stop_reason == "end" and walk.size is not None:
        if len(walk.indexes) != walk.size:
            out.append(Finding(PAGE_FREELIST, ERROR, fl_addr,
                               f"free_pages.size = {walk.size} but the list holds {len(walk.indexes)} pages",
                               dict(vals, walked=len(walk.indexes))))
    if walk.stop_reason == "end":
        last = walk.indexes[-1] if walk.indexes else None
        if last is not None and walk.tail is not None and page_index(prog, walk.tail) != last:
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
