"""``kheap blame`` in gdb: QEMU's reset through ``monitor``, a write watchpoint and a breakpoint
as ``gdb.Breakpoint`` subclasses, and one ``continue``.

The watchpoint's ``stop()`` records the write (pc, sp, lr, fp, the thread, a copy of the stack,
the bytes after the store) and returns False, so gdb resumes at once; the breakpoint at the stop
point returns True. gdb steps over the storing instruction before it calls ``stop()`` (ARM's
watchpoints do not step themselves: QEMU reports them before the store), so the storing
instruction is the one before the pc gdb shows: 4 bytes on A32 and A64.

gdb calls ``stop()`` only for writes that change the bytes: a store of the value already there
is not reported to Python at all (the CLI, which drives QEMU itself, sees those too).
"""

import os
import sys

import gdb  # noqa: I001 - this face exists to talk to gdb

from gdbext.core.memory import MemoryFault
from gdbext.frontends.blame_controller import NEEDS_QEMU, BlameTarget
from gdbext.frontends.session import CommandError

# Registers an unwind starts from, as gdb names them.
STORE_SIZE = 4                        # A32 and A64 instructions


class _Watchpoint(gdb.Breakpoint):
    def __init__(self, owner, address, size):
        super().__init__(f"*(unsigned char (*)[{size}]) {address:#x}", gdb.BP_WATCHPOINT, gdb.WP_WRITE,
                         internal=True)
        self.silent = True
        self._owner = owner

    def stop(self):
        try:
            return self._owner.hit()
        except KeyboardInterrupt:
            # Ctrl-C while Python runs (most of a long run) reaches us, not gdb: stop here.
            self._owner.reason = "interrupted"
            return True


class _Until(gdb.Breakpoint):
    def __init__(self, owner, address):
        super().__init__(f"*{address:#x}", gdb.BP_BREAKPOINT, internal=True)
        self.silent = True
        self._owner = owner

    def stop(self):
        self._owner.reason = "until"
        return True


def _value(name):
    return int(gdb.parse_and_eval("$" + name))


