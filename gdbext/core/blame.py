"""``kheap blame``: which instruction wrote these bytes, found by running the kernel again.

The debugger-neutral half (the faces run the target; see frontends/blame_controller.py):

- :func:`plan_blame`: which bytes to watch. By default the first error finding of a fresh
  check, turned into bytes by the allocator family (``prog.allocator.blame_range``: the field
  a code names, a payload's overwritten bytes); for an address, the header field there
  (``prog.allocator.range_at``), the global object there, or one word.
- :class:`Hit` and :class:`Recorder`: what each write left behind (the storing instruction,
  the registers an unwind starts from, a copy of the stack, the bytes after the store), with
  ``--max-hits`` and the progress line, cheap enough to run at every hit.
- :class:`Writers`: who a write was: the function and source line of the store, the first
  caller that is not a C library routine (``memset`` called from ``kheap_init``), a backtrace
  by the ELF's call frame information, and whether the writer is the allocator itself (code of
  the compile units that define the kernel's allocators).
- :func:`compare_bytes`: the determinism check (the bytes at the stop point, before and after).

Nothing here talks to a debugger; ``tests/unit/test_no_debugger.py`` imports it without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .check import check
from .debuginfo import Frame, code_info, split_symbol
from .memory import MemoryFault
from .text import plural

__all__ = ["BlameError", "BlamePlan", "BlameRun", "Hit", "Recorder", "Writers", "plan_blame", "compare_bytes",
           "blame_command", "suggest_blame", "idle_instruction_before", "DEFAULT_MAX_HITS", "STACK_WINDOW", "LIBRARY_FUNCTIONS",
           "ALLOCATOR_ANCHORS"]

DEFAULT_MAX_HITS = 5000          # writes recorded before blame stops watching (--max-hits)
STACK_WINDOW = 1024              # bytes of stack copied at each hit, for the backtrace
MAX_SYMBOL_RANGE = 256           # a global object up to this size is watched whole
PROGRESS_EVERY = 1.0             # seconds between progress lines on a long run

# C library routines a store may happen in on someone else's behalf: the writer named is
# then the first caller outside them (memset called from kheap_init is the allocator's).
LIBRARY_FUNCTIONS = frozenset({
    "memset", "memcpy", "memmove", "strcpy", "strncpy", "strcat", "strncat", "strlcpy", "bzero",
    "memzero", "__memzero", "__aeabi_memset", "__aeabi_memset4", "__aeabi_memset8",
    "__aeabi_memcpy", "__aeabi_memcpy4", "__aeabi_memcpy8", "__aeabi_memclr", "__aeabi_memclr4",
    "__aeabi_memclr8", "__aeabi_memmove", "sprintf", "snprintf", "vsnprintf",
})
# Functions of the kernel's allocators: every function of the compile units that define one of
# them counts as "the allocator" (static helpers, inlined code, the heap and the page allocator).
ALLOCATOR_ANCHORS = ("kmalloc", "kfree", "kcalloc", "krealloc", "kheap_init", "alloc_page",
                     "free_page", "mem_init")


class BlameError(Exception):
    """Nothing to blame, or a plan that cannot be made (one line)."""


@dataclass(frozen=True)
class BlamePlan:
    """The bytes to watch, what they are, and the finding they come from (if any)."""

    address: int
    size: int
    what: str
    finding: Optional[Dict[str, Any]] = None       # code, severity, address, message
    origin: str = "finding"                        # 'finding' | 'address'
    fields: Tuple[Tuple[int, int, str], ...] = ()  # (offset, size, name) of a struct's members

    def to_json(self) -> Dict[str, Any]:
        return {"address": self.address, "size": self.size, "what": self.what,
                "finding": self.finding, "origin": self.origin,
                "fields": [list(f) for f in self.fields]}


def _struct_fields(layout: Any) -> Tuple[Tuple[int, int, str], ...]:
    """(offset, size, name) of a kernel struct's byte-sized members (bit-fields left out)."""
    out = []
    for f in getattr(layout, "fields", ()):
        if getattr(f, "bit_size", None) is None and f.size:
            out.append((f.offset, f.size, f.name))
    return tuple(out)


