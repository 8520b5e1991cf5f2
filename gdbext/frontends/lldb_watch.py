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

import lldb  # noqa: I001 - this face exists to talk to lldb

from gdbext.core.watch import WatchSetupError
from gdbext.frontends.session import CommandError
from gdbext.frontends.watch_controller import REGISTERS, WatchControllerBase

BREAKPOINT_NAME = "kheap-watch"

# breakpoint id -> (controller, address, hit(frame)); lldb calls the module-level _on_hit.
_HANDLERS = {}


def _on_hit(frame, bp_loc, internal_dict):
    """lldb's script callback for every kheap watch breakpoint: False continues, True stops."""
    entry = _HANDLERS.get(bp_loc.GetBreakpoint().GetID())
    if entry is None:
        return False                       # a stale breakpoint of a watch turned off
    controller, address, hit = entry
    return controller.run_hit(address, lambda: hit(frame))


def _register_reader(frame):
    def read(name):
        return frame.FindRegister(name).GetValueAsUnsigned()
    return read


class WatchController(WatchControllerBase):
    """The watch's breakpoints as SBBreakpoints with a script callback; the rest is
    WatchControllerBase."""

    # lldb calls x30 'lr' (x30 is only its alternate name, which FindRegister does not take)
    register_names = dict(REGISTERS, aarch64=dict(REGISTERS["aarch64"], lr="lr"))

    def __init__(self, session):
        super().__init__(session)
        self.target = None

    def _reader(self):
        from gdbext.frontends.lldb import LldbReader

        process = self.session._process()
        self.target = process.GetTarget()
        return LldbReader(process)

    def _disassemble(self, kind, sym):
        """(address, 'mnemonic operands') for each instruction of the ELF symbol ``kind``."""
        target = self.target
        symbols = [c.GetSymbol() for c in target.FindSymbols(kind) if c.GetSymbol().IsValid()]
        symbols = [s for s in symbols if s.GetStartAddress().GetLoadAddress(target) == sym.address]
        if not symbols:
            raise WatchSetupError(f"lldb does not know the symbol {kind} at 0x{sym.address:x}")
        for insn in symbols[0].GetInstructions(target):
            yield (insn.GetAddress().GetLoadAddress(target),
                   f"{insn.GetMnemonic(target)} {insn.GetOperands(target)}".strip())

    def _prepare(self):
        # The callback is named by dotted path in lldb's script namespace: import us there.
        ret = lldb.SBCommandReturnObject()
        self.target.GetDebugger().GetCommandInterpreter().HandleCommand(f"script import {__name__}", ret)

    def _place(self, address, role, kind=None, ret=None):
        def backtrace_of(frame):
            return lambda prog: _backtrace(prog, frame.GetThread())

        if role == "entry":
            def hit(frame):
                return self.on_entry(kind, _register_reader(frame), frame.GetThread().GetIndexID(),
                                     backtrace_of(frame))
        elif role == "return":
            def hit(frame):
                return self.on_return(ret, _register_reader(frame), frame.GetThread().GetIndexID(),
                                      backtrace_of(frame))
        else:
            def hit(frame):
                return self.on_checkpoint(backtrace_of(frame))
        bp = self.target.BreakpointCreateByAddress(address)
        if not bp.IsValid() or bp.GetNumLocations() == 0:
            raise CommandError(f"kheap watch: cannot set a breakpoint at 0x{address:x}")
        bp.AddName(BREAKPOINT_NAME)
        _HANDLERS[bp.GetID()] = (self, address, hit)
        bp.SetScriptCallbackFunction(f"{__name__}._on_hit")
        return bp

    def _delete(self, breakpoint):
        _HANDLERS.pop(breakpoint.GetID(), None)
        if self.target is not None and self.target.IsValid():
            self.target.BreakpointDelete(breakpoint.GetID())

    def _write(self, text, error=False):
        debugger = self.target.GetDebugger()
        stream = debugger.GetErrorFile() if error else debugger.GetOutputFile()
        if stream is not None and stream.IsValid():
            stream.Write(text.encode())
            stream.Flush()
        else:
            print(text, end="")


def _backtrace(prog, thread, limit=8):
    frames = []
    for index in range(min(thread.GetNumFrames(), limit)):
        frame = thread.GetFrameAtIndex(index)
        frames.append((frame.GetPC(), prog.elf.symbolize(frame.GetPC()) or frame.GetFunctionName()))
    return frames
