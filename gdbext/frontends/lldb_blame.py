"""``kheap blame`` in lldb: QEMU's reset through ``process plugin packet monitor``, lldb's own
write watchpoint and breakpoint, and ``SBProcess.Continue`` in a loop.

What lldb 14 cannot do for itself with QEMU 7.2, and what this face does instead:
- It takes QEMU's watchpoint stops as coming *after* the store, but QEMU stops before it, at
  the storing instruction: a plain continue stops at the same store again, forever. At every
  watchpoint stop this face disables the watchpoint, steps that one instruction
  (``SBThread.StepInstruction``), enables it again, and reads the bytes after the store.
- ``process plugin packet send qRcmd,...`` takes QEMU's first output packet for the reply and
  leaves the real one queued (every later packet is then answered late): only ``process plugin
  packet monitor`` is used, which reads the output and the reply properly.
- It never learns of the reset: its register cache keeps the old pc until the target runs.
  Nothing here reads registers between the reset and the first continue.
- Each stop prints lldb's "Watchpoint N hit" lines on the debugger's output; they are sent to
  /dev/null while blame runs, and the output is put back afterwards.
"""

import os

import lldb  # noqa: I001 - this face exists to talk to lldb

from gdbext.core.memory import MemoryFault
from gdbext.frontends.blame_controller import NEEDS_QEMU, BlameTarget
from gdbext.frontends.session import CommandError

BREAKPOINT_NAME = "kheap-blame"


