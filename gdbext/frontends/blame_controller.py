"""What ``kheap blame`` does, whichever face runs the target.

A face (gdb_blame.py, lldb_blame.py, cli_blame.py) gives a :class:`BlameTarget`: how to read
memory and registers live, reset QEMU, place and remove a write watchpoint and a breakpoint,
run to the stop point calling back at every write, disassemble one instruction, ask the person
at the terminal. :func:`run_blame` is the sequence, once for all faces:

1. plan what to watch (:func:`gdbext.core.blame.plan_blame`), read those bytes now, note where
   the target is stopped (the default stop point);
2. make sure the target is a QEMU system emulator it can reset (one line if not), and ask first
   when a person is at the terminal (``--yes`` skips);
3. reset, set the watchpoint and the breakpoint, run; every write is recorded
   (:class:`~gdbext.core.blame.Recorder`); at ``--max-hits`` the watchpoint goes and the run
   goes on to the stop point without it;
4. whatever happens (the stop point, Ctrl-C, an error), remove everything it set;
5. read the bytes again and build the report (determinism check included).

Never a write to target memory: the watchpoint and breakpoint are the debugger's (QEMU's, for
the CLI), and the reset is QEMU's own.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Dict, Optional, Tuple

from gdbext.core import reports
from gdbext.core.blame import (STACK_WINDOW, BlameError, BlameRun, Recorder, Writers, idle_instruction_before,
                               plan_blame)
from gdbext.core.debuginfo import code_info
from gdbext.core.memory import MemoryFault
from gdbext.frontends.session import CommandError

NEEDS_QEMU = "kheap blame needs a live QEMU target it can reset"
_FILE_LINE = re.compile(r"(.+):(\d+)")


class BlameTarget:
    """The hooks a face provides. ``on_hit(pc, registers, value, thread, stack=None)`` -> bool is
    how ``run`` reports a write: ``pc`` the storing instruction, ``registers`` at least ``sp``,
    ``lr`` and ``fp``, ``value`` the watched bytes after the store, ``stack`` a copy of the stack
    as ``(sp, bytes)`` if the face read it already (else it is read with :meth:`read`); False
    means stop watching (``--max-hits``)."""

    face = "none"
    notes: Tuple[str, ...] = ()
    # The face's names of the stack pointer, link register and frame pointer, by architecture
    # (gdb, lldb and the remote protocol's target description each name them their own way).
    REGISTERS: Dict[str, Dict[str, str]] = {}

    def use_registers_of(self, elf: Any) -> None:
        """``names`` (sp/lr/fp as this face calls them) and ``mask`` (an address's width) for
        ``elf``'s architecture; one line when kheap blame does not know it."""
        if elf.arch not in self.REGISTERS:
            raise CommandError(f"kheap blame: unsupported architecture {elf.arch}")
        self.names = self.REGISTERS[elf.arch]
        self.mask = (1 << (8 * elf.pointer_size)) - 1

    def check_can_blame(self) -> None:
        """Raise CommandError (one line) unless this is a live QEMU system emulator."""

    def stop_location(self) -> Tuple[Optional[int], Optional[int]]:
        """(pc, thread) of the stopped thread the user is looking at."""
        raise NotImplementedError

    def read(self, address: int, size: int) -> bytes:
        """Live target memory, never cached; MemoryFault when unreadable."""
        raise NotImplementedError

    def confirm(self, question: str) -> bool:
        """Ask the person at the terminal; True without asking when nobody is there."""
        return True

    def progress(self, text: str) -> None:
        """A progress line on a long run."""

    def reset(self) -> None:
        raise NotImplementedError

    def watch(self, address: int, size: int) -> None:
        raise NotImplementedError

    def unwatch(self) -> int:
        """Remove the watchpoint (``--max-hits``); returns how many were removed."""
        raise NotImplementedError

    def break_at(self, address: int) -> None:
        raise NotImplementedError

    def run(self, on_hit: Optional[Callable[..., bool]]) -> str:
        """Run until the breakpoint ('until'), until ``on_hit`` says stop ('max-hits'), or
        something else stops it ('interrupted' for Ctrl-C, 'stopped' otherwise)."""
        raise NotImplementedError

    def cleanup(self) -> Dict[str, int]:
        """Remove every watchpoint and breakpoint placed; {'watchpoints': n, 'breakpoints': n}."""
        raise NotImplementedError

    def disassemble(self, pc: int) -> Optional[str]:
        return None

    def forget(self) -> None:
        """Drop whatever the face cached about the target (it ran)."""


def resolve_location(session: Any, prog: Any, text: str) -> int:
    """``--until``: a symbol of the ELF, FILE:LINE, or whatever the face evaluates."""
    text = text.strip()
    address = prog.elf.address_of(text)
    if address is not None:
        return address
    m = _FILE_LINE.fullmatch(text)
    if m and not text.startswith(("0x", "$")):
        address = code_info(prog.elf).address_of_line(m.group(1), int(m.group(2)))
        if address is not None:
            return address
    try:
        return session.evaluate(text)
    except CommandError as error:
        raise CommandError(f"kheap blame: --until {text}: {error}") from None


def stack_copy(target: BlameTarget, sp: int) -> Tuple[int, bytes]:
    """The stack from ``sp`` as far as :data:`STACK_WINDOW` reads (less near its end)."""
    for size in (STACK_WINDOW, STACK_WINDOW // 4):
        try:
            return sp, target.read(sp, size)
        except (MemoryFault, CommandError):
            continue
    return sp, b""


def run_blame(session: Any, target: BlameTarget, args: Any) -> Tuple[Dict[str, Any], bool]:
    """Run one ``kheap blame``; returns (report, failed)."""
    target.check_can_blame()              # a live QEMU it can reset, before anything else
    prog = session.program()
    address = None
    if args.address is not None:
        address = session.evaluate(args.address) if not _is_number(args.address) else int(args.address, 0)
    try:
        plan = plan_blame(prog, address, args.size or None)
    except BlameError as error:
        raise CommandError(f"kheap blame: {error}") from None
    start_pc, thread = target.stop_location()
    idle = None
    if args.until:
        until = resolve_location(session, prog, args.until)
    else:
        until = start_pc
        idle = idle_instruction_before(prog.elf, start_pc)
        if idle is not None:
            until = idle                 # halted in a wfi: the pc after it is never reached
    if until is None:
        raise CommandError("kheap blame: the target's pc is unknown: give --until LOCATION")
    try:
        before = target.read(plan.address, plan.size)
    except MemoryFault as fault:
        raise CommandError(f"kheap blame: cannot read the bytes to watch: {fault}") from None
    where = prog.elf.symbolize(until) or ""
    question = (f"kheap blame restarts the kernel (QEMU system_reset) and runs it again to "
                f"{prog.fmt(until)} {where} watching {plan.size} byte{'s' if plan.size != 1 else ''} at "
                f"{prog.fmt(plan.address)}. Restart the kernel?").replace("  ", " ")
    if not getattr(args, "yes", False) and not target.confirm(question):
        raise CommandError("kheap blame: not run: the kernel was left as it was")
    writers = Writers(prog)
    recorder = Recorder(plan, args.max_hits, target.progress, keep_stack=writers.is_library)

    def on_hit(pc: int, registers: Dict[str, int], value: bytes, thread: Optional[int] = None,
               stack: Optional[Tuple[int, bytes]] = None) -> bool:
        sp = registers.get("sp")
        if stack is None:
            stack = stack_copy(target, sp) if sp is not None else (0, b"")
        return recorder.record(pc, registers, value, thread, stack[0], stack[1])

    started = time.monotonic()
    ended = "error"
    removed: Dict[str, int] = {}
    unwatched = 0
    reset = False
    failure: Optional[BaseException] = None
    try:
        target.reset()
        reset = True
        target.watch(plan.address, plan.size)
        target.break_at(until)
        ended = target.run(on_hit)
        if ended == "max-hits":
            unwatched = target.unwatch() or 0
            if target.run(None) == "until":
                ended = "max-hits-until"
    except BaseException as error:  # noqa: BLE001 - cleaned up below, then re-raised
        failure = error
    finally:
        try:
            removed = target.cleanup()
            removed["watchpoints"] = removed.get("watchpoints", 0) + unwatched
        except Exception as error:  # noqa: BLE001
            if failure is None:
                failure = error
        target.forget()
        session.invalidate()
    seconds = time.monotonic() - started
    if failure is not None:
        if isinstance(failure, (KeyboardInterrupt, SystemExit)):
            raise failure
        what = _one_line(failure)
        if reset:
            pc, _ = _safe_location(target)
            where = prog.fmt(pc) + (f" {prog.elf.symbolize(pc)}" if pc is not None and prog.elf.symbolize(pc) else "")
            raise CommandError(f"kheap blame: {what}; the kernel was restarted and is stopped at {where}; "
                               "kheap's watchpoint and breakpoint were removed")
        raise CommandError(f"kheap blame: {what}; the kernel was not restarted") from None
    try:
        after = target.read(plan.address, plan.size)
    except (MemoryFault, CommandError):
        after = None
    end_pc, _ = _safe_location(target)
    instruction = None
    if ended == "until" and recorder.hits:
        try:
            instruction = target.disassemble(recorder.hits[-1].pc)
            instruction = " ".join(instruction.split()) if instruction else None
        except Exception:  # noqa: BLE001 - a nicety
            instruction = None
    run = BlameRun(plan, before, after, recorder.hits, ended, until, start_pc, end_pc, args.max_hits,
                   removed, instruction, seconds, target.face, list(target.notes), idle)
    report = reports.blame_report(prog, run, writers)
    return report, report["verdict"] != "found"


def _safe_location(target: BlameTarget) -> Tuple[Optional[int], Optional[int]]:
    try:
        return target.stop_location()
    except Exception:  # noqa: BLE001
        return None, None


def _is_number(text: str) -> bool:
    try:
        int(text, 0)
        return True
    except ValueError:
        return False


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
