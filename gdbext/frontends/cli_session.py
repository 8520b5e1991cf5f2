"""The CLI's session: what the command table needs, from a target of :mod:`gdbext.targets`
instead of a debugger.

:class:`CliSession` opens one target per session (a live gdbstub with ``--remote``, a core or a
``kheap dump`` file with ``--core``, a raw image with ``--raw --base``), finds the kernel ELF
(``--elf``, or the one a ``kheap dump`` file remembers), refuses a target that does not run
that ELF (:func:`elf_probe`), evaluates the small expressions the CLI accepts (numbers,
symbols, ``symbol+offset``, ``$register``) and reads where the target stopped from its
registers (no unwinder: frames stay empty).
"""

import hashlib
import os
import re
import sys

from gdbext.core import symbols
from gdbext.core.memory import MemoryFault
from gdbext.frontends.session import CommandError, Session, StopPlace
from gdbext.targets import RawDump, RemoteTarget, open_dump

PROBE_BYTES = 64            # bytes of .text (its end) and .rodata (its start) compared with the target
_SYMBOL_EXPRESSION = re.compile(r"&?\s*([A-Za-z_.][\w.]*)\s*(?:([+-])\s*(\w+))?")


def elf_probe(elf, size=PROBE_BYTES):
    """``[(address, bytes)]`` the target must hold if it runs this ELF: the end of ``.text``
    and the start of ``.rodata`` (code and constants the kernel never writes; a rebuilt kernel
    moves the end of its code), merged into one read when they touch."""
    wanted = []
    for sec in elf.sections:
        if sec.data is None or not sec.size:
            continue
        if sec.name == ".text":
            n = min(size, sec.size)
            wanted.append((sec.address + sec.size - n, bytes(sec.data[sec.size - n:sec.size])))
        elif sec.name == ".rodata":
            wanted.append((sec.address, bytes(sec.data[:size])))
    wanted.sort()
    merged = []
    for addr, data in wanted:
        if merged and merged[-1][0] + len(merged[-1][1]) == addr:
            merged[-1] = (merged[-1][0], merged[-1][1] + data)
        else:
            merged.append((addr, data))
    return merged


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _article(word):
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def thread_number(thread):
    """The thread id of a stop reply's ``thread:`` (``p01.02`` or ``2``, hex), or None."""
    if not thread:
        return None
    try:
        return int(thread.split(".")[-1], 16)
    except ValueError:
        return None


