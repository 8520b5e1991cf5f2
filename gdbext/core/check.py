"""``check``: the walk, every finding and a verdict, and the kernel's own counters beside them.

One corruption should give one code: where a first fault explains the next (a broken size
explains the gap after it; a cycle's back link explains its wrong length) only the first is
reported, and the counters are compared with the walk only when the list itself is sound.

The default check reads the heap plus the ``page_t`` entries of the kernel image and the heap
and the ``free_pages`` head, asked for at once (over the remote protocol: one pipelined
stream); ``full=True`` also reads the whole page array and walks the free list, which on a
live target costs about one packet per 2 KiB (a few thousand packets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any, List, Tuple

from .findings import CODES, ERROR, STRUCTURAL, UNREAD, WARNING, Culprit, Finding, register_code
from .pages import pages_checked, validate_pages
from .program import Program
from .text import plural

__all__ = ["CheckReport", "check", "validate_stats", "CODES"]

STATS = register_code("HEAP-STATS", "heap_stats disagree with the walk")


@dataclass
class CheckReport:
    """A heap walk, every finding, and the verdict ('ok', 'warnings', 'incomplete' or 'corrupt').

    ``unread``: the heap's ``(start, end)`` ranges that could not be read. A check that found
    nothing wrong in what it read but could not read all of the heap is 'incomplete' (a
    missing fact: CLI exit 2), never 'ok'; one that found errors in what it read is 'corrupt'
    (exit 1) whatever it could not read.
    """

    walk: Any
    findings: List[Finding]
    full: bool
    notes: List[str]
    unread: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def verdict(self) -> str:
        if any(f.code not in UNREAD for f in self.errors):
            return "corrupt"
        if self.unread or self.errors:
            return "incomplete"
        return "warnings" if self.findings else "ok"

    @property
    def codes(self) -> List[str]:
        return sorted({f.code for f in self.findings})


def validate_stats(prog: Program, walk: Any, structure_ok: bool = True) -> List[Finding]:
    """HEAP-STATS: ``heap_stats`` (heap_stats_t) against the walk and against itself.

    The comparison with the walk is only made on a complete, structurally sound walk
    (``structure_ok``): on a broken list the walk's totals mean nothing.
    """
    ks = prog.read_kernel_stats()
    if ks is None:
        return []
    out: List[Finding] = []
    addr = prog.elf.address_of("heap_stats")
    mask = (1 << (8 * prog.pointer_size)) - 1
    alloc, frees = ks.get("allocations"), ks.get("frees")
    cur = ks.get("current_usage")
    if {"bytes_allocated", "bytes_freed"} <= ks.keys() and cur is not None:
        if (ks["bytes_allocated"] - ks["bytes_freed"]) & mask != cur:
            out.append(Finding(STATS, ERROR, addr,
                               f"heap_stats: bytes_allocated - bytes_freed = "
                               f"{(ks['bytes_allocated'] - ks['bytes_freed']) & mask} but current_usage = {cur}",
                               dict(ks)))
    if cur is not None and ks.get("peak_usage") is not None and ks["peak_usage"] < cur:
        out.append(Finding(STATS, ERROR, addr,
                           f"heap_stats: peak_usage {ks['peak_usage']} is below current_usage {cur}", dict(ks)))
    if structure_ok and walk.complete and alloc is not None and frees is not None:
        figures = prog.allocator.figures(walk)
        live = (alloc - frees) & 0xFFFFFFFF
        hint = _double_free(prog, walk, figures, live, cur)
        if live != figures.used_count:
            out.append(Finding(STATS, ERROR, addr,
                               f"heap_stats: allocations - frees = {live} but the walk found "
                               f"{figures.used_count} used segments",
                               {"kernel_live": live, "walk_used": figures.used_count, **ks}, hint))
        if cur is not None and cur != figures.used_bytes:
            out.append(Finding(STATS, ERROR, addr,
                               f"heap_stats: current_usage = {cur} but used segments total "
                               f"{figures.used_bytes} bytes",
                               {"current_usage": cur, "walk_used_bytes": figures.used_bytes, **ks}, hint))
    return out


def _double_free(prog: Program, walk: Any, figures: Any, live: int, current_usage: Any) -> Any:
    """The culprit of counters that disagree the way a double free makes them, else None.

    A second ``kfree`` of a block already free counts one more free and subtracts the block's
    size from ``current_usage`` again, while the list does not change: the kernel then counts
    fewer live allocations than the walk finds used segments, and fewer bytes in use than they
    hold. (A kmalloc that forgot to count looks the same; a double free is the usual cause.)
    When exactly one free segment has the missing size, it is named."""
    extra = figures.used_count - live
    if extra <= 0 or current_usage is None:
        return None
    missing = figures.used_bytes - current_usage
    if missing <= 0:
        return None
    same = [b.address for b in prog.allocator.blocks(walk, prog.heap_end)
            if b.state == "free" and b.size == missing] if extra == 1 else []
    reason = (f"likely double free: the kernel counts {plural(extra, 'fewer live allocation')} "
              f"and {missing} fewer bytes in use than the list holds, as when kfree runs twice on one "
              "block (the second call counts it again)")
    if len(same) == 1:
        return Culprit(same[0], reason + f"; the free segment at {prog.fmt(same[0])} has exactly that size")
    return Culprit(None, reason)


class _Follower:
    """The read's progress callback: feeds the allocator's walker the heap's bytes as they
    arrive and lets the family's validator judge what has been walked, so over the remote
    protocol the walk and most of the rule run while the client waits for the stub (a link's
    read calls it only then). It keeps the bytes only from the lowest address the walk or the
    validator still needs (the header the walk needs next, the headers not yet judged, a free
    payload being looked at), never a second copy of the heap. Nothing here may read memory:
    the read is busy.
    """

    def __init__(self, walker: Any, validator: Any) -> None:
        self.walker = walker
        self.validator = validator
        self.need: Any = None              # the lowest address the validator still needs bytes from
        self.run: Any = None               # the address of the range being followed
        self.window = bytearray()
        self.base = 0
        self.used = 0                      # chunks of that range already in the window

    def _wanted(self) -> Any:
        want, need = self.walker.next_address, self.need
        return need if want is None else want if need is None else min(want, need)

    # Replies worth a round (walk, rule, poison): each round has a fixed cost of some
    # microseconds, and a bulk read of the remote protocol waits ~500 times for 2 KiB replies;
    # the client itself is busy most of the stream, so every round must count.
    BATCH = 8

    def __call__(self, address: int, chunks: List[bytes]) -> None:
        if address == self.run and len(chunks) - self.used < self.BATCH:
            return                         # too little new since the last round
        want = self._wanted()
        if want is None or address > want:
            return                         # all done, or this range is not the heap's
        if address != self.run:
            self.run, self.window, self.base, self.used = address, bytearray(), address, 0
        for chunk in islice(chunks, self.used, None):
            self.window += chunk
        self.used = len(chunks)
        self.walker.feed(self.window, self.base)
        self.need = self.validator.follow(self.walker, self.window, self.base)
        want = self._wanted()
        if want is not None and want - self.base > len(self.window) // 2:
            cut = min(want - self.base, len(self.window))
            del self.window[:cut]
            self.base += cut


def check(prog: Program, full: bool = False, pages: bool = True) -> CheckReport:
    """Walk the heap and run every validator; ``full`` adds the whole page array and free list.

    ``prog``: the :class:`Program`. Raises only :class:`ProgramError` (heap not locatable).
    """
    b = prog.bounds
    wanted = [(b.start, b.size)]
    if pages and b.page_array is not None:
        wanted.append((b.page_array, pages_checked(prog, full) * prog.layouts.page.size))
    allocator = prog.allocator
    walker, validator = allocator.walker(prog), allocator.validator(prog)
    prog.memory.prefetch_ranges(wanted, progress=_Follower(walker, validator))
    walk = walker.finish()
    findings = validator.finish(walk)
    unread = prog.unread_heap()
    notes = list(prog.notes)
    structure_ok = not any(f.code in STRUCTURAL for f in findings)
    if prog.poison_byte() is None:
        notes.append("poison check off (heap_poison is -1 or unknown)")
    findings += validate_stats(prog, walk, structure_ok)
    if prog.read_kernel_stats() is None:
        notes.append("heap_stats not available: kernel counters not compared")
    if pages:
        if prog.bounds.page_array is None or not prog.bounds.num_pages:
            notes.append("page array unknown (no __end/num_pages): page checks skipped")
        else:
            findings += validate_pages(prog, full)
            notes += [n for n in prog.notes if n not in notes]     # the conventions the pages followed
    return CheckReport(walk, findings, full, notes, unread)
