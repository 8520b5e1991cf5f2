"""What ``kheap watch`` does at a breakpoint, whichever debugger placed it.

gdb_watch.py and lldb_watch.py differ only in how a breakpoint is placed, how a register and
the thread are read, and where text goes. Everything else lives here once: the Watch and its
Program, the enable/disable sequence, and what each kind of hit does (read the arguments or
the result, hand them to :mod:`gdbext.core.watch`, print the report when it says stop).
No debugger import here: adapters subclass WatchControllerBase and fill in the hooks.
"""

import traceback
from time import perf_counter as _clock

from gdbext.core import reports
from gdbext.core.memory import BlockCache
from gdbext.core.program import Program
from gdbext.core.symbols import load_elf_info
from gdbext.core.watch import (Watch, WatchSetupError, allocator_sites, arm_condition_passed,
                               internal_error_line, refresh_program, watch_status)
from gdbext.frontends.session import CommandError

# Register names as gdb spells them; an adapter whose debugger spells one differently overrides
# ``register_names`` (lldb calls AArch64's x30 'lr').
REGISTERS = {
    "arm": {"args": ("r0", "r1"), "result": "r0", "sp": "sp", "lr": "lr", "flags": "cpsr"},
    "aarch64": {"args": ("x0", "x1"), "result": "x0", "sp": "sp", "lr": "x30", "flags": "cpsr"},
}
MAX_ERRORS_SHOWN = 3


class WatchControllerBase:
    """Owns the Watch, its Program (a small-block cache refreshed at every hit) and the
    breakpoints; the command handlers talk to it through the session.

    Hooks for an adapter: ``_reader()`` (a live memory reader; raises CommandError),
    ``_disassemble(kind, sym)`` (yields ``(address, "mnemonic operands")``), ``_prepare()``,
    ``_place(address, role, kind=None, ret=None)`` (returns the breakpoint, whose hits call
    :meth:`run_hit` with :meth:`on_entry`, :meth:`on_return` or :meth:`on_checkpoint`),
    ``_delete(breakpoint)`` and ``_write(text, error=False)``.
    """

    register_names = REGISTERS

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
        reader = self._reader()
        elf = load_elf_info(self.session.elf_path())
        if elf.arch not in self.register_names:
            raise CommandError(f"kheap watch: unsupported architecture {elf.arch}")
        try:
            sites = allocator_sites(elf, self._disassemble)
        except WatchSetupError as error:
            raise CommandError(f"kheap watch: {error}") from None
        self.regs = self.register_names[elf.arch]
        self.mask = (1 << (8 * elf.pointer_size)) - 1
        self.prog = Program(elf, BlockCache(reader, block_size=256), self.session.overrides())
        self._bounds_known = False
        self.watch = Watch(history, full_every, word_bits=8 * elf.pointer_size)
        self.errors = []
        self._prepare()
        try:
            for kind, site in sites.items():
                self.breakpoints.append(self._place(site.entry, "entry", kind=kind))
                for ret in site.returns:
                    self.breakpoints.append(self._place(ret.address, "return", kind=kind, ret=ret))
            point = elf.address_of("kheap_checkpoint")
            if checkpoint and point is not None:
                self.breakpoints.append(self._place(point, "checkpoint"))
        except CommandError:
            self.disable()
            raise
        self.return_sites = {k: [r.to_json() for r in s.returns] for k, s in sites.items()}

    def disable(self):
        """Remove the watch's breakpoints; returns how many there were (0: none was set, as
        after a 'watch on' that failed, and 'watch off' must not claim it removed any)."""
        removed = len(self.breakpoints)
        for breakpoint in self.breakpoints:
            self._delete(breakpoint)
        self.breakpoints = []
        return removed

    def refresh(self):
        """The watch's Program with this stop's memory (bounds kept once the heap exists)."""
        self._bounds_known = refresh_program(self.prog, self._bounds_known)
        return self.prog

    # What a hit does. ``read(name) -> int`` reads a register of the stopped thread;
    # ``backtrace(prog)`` gives [(pc, symbol)] and is called only when reporting.
    def run_hit(self, address, hit):
        """Run one hit's handler, timed; a bug in it costs a one-line error, not the session."""
        started = _clock()
        try:
            return hit()
        except Exception as error:  # noqa: BLE001 - a watch bug must not wedge the session
            return self.internal_error(address, error)
        finally:
            self.hits += 1
            self.python_seconds += _clock() - started

    def on_entry(self, kind, read, thread, backtrace):
        r, mask = self.regs, self.mask
        args = [read(name) & mask for name in r["args"]]
        sp = read(r["sp"]) & mask
        lr = read(r["lr"]) & mask
        prog = self.refresh()
        stop = self.watch.enter(prog, kind, thread, sp, lr, args, caller=prog.elf.symbolize(lr))
        return self.report(stop, backtrace)

    def on_return(self, ret, read, thread, backtrace):
        r, mask = self.regs, self.mask
        if ret.condition != "al" and not arm_condition_passed(ret.condition,
                                                             read(r["flags"]) & 0xFFFFFFFF):
            return False                       # a conditional return that does not return now
        sp_after = ((read(r["sp"]) & mask) + ret.sp_adjust) & mask
        result = read(r["result"]) & mask
        stop = self.watch.leave(self.refresh(), thread, sp_after, result)
        return self.report(stop, backtrace)

    def on_checkpoint(self, backtrace):
        return self.report(self.watch.checkpoint(self.refresh()), backtrace)

    def report(self, stop, backtrace):
        if stop is None:
            return False
        if stop.operation is not None:
            stop.operation.backtrace = backtrace(self.prog)
        self._write(reports.render_text(reports.watch_stop_report(stop, self.prog.pointer_size)))
        return True

    def internal_error(self, address, error):
        line = internal_error_line(address, error)
        self.errors.append(line)
        if len(self.errors) <= MAX_ERRORS_SHOWN:
            self._write(line + "\n", error=True)
        if self.session.debug:
            self._write(traceback.format_exc(), error=True)
            return True
        return False

    def status(self):
        return watch_status(self.watch, active=self.active, breakpoints=len(self.breakpoints),
                            return_sites=self.return_sites, internal_errors=len(self.errors),
                            hits=self.hits, python_seconds=self.python_seconds)

    # Hooks -----------------------------------------------------------------------------------
    def _reader(self):
        raise NotImplementedError

    def _disassemble(self, kind, sym):
        raise NotImplementedError

    def _prepare(self):
        """Anything the debugger needs before breakpoints can call back (optional)."""

    def _place(self, address, role, kind=None, ret=None):
        raise NotImplementedError

    def _delete(self, breakpoint):
        raise NotImplementedError

    def _write(self, text, error=False):
        raise NotImplementedError
