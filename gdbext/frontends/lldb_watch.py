"""``kheap watch`` in lldb: the breakpoints that feed :mod:`gdbext.core.watch`.

The lldb twin of ``gdb_watch.py`` and the only module with ``SBBreakpoint`` code. Entry
breakpoints sit on the first instruction of kmalloc, kcalloc, krealloc and kfree; return
breakpoints on every return instruction of those functions, found by disassembling each
function's ELF symbol (``SBSymbol.GetInstructions``) and parsed by the core's
:func:`return_sp_adjust`, never a "step out" that can lose returns on the 4-core board. A
breakpoint on ``kheap_checkpoint`` runs a full check.

Each breakpoint has a script callback (``_on_hit``) that reads only the registers it needs from
the frame lldb hands it, records, checks, and returns False to keep the kernel running, or True
(with the report printed on lldb's output) at the first bad operation. lldb names a script
callback by dotted path in its own script namespace, so ``enable`` imports this module there.

Read-only: breakpoints are the only thing kheap puts in the target, and ``watch off`` removes
them. They carry the breakpoint name ``kheap-watch`` so ``breakpoint list`` shows whose they are.
"""

from time import perf_counter as _clock

import lldb  # noqa: I001 - this face exists to talk to lldb

from gdbext.core.memory import BlockCache
from gdbext.core.program import Program
from gdbext.core.symbols import load_elf_info
from gdbext.core.watch import (Watch, WatchSetupError, allocator_sites, arm_condition_passed,
                               internal_error_line, refresh_program, watch_status)
from gdbext.frontends.session import CommandError

_REGS = {
    "arm": {"args": ("r0", "r1"), "result": "r0", "sp": "sp", "lr": "lr", "flags": "cpsr"},
    # lldb calls x30 'lr' (x30 is only its alternate name, which FindRegister does not take)
    "aarch64": {"args": ("x0", "x1"), "result": "x0", "sp": "sp", "lr": "lr", "flags": "cpsr"},
}
BREAKPOINT_NAME = "kheap-watch"
MAX_ERRORS_SHOWN = 3

# breakpoint id -> (controller, handler); lldb calls the module-level _on_hit, which looks here
_HANDLERS = {}


def _on_hit(frame, bp_loc, internal_dict):
    """lldb's script callback for every kheap watch breakpoint: False continues, True stops."""
    entry = _HANDLERS.get(bp_loc.GetBreakpoint().GetID())
    if entry is None:
        return False                       # a stale breakpoint of a watch turned off
    controller, handler = entry
    started = _clock()
    try:
        return handler(controller, frame)
    except Exception as error:  # noqa: BLE001 - a watch bug must not wedge the session
        return controller.internal_error(bp_loc.GetLoadAddress(), error)
    finally:
        controller.hits += 1
        controller.python_seconds += _clock() - started


def _reader(frame):
    def read(name):
        return frame.FindRegister(name).GetValueAsUnsigned()
    return read


def _entry_handler(kind):
    def hit(c, frame):
        r, mask, read = c.regs, c.mask, _reader(frame)
        args = [read(name) & mask for name in r["args"]]
        sp = read(r["sp"]) & mask
        lr = read(r["lr"]) & mask
        prog = c.refresh()
        stop = c.watch.enter(prog, kind, frame.GetThread().GetIndexID(), sp, lr, args,
                             caller=prog.elf.symbolize(lr))
        return c.report(stop, frame)
    return hit


def _return_handler(sp_adjust, cond):
    def hit(c, frame):
        r, mask, read = c.regs, c.mask, _reader(frame)
        if cond != "al" and not arm_condition_passed(cond, read(r["flags"]) & 0xFFFFFFFF):
            return False                   # a conditional return that does not return now
        sp_after = ((read(r["sp"]) & mask) + sp_adjust) & mask
        result = read(r["result"]) & mask
        prog = c.refresh()
        stop = c.watch.leave(prog, frame.GetThread().GetIndexID(), sp_after, result)
        return c.report(stop, frame)
    return hit


def _checkpoint_handler(c, frame):
    return c.report(c.watch.checkpoint(c.refresh()), frame)


