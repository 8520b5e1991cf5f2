"""``kheap watch``: a record of every allocator call and the checks run at each one.

Pure logic: the debugger adapter (``frontends/gdb_watch.py``) calls :meth:`Watch.enter` at a
breakpoint on the first instruction of ``kmalloc``, ``kcalloc``, ``krealloc`` or ``kfree`` and
:meth:`Watch.leave` at a breakpoint on each of their return instructions, with the few
registers it read; everything else (matching calls to returns, counting, per-address history,
the checks, leaks) happens here and is unit-tested with synthetic heaps.

Matching returns to calls (no FinishBreakpoint: it loses returns on the multi-core board).
Each thread keeps a stack of pending calls with the stack pointer at entry (``entry_sp``, the
caller's SP, since the entry breakpoint is the function's first instruction). At a return
instruction the adapter gives ``sp_after``, the SP once that instruction has executed, which
is the SP of whoever the function returns to. The rule: **every pending call whose entry_sp
<= sp_after has returned**, with the same result register. That covers
- a nested call (krealloc's ``bl kfree``): the inner call's entry SP is below the outer's, so
  only the inner one is popped;
- a tail call (krealloc(NULL, n) restores its frame and branches to kmalloc): kmalloc's entry
  SP equals krealloc's, so kmalloc's return pops both, and both get kmalloc's result;
- a call abandoned without a return (the kernel jumped elsewhere): it is popped by the next
  return of a shallower frame; an entry whose SP is above a pending call's drops that stale call.
A call made while another allocator call is pending on the same thread with an entry SP at or
above the new one is *nested* (``parent`` is set); only outermost calls are checked.

Counting rule: exactly as ``heap_stats`` counts (kernel/src/kheap.c): every call, nested ones
included, counts what that function itself accounts, never what it delegates.
- kmalloc: allocation (bytes_requested += size, bytes_allocated += segment size) or failure.
- kcalloc: the same with nmemb * size; an overflowing product is a failure requesting 0 bytes.
- kfree(p != NULL): one free of p's segment size read at entry.
- krealloc(NULL, n) and krealloc(p, 0): nothing (the kmalloc / kfree it calls counts);
  growing in place is impossible, shrinking keeps the block (nothing); moving counts one
  allocation (its own take_segment) while the old block's free is counted by its nested kfree.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from .check import check
from .findings import ERROR, Culprit, Finding, register_code
from .memory import MemoryFault
from .program import Program

__all__ = ["Operation", "Counters", "Watch", "WatchStop", "WATCH_CODES", "KINDS", "return_sp_adjust",
           "arm_condition_passed", "describe_operation", "DEFAULT_HISTORY", "DEFAULT_FULL_EVERY", "ReturnSite", "CallSites",
           "WatchSetupError", "allocator_sites", "refresh_program", "watch_status",
           "internal_error_line"]

KINDS = ("kmalloc", "kcalloc", "krealloc", "kfree")
DEFAULT_HISTORY = 100_000
DEFAULT_FULL_EVERY = 0          # 0: a full check only at kheap_checkpoint

WATCH_CODES = {code: register_code(code, meaning) and meaning for code, meaning in (
    ("HEAP-DOUBLE-FREE", "kfree/krealloc of a block that is already free"),
    ("HEAP-INTERIOR-FREE", "kfree/krealloc of a pointer into the middle of a segment"),
    ("HEAP-WILD-FREE", "kfree/krealloc of a pointer that is not in any heap segment"),
)}


@dataclass
class Operation:
    """One allocator call: what was asked, what came back, who asked."""

    index: int
    kind: str                          # kmalloc | kcalloc | krealloc | kfree
    thread: int
    entry_sp: int
    caller_pc: int                     # return address (LR / x30)
    caller: Optional[str]              # symbolized caller_pc
    size: Optional[int] = None         # bytes asked (kcalloc: nmemb * size, word-wrapped)
    nmemb: Optional[int] = None        # kcalloc only
    elem_size: Optional[int] = None    # kcalloc only
    pointer: Optional[int] = None      # kfree / krealloc argument
    result: Optional[int] = None       # returned pointer (None for kfree or not returned yet)
    returned: bool = False
    parent: Optional[int] = None       # index of the allocator call this one ran inside
    origin: Optional[str] = None       # caller of the outermost call (who really asked)
    old_segment_size: Optional[int] = None   # pointer's segment at entry
    new_segment_size: Optional[int] = None   # result's segment at return
    effect: str = ""                   # alloc | free | move | in-place | failed | delegated | noop
    backtrace: List[Tuple[int, Optional[str]]] = dc_field(default_factory=list)
    anchors: List[int] = dc_field(default_factory=list, repr=False)   # headers to check after
    usage_before_free: int = dc_field(default=0, repr=False)   # krealloc: usage before its kfree

    @property
    def caller_function(self) -> str:
        return _function(self.origin or self.caller) or f"0x{self.caller_pc:x}"

    def touches(self, address: int, header_size: int) -> bool:
        for payload, size in ((self.pointer, self.old_segment_size), (self.result, self.new_segment_size)):
            if payload:
                lo = payload - header_size
                if payload == address or lo <= address < lo + (size or header_size):
                    return True
        return False

    def describe(self, fmt: Callable[[Optional[int]], str] = lambda a: "NULL" if a is None else f"0x{a:x}") -> str:
        return describe_operation(self.to_json(), fmt)

    def to_json(self) -> Dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "thread": self.thread, "size": self.size,
                "nmemb": self.nmemb, "elem_size": self.elem_size, "pointer": self.pointer,
                "result": self.result, "returned": self.returned, "caller_pc": self.caller_pc,
                "caller": self.caller, "origin": self.origin, "parent": self.parent,
                "old_segment_size": self.old_segment_size, "new_segment_size": self.new_segment_size,
                "effect": self.effect, "entry_sp": self.entry_sp,
                "backtrace": [{"pc": pc, "function": name} for pc, name in self.backtrace]}


def describe_operation(op: Dict[str, Any], fmt: Callable[[Optional[int]], str]) -> str:
    """One line for an operation (an :class:`Operation`'s JSON): the call, its result, who made it."""
    kind = op["kind"]
    if kind == "kmalloc":
        call = f"kmalloc({op['size']})"
    elif kind == "kcalloc":
        call = f"kcalloc({op['nmemb']}, {op['elem_size']})"
    elif kind == "krealloc":
        call = f"krealloc({fmt(op['pointer'])}, {op['size']})"
    else:
        call = f"kfree({fmt(op['pointer'])})"
    if kind != "kfree":
        call += f" = {fmt(op['result']) if op['returned'] else '(pending)'}"
    who = op["caller"] or f"0x{op['caller_pc']:x}"
    if op["parent"] is not None:
        who += f", inside #{op['parent']} from {op['origin']}"
    return f"#{op['index']} {call} from {who}" + (f" [{op['effect']}]" if op["effect"] else "")


def _function(symbol: Optional[str]) -> Optional[str]:
    return symbol.split("+", 1)[0] if symbol else symbol


@dataclass
class Counters:
    """The heap_stats counters as the watch saw them (kept even when old history drops)."""

    allocations: int = 0
    frees: int = 0
    failed: int = 0
    bytes_requested: int = 0
    bytes_allocated: int = 0
    bytes_freed: int = 0
    current_usage: int = 0
    peak_usage: int = 0
    calls: int = 0                 # every call recorded, nested included
    operations: int = 0            # outermost calls
    returns: int = 0
    unmatched_returns: int = 0
    abandoned_calls: int = 0

    def to_json(self) -> Dict[str, int]:
        return dict(self.__dict__)


@dataclass
class WatchStop:
    """Why the watch stopped the target: findings, the operation, the address's history."""

    reason: str                        # 'bad-pointer' | 'corrupt-after' | 'checkpoint' | 'full-check'
    findings: List[Finding]
    operation: Optional[Operation]
    address: Optional[int]
    history: List[Operation]
    first_free: Optional[Operation] = None
    allocated_by: Optional[Operation] = None

    def to_json(self) -> Dict[str, Any]:
        return {"reason": self.reason, "findings": [f.to_json() for f in self.findings],
                "operation": self.operation.to_json() if self.operation else None,
                "address": self.address, "history": [o.to_json() for o in self.history],
                "first_free": self.first_free.to_json() if self.first_free else None,
                "allocated_by": self.allocated_by.to_json() if self.allocated_by else None}


class Watch:
    """The state of ``kheap watch``: pending calls per thread, the bounded history, counters,
    live allocations and who freed what, and the checks to run.

    ``prog`` is passed to each call (the adapter refreshes its memory per stop).
    """

    def __init__(self, history: int = DEFAULT_HISTORY, full_every: int = DEFAULT_FULL_EVERY,
                 word_bits: int = 32) -> None:
        self.history: Deque[Operation] = collections.deque(maxlen=max(1, history))
        self.full_every = full_every
        self.mask = (1 << word_bits) - 1
        self.counters = Counters()
        self.pending: Dict[int, List[Operation]] = {}
        self.live: Dict[int, Operation] = {}          # payload -> the call that handed it out
        self.freed_by: Dict[int, Operation] = {}      # payload -> first free since its allocation
        self.mark = 0                                 # op index leaks count from
        self.last_stop: Optional[WatchStop] = None
        self.stops = 0
        self._next_index = 0
        self._since_full = 0

    # -- configuration ---------------------------------------------------------------------------
    def resize(self, history: int) -> None:
        self.history = collections.deque(self.history, maxlen=max(1, history))

    def set_mark(self) -> int:
        self.mark = self._next_index
        return self.mark

    # -- entry -----------------------------------------------------------------------------------
    def enter(self, prog: Program, kind: str, thread: int, sp: int, caller_pc: int,
              args: Sequence[int], caller: Optional[str] = None) -> Optional[WatchStop]:
        """A call to ``kind`` at its first instruction: ``args`` are the argument registers."""
        stack = self.pending.setdefault(thread, [])
        # A pending call deeper than us returned unseen; one at our SP is our tail-calling
        # parent only if it is another allocator function called from the same place
        # (a tail call keeps LR); otherwise it too returned unseen.
        while stack and (stack[-1].entry_sp < sp or (stack[-1].entry_sp == sp and (
                stack[-1].caller_pc != caller_pc or stack[-1].kind == kind))):
            stack.pop()
            self.counters.abandoned_calls += 1
        parent = stack[-1] if stack else None
        m = self.mask
        op = Operation(self._next_index, kind, thread, sp, caller_pc, caller)
        self._next_index += 1
        self.counters.calls += 1
        if parent is not None:
            op.parent = parent.index
            op.origin = parent.origin or parent.caller      # the outermost call's caller
        else:
            op.origin = caller
            self.counters.operations += 1
        if kind == "kmalloc":
            op.size = args[0] & m
        elif kind == "kcalloc":
            op.nmemb, op.elem_size = args[0] & m, args[1] & m
            op.size = (op.nmemb * op.elem_size) & m
        elif kind == "krealloc":
            op.pointer, op.size = args[0] & m, args[1] & m
        elif kind == "kfree":
            op.pointer = args[0] & m
        else:
            raise ValueError(f"not an allocator function: {kind}")
        stop = None
        self.history.append(op)
        if op.pointer:
            header, problems = prog.allocator.check_payload(prog, op.pointer)
            if header is not None:
                op.old_segment_size = header.segment_size
            if parent is None:
                stop = self._check_pointer(prog, op, header, problems)
            if header is not None and stop is None:
                anchor = header.prev or header.address
                self._root(op, stack).anchors.append(anchor)
        stack.append(op)
        if stop is not None:
            self._stopped(stop)
        return stop

    # -- return ----------------------------------------------------------------------------------
    def leave(self, prog: Program, thread: int, sp_after: int, result: int) -> Optional[WatchStop]:
        """A return instruction executed with SP becoming ``sp_after`` and ``result`` in r0/x0."""
        stack = self.pending.get(thread) or []
        popped = []
        while stack and stack[-1].entry_sp <= sp_after:
            popped.append(stack.pop())
        if not popped:
            self.counters.unmatched_returns += 1
            return None
        self.counters.returns += 1
        result &= self.mask
        for op in popped:                               # innermost first
            op.returned = True
            if op.kind != "kfree":
                op.result = result
            outer = stack + popped[popped.index(op) + 1:]
            parent = next((p for p in reversed(outer) if p.index == op.parent), None)
            self._account(prog, op, self._root(op, outer), parent)
        outer = popped[-1]
        if outer.parent is not None and stack:
            return None                                 # the outermost call is still running
        return self._after(prog, outer)

    def _root(self, op: Operation, stack: List[Operation]) -> Operation:
        by_index = {p.index: p for p in stack}
        root = op
        while root.parent is not None and root.parent in by_index:
            root = by_index[root.parent]
        return root

    def _account(self, prog: Program, op: Operation, root: Operation,
                 parent: Optional[Operation] = None) -> None:
        c, m = self.counters, self.mask
        def alloc(requested: int) -> None:
            seg = prog.allocator.header_of_payload(prog, op.result)
            op.new_segment_size = seg.segment_size if seg else None
            size = op.new_segment_size or 0
            c.allocations += 1
            c.bytes_requested = (c.bytes_requested + requested) & m
            c.bytes_allocated = (c.bytes_allocated + size) & m
            c.current_usage = (c.current_usage + size) & m
            # A moving krealloc accounts its new block before its nested kfree releases the
            # old one: the kernel's peak saw both blocks at once.
            c.peak_usage = max(c.peak_usage, c.current_usage, op.usage_before_free + size)
            self.live[op.result] = op
            self.freed_by.pop(op.result, None)
            if seg is not None:
                root.anchors.append(seg.prev or seg.address)

        def fail(requested: int) -> None:
            c.failed += 1
            c.bytes_requested = (c.bytes_requested + requested) & m
            op.effect = "failed"

        kind = op.kind
        if kind in ("kmalloc", "kcalloc"):
            overflow = kind == "kcalloc" and op.elem_size and (op.size // op.elem_size) != op.nmemb
            if overflow:
                fail(0)
            elif op.result:
                alloc(op.size)
                op.effect = "alloc"
            else:
                fail(op.size)
        elif kind == "kfree":
            if not op.pointer:
                op.effect = "noop"
                return
            size = op.old_segment_size or 0
            if parent is not None and parent.kind == "krealloc":
                parent.usage_before_free = c.current_usage
            c.frees += 1
            c.bytes_freed = (c.bytes_freed + size) & m
            c.current_usage = (c.current_usage - size) & m
            op.effect = "free"
            self.live.pop(op.pointer, None)
            self.freed_by.setdefault(op.pointer, op)
        else:  # krealloc
            if not op.pointer or not op.size:
                op.effect = "delegated"       # its kmalloc / kfree counted
            elif op.result == op.pointer:
                op.effect = "in-place"
                op.new_segment_size = op.old_segment_size
            elif op.result:
                alloc(op.size)
                op.effect = "move"
            else:
                fail(op.size)

    def _after(self, prog: Program, op: Operation) -> Optional[WatchStop]:
        """Checks after an outermost call returned: the segments it touched, and every
        ``full_every`` operations the whole heap."""
        findings: List[Finding] = []
        seen = set()
        for anchor in dict.fromkeys(op.anchors):
            for f in prog.allocator.validate_around(prog, anchor, 4):
                key = (f.code, f.address)
                if key not in seen:
                    seen.add(key)
                    findings.append(f)
        op.anchors = []
        errors = [f for f in findings if f.severity == ERROR]
        reason = "corrupt-after"
        if not errors and self.full_every:
            self._since_full += 1
            if self._since_full >= self.full_every:
                self._since_full = 0
                report = check(prog, pages=False)
                errors = report.errors
                reason = "full-check"
        if not errors:
            return None
        address = errors[0].address
        stop = WatchStop(reason, errors, op, address, self.history_of(prog, address))
        return self._stopped(stop)

    def checkpoint(self, prog: Program) -> Optional[WatchStop]:
        """A full check at kheap_checkpoint (corruption made outside the allocator shows here)."""
        report = check(prog, pages=False)
        if not report.errors:
            return None
        address = report.errors[0].address
        return self._stopped(WatchStop("checkpoint", report.errors, None, address,
                                       self.history_of(prog, address)))

    def _stopped(self, stop: WatchStop) -> WatchStop:
        self.last_stop = stop
        self.stops += 1
        return stop

    # -- checks at entry -------------------------------------------------------------------------
    def _check_pointer(self, prog: Program, op: Operation, header: Any,
                       problems: Sequence[Finding]) -> Optional[WatchStop]:
        """kfree/krealloc(ptr): ptr must be the payload of an allocated segment (``header``,
        read at entry, and the problems of its own fields)."""
        ptr = op.pointer
        b = prog.bounds
        fmt = prog.fmt
        seg = ptr - prog.layouts.segment.payload_offset
        sane = header is not None and not problems
        if sane and header.is_allocated == 1:
            return None
        first = self.freed_by.get(ptr)
        allocated_by = self.live.get(ptr) or self._last_alloc_of(ptr)
        values = {"pointer": ptr, "segment": seg, "kind": op.kind}
        if (sane and header.is_allocated == 0) or first is not None:
            msg = f"{op.kind}({fmt(ptr)}): the block is already free"
            if first is not None:
                msg += f" (first freed by #{first.index} from {first.caller_function})"
            finding = Finding("HEAP-DOUBLE-FREE", ERROR, seg, msg, values,
                              Culprit(seg, f"freed first by {first.caller_function}" if first else
                                      "the segment is free", "", ""))
        elif not (b.start <= ptr < b.end):
            finding = Finding("HEAP-WILD-FREE", ERROR, ptr,
                              f"{op.kind}({fmt(ptr)}): the pointer is outside the heap "
                              f"[{fmt(b.start)}, {fmt(b.end)})"
                              + (f" ({prog.elf.symbolize(ptr)})" if prog.elf.symbolize(ptr) else ""),
                              values)
        else:
            match = prog.allocator.find(prog, ptr)
            if match is None:
                finding = Finding("HEAP-WILD-FREE", ERROR, ptr,
                                  f"{op.kind}({fmt(ptr)}): the pointer is in no heap segment", values)
            else:
                s = match.segment
                values.update(segment=s.address, offset=ptr - s.payload, state=s.state)
                finding = Finding("HEAP-INTERIOR-FREE", ERROR, ptr,
                                  f"{op.kind}({fmt(ptr)}): points {ptr - s.payload:+d} bytes from the "
                                  f"payload {fmt(s.payload)} of the {s.state} segment at {fmt(s.address)}",
                                  values, Culprit(s.address, "the segment the pointer falls into"))
                allocated_by = self.live.get(s.payload) or allocated_by
        return WatchStop("bad-pointer", [finding], op, ptr, self.history_of(prog, ptr),
                         first_free=first, allocated_by=allocated_by)

    def _last_alloc_of(self, payload: int) -> Optional[Operation]:
        for o in reversed(self.history):
            if o.result == payload and o.effect in ("alloc", "move"):
                return o
        return None

    # -- queries ---------------------------------------------------------------------------------
    def history_of(self, prog_or_header: Any, address: Optional[int], limit: Optional[int] = None) -> List[Operation]:
        """Recorded operations whose pointer or result segment holds ``address`` (oldest first)."""
        if address is None:
            return []
        hdr = prog_or_header if isinstance(prog_or_header, int) else prog_or_header.header_size
        out = [o for o in self.history if o.touches(address, hdr)]
        return out[-limit:] if limit else out

    def leaks(self, since: Optional[int] = None) -> List[Dict[str, Any]]:
        """Live allocations made at or after op ``since`` (default: the mark), grouped by caller,
        biggest first: [{caller, count, bytes, requested, blocks: [payload...]}]."""
        since = self.mark if since is None else since
        groups: Dict[str, Dict[str, Any]] = {}
        for payload, op in self.live.items():
            if op.index < since:
                continue
            name = op.caller_function
            g = groups.setdefault(name, {"caller": name, "count": 0, "bytes": 0, "requested": 0,
                                         "blocks": []})
            g["count"] += 1
            g["bytes"] += op.new_segment_size or 0
            g["requested"] += op.size or 0
            g["blocks"].append(payload)
        for g in groups.values():
            g["blocks"].sort()
        return sorted(groups.values(), key=lambda g: (-g["bytes"], g["caller"]))

    def status(self) -> Dict[str, Any]:
        return {"counters": self.counters.to_json(), "history_size": len(self.history),
                "history_limit": self.history.maxlen, "full_every": self.full_every,
                "live": len(self.live), "mark": self.mark,
                "pending": {str(t): len(s) for t, s in self.pending.items() if s},
                "stops": self.stops,
                "last_stop": self.last_stop.to_json() if self.last_stop else None}


# -- return instructions -------------------------------------------------------------------------

_ARM_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt",
              "le", "al")


def _split_cond(mnemonic: str, base: str) -> Optional[str]:
    if not mnemonic.startswith(base):
        return None
    rest = mnemonic[len(base):]
    for suffix in (".w", ".n"):
        if rest.endswith(suffix):
            rest = rest[:-len(suffix)]
    if rest == "":
        return "al"
    return rest if rest in _ARM_CONDS else None


def return_sp_adjust(asm: str, arch: str) -> Optional[Tuple[int, str]]:
    """If the disassembled instruction ``asm`` returns from a function: (how much it raises SP,
    ARM condition code or 'al'); else None.

    ARM: ``bx lr``, ``pop {..., pc}``, ``ldm sp!, {..., pc}`` (ldmia/ldmfd), ``ldr pc, [sp], #4``.
    AArch64: ``ret`` (SP is already restored by then: adjust 0).
    """
    text = asm.strip().lower().replace("\t", " ")
    if not text:
        return None
    mnemonic, _, operands = text.partition(" ")
    operands = operands.split(";")[0].split("@")[0].strip()
    if arch == "aarch64":
        if mnemonic == "ret" and operands in ("", "x30"):
            return 0, "al"
        return None
    cond = _split_cond(mnemonic, "bx")
    if cond is not None and operands == "lr":
        return 0, cond
    regs = None
    cond = _split_cond(mnemonic, "pop")
    if cond is not None:
        regs = operands
    else:
        for base in ("ldmia", "ldmfd", "ldm"):
            c = _split_cond(mnemonic, base)
            if c is not None and operands.replace(" ", "").startswith("sp!,"):
                cond, regs = c, operands.split(",", 1)[1]
                break
        else:
            c = _split_cond(mnemonic, "ldr")
            if c is not None and operands.replace(" ", "").startswith("pc,[sp],#"):
                return int(operands.rsplit("#", 1)[1], 0), c
    if regs is None:
        return None
    names = [r.strip() for r in regs.strip().strip("{}").split(",") if r.strip()]
    if "pc" not in names and "r15" not in names:
        return None
    count = 0
    for name in names:
        if "-" in name:
            lo, hi = (int(x.strip().lstrip("r")) for x in name.split("-"))
            count += hi - lo + 1
        else:
            count += 1
    return 4 * count, cond


def arm_condition_passed(cond: str, cpsr: int) -> bool:
    """Whether an ARM condition code passes for the NZCV flags in ``cpsr``."""
    n, z, c, v = (cpsr >> 31) & 1, (cpsr >> 30) & 1, (cpsr >> 29) & 1, (cpsr >> 28) & 1
    return {
        "eq": z == 1, "ne": z == 0, "cs": c == 1, "hs": c == 1, "cc": c == 0, "lo": c == 0,
        "mi": n == 1, "pl": n == 0, "vs": v == 1, "vc": v == 0, "hi": c == 1 and z == 0,
        "ls": c == 0 or z == 1, "ge": n == v, "lt": n != v, "gt": z == 0 and n == v,
        "le": z == 1 or n != v, "al": True,
    }[cond]



# -- what every debugger adapter needs around the Watch ---------------------------------------

class WatchSetupError(Exception):
    """The allocator cannot be watched (no sized symbol, no return instruction found)."""


@dataclass
class ReturnSite:
    """A return instruction of an allocator function: where, how much it raises SP, when."""

    address: int
    sp_adjust: int
    condition: str                     # ARM condition code, 'al' if unconditional
    asm: str

    def to_json(self) -> Dict[str, Any]:
        return {"address": self.address, "sp_adjust": self.sp_adjust, "condition": self.condition,
                "asm": self.asm}


@dataclass
class CallSites:
    """Where to break for one allocator function: its first instruction and every return."""

    entry: int
    returns: List[ReturnSite]


def allocator_sites(elf: Any, disassemble: Callable[[str, Any], Iterable[Tuple[int, str]]]
                    ) -> Dict[str, CallSites]:
    """The entry and return instructions of kmalloc, kcalloc, krealloc and kfree.

    ``elf`` is the kernel's ElfInfo (sized symbols); ``disassemble(kind, symbol)`` is the
    debugger's disassembler over that symbol's range, yielding (address, "mnemonic operands").
    Raises WatchSetupError when a function has no sized symbol or no return instruction."""
    sites: Dict[str, CallSites] = {}
    for kind in KINDS:
        sym = elf.symbol(kind)
        if sym is None or not sym.size:
            raise WatchSetupError(f"no sized symbol {kind} in {elf.path}")
        returns = []
        for address, asm in disassemble(kind, sym):
            found = return_sp_adjust(asm, elf.arch)
            if found is not None:
                returns.append(ReturnSite(address, found[0], found[1], asm))
        if not returns:
            raise WatchSetupError(f"no return instruction found in {kind}")
        sites[kind] = CallSites(sym.address, returns)
    return sites


def refresh_program(prog: Program, bounds_known: bool) -> bool:
    """Forget what ``prog`` read at the previous stop (keeping the heap bounds once the heap
    exists); returns whether the bounds are known now (before kheap_init they are not)."""
    prog.invalidate(keep_bounds=bounds_known)
    if bounds_known:
        return True
    try:
        return bool(prog.bounds.list_head)
    except Exception:  # noqa: BLE001 - before kheap_init: try again next time
        return False


def watch_status(watch: Optional[Watch], *, active: bool, breakpoints: int,
                 return_sites: Dict[str, Any], internal_errors: int, hits: int,
                 python_seconds: float) -> Dict[str, Any]:
    """``kheap watch status`` as data, the same in every debugger."""
    out = {"active": active, "breakpoints": breakpoints, "return_sites": return_sites,
           "internal_errors": internal_errors, "breakpoint_hits": hits,
           "python_seconds": round(python_seconds, 3)}
    if watch is not None:
        out.update(watch.status())
    return out


def internal_error_line(address: int, error: BaseException) -> str:
    """One line for a bug of kheap's own hit at a watch breakpoint (the kernel keeps running)."""
    return (f"kheap watch: internal error at 0x{address:x}: "
            f"{type(error).__name__}: {' '.join(str(error).split())}")
