"""``kheap watch`` in gdb: the breakpoints that feed :mod:`gdbext.core.watch`.

The only module with ``gdb.Breakpoint`` code. Entry breakpoints sit on the first instruction of
kmalloc, kcalloc, krealloc and kfree; return breakpoints on every return instruction of those
functions (found by disassembling each function's ELF symbol range: ARM ``bx lr`` / ``pop
{..pc}`` / ``ldm sp!, {..pc}``, AArch64 ``ret``), never FinishBreakpoint, which loses returns on
the 4-core board. A breakpoint on ``kheap_checkpoint`` runs a full check. Each ``stop()`` reads
only the registers it needs (arguments, SP, LR; result and SP at a return, CPSR for a
conditional ARM return), records, checks, and returns False to keep the kernel running, or True
(with the report printed) at the first bad operation.

Read-only: breakpoints are the only thing kheap puts in the target, and ``watch off`` removes
them.
"""

import gdb  # noqa: I001 - this face exists to talk to gdb

from gdbext.frontends.session import CommandError
from gdbext.frontends.watch_controller import WatchControllerBase


def _register(name):
    """A register of the stopped thread. ``$name`` costs ~20 us; building a gdb.Frame first
    (selected_frame().read_register) costs ~0.8 ms on the remote target (frame id, unwinders)."""
    return int(gdb.parse_and_eval("$" + name))


class _WatchBreakpoint(gdb.Breakpoint):
    """An internal, silent breakpoint whose ``stop()`` runs one hit of the watch."""

    def __init__(self, controller, address, hit):
        super().__init__(f"*0x{address:x}", gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self._controller = controller
        self._address = address
        self._hit = hit

    def stop(self):
        return self._controller.run_hit(self._address, self._hit)


class WatchController(WatchControllerBase):
    """The watch's breakpoints as gdb.Breakpoints; the rest is WatchControllerBase."""

    def _reader(self):
        from gdbext.frontends.gdb import GdbReader

        return GdbReader(self.session._live_inferior())

    def _disassemble(self, kind, sym):
        try:
            arch = gdb.selected_frame().architecture()
        except gdb.error:
            arch = gdb.selected_inferior().architecture()
        for insn in arch.disassemble(sym.address, sym.address + sym.size - 1):
            yield insn["addr"], insn["asm"]

    def _place(self, address, role, kind=None, ret=None):
        if role == "entry":
            def hit():
                return self.on_entry(kind, _register, gdb.selected_thread().num, _backtrace)
        elif role == "return":
            def hit():
                return self.on_return(ret, _register, gdb.selected_thread().num, _backtrace)
        else:
            def hit():
                return self.on_checkpoint(_backtrace)
        try:
            return _WatchBreakpoint(self, address, hit)
        except gdb.error as error:
            raise CommandError(f"kheap watch: cannot set breakpoints: {error}") from None

    def _delete(self, breakpoint):
        try:
            if breakpoint.is_valid():
                breakpoint.delete()
        except gdb.error:
            pass

    def _write(self, text, error=False):
        gdb.write(text, gdb.STDERR if error else gdb.STDOUT)


def _backtrace(prog, limit=8):
    frames = []
    try:
        frame = gdb.newest_frame()
        while frame is not None and len(frames) < limit:
            pc = frame.pc()
            frames.append((pc, prog.elf.symbolize(pc) or frame.name()))
            frame = frame.older()
    except gdb.error:
        pass
    return frames