class WatchController:
    """Owns the Watch, its Program (a small-block cache refreshed at every hit) and the
    breakpoints; the command handlers talk to it through the session, as in gdb."""

    def __init__(self, session):
        self.session = session
        self.watch = None
        self.breakpoints = []
        self.target = None
        self.prog = None
        self.regs = None
        self.mask = 0xFFFFFFFF
        self.errors = []
        self.return_sites = {}
        self._bounds_known = False
        self.hits = 0
        self.python_seconds = 0.0

    @property
    def active(self):
        return bool(self.breakpoints)

    def enable(self, history, full_every, checkpoint=True):
        if self.active:
            self.watch.full_every = full_every
            self.watch.resize(history)
            return
        process = self.session._process()
        target = process.GetTarget()
        elf = load_elf_info(self.session.elf_path())
        arch = elf.arch
        if arch not in _REGS:
            raise CommandError(f"kheap watch: unsupported architecture {arch}")
        from gdbext.frontends.lldb import LldbReader

        try:
            sites = allocator_sites(elf, lambda kind, sym: _disassemble(target, kind, sym))
        except WatchSetupError as error:
            raise CommandError(f"kheap watch: {error}") from None
        self.target = target
        self.regs = _REGS[arch]
        self.mask = (1 << (8 * elf.pointer_size)) - 1
        self.prog = Program(elf, BlockCache(LldbReader(process), block_size=256),
                            self.session.overrides())
        self._bounds_known = False
        self.watch = Watch(history, full_every, word_bits=8 * elf.pointer_size)
        self.errors = []
        # The callback is named by dotted path in lldb's script namespace: import us there.
        ret = lldb.SBCommandReturnObject()
        target.GetDebugger().GetCommandInterpreter().HandleCommand(f"script import {__name__}", ret)
        try:
            for kind, site in sites.items():
                self._place(site.entry, _entry_handler(kind))
                for ret_site in site.returns:
                    self._place(ret_site.address, _return_handler(ret_site.sp_adjust,
                                                                  ret_site.condition))
            point = elf.address_of("kheap_checkpoint")
            if checkpoint and point is not None:
                self._place(point, _checkpoint_handler)
        except CommandError:
            self.disable()
            raise
        self.return_sites = {k: [r.to_json() for r in s.returns] for k, s in sites.items()}

    def _place(self, address, handler):
        bp = self.target.BreakpointCreateByAddress(address)
        if not bp.IsValid() or bp.GetNumLocations() == 0:
            raise CommandError(f"kheap watch: cannot set a breakpoint at 0x{address:x}")
        bp.AddName(BREAKPOINT_NAME)
        _HANDLERS[bp.GetID()] = (self, handler)
        bp.SetScriptCallbackFunction(f"{__name__}._on_hit")
        self.breakpoints.append(bp)

    def disable(self):
        for bp in self.breakpoints:
            _HANDLERS.pop(bp.GetID(), None)
            if self.target is not None and self.target.IsValid():
                self.target.BreakpointDelete(bp.GetID())
        self.breakpoints = []

    def refresh(self):
        """The watch's Program with this stop's memory (bounds kept once the heap exists)."""
        self._bounds_known = refresh_program(self.prog, self._bounds_known)
        return self.prog

    def report(self, stop, frame):
        if stop is None:
            return False
        if stop.operation is not None:
            stop.operation.backtrace = _backtrace(self.prog, frame.GetThread())
        self._write(stop.render(self.prog.fmt) + "\n")
        return True

    def _write(self, text, error=False):
        debugger = self.target.GetDebugger()
        stream = debugger.GetErrorFile() if error else debugger.GetOutputFile()
        if stream is not None and stream.IsValid():
            stream.Write(text.encode())
            stream.Flush()
        else:
            print(text, end="")

    def internal_error(self, address, error):
        line = internal_error_line(address, error)
        self.errors.append(line)
        if len(self.errors) <= MAX_ERRORS_SHOWN:
            self._write(line + "\n", error=True)
        if self.session.debug:
            import traceback

            self._write(traceback.format_exc(), error=True)
            return True
        return False

    def status(self):
        return watch_status(self.watch, active=self.active, breakpoints=len(self.breakpoints),
                            return_sites=self.return_sites, internal_errors=len(self.errors),
                            hits=self.hits, python_seconds=self.python_seconds)


def _disassemble(target, kind, sym):
    """(address, 'mnemonic operands') for each instruction of the ELF symbol ``kind``."""
    symbols = [c.GetSymbol() for c in target.FindSymbols(kind) if c.GetSymbol().IsValid()]
    symbols = [s for s in symbols if s.GetStartAddress().GetLoadAddress(target) == sym.address]
    if not symbols:
        raise WatchSetupError(f"lldb does not know the symbol {kind} at 0x{sym.address:x}")
    for insn in symbols[0].GetInstructions(target):
        yield (insn.GetAddress().GetLoadAddress(target),
               f"{insn.GetMnemonic(target)} {insn.GetOperands(target)}".strip())


def _backtrace(prog, thread, limit=8):
    frames = []
    for index in range(min(thread.GetNumFrames(), limit)):
        pc = thread.GetFrameAtIndex(index).GetPC()
        frames.append((pc, prog.elf.symbolize(pc) or thread.GetFrameAtIndex(index).GetFunctionName()))
    return frames