class GdbBlameTarget(BlameTarget):
    face = "gdb"
    REGISTERS = {
        "arm": {"sp": "sp", "lr": "lr", "fp": "r11"},
        "aarch64": {"sp": "sp", "lr": "x30", "fp": "x29"},
    }
    notes = ("gdb reports only the writes that change the watched bytes (a store of the value "
             "already there is not seen; the CLI sees every store)",)

    def __init__(self, session, interactive=False):
        self.session = session
        self.interactive = interactive
        self.inferior = session._live_inferior()
        from gdbext.core.symbols import load_elf_info

        elf = load_elf_info(session.elf_path())
        self.use_registers_of(elf)
        self.watchpoints = []
        self.breakpoints = []
        self.reason = None
        self._on_hit = None
        self._range = None
        self._last_stop = None
        self._suspended = None

    def check_can_blame(self):
        try:
            out = gdb.execute("monitor info status", to_string=True)
        except gdb.error as error:
            raise CommandError(f"{NEEDS_QEMU}: 'monitor info status' failed ({error})") from None
        if "VM status" not in out:
            raise CommandError(f"{NEEDS_QEMU}: the stub does not answer QEMU's monitor commands")

    def stop_location(self):
        thread = gdb.selected_thread()
        try:
            pc = gdb.newest_frame().pc()          # the thread's pc, whichever frame is selected
        except gdb.error:
            pc = None
        return pc, thread.num if thread else None

    def read(self, address, size):
        try:
            return bytes(self.inferior.read_memory(address, size))
        except gdb.MemoryError as error:
            raise MemoryFault(address, size, str(error)) from None
        except gdb.error as error:
            raise CommandError(f"cannot read target memory: {error}") from None

    def confirm(self, question):
        if not self.interactive or not gdb.parameter("confirm") or not sys.stdin.isatty():
            return True
        try:
            answer = input(question + " (y or n) ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    def progress(self, text):
        # Straight to the terminal: gdb.write would land in a to_string capture of the command.
        try:
            os.write(2, (text + "\n").encode())
        except OSError:
            pass

    def reset(self):
        gdb.execute("monitor system_reset", to_string=True)
        # gdb does not know the machine restarted: its cached registers still show the old pc.
        gdb.execute("maintenance flush register-cache", to_string=True)

    def watch(self, address, size):
        self._range = (address, size)
        try:
            self.watchpoints.append(_Watchpoint(self, address, size))
        except gdb.error as error:
            raise CommandError(f"cannot set a watchpoint on {size} bytes at {address:#x}: {error}") from None

    def unwatch(self):
        removed = sum(_delete(wp) for wp in self.watchpoints)
        self.watchpoints = []
        return removed

    def break_at(self, address):
        try:
            self.breakpoints.append(_Until(self, address))
        except gdb.error as error:
            raise CommandError(f"cannot set a breakpoint at {address:#x}: {error}") from None

    def hit(self):
        """A write: record it; stop only when --max-hits says so."""
        if self._on_hit is None:
            return False
        try:
            pc = (_value("pc") & self.mask) - STORE_SIZE
            registers = {key: _value(name) & self.mask for key, name in self.names.items()}
            address, size = self._range
            value = self.read(address, size)
            thread = gdb.selected_thread()
            keep = self._on_hit(pc, registers, value, thread.num if thread else None)
        except Exception as error:  # noqa: BLE001 - stop the run: the report says why
            self.reason = f"error: {error}"
            return True
        if not keep:
            self.reason = "max-hits"
            return True
        return False

    def _suspend_others(self):
        """Disable the user's breakpoints and kheap watch's for the re-run (they would stop it
        or record it); cleanup enables them again."""
        if self._suspended is not None:
            return
        self._suspended = []
        others = list(gdb.breakpoints())
        watch = getattr(self.session, "_watch", None)
        others += list(getattr(watch, "breakpoints", []) or [])
        for bp in others:
            try:
                if bp.is_valid() and bp.enabled and bp not in self.watchpoints + self.breakpoints:
                    bp.enabled = False
                    self._suspended.append(bp)
            except gdb.error:
                continue
        if self._suspended:
            self.notes = tuple(self.notes) + (
                f"{len(self._suspended)} other breakpoint{'s' if len(self._suspended) != 1 else ''} "
                "(yours, or kheap watch's) disabled during the re-run and enabled again",)

    def run(self, on_hit):
        self._suspend_others()
        self._on_hit = on_hit
        self.reason = None
        self._last_stop = None

        def on_stop(event):
            self._last_stop = event

        gdb.events.stop.connect(on_stop)
        try:
            # Not to_string: gdb 13 then loses a Ctrl-C typed while the watchpoint fires
            # (measured); with the silent breakpoints it prints nothing anyway.
            gdb.execute("continue", to_string=False)
        except KeyboardInterrupt:
            return "interrupted"
        finally:
            gdb.events.stop.disconnect(on_stop)
            self._on_hit = None
        if self.reason and self.reason.startswith("error: "):
            raise CommandError(self.reason[7:])
        if self.reason:
            return self.reason
        event = self._last_stop
        if isinstance(event, gdb.SignalEvent) and event.stop_signal == "SIGINT":
            return "interrupted"
        return "stopped"

    def cleanup(self):
        removed = {"watchpoints": 0, "breakpoints": 0}
        for key, items in (("watchpoints", self.watchpoints), ("breakpoints", self.breakpoints)):
            for bp in items:
                removed[key] += _delete(bp)
            items.clear()
        for bp in self._suspended or ():
            try:
                if bp.is_valid():
                    bp.enabled = True
            except gdb.error:
                pass
        self._suspended = None
        return removed

    def disassemble(self, pc):
        try:
            arch = gdb.selected_frame().architecture()
        except gdb.error:
            arch = self.inferior.architecture()
        insns = arch.disassemble(pc)
        return insns[0]["asm"] if insns else None


def _delete(bp):
    try:
        if bp.is_valid():
            bp.delete()
            return 1
    except gdb.error:
        pass
    return 0
