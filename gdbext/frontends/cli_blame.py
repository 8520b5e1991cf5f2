"""``kheap blame`` in the CLI: QEMU driven by kheap's own RSP client, no debugger.

``qRcmd`` runs ``system_reset`` (and ``info status``, to make sure the stub is QEMU's system
emulator), ``Z2``/``z2`` set and remove the write watchpoint, ``Z0``/``z0`` the breakpoint at the
stop point, ``c`` runs and the stop replies say why it stopped (``T05...;watch:ADDR;`` for a
write). QEMU stops *before* the store, at the storing instruction: the client reads the
registers there, removes the watchpoint, steps that one instruction (``s``), reads the bytes
after the store, and puts the watchpoint back. No memory or register is ever written.

Ctrl-C while the kernel runs stops it (``\\x03``), removes what was set and reports what was
seen so far (exit status 130). Disassembly of the storing instruction comes from an objdump
for the ELF's architecture when one is installed.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading

from gdbext.core.memory import MemoryFault
from gdbext.core.blame import STACK_WINDOW
from gdbext.frontends.blame_controller import NEEDS_QEMU, BlameTarget
from gdbext.frontends.cli_session import thread_number
from gdbext.frontends.session import CommandError
from gdbext.targets import TargetError

# Register names of the RSP client's layouts (target description), per architecture.
BREAK_KIND = 4                       # Z0 length: one A32/A64 instruction
OBJDUMPS = {
    "arm": ("arm-none-eabi-objdump", "arm-linux-gnueabihf-objdump", "arm-linux-gnueabi-objdump",
            "llvm-objdump"),
    "aarch64": ("aarch64-linux-gnu-objdump", "aarch64-none-elf-objdump", "llvm-objdump"),
}


class CliBlameTarget(BlameTarget):
    face = "cli"
    REGISTERS = {
        "arm": {"sp": "sp", "lr": "lr", "fp": "r11"},
        "aarch64": {"sp": "sp", "lr": "x30", "fp": "x29"},
    }

    def __init__(self, session):
        kind = session.target_kind()
        if kind != "remote":
            what = {"core": "a dump", "raw": "a raw memory image"}.get(kind, "no target")
            raise CommandError(f"{NEEDS_QEMU}: {session.target_name()} is {what} (use --remote HOST:PORT)")
        session.reader()                                # connected, and running this ELF
        self.session = session
        self.rsp = session.target()
        self.elf = session.elf_info()
        self.use_registers_of(self.elf)
        self.watches = []                               # (address, size) inserted
        self.breaks = []                                # addresses inserted
        self._range = None
        self._until = None
        self._interrupted = False
        self._asked_stop = False

    # -- facts ----------------------------------------------------------------------------------
    def check_can_blame(self):
        self.rsp.allow_run_control()
        try:
            status = self.rsp.monitor("info status")
        except TargetError as error:
            raise CommandError(f"{NEEDS_QEMU}: {error}") from None
        if "VM status" not in status:
            raise CommandError(f"{NEEDS_QEMU}: the stub's monitor is not QEMU's ({status.strip()[:60]!r})")

    def stop_location(self):
        stop = self.rsp.last_stop or self.rsp.stop_reason()
        registers = self.rsp.registers(stop.thread) if stop.thread else self.rsp.registers()
        return registers.get("pc"), thread_number(stop.thread)

    def read(self, address, size):
        return self.rsp.read(address, size)

    def confirm(self, question):
        try:
            interactive = sys.stdin.isatty() and sys.stderr.isatty()
        except (AttributeError, ValueError):
            interactive = False
        if not interactive:
            return True
        sys.stderr.write(question + " [y/N] ")
        sys.stderr.flush()
        try:
            answer = sys.stdin.readline()
        except (KeyboardInterrupt, EOFError):
            return False
        return answer.strip().lower() in ("y", "yes")

    def progress(self, text):
        try:
            if sys.stderr.isatty():
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass

    # -- what is set ----------------------------------------------------------------------------
    def reset(self):
        self.rsp.monitor("system_reset")
        self.rsp.last_stop = None
        self.session.forget_stop()

    def watch(self, address, size):
        self._range = (address, size)
        if not self.rsp.insert_point(2, address, size):
            raise CommandError(f"{NEEDS_QEMU}: the stub does not support write watchpoints (Z2)")
        self.watches.append((address, size))

    def _rewatch(self):
        for address, size in self.watches:
            self.rsp.insert_point(2, address, size)

    def _unwatch_all(self):
        return sum(bool(self.rsp.remove_point(2, address, size)) for address, size in self.watches)

    def unwatch(self):
        removed = self._unwatch_all()
        self.watches = []
        return removed

    def break_at(self, address):
        self._until = address
        if not self.rsp.insert_point(0, address, BREAK_KIND):
            raise CommandError(f"{NEEDS_QEMU}: the stub does not support breakpoints (Z0)")
        self.breaks.append(address)

    # -- running --------------------------------------------------------------------------------
    def _poll(self):
        if self._interrupted and not self._asked_stop:
            self._asked_stop = True
            self.rsp.interrupt()

    def _registers(self):
        regs = self.rsp.registers()
        return regs.get("pc"), {key: regs.get(name) for key, name in self.names.items()}

    def run(self, on_hit):
        previous = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame):
                self._interrupted = True
            previous = signal.signal(signal.SIGINT, on_sigint)
        self._interrupted = self._asked_stop = False
        try:
            return self._run(on_hit)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _run(self, on_hit):
        """Each write costs three sends: ``g`` and the watchpoints' removal with the step, the
        stack copy, the bytes after the store and the watchpoints back, then ``c``."""
        rsp = self.rsp
        while True:
            if self._interrupted:
                return "interrupted"
            rsp.resume()
            stop = rsp.wait_stop(poll=self._poll)
            if self._asked_stop or (self._interrupted and stop.signal == 2):
                return "interrupted"
            if not any(k in stop.info for k in ("watch", "awatch", "rwatch")):
                pc, _ = self._registers()
                return "until" if pc == self._until else "stopped"
            # QEMU stops before the store: step over it without the watchpoint, then read.
            removals = [b"z2,%x,%x" % w for w in self.watches]
            g = rsp.batch([b"g"] + removals, resume=b"s")[0]
            rsp.wait_stop(timeout=rsp.timeout)
            regs = rsp.decode_registers(g)
            pc = regs.get("pc")
            registers = {key: regs.get(name) for key, name in self.names.items()}
            address, size = self._range
            sp = registers.get("sp")
            reads = [b"m%x,%x" % (address, size)]
            if sp is not None:
                reads.append(b"m%x,%x" % (sp, STACK_WINDOW))
            replies = rsp.batch(reads + [b"Z2,%x,%x" % w for w in self.watches])
            value = replies[0]
            if not isinstance(value, bytes) or len(value) != size:
                value = rsp.read(address, size)
            stack = None
            if sp is not None:
                copy = replies[1]
                stack = (sp, copy) if len(copy) == STACK_WINDOW and not copy.startswith(b"E") else None
            keep = on_hit(pc, registers, value, thread_number(stop.thread), stack) if on_hit else True
            if not keep:
                return "max-hits"
            if pc is not None and pc + 4 == self._until:
                return "until"                  # the store was the last instruction before it

    def cleanup(self):
        rsp = self.rsp
        if rsp.running:
            try:
                rsp.interrupt()
                rsp.wait_stop(timeout=rsp.timeout)
            except TargetError:
                pass
        removed = {"watchpoints": 0, "breakpoints": 0}
        for address, size in self.watches:
            removed["watchpoints"] += bool(rsp.remove_point(2, address, size))
        for address in self.breaks:
            removed["breakpoints"] += bool(rsp.remove_point(0, address, BREAK_KIND))
        self.watches, self.breaks = [], []
        return removed

    def forget(self):
        self.session.forget_stop()

    def disassemble(self, pc):
        return objdump_instruction(self.elf, pc)


def objdump_instruction(elf, pc):
    """The instruction at ``pc`` as an objdump for the ELF's architecture prints it, or None."""
    for tool in OBJDUMPS.get(elf.arch, ()):
        path = shutil.which(tool)
        if path is None:
            continue
        try:
            proc = subprocess.run([path, "-d", f"--start-address={pc:#x}", f"--stop-address={pc + 4:#x}",
                                   elf.path], capture_output=True, text=True, timeout=10,
                                  env=dict(os.environ, LC_ALL="C"))
        except (OSError, subprocess.SubprocessError):
            continue
        for line in proc.stdout.splitlines():
            head, _, rest = line.partition(":")
            try:
                if int(head.strip(), 16) != pc:
                    continue
            except ValueError:
                continue
            parts = rest.strip().split("\t")
            if len(parts) >= 2:
                text = " ".join(" ".join(parts[1:]).split())
                return text.split(" ;")[0].split(" //")[0].split(" @")[0].strip() or None
    return None


__all__ = ["CliBlameTarget", "objdump_instruction", "MemoryFault"]