class CliSession(Session):
    """What the command table needs, from a target of gdbext.targets instead of a debugger.

    ``opts`` is the parsed global options (argparse Namespace); ``core`` picks one of several
    ``--core`` files (the many-dumps mode runs one session per dump).
    """

    face = "cli"

    def __init__(self, opts, core=None):
        super().__init__()
        self.opts = opts
        self._core = core
        self._target = None
        self._elf = None
        self._verified = False
        self._stop = None
        self.apply_setting("color", opts.color)
        if opts.debug:
            self.apply_setting("debug", True)
        for name in ("heap-start", "heap-size", "list-head", "block-size", "page-convention", "stacks"):
            value = getattr(opts, name.replace("-", "_"), None)
            if value is not None:
                self.apply_setting(name, value)

    # The target ---------------------------------------------------------------------------
    def target_kind(self):
        opts = self.opts
        if opts.remote:
            return "remote"
        if self._core or opts.core:
            return "core"
        if opts.raw:
            return "raw"
        return None

    def target_name(self):
        kind = self.target_kind()
        if kind == "remote":
            return self.opts.remote
        if kind == "core":
            return self._core or self.opts.core[0]
        if kind == "raw":
            return self.opts.raw
        return "no target"

    def target(self):
        """The opened target (once per session)."""
        if self._target is None:
            kind = self.target_kind()
            if kind == "remote":
                self._target = RemoteTarget.from_hostport(self.opts.remote, timeout=self.opts.timeout)
            elif kind == "core":
                path = self._core or self.opts.core[0]
                if os.path.isdir(path):
                    raise CommandError(f"{path} is a directory: only 'kheap check' takes many dumps")
                self._target = open_dump(path)
            elif kind == "raw":
                if self.opts.base is None:
                    raise CommandError("--raw needs --base ADDR: the physical address of its first byte")
                self._target = RawDump(self.opts.raw, self.opts.base)
            else:
                raise CommandError("no target: give --remote HOST:PORT, --core FILE or --raw FILE --base ADDR")
        return self._target

    def close(self):
        if self._target is not None:
            try:
                self._target.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result
                pass
            self._target = None

    def dump_meta(self):
        """What a ``kheap dump`` file remembers (its ELF, registers, ranges); {} for others."""
        target = self.target() if self.target_kind() == "core" else None
        return getattr(target, "meta", None) or {}

    # The kernel ELF ---------------------------------------------------------------------------
    def elf_path(self):
        if self._elf is not None:
            return self._elf
        if self.opts.elf:
            if not os.path.isfile(self.opts.elf):
                raise CommandError(f"cannot open the kernel ELF {self.opts.elf}: no such file")
            self._elf = self.opts.elf
            return self._elf
        meta = self.dump_meta()
        saved = meta.get("elf_path")
        if saved and os.path.isfile(saved):
            if meta.get("elf_sha256") and file_sha256(saved) != meta["elf_sha256"]:
                raise CommandError(f"{self.target_name()} was dumped with another build of {saved} "
                                   "(its sha256 differs): give the right one with --elf")
            self._elf = saved
            return self._elf
        hint = f" ({saved} is gone)" if saved else ""
        raise CommandError(f"the kernel ELF is needed{hint}: add --elf kernel/build/<arch>/kernel.elf")

    def elf_info(self):
        return symbols.load_elf_info(self.elf_path())

    def reader(self):
        target = self.target()
        if not self._verified:
            self.verify(target)
            self._verified = True
        return target

    def verify(self, target):
        """Refuse a target that does not run this ELF: other architecture, other build."""
        path = self.elf_path()
        elf = self.elf_info()
        name = self.target_name()
        kind = self.target_kind()

        def same_arch():
            # A core's header says its arch for free; a stub's target description costs a
            # dozen packets, so a live target is asked only when its memory disagrees.
            target_arch = getattr(target, "arch", None) if kind != "raw" else None
            if target_arch and elf.arch in ("arm", "aarch64") and target_arch != elf.arch:
                what = {"remote": "target", "core": "core"}.get(kind, "target")
                raise CommandError(f"{name} is {_article(target_arch)} {what} but {path} is "
                                   f"{_article(elf.arch)} kernel ELF: use the kernel it runs")

        if kind == "core":
            same_arch()
        meta = self.dump_meta()
        if self.opts.elf and meta.get("elf_sha256") and file_sha256(path) != meta["elf_sha256"]:
            raise CommandError(f"{name} was dumped with another kernel ELF than {path} (sha256 differs)")
        for addr, expected in elf_probe(elf):
            try:
                got = target.read(addr, len(expected))
            except MemoryFault:
                continue                     # not saved in this dump: nothing to compare
            if got != expected:
                if kind == "remote":
                    same_arch()
                hint = " (wrong --base?)" if kind == "raw" else ""
                raise CommandError(f"{path} does not match {name}{hint}: the kernel's code and "
                                   f"constants at {addr:#x} differ from the target's memory")

    # Expressions and stop state -------------------------------------------------------------
    def evaluate(self, expression):
        text = expression.strip()
        try:
            return int(text, 0)
        except ValueError:
            pass
        if text.startswith("$"):
            registers = self.stop_place().registers
            value = registers.get(text[1:])
            if value is None:
                known = " ".join(sorted(registers)) or "none (this target has no registers)"
                raise CommandError(f"cannot evaluate {expression!r}: no register {text[1:]!r} "
                                   f"(known: {known})")
            return value
        match = _SYMBOL_EXPRESSION.fullmatch(text)
        if match:
            address = self.elf_info().address_of(match.group(1))
            if address is not None:
                offset = 0
                if match.group(3):
                    try:
                        offset = int(match.group(3), 0)
                    except ValueError:
                        raise CommandError(f"cannot evaluate {expression!r}: bad offset") from None
                return address + offset if match.group(2) != "-" else address - offset
            raise CommandError(f"cannot evaluate {expression!r}: no symbol {match.group(1)!r} in "
                               f"{self.elf_path()}")
        raise CommandError(f"cannot evaluate {expression!r}: the CLI takes numbers, symbols, "
                           "symbol+offset and $registers (a debugger evaluates C expressions)")

    def all_registers(self):
        """``([registers of each CPU], index of the CPU that stopped)``."""
        target = self.target()
        kind = self.target_kind()
        if kind == "remote":
            stop = target.last_stop or target.stop_reason()
            threads = target.threads() or [None]
            cpus = [target.registers(t) for t in threads]
            index = threads.index(stop.thread) if stop.thread in threads else 0
            return cpus, index
        if kind == "core":
            count = max(1, len(getattr(target, "cpus", [])), len(target.meta.get("registers") or []))
            cpus = [target.registers(i) for i in range(count)]
            index = int(target.meta.get("stop_cpu", 0) or 0)
            return cpus, min(index, len(cpus) - 1)
        return [{}], 0

    def core_states(self):
        """Every CPU's registers (a live stub: ``g`` per thread; a dump: its notes); no frames."""
        from gdbext.core.reach import CoreState

        cpus, _ = self.all_registers()
        return [CoreState(i + 1, dict(regs)) for i, regs in enumerate(cpus) if regs]

    def stop_place(self):
        if self._stop is not None:
            return self._stop
        target = self.target()
        kind = self.target_kind()
        registers, thread = {}, None
        if kind == "remote":
            stop = target.last_stop or target.stop_reason()
            registers = target.registers(stop.thread) if stop.thread else target.registers()
            thread = thread_number(stop.thread)
        elif kind == "core":
            cpus, index = self.all_registers()
            registers, thread = cpus[index], index + 1
        pc = registers.get("pc")
        function = None
        if pc is not None:
            try:
                function = self.elf_info().symbolize(pc)
            except Exception:  # noqa: BLE001 - a name is a nicety
                function = None
        # No debugger, no unwinder: frames stay empty (the text output says so).
        self._stop = StopPlace(pc=pc, function=function, frames=[], registers=registers, thread=thread)
        return self._stop

    def blame_target(self):
        from gdbext.frontends.cli_blame import CliBlameTarget

        return CliBlameTarget(self)

    def forget_stop(self):
        """The target ran: where it stopped must be read again."""
        self._stop = None

    def setting_spelling(self, name, value=None):
        """The CLI's options: ``--heap-size 1M``; an on/off setting is its flag (``--debug``)."""
        if name == "debug":
            return "--debug"
        return f"--{name}" + ("" if value is None else f" {value}")

    def color_wanted(self):
        setting = self.current_settings()["color"]
        if setting == "auto":
            try:
                return sys.stdout.isatty()
            except (AttributeError, ValueError):
                return False
        return setting == "on"
