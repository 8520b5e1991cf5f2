"""Reachability from one stopped moment: a conservative leak scan, and who points where.

kmemleak's question without kmemleak's tracking: which allocated blocks can the kernel still
reach? The roots are what the kernel's code can name at this moment:

- the writable sections of the kernel image (``.data``, ``.bss`` and the like, from the ELF's
  section flags), less the stacks that lie inside them;
- the live part of each stack: from a core's SP up to the stack's top. Stacks come from the
  kernel's linker symbols (``boot_stack_top``...; the bottom is where the object below the top
  ends) or from the ``stacks`` setting. The frames below SP are dead: they still hold the
  pointers of calls that returned, often to exactly the blocks that are lost;
- every register of every core.

From the roots, every pointer-aligned, pointer-sized word whose value lies inside an allocated
block's payload (interior pointers count) marks that block, and marked payloads are scanned in
turn. What stays unmarked is reported (:func:`leak_scan`). The same word scan answers "who
points into this block?" (:func:`find_refs`) and "which free blocks are still pointed into?"
(:func:`dangling`).

Values pointing into a block's header do not mark it: the allocator's own list head and
neighbour links point there, and no owner holds a header. Free blocks are never scanned.

Nothing here decodes the allocator's data: blocks and their payload ranges come from
``prog.allocator`` (``blocks``, ``payload_ranges``). Speed comes from never taking a Python
step per word: :func:`scan_words` screens whole buffers in C (the top bytes of every word as
byte columns, ``bytes.translate`` and big-integer ``&``) and decodes only the candidates
(``memoryview.cast``); candidates are placed in blocks by a granule table (or ``bisect``) in
C-level maps, and the mark follows the resulting edges.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field as dc_field
from itertools import chain, compress, repeat
from math import gcd
from operator import (add as add_op, and_ as and_op, floordiv as floordiv_op, gt as gt_op, lt as lt_op,
                      mul as mul_op, ne as ne_op, sub as sub_op)
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .memory import MemoryFault
from .text import parse_size

# The stacks setting as each face spells it: a note is the same in every face's report.
STACKS_SETTING = "the stacks setting: --stacks (CLI), set kheap stacks (gdb), kheap set stacks (lldb)"

__all__ = ["StackRegion", "CoreState", "RootRange", "Roots", "StackSpecError", "stack_regions",
           "parse_stack_spec", "plan_roots", "gather_roots", "scan_words", "HeapIndex", "LeakScan", "leak_scan",
           "Refs", "find_refs", "dangling", "SP_NAMES"]

SP_NAMES = ("sp", "r13", "x31", "rsp", "esp")
STACK_ALIGN = 16
_TOP_WORDS = ("top", "end", "high", "hi")
_BOTTOM_WORDS = ("bottom", "base", "start", "low", "lo", "limit")
_TOP_SYMBOL = re.compile(r"^(?P<stem>_*\w*?stack)_?(?:top|end|high|hi)$|^_estack$|^__stack$", re.IGNORECASE)
_EXPRESSION = re.compile(r"\s*([A-Za-z_.$][\w.$]*|0[xX][0-9a-fA-F]+|\d+)\s*(?:([+-])\s*(0[xX][0-9a-fA-F]+|\d+))?\s*$")


class StackSpecError(ValueError):
    """The ``stacks`` setting cannot be understood (bad syntax, unknown symbol)."""


@dataclass(frozen=True)
class StackRegion:
    """One stack: ``[low, top)``; it grows down from ``top``."""

    name: str
    low: int
    top: int
    source: str               # how it was found: "symbols" or "setting"

    @property
    def size(self) -> int:
        return self.top - self.low


@dataclass
class CoreState:
    """One core (a gdbstub thread) as the face sees it: its registers and, where a debugger
    can unwind, its frames newest first (``{"pc", "function", "sp"}``)."""

    cpu: int
    registers: Dict[str, int]
    frames: List[Dict[str, Any]] = dc_field(default_factory=list)

    def __post_init__(self) -> None:
        # The general-purpose registers only, as triage shows them: gdb's "general" group brings
        # QEMU's hundreds of system registers, lldb's its vector registers, the CLI's 'g' neither;
        # every face must see (and count) the same roots.
        from .triage import core_registers

        self.registers = core_registers(self.registers)

    @property
    def sp(self) -> Optional[int]:
        for name in SP_NAMES:
            if name in self.registers:
                return self.registers[name]
        return None


@dataclass
class RootRange:
    """Memory the scan treats as a root: a piece of a writable section or a live stack."""

    kind: str                 # "section" | "stack"
    name: str
    start: int
    end: int
    cpu: Optional[int] = None
    data: bytes = b""         # what could be read (a prefix of the range)

    @property
    def missing(self) -> int:
        return self.end - self.start - len(self.data)

    def to_json(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "name": self.name, "start": self.start, "end": self.end,
               "read": len(self.data), "missing": self.missing}
        if self.cpu is not None:
            out["cpu"] = self.cpu
        return out


@dataclass
class Roots:
    """Everything the scan starts from, and what could not be had."""

    ranges: List[RootRange]
    cores: List[CoreState]
    stacks: List[Dict[str, Any]]          # each stack region, and what part of it is live
    notes: List[str] = dc_field(default_factory=list)

    @property
    def missing(self) -> List[RootRange]:
        return [r for r in self.ranges if r.missing]

    def to_json(self) -> Dict[str, Any]:
        return {"ranges": [r.to_json() for r in self.ranges], "stacks": self.stacks,
                "registers": [{"cpu": c.cpu, "count": len(c.registers), "sp": c.sp} for c in self.cores],
                "bytes": sum(len(r.data) for r in self.ranges), "notes": list(self.notes)}


# -- stacks --------------------------------------------------------------------------------------
def _section_of(elf: Any, address: int) -> Optional[Any]:
    for sec in elf.sections:
        if sec.address <= address < sec.address + sec.size:
            return sec
    return None


def stack_regions(elf: Any) -> Tuple[List[StackRegion], List[str]]:
    """The kernel's stacks from its linker symbols, and notes on how each was bounded.

    A top is a label named like ``*stack_top`` / ``*stack_end`` / ``_estack``. Its bottom is a
    ``*stack_bottom`` / ``*_base`` / ``*_start`` label when there is one, else where the nearest
    symbol below the top ends (another stack's top, or the last object before the stack), no
    lower than the start of the section holding it, rounded up to 16 bytes.
    """
    notes: List[str] = []
    tops = []
    for sym in elf.symbols.values():
        m = _TOP_SYMBOL.match(sym.name)
        if m and sym.kind != "func" and not sym.size and sym.address:
            tops.append((sym.address, sym.name, (m.group("stem") or sym.name).rstrip("_")))
    tops.sort()
    regions: List[StackRegion] = []
    others = [s for s in elf.symbols.values() if s.kind not in ("section", "file") and s.address]
    for top, name, stem in tops:
        low = None
        for word in _BOTTOM_WORDS:
            for candidate in (f"{stem}_{word}", f"{stem}{word}"):
                addr = elf.address_of(candidate)
                if addr is not None and addr < top:
                    low = addr
                    break
            if low is not None:
                break
        if low is None:
            bound = 0
            for s in others:
                if s.address >= top or s.name == name:
                    continue
                end = s.address + s.size if s.size else s.address
                if end <= top:
                    bound = max(bound, end)
            sec = _section_of(elf, top - 1)
            if sec is not None:
                bound = max(bound, sec.address)
            if not bound:
                notes.append(f"{name}: no symbol or section below it bounds the stack: not used; give "
                             f"it with {STACKS_SETTING}")
                continue
            low = -(-bound // STACK_ALIGN) * STACK_ALIGN
            if low >= top:
                continue
        regions.append(StackRegion(stem, low, top, "symbols"))
    return regions, notes


def _address(elf: Any, text: str) -> int:
    m = _EXPRESSION.match(text)
    if not m:
        raise StackSpecError(f"not an address: {text.strip()!r}")
    base, sign, off = m.groups()
    if base[0].isdigit():
        value = int(base, 0)
    else:
        value = elf.address_of(base)
        if value is None:
            raise StackSpecError(f"no symbol {base!r} in the ELF")
    if off:
        value = value + int(off, 0) if sign == "+" else value - int(off, 0)
    return value


def parse_stack_spec(elf: Any, spec: str) -> List[StackRegion]:
    """The ``stacks`` setting: comma-separated ``TOP:SIZE`` or ``LOW..TOP`` items (numbers,
    symbols, ``symbol+offset``), or ``none``. Raises :class:`StackSpecError`."""
    spec = (spec or "").strip()
    if spec.lower() == "none":
        return []
    regions = []
    for n, item in enumerate(i.strip() for i in spec.split(",")):
        if not item:
            continue
        if ".." in item:
            lo_text, top_text = item.split("..", 1)
            low, top = _address(elf, lo_text), _address(elf, top_text)
            name = top_text.strip() if not top_text.strip()[0].isdigit() else f"stack{n}"
        elif ":" in item:
            top_text, size_text = item.rsplit(":", 1)
            top = _address(elf, top_text)
            try:
                size = parse_size(size_text)          # the one size parser: 0x1000, 4k, 64k
            except ValueError as error:
                raise StackSpecError(f"not a size in {item!r}: {error}") from None
            low = top - size
            name = top_text.strip() if not top_text.strip()[0].isdigit() else f"stack{n}"
        else:
            raise StackSpecError(f"{item!r}: expected TOP:SIZE or LOW..TOP")
        if not 0 <= low < top:
            raise StackSpecError(f"{item!r}: an empty or negative range")
        regions.append(StackRegion(name, low, top, "setting"))
    return regions


# -- roots ---------------------------------------------------------------------------------------
def _subtract(ranges: List[Tuple[int, int]], holes: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    for hlo, hhi in holes:
        out = []
        for lo, hi in ranges:
            if hhi <= lo or hlo >= hi:
                out.append((lo, hi))
                continue
            if lo < hlo:
                out.append((lo, hlo))
            if hhi < hi:
                out.append((hhi, hi))
        ranges = out
    return ranges


def plan_roots(prog: Any, cores: Sequence[CoreState], stack_spec: Optional[str] = None) -> Roots:
    """The roots of this moment (module docstring) without reading them: every range to scan,
    each stack and what part of it is live, the cores, and notes. ``cores``: every core the
    face knows (registers, and frames where it can unwind); ``stack_spec``: the ``stacks``
    setting (None: from the ELF's symbols; raises :class:`StackSpecError`)."""
    elf = prog.elf
    notes: List[str] = []
    if stack_spec:
        regions = parse_stack_spec(elf, stack_spec)
    else:
        regions, notes = stack_regions(elf)
        if not regions:
            notes.append("no stack symbols in the ELF (*stack_top): no stack is scanned; give TOP:SIZE "
                          f"with {STACKS_SETTING}")
    cores = [c for c in cores if c.registers]
    with_sp = [c for c in cores if c.sp is not None]
    sections = [s for s in elf.sections if s.writable and s.size]
    if not sections:
        notes.append("no writable sections in the ELF: only stacks and registers are roots")
    try:
        heap = (prog.heap_start, prog.heap_end)
    except Exception:  # noqa: BLE001 - bounds unknown: the walk says so
        heap = (0, 0)
    holes = [(r.low, r.top) for r in regions] + [heap]
    wanted: List[RootRange] = []
    for s in sections:
        for a, b in _subtract([(s.address, s.address + s.size)], holes):
            wanted.append(RootRange("section", s.name, a, b))
    stacks = []
    for r in regions:
        # sp == top: an empty stack; sp == low would be a full one, and is far more likely the
        # empty stack whose top this low is (stacks are often laid out back to back).
        inside = [c for c in with_sp if r.low < c.sp <= r.top]
        entry: Dict[str, Any] = {"name": r.name, "low": r.low, "top": r.top, "source": r.source,
                                 "cpus": [c.cpu for c in inside]}
        if inside:
            sp = min(c.sp for c in inside)
            live_from = sp - sp % prog.pointer_size
            entry.update(state="live", live_from=live_from, live=r.top - live_from,
                         dead=live_from - r.low)
            if live_from < r.top:
                wanted.append(RootRange("stack", r.name, live_from, r.top,
                                        cpu=min(c.cpu for c in inside)))
        elif not with_sp:
            entry.update(state="whole", live_from=r.low, live=r.size, dead=0)
            wanted.append(RootRange("stack", r.name, r.low, r.top))
        else:
            entry.update(state="dead", live_from=None, live=0, dead=r.size)
        stacks.append(entry)
    if regions and not with_sp:
        notes.append("no core's registers: every stack is scanned whole, dead frames too (a block "
                     "only a dead frame points to is not reported)")
    for c in with_sp:
        # A core whose sp is 0 never set one up (a parked secondary core): nothing to say.
        if c.sp and regions and not any(r.low < c.sp <= r.top for r in regions):
            notes.append(f"cpu {c.cpu}: sp {prog.fmt(c.sp)} is in no known stack: its stack is "
                         f"not scanned; if it has one, give it with {STACKS_SETTING}")
    return Roots(wanted, list(cores), stacks, notes)


def gather_roots(prog: Any, cores: Sequence[CoreState], stack_spec: Optional[str] = None) -> Roots:
    """:func:`plan_roots`, read through ``prog``'s memory (one pipelined request on a live
    link). Ranges that cannot be read keep what could be read; :attr:`Roots.missing` lists them."""
    roots = plan_roots(prog, cores, stack_spec)
    memory = prog.memory
    memory.prefetch_ranges([(r.start, r.end - r.start) for r in roots.ranges])
    for r in roots.ranges:
        r.data = memory.read_prefix(r.start, r.end - r.start)
    return roots


# -- the word scan -------------------------------------------------------------------------------
_FORMATS = {4: "I", 8: "Q"}


def _table(value: Any) -> bytes:
    return bytes(value(b) for b in range(256))


_NONZERO = _table(lambda b: 1 if b else 0)


def _prefilter(data: Any, skip: int, P: int, byteorder: str, lo: int, hi: int, n: int) -> Optional[bytes]:
    """``n`` bytes, one per word: nonzero when the word may lie in ``[lo, hi)`` (a superset,
    exact on the bytes it looks at), 0 when it cannot; None when no byte narrows it down.

    ``K`` is the highest byte where ``lo`` and ``hi - 1`` differ. Bytes ``K`` and ``K - 1``
    together must lie between theirs (so neither zeros nor small integers pass), and the byte
    above ``K`` must equal theirs. Each byte is a column (one byte per word: a strided slice of
    ``bytes``), classified by ``bytes.translate``; columns combine as big integers, all in C."""
    top = (lo ^ (hi - 1)).bit_length() - 1
    K = top // 8 if top >= 0 else 0
    end = skip + n * P

    def column(k: int) -> int:
        off = skip + (k if byteorder == "little" else P - 1 - k)
        return data[off:end:P]

    def flags(k: int, value: Any) -> int:
        return int.from_bytes(column(k).translate(_table(value)), "little")

    byte = lambda v, k: (v >> (8 * k)) & 0xFF  # noqa: E731
    lo_k, hi_k = byte(lo, K), byte(hi - 1, K)
    if K == 0:
        mask = flags(0, lambda b: 1 if lo_k <= b <= hi_k else 0)
    else:
        # Byte K: 1 at lo's value, 2 between, 4 at hi's; byte K-1: 1 if not below lo's, 2, and
        # 4 if not above hi's. Their AND is nonzero exactly when the two bytes are in range.
        lo_j, hi_j = byte(lo, K - 1), byte(hi - 1, K - 1)
        mask = flags(K, lambda b: 1 if b == lo_k else 2 if lo_k < b < hi_k else 4 if b == hi_k else 0) & \
            flags(K - 1, lambda b: 2 | (1 if b >= lo_j else 0) | (4 if b <= hi_j else 0))
    if K + 1 < P and mask:
        want = byte(lo, K + 1)
        mask &= flags(K + 1, lambda b: 7 if b == want else 0)
    return mask.to_bytes(n, "little").translate(_NONZERO) if mask else b""


def scan_words(data: Any, base: int, pointer_size: int, byteorder: str, lo: int, hi: int,
               only: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[List[int], List[int]]:
    """``(slots, values)``: the address and value of each pointer-aligned word of ``data``
    (which starts at ``base``) whose value lies in ``[lo, hi)``, in address order; with
    ``only``, of the words inside those ``(start, end)`` address ranges only.

    No Python step per word: :func:`_prefilter` marks the words whose top bytes allow the range,
    only those are decoded (``memoryview.cast``) and compared exactly (``range.__contains__``).
    """
    P = pointer_size
    if hi <= lo or not len(data):
        return [], []
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    skip = -base % P
    n = (len(data) - skip) // P
    if n <= 0:
        return [], []
    start = base + skip
    mask = _prefilter(data, skip, P, byteorder, lo, hi, n)
    if mask and only is not None:
        kept = bytearray(len(mask))
        for a, b in only:
            i, j = max(0, -(-(a - start) // P)), min(n, (b - start) // P)
            if i < j:
                kept[i:j] = mask[i:j]
        mask = bytes(kept)
    if mask is None:
        index: Sequence[int] = range(n)
    else:
        hits = mask.count(1)
        if not hits:
            return [], []
        if hits * 16 > n:
            index = list(compress(range(n), mask))
        else:
            index = []
            add = index.append
            find = mask.find
            i = find(1)
            while i >= 0:
                add(i)
                i = find(1, i + 1)
    mv = memoryview(data)[skip:skip + n * P]
    if byteorder == sys.byteorder and P in _FORMATS:
        values = list(map(mv.cast(_FORMATS[P]).__getitem__, index))
    else:
        values = [int.from_bytes(mv[i * P:i * P + P], byteorder) for i in index]
    keep = list(map(range(lo, hi).__contains__, values))
    kept = list(compress(index, keep))
    return list(map(add_op, repeat(start), map(mul_op, kept, repeat(P)))), list(compress(values, keep))


# -- the heap as the allocator gives it -------------------------------------------------------
class HeapIndex:
    """The walked blocks in address order with their payload ranges (from the family), the
    used and free ones apart, and the readable heap bytes."""

    def __init__(self, prog: Any, walk: Any) -> None:
        allocator = prog.allocator
        self.prog = prog
        self.walk = walk
        blocks = allocator.blocks(walk, prog.heap_end)
        addrs = [b.address for b in blocks]
        if any(map(gt_op, addrs, addrs[1:])):
            blocks = sorted(blocks, key=lambda b: b.address)
            addrs = [b.address for b in blocks]
        self.blocks = blocks
        self.starts = addrs
        # A corrupt size may overlap the next block: each block ends where the next begins.
        self.ends = ends = list(map(min, map(add_op, addrs, (b.extent for b in blocks)), [*addrs[1:], 1 << 64]))
        ranges = allocator.payload_ranges(walk, blocks)
        self.pends = pends = list(map(min, (pe for _, pe in ranges), ends))
        self.pstarts = pstarts = list(map(min, (ps for ps, _ in ranges), pends))
        self.payloads = list(zip(pstarts, pends))
        states = [b.state for b in blocks]
        self.used = list(compress(range(len(blocks)), map("used".__eq__, states)))
        self.free = list(compress(range(len(blocks)), map("free".__eq__, states)))
        self.bad = [i for i, st in enumerate(states) if st not in ("used", "free")]
        self.heap_start = prog.heap_start
        self.buffer = prog.heap_bytes()
        self.readable_end = self.heap_start + len(self.buffer)

    def ranges_of(self, which: List[int]) -> Tuple[List[int], List[int]]:
        """The payload starts and ends of the blocks at positions ``which``."""
        return list(map(self.pstarts.__getitem__, which)), list(map(self.pends.__getitem__, which))

    def payload(self, index: int, size: Optional[int] = None) -> bytes:
        ps, pe = self.payloads[index]
        if size is not None:
            pe = min(pe, ps + size)
        if pe > self.readable_end:
            try:
                return self.prog.read(ps, pe - ps)
            except MemoryFault:
                return b""
        off = ps - self.heap_start
        return bytes(self.buffer[off:off + pe - ps])

    def holder(self, slot: int) -> Optional[int]:
        """The block whose extent holds address ``slot``, or None."""
        i = bisect_right(self.starts, slot) - 1
        if i >= 0 and slot < self.ends[i]:
            return i
        return None


def _owners(values: List[int], starts: List[int], ends: List[int]) -> List[int]:
    """For each value, the position in ``starts``/``ends`` of the range holding it, or -1
    (``bisect`` and the comparisons mapped in C: no Python step per value)."""
    after = list(map(bisect_right, repeat(starts, len(values)), values))   # position + 1
    inside = map(lt_op, values, map([0, *ends].__getitem__, after))        # below that end?
    return list(map(sub_op, map(mul_op, after, inside), repeat(1)))


MAX_GRANULES = 1 << 24


def _owner_map(starts: List[int], ends: List[int], lo: int, hi: int) -> Callable[[List[int]], List[int]]:
    """A function: values in ``[lo, hi)`` -> the position of the range holding each, or -1.

    When every boundary is a multiple of a granule of 8 bytes or more (heap allocators align
    blocks), a table of one entry per granule answers with three C-level maps per value;
    otherwise :func:`_owners` bisects."""
    g = gcd(lo, hi, *starts, *ends)
    if g < 8 or (hi - lo) // g > MAX_GRANULES:
        return lambda values: _owners(values, starts, ends)
    # Runs of granules, in address order: the gap before each range (-1), then the range (its
    # position); each run is its owner's 4 bytes repeated, joined in C.
    gaps = map(floordiv_op, map(sub_op, starts, [lo, *ends]), repeat(g))
    sizes = map(floordiv_op, map(sub_op, ends, starts), repeat(g))
    word = struct.Struct("=i").pack
    none = word(-1)
    runs = chain.from_iterable(zip(map(mul_op, repeat(none), gaps),
                                   map(mul_op, map(word, range(len(starts))), sizes)))
    table = array("i")
    table.frombytes(b"".join(runs) + none * ((hi - max(lo, ends[-1] if ends else lo)) // g))

    def lookup(values: List[int]) -> List[int]:
        return list(map(table.__getitem__, map(floordiv_op, map(sub_op, values, repeat(lo)), repeat(g))))
    return lookup


@dataclass
class LeakScan:
    """What the mark found: the index, which used blocks were reached, and what was not read."""

    index: HeapIndex
    roots: Roots
    reached: bytearray                  # per entry of index.used
    indirect: bytearray                 # unreached, but pointed to by another unreached block
    unread: List[int]                   # positions in index.used whose payload could not be read
    root_hits: int
    words: int                          # words scanned: roots + reached payloads

    @property
    def lost(self) -> List[int]:
        """Positions in ``index.used`` of the blocks no root reaches."""
        return [k for k, r in enumerate(self.reached) if not r]


def _heap_candidates(ix: HeapIndex, lo: int, hi: int,
                     only: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[List[int], List[int]]:
    prog = ix.prog
    return scan_words(ix.buffer, ix.heap_start, prog.pointer_size, prog.byteorder, lo, hi, only)


def leak_scan(prog: Any, roots: Roots, walk: Any = None) -> LeakScan:
    """Mark every used block reachable from ``roots``; see the module docstring.

    The used payloads are scanned once, together (:func:`scan_words`); each candidate word is
    placed in the payload holding it and the one its value points into (:func:`_owner_map`);
    those edges make a graph, walked from the blocks the roots point into."""
    walk = walk if walk is not None else prog.allocator.walk(prog)
    ix = HeapIndex(prog, walk)
    P, order = prog.pointer_size, prog.byteorder
    ustarts, uends = ix.ranges_of(ix.used)
    nused = len(ix.used)
    reached = bytearray(nused)
    unread = [k for k in range(nused) if uends[k] > ix.readable_end and uends[k] > ustarts[k]]
    if not nused:
        return LeakScan(ix, roots, reached, bytearray(), unread, 0, 0)
    lo, hi = min(ustarts), max(uends)
    # Only the used payloads are scanned: headers (the allocator's links) and free blocks never
    # hold an owner's pointer.
    slots, values = _heap_candidates(ix, lo, hi, list(zip(ustarts, uends)))
    owners = _owner_map(ustarts, uends, lo, hi)
    src = owners(slots)
    dst = owners(values)
    # The edges, grouped by source (sources ascend): block -> dst[first:last].
    keep = list(map(and_op, map((-1).__lt__, dst), map((-1).__lt__, src)))
    src, dst = list(compress(src, keep)), list(compress(dst, keep))
    firsts = [0, *compress(range(1, len(src)), map(ne_op, src[1:], src))] if src else []
    edges = dict(zip(map(src.__getitem__, firsts), map(dst.__getitem__, map(slice, firsts, [*firsts[1:], len(src)]))))
    stack: List[int] = []
    root_hits = 0

    def mark(targets: Iterable[int]) -> int:
        hits = 0
        for d in targets:
            if d >= 0:
                hits += 1
                if not reached[d]:
                    reached[d] = 1
                    stack.append(d)
        return hits

    words = 0
    for r in roots.ranges:
        words += len(r.data) // P
        _, vals = scan_words(r.data, r.start, P, order, lo, hi)
        root_hits += mark(owners(vals))
    for core in roots.cores:
        vals = [v for v in core.registers.values() if lo <= v < hi]
        root_hits += mark(owners(vals))
    get, pop, push = edges.get, stack.pop, stack.append
    while stack:
        for d in get(pop(), ()):
            if not reached[d]:
                reached[d] = 1
                push(d)
    words += sum(map(sub_op, compress(uends, reached), compress(ustarts, reached))) // P
    indirect = bytearray(nused)
    for k, out in edges.items():
        if not reached[k]:
            for d in out:
                if d != k and not reached[d]:
                    indirect[d] = 1
    return LeakScan(ix, roots, reached, indirect, unread, root_hits, words)


# -- who points here -----------------------------------------------------------------------------
@dataclass
class Refs:
    """Places holding a pointer into a target range: ``[{"slot", "value", "kind", ...}]``."""

    holders: List[Dict[str, Any]]
    scanned_blocks: int


def _frame_of(core: Optional[CoreState], slot: int) -> Optional[Dict[str, Any]]:
    """The frame whose part of the stack holds ``slot`` (frames newest first, each from its
    SP up to the next older frame's SP; a frame that pushed nothing, a leaf, has none)."""
    if core is None:
        return None
    best = None
    for f in core.frames:
        sp = f.get("sp")
        if sp is not None and sp <= slot and (best is None or sp >= best["sp"]):
            best = f
    return best


def _place(prog: Any, roots: Roots, r: RootRange, slot: int) -> Dict[str, Any]:
    if r.kind == "section":
        return {"kind": "global", "section": r.name, "symbol": prog.elf.symbolize(slot)}
    core = next((c for c in roots.cores if c.cpu == r.cpu), None)
    out: Dict[str, Any] = {"kind": "stack", "stack": r.name, "cpu": r.cpu,
                           "sp_offset": slot - (core.sp if core and core.sp is not None else r.start)}
    frame = _frame_of(core, slot)
    if frame is not None:
        out["frame"] = {"function": frame.get("function"), "pc": frame.get("pc"), "sp": frame["sp"],
                        "level": core.frames.index(frame)}
    return out


def _holders(prog: Any, ix: HeapIndex, roots: Roots, lo: int, hi: int,
             keep: Optional[Any] = None) -> List[Dict[str, Any]]:
    """Every root word, register and used payload word whose value lies in ``[lo, hi)``."""
    P, order = prog.pointer_size, prog.byteorder
    out: List[Dict[str, Any]] = []
    for r in roots.ranges:
        slots, vals = scan_words(r.data, r.start, P, order, lo, hi)
        for s, v in zip(slots, vals):
            if keep is None or keep(v):
                out.append({"slot": s, "value": v, **_place(prog, roots, r, s)})
    for core in roots.cores:
        for name, v in core.registers.items():
            if lo <= v < hi and (keep is None or keep(v)):
                out.append({"slot": None, "value": v, "kind": "register", "cpu": core.cpu,
                            "register": name})
    slots, vals = _heap_candidates(ix, lo, hi)
    for s, v in zip(slots, vals):
        i = ix.holder(s)
        if i is None or ix.blocks[i].state != "used":
            continue
        ps, pe = ix.payloads[i]
        if not ps <= s < pe or (keep is not None and not keep(v)):
            continue
        out.append({"slot": s, "value": v, "kind": "segment", "segment": ix.blocks[i].address,
                    "payload": ps, "offset": s - ps})
    return out


def find_refs(prog: Any, roots: Roots, address: int, walk: Any = None) -> Tuple[HeapIndex, Optional[int], Refs]:
    """The block holding ``address`` (its index, or None) and every place pointing into it:
    its header too, said apart (``"into": "header"``)."""
    walk = walk if walk is not None else prog.allocator.walk(prog)
    ix = HeapIndex(prog, walk)
    i = ix.holder(address)
    if i is None:
        return ix, None, Refs([], len(ix.used))
    start, end = ix.starts[i], ix.ends[i]
    ps = ix.payloads[i][0]
    holders = _holders(prog, ix, roots, start, end)
    for h in holders:
        h["into"] = "payload" if h["value"] >= ps else "header"
        h["target_offset"] = h["value"] - ps
    return ix, i, Refs(holders, len(ix.used))


def dangling(prog: Any, roots: Roots, walk: Any = None) -> Tuple[HeapIndex, List[Tuple[int, List[Dict[str, Any]]]]]:
    """Every free block something still points into (its payload), with the holders."""
    walk = walk if walk is not None else prog.allocator.walk(prog)
    ix = HeapIndex(prog, walk)
    fstarts, fends = ix.ranges_of(ix.free)
    live = [k for k in range(len(ix.free)) if fends[k] > fstarts[k]]
    if not live:
        return ix, []
    lo, hi = min(fstarts[k] for k in live), max(fends[k] for k in live)
    holders = _holders(prog, ix, roots, lo, hi)
    by_block: Dict[int, List[Dict[str, Any]]] = {}
    owners = _owners([h["value"] for h in holders], fstarts, fends)
    for h, k in zip(holders, owners):
        if k >= 0:
            h["into"] = "payload"
            h["target_offset"] = h["value"] - fstarts[k]
            by_block.setdefault(ix.free[k], []).append(h)
    return ix, sorted(by_block.items())