def _fields_of(prog: Any, address: int, size: int) -> Tuple[Tuple[int, int, str], ...]:
    """The members of the kernel struct the range is exactly (heap_stats, a page_t), if any."""
    try:
        stats = prog.elf.address_of("heap_stats")
        if address == stats and size == prog.layouts.stats.size:
            return _struct_fields(prog.layouts.stats)
        b = prog.bounds
        page = prog.layouts.page
        if (b.page_array is not None and size == page.size and b.page_array <= address
                and (address - b.page_array) % page.size == 0):
            return _struct_fields(page.struct)
    except Exception:  # noqa: BLE001 - names are a nicety
        pass
    return ()


def _symbol_range(prog: Any, address: int) -> Optional[Tuple[int, int, str]]:
    """The global object holding ``address`` (whole when small, else its word there)."""
    elf = prog.elf
    name, off = split_symbol(elf.symbolize(address))
    sym = elf.symbol(name) if name else None
    if sym is None or sym.kind == "func" or not sym.size:
        return None
    if sym.size <= MAX_SYMBOL_RANGE:
        return sym.address, sym.size, name
    page = prog.layouts.page.size if name == "all_pages_array" else 0
    if page:
        index = off // page
        return sym.address + index * page, page, f"{name}[{index}]"
    word = address - address % prog.pointer_size
    return word, prog.pointer_size, f"{name}+0x{word - sym.address:x}"


def _page_range(prog: Any, address: int) -> Optional[Tuple[int, int, str]]:
    """The ``page_t`` entry of the page array holding ``address``."""
    try:
        b = prog.bounds
    except Exception:  # noqa: BLE001 - no bounds: no page array either
        return None
    size = prog.layouts.page.size
    if b.page_array is None or not b.num_pages or not size:
        return None
    if not b.page_array <= address < b.page_array + b.num_pages * size:
        return None
    index = (address - b.page_array) // size
    return b.page_array + index * size, size, f"page_t {index} of the page array"


def _range_of_address(prog: Any, address: int) -> Tuple[int, int, str]:
    allocator = prog.allocator
    rng = allocator.range_at(prog, address) if hasattr(allocator, "range_at") else None
    if rng is None:
        rng = _page_range(prog, address) or _symbol_range(prog, address)
    if rng is None:
        rng = (address, prog.pointer_size, f"the word at {prog.fmt(address)}")
    return rng


def _range_of_finding(prog: Any, finding: Any) -> Optional[Tuple[int, int, str]]:
    allocator = prog.allocator
    rng = allocator.blame_range(prog, finding) if hasattr(allocator, "blame_range") else None
    if rng is None and finding.address is not None:
        rng = _page_range(prog, finding.address) or _symbol_range(prog, finding.address) or \
            (finding.address, prog.pointer_size, f"the word at {prog.fmt(finding.address)}")
    return rng


def _finding_json(finding: Any) -> Dict[str, Any]:
    return {"code": finding.code, "severity": finding.severity, "address": finding.address,
            "message": finding.message}


def plan_blame(prog: Any, address: Optional[int] = None, size: Optional[int] = None,
               findings: Optional[List[Any]] = None) -> BlamePlan:
    """What to watch: ``address`` (with ``size``), or the first error finding of ``findings``
    (a fresh check when None). Raises :class:`BlameError` when there is nothing to blame."""
    if address is None:
        if findings is None:
            findings = check(prog).findings
        errors = [f for f in findings if f.severity == "error"]
        for finding in errors:
            rng = _range_of_finding(prog, finding)
            if rng is not None:
                start, length, what = rng
                length = size or length
                return BlamePlan(start, length, what, _finding_json(finding), "finding",
                                 _fields_of(prog, start, length))
        if errors:
            raise BlameError(f"the first error finding ({errors[0].code}) names no bytes to watch: "
                             "give ADDR")
        raise BlameError("the heap checks clean: no error finding to blame (give ADDR to watch any bytes)")
    start, length, what = _range_of_address(prog, address)
    if size:
        start, length = address, size
        if what and not what.startswith("the word"):
            what = f"{plural(size, 'byte')} at {prog.fmt(address)} ({what})"
        else:
            what = f"{plural(size, 'byte')} at {prog.fmt(address)}"
    return BlamePlan(start, length, what, None, "address", _fields_of(prog, start, length))


def blame_command(plan: BlamePlan, pointer_size: int) -> str:
    """The command line that blames ``plan``'s bytes (what check and triage suggest)."""
    from .text import format_address

    return f"kheap blame {format_address(plan.address, pointer_size)} --size {plan.size}"