class LldbBlameTarget(BlameTarget):
    face = "lldb"
    REGISTERS = {
        "arm": {"sp": "sp", "lr": "lr", "fp": "r11"},
        "aarch64": {"sp": "sp", "lr": "lr", "fp": "fp"},
    }
    notes = ("lldb 14 takes QEMU's watchpoint stops as coming after the store (QEMU stops before "
             "it): kheap steps over each watched store itself (one StepInstruction per write)",)

    def __init__(self, session):
        self.session = session
        self.process = session._process()
        self.target = self.process.GetTarget()
        self.debugger = self.target.GetDebugger()
        from gdbext.core.symbols import load_elf_info

        elf = load_elf_info(session.elf_path())
        self.use_registers_of(elf)
        self.watchpoints = []
        self.breakpoints = []
        self._range = None
        self._until = None
        self._suspended = None

    def _command(self, line):
        ret = lldb.SBCommandReturnObject()
        self.debugger.GetCommandInterpreter().HandleCommand(line, ret)
        return ret

    def _monitor(self, command):
        ret = self._command(f"process plugin packet monitor {command}")
        if not ret.Succeeded():
            raise CommandError(f"{NEEDS_QEMU}: 'monitor {command}' failed "
                               f"({(ret.GetError() or '').strip() or 'no reply'})")
        return ret.GetOutput() or ""

    def check_can_blame(self):
        out = self._monitor("info status")
        if "VM status" not in out:
            raise CommandError(f"{NEEDS_QEMU}: the stub does not answer QEMU's monitor commands")

    def _thread(self):
        thread = self.process.GetSelectedThread()
        if not thread.IsValid() and self.process.GetNumThreads():
            thread = self.process.GetThreadAtIndex(0)
        return thread

    def stop_location(self):
        thread = self._thread()
        frame = thread.GetFrameAtIndex(0)
        return (frame.GetPC() if frame.IsValid() else None), thread.GetIndexID()

    def read(self, address, size):
        error = lldb.SBError()
        data = self.process.ReadMemory(address, size, error)
        if error.Fail() or data is None or len(data) < size:
            raise MemoryFault(address, size, error.GetCString() or "unreadable")
        return bytes(data)

    def progress(self, text):
        stream = self.debugger.GetErrorFile()
        if stream is not None and stream.IsValid():
            stream.Write((text + "\n").encode())
            stream.Flush()

    def confirm(self, question):
        import sys

        try:
            if not sys.stdin.isatty():
                return True
            answer = input(question + " (y or n) ")
        except (EOFError, KeyboardInterrupt, OSError, ValueError):
            return False
        return answer.strip().lower() in ("y", "yes")

    def reset(self):
        self._monitor("system_reset")

    def watch(self, address, size):
        self._range = (address, size)
        error = lldb.SBError()
        wp = self.target.WatchAddress(address, size, False, True, error)
        if not wp.IsValid() or error.Fail():
            raise CommandError(f"cannot set a watchpoint on {size} bytes at {address:#x}: "
                               f"{error.GetCString() or 'refused'}")
        self.watchpoints.append(wp)

    def unwatch(self):
        removed = sum(bool(self.target.DeleteWatchpoint(wp.GetID())) for wp in self.watchpoints)
        self.watchpoints = []
        return removed

    def break_at(self, address):
        self._until = address
        bp = self.target.BreakpointCreateByAddress(address)
        if not bp.IsValid() or bp.GetNumLocations() == 0:
            raise CommandError(f"cannot set a breakpoint at {address:#x}")
        bp.AddName(BREAKPOINT_NAME)
        self.breakpoints.append(bp)

    def _registers(self, frame):
        regs = {}
        for key, name in self.names.items():
            value = frame.FindRegister(name)
            regs[key] = value.GetValueAsUnsigned() & self.mask if value.IsValid() else None
        return regs

    def _stopped_thread(self):
        """The thread that stopped for a watchpoint or a breakpoint (else the selected one)."""
        for i in range(self.process.GetNumThreads()):
            thread = self.process.GetThreadAtIndex(i)
            if thread.GetStopReason() in (lldb.eStopReasonWatchpoint, lldb.eStopReasonBreakpoint):
                return thread
        return self._thread()

    def _suspend_others(self):
        """Disable the user's breakpoints and watchpoints and kheap watch's for the re-run (they
        would stop it or record it); cleanup enables them again."""
        if self._suspended is not None:
            return
        ours = {bp.GetID() for bp in self.breakpoints}
        mine = {wp.GetID() for wp in self.watchpoints}
        self._suspended = []
        for i in range(self.target.GetNumBreakpoints()):
            bp = self.target.GetBreakpointAtIndex(i)
            if bp.IsValid() and bp.IsEnabled() and bp.GetID() not in ours:
                bp.SetEnabled(False)
                self._suspended.append(bp)
        for i in range(self.target.GetNumWatchpoints()):
            wp = self.target.GetWatchpointAtIndex(i)
            if wp.IsValid() and wp.IsEnabled() and wp.GetID() not in mine:
                wp.SetEnabled(False)
                self._suspended.append(wp)
        if self._suspended:
            self.notes = tuple(self.notes) + (
                f"{len(self._suspended)} other breakpoint{'s' if len(self._suspended) != 1 else ''} or "
                "watchpoints (yours, or kheap watch's) disabled during the re-run and enabled again",)

    def run(self, on_hit):
        self._suspend_others()
        saved = self.debugger.GetOutputFile()
        quiet = None
        try:
            quiet = lldb.SBFile(os.open(os.devnull, os.O_WRONLY), "w", True)
            self.debugger.SetOutputFile(quiet)
        except Exception:  # noqa: BLE001 - noisy is better than failing
            quiet = None
        was_async = self.debugger.GetAsync()
        self.debugger.SetAsync(False)
        try:
            return self._run(on_hit)
        finally:
            self.debugger.SetAsync(was_async)
            if quiet is not None:
                self.debugger.SetOutputFile(saved)

    def _interrupted(self):
        """Ctrl-C typed while a command runs: lldb marks the command interrupted."""
        try:
            return bool(self.debugger.GetCommandInterpreter().WasInterrupted())
        except Exception:  # noqa: BLE001 - an lldb without it: no Ctrl-C, --max-hits bounds a run
            return False

    def _run(self, on_hit):
        while True:
            if self._interrupted():
                return "interrupted"
            error = self.process.Continue()
            if error.Fail():
                raise CommandError(f"cannot continue: {error.GetCString()}")
            state = self.process.GetState()
            if state != lldb.eStateStopped:
                return "stopped"
            thread = self._stopped_thread()
            reason = thread.GetStopReason()
            frame = thread.GetFrameAtIndex(0)
            pc = frame.GetPC()
            if reason == lldb.eStopReasonWatchpoint:
                registers = self._registers(frame)
                for wp in self.watchpoints:
                    wp.SetEnabled(False)
                thread.StepInstruction(False)
                for wp in self.watchpoints:
                    wp.SetEnabled(True)
                address, size = self._range
                value = self.read(address, size)
                keep = on_hit(pc, registers, value, thread.GetIndexID()) if on_hit else True
                if not keep:
                    return "max-hits"
                if thread.GetFrameAtIndex(0).GetPC() == self._until:
                    return "until"
                continue
            if reason == lldb.eStopReasonBreakpoint and pc == self._until:
                return "until"
            if self._interrupted() or (reason == lldb.eStopReasonSignal
                                       and thread.GetStopReasonDataAtIndex(0) == 2):
                return "interrupted"
            return "stopped"

    def cleanup(self):
        removed = {"watchpoints": 0, "breakpoints": 0}
        for wp in self.watchpoints:
            removed["watchpoints"] += bool(self.target.DeleteWatchpoint(wp.GetID()))
        for bp in self.breakpoints:
            removed["breakpoints"] += bool(self.target.BreakpointDelete(bp.GetID()))
        self.watchpoints, self.breakpoints = [], []
        for item in self._suspended or ():
            if item.IsValid():
                item.SetEnabled(True)
        self._suspended = None
        return removed

    def disassemble(self, pc):
        address = self.target.ResolveLoadAddress(pc)
        insns = self.target.ReadInstructions(address, 1)
        if insns.GetSize() == 0:
            return None
        insn = insns.GetInstructionAtIndex(0)
        return f"{insn.GetMnemonic(self.target)} {insn.GetOperands(self.target)}".strip()
