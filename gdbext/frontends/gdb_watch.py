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

from time import perf_counter as _clock

import gdb  # noqa: I001 - this face exists to talk to gdb

from gdbext.core.memory import BlockCache
from gdbext.core.program import Program
from gdbext.core.symbols import load_elf_info
from gdbext.core.watch import (Watch, WatchSetupError, allocator_sites, arm_condition_passed,
                               internal_error_line, refresh_program, watch_status)
from gdbext.frontends.session import CommandError

_REGS = {
    "arm": {"args": ("r0", "r1"), "result": "r0", "sp": "sp", "lr": "lr", "flags": "cpsr"},
    "aarch64": {"args": ("x0", "x1"), "result": "x0", "sp": "sp", "lr": "x30", "flags": "cpsr"},
}
MAX_ERRORS_SHOWN = 3


def _register(name):
    """A register of the stopped thread. ``$name`` costs ~20 us; building a gdb.Frame first
    (selected_frame().read_register) costs ~0.8 ms on the remote target (frame id, unwinders)."""
    return gdb.parse_and_eval("$" + name)


class _WatchBreakpoint(gdb.Breakpoint):
    def __init__(self, controller, address):
        super().__init__(f"*0x{address:x}", gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self._controller = controller

    def stop(self):
        started = _clock()
        try:
            return self._hit()
        except Exception as error:  # noqa: BLE001 - a watch bug must not wedge the session
            return self._controller.internal_error(self, error)
        finally:
            self._controller.hits += 1
            self._controller.python_seconds += _clock() - started

    def _hit(self):
        raise NotImplementedError


class _EntryBreakpoint(_WatchBreakpoint):
    def __init__(self, controller, kind, address):
        super().__init__(controller, address)
        self.kind = kind

    def _hit(self):
        c = self._controller
        r = c.regs
        read = _register
        mask = c.mask
        args = [int(read(name)) & mask for name in r["args"]]
        sp = int(read(r["sp"])) & mask
        lr = int(read(r["lr"])) & mask
        prog = c.refresh()
        stop = c.watch.enter(prog, self.kind, gdb.selected_thread().num, sp, lr, args,
                             caller=prog.elf.symbolize(lr))
        return c.report(stop)


class _ReturnBreakpoint(_WatchBreakpoint):
    def __init__(self, controller, kind, address, sp_adjust, cond):
        super().__init__(controller, address)
        self.kind = kind
        self.sp_adjust = sp_adjust
        self.cond = cond

    def _hit(self):
        c = self._controller
        read = _register
        r = c.regs
        if self.cond != "al" and not arm_condition_passed(self.cond, int(read(r["flags"])) & 0xFFFFFFFF):
            return False                     # a conditional return that does not return now
        mask = c.mask
        sp_after = ((int(read(r["sp"])) & mask) + self.sp_adjust) & mask
        result = int(read(r["result"])) & mask
        prog = c.refresh()
        stop = c.watch.leave(prog, gdb.selected_thread().num, sp_after, result)
        return c.report(stop)


class _CheckpointBreakpoint(_WatchBreakpoint):
    def _hit(self):
        c = self._controller
        prog = c.refresh()
        return c.report(c.watch.checkpoint(prog))


class WatchController:
    """Owns the Watch, its Program (a small-block cache refreshed at every hit) and the
    breakpoints; the command handlers talk to it through the session."""

    def __init__(self, session):
        self.session = session
        self.watch = None
        self.breakpoints = []
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
        inferior = self.session._live_inferior()
        elf = load_elf_info(self.session.elf_path())
        arch = elf.arch
        if arch not in _REGS:
            raise CommandError(f"kheap watch: unsupported architecture {arch}")
        from gdbext.frontends.gdb import GdbReader

        self.regs = _REGS[arch]
        self.mask = (1 << (8 * elf.pointer_size)) - 1
        self.prog = Program(elf, BlockCache(GdbReader(inferior), block_size=256),
                            self.session.overrides())
        self._bounds_known = False
        self.watch = Watch(history, full_every, word_bits=8 * elf.pointer_size)
        self.errors = []
        try:
            gdbarch = gdb.selected_frame().architecture()
        except gdb.error:
            gdbarch = inferior.architecture()

        def disassemble(kind, sym):
            for insn in gdbarch.disassemble(sym.address, sym.address + sym.size - 1):
                yield insn["addr"], insn["asm"]

        try:
            sites = allocator_sites(elf, disassemble)
        except WatchSetupError as error:
            raise CommandError(f"kheap watch: {error}") from None
        try:
            for kind, site in sites.items():
                self.breakpoints.append(_EntryBreakpoint(self, kind, site.entry))
                for ret in site.returns:
                    self.breakpoints.append(_ReturnBreakpoint(self, kind, ret.address,
                                                              ret.sp_adjust, ret.condition))
            point = elf.address_of("kheap_checkpoint")
            if checkpoint and point is not None:
                self.breakpoints.append(_CheckpointBreakpoint(self, point))
        except gdb.error as error:
            self.disable()
            raise CommandError(f"kheap watch: cannot set breakpoints: {error}") from None
        self.return_sites = {k: [r.to_json() for r in s.returns] for k, s in sites.items()}

    def disable(self):
        for bp in self.breakpoints:
            try:
                if bp.is_valid():
                    bp.delete()
            except gdb.error:
                pass
        self.breakpoints = []

    def refresh(self):
        """The watch's Program with this stop's memory (bounds kept once the heap exists)."""
        self._bounds_known = refresh_program(self.prog, self._bounds_known)
        return self.prog

    def report(self, stop):
        if stop is None:
            return False
        if stop.operation is not None:
            stop.operation.backtrace = _backtrace(self.prog)
        gdb.write(stop.render(self.prog.fmt) + "\n")
        return True

    def internal_error(self, breakpoint, error):
        line = internal_error_line(int(breakpoint.location.lstrip("*"), 0), error)
        self.errors.append(line)
        if len(self.errors) <= MAX_ERRORS_SHOWN:
            gdb.write(line + "\n", gdb.STDERR)
        if self.session.debug:
            import traceback

            gdb.write(traceback.format_exc(), gdb.STDERR)
            return True
        return False

    def status(self):
        return watch_status(self.watch, active=self.active, breakpoints=len(self.breakpoints),
                            return_sites=self.return_sites, internal_errors=len(self.errors),
                            hits=self.hits, python_seconds=self.python_seconds)


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