def suggest_blame(prog: Any, findings: List[Any]) -> Optional[Dict[str, Any]]:
    """For check and triage: the blame command of the first error finding, or None."""
    if not any(f.severity == "error" for f in findings):
        return None
    try:
        plan = plan_blame(prog, findings=findings)
    except Exception:  # noqa: BLE001 - a suggestion must never break check
        return None
    return {"command": blame_command(plan, prog.pointer_size), "address": plan.address,
            "size": plan.size, "what": plan.what, "code": (plan.finding or {}).get("code")}


# -- what each write leaves ----------------------------------------------------------------------
@dataclass
class Hit:
    """One write to the watched bytes: the storing instruction, the registers an unwind starts
    from (``sp``, ``lr``, ``fp``), a copy of the stack from ``sp``, the bytes after the store."""

    number: int
    pc: int
    registers: Dict[str, int]
    value: bytes
    thread: Optional[int] = None
    stack_base: int = 0
    stack: bytes = b""
    seconds: float = 0.0

    def read_stack(self, address: int, size: int) -> bytes:
        off = address - self.stack_base
        if off < 0 or off + size > len(self.stack):
            raise MemoryFault(address, size, "outside the copy of the stack")
        return self.stack[off:off + size]


class Recorder:
    """Collects the hits of one run. ``record`` returns False once ``max_hits`` writes have
    been seen (the face stops watching then); ``progress(text)`` is called at most once per
    :data:`PROGRESS_EVERY` seconds once a run has lasted that long."""

    def __init__(self, plan: BlamePlan, max_hits: int = DEFAULT_MAX_HITS,
                 progress: Optional[Callable[[str], None]] = None,
                 keep_stack: Optional[Callable[[int], bool]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.max_hits = max_hits
        self.hits: List[Hit] = []
        self._progress = progress
        self._keep_stack = keep_stack or (lambda pc: True)
        self._clock = clock
        self.started = clock()
        self._next_progress = self.started + PROGRESS_EVERY
        self.full = False

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def record(self, pc: int, registers: Dict[str, int], value: bytes, thread: Optional[int] = None,
               stack_base: int = 0, stack: bytes = b"") -> bool:
        now = self._clock()
        if self.hits:
            last = self.hits[-1]
            if last.stack and not self._keep_stack(last.pc):
                last.stack = b""                 # only library stores need theirs later
        self.hits.append(Hit(len(self.hits) + 1, pc, dict(registers), bytes(value), thread,
                             stack_base, bytes(stack), now - self.started))
        if self._progress is not None and now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY
            self._progress(f"kheap blame: {plural(len(self.hits), 'write')} so far, {now - self.started:.1f} s")
        if self.max_hits and len(self.hits) >= self.max_hits:
            self.full = True
            return False
        return True


# -- who wrote -------------------------------------------------------------------------------------
class Writers:
    """Names the writer of each hit: function, line, the caller a library store was made for,
    a backtrace, and whether it is the allocator itself."""

    def __init__(self, prog: Any) -> None:
        self.prog = prog
        self.elf = prog.elf
        self.code = code_info(prog.elf)
        self.allocator_units = set()
        self.allocator_names = set()
        for name in ALLOCATOR_ANCHORS:
            address = self.elf.address_of(name)
            if address is None:
                continue
            self.allocator_names.add(name)
            unit = self.code.unit_of(address)
            if unit is not None:
                self.allocator_units.add(unit)
        self._by_pc: Dict[int, Tuple[Optional[str], Optional[str], Optional[str], bool, bool]] = {}

    def _about(self, pc: int) -> Tuple[Optional[str], Optional[str], Optional[str], bool, bool]:
        """(function+off, the function inlined there, file:line, is a library routine, is the
        allocator's code)."""
        got = self._by_pc.get(pc)
        if got is None:
            function = self.elf.symbolize(pc)
            name, _ = split_symbol(function)
            inlined = self.code.inlined_at(pc)
            unit = self.code.unit_of(pc)
            allocator = (unit in self.allocator_units) if unit is not None and self.allocator_units \
                else name in self.allocator_names
            library = (inlined or name) in LIBRARY_FUNCTIONS
            got = (function, inlined, self.code.line_at(pc), library, allocator)
            self._by_pc[pc] = got
        return got

    def is_library(self, pc: int) -> bool:
        return self._about(pc)[3]

    def backtrace(self, hit: Hit, limit: int = 32) -> Tuple[List[Frame], str]:
        regs = dict(hit.registers, pc=hit.pc)
        return self.code.unwind(self.elf.arch, hit.pc, regs, hit.read_stack, limit)

    def describe(self, hit: Hit, frames: bool = False) -> Dict[str, Any]:
        """One write as JSON-ready data; ``frames`` adds the whole backtrace."""
        function, inlined, source, library, allocator = self._about(hit.pc)
        out: Dict[str, Any] = {"number": hit.number, "pc": hit.pc, "function": function,
                               "inlined": inlined, "source": source, "thread": hit.thread,
                               "value": hit.value.hex(),
                               "seconds": round(hit.seconds, 6)}
        caller = None
        backtrace: List[Frame] = []
        why = ""
        if library or frames:
            backtrace, why = self.backtrace(hit, 32 if frames else 4)
        if library:
            for frame in backtrace[1:]:
                if frame.name is not None and frame.name not in LIBRARY_FUNCTIONS:
                    caller = frame
                    break
            if caller is not None:
                allocator = self._about(caller.pc - 1)[4]
        out["caller"] = caller.to_json() if caller is not None else None
        out["allocator"] = bool(allocator)
        if frames:
            out["backtrace"] = [f.to_json() for f in backtrace]
            out["backtrace_end"] = why
            # The code the allocator (or a library routine) worked for: its first caller that is
            # neither (kfree called from scenario_double_free).
            out["requested_by"] = None
            if allocator or library:
                for frame in backtrace[1:]:
                    about = self._about(frame.pc - 1)
                    if not about[3] and not about[4] and frame.name not in LIBRARY_FUNCTIONS:
                        if caller is None or frame.pc != caller.pc:      # not said twice
                            out["requested_by"] = frame.to_json()
                        break
        return out


# Instructions a CPU halts in until an interrupt: (mask, value) per architecture.
_IDLE = {"arm": ((0x0FFFFFFF, 0x0320F003), (0x0FFFFFFF, 0x0320F002)),          # wfi, wfe
         "aarch64": ((0xFFFFFFFF, 0xD503207F), (0xFFFFFFFF, 0xD503205F))}


def idle_instruction_before(elf: Any, pc: Optional[int]) -> Optional[int]:
    """The address of a ``wfi``/``wfe`` just before ``pc``, or None. A CPU halted in one
    shows the pc after it and never executes that next instruction until an interrupt comes,
    so a re-run must stop at the ``wfi`` itself (where the kernel halted before)."""
    if pc is None or pc < 4 or elf.arch not in _IDLE:
        return None
    data = elf.read_static(pc - 4, 4)
    if data is None or len(data) != 4:
        return None
    word = int.from_bytes(data, elf.byteorder)
    return pc - 4 if any(word & mask == value for mask, value in _IDLE[elf.arch]) else None


def compare_bytes(before: bytes, after: bytes) -> Dict[str, Any]:
    """Whether the bytes at the stop point are the same after the re-run, and which differ."""
    diffs = [{"offset": i, "before": b, "after": a}
             for i, (b, a) in enumerate(zip(before, after)) if a != b]
    if len(before) != len(after):
        diffs.append({"offset": min(len(before), len(after)), "before": None, "after": None})
    return {"equal": not diffs, "differences": diffs}


@dataclass
class BlameRun:
    """What one blame run gives the report: the plan, the bytes before and after, the hits, how
    the run ended, where the target stopped before and after, and what was removed.

    ``ended``: 'until' (watched all the way to the stop point), 'max-hits-until' (stopped
    watching at ``max_hits`` writes, then ran on to the stop point), 'max-hits' (and could not
    get there), 'interrupted' (Ctrl-C), 'stopped' (another stop: a fault, a signal)."""

    plan: BlamePlan
    before: bytes
    after: Optional[bytes]
    hits: List[Hit]
    ended: str
    until: Optional[int]
    start_pc: Optional[int]
    end_pc: Optional[int]
    max_hits: int
    removed: Dict[str, int] = field(default_factory=dict)
    instruction: Optional[str] = None
    seconds: float = 0.0
    face: str = ""
    notes: List[str] = field(default_factory=list)
    idle_pc: Optional[int] = None          # the wfi the target was halted in (the stop point)

    @property
    def same_place(self) -> bool:
        """Stopped where it was: the same pc, or the wfi it was halted in (it halts there again
        when it runs on)."""
        return self.end_pc is not None and (self.end_pc == self.start_pc or self.end_pc == self.idle_pc)
