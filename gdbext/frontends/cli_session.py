"""The CLI's session: what the command table needs, from a target of :mod:`gdbext.targets`
instead of a debugger.

:class:`CliSession` opens one target per session (a live gdbstub with ``--remote``, a core or a
``kheap dump`` file with ``--core``, a raw image with ``--raw --base``), finds the kernel ELF
(``--elf``, or the one a ``kheap dump`` file remembers), refuses a target that does not run
that ELF (:func:`elf_probe`), evaluates ADDR arguments as a debugger would (:class:`Expression`:
numbers, symbols, ``&symbol``, ``$register``, ``+``, ``-``) and reads where the target stopped
from its registers (no unwinder: frames stay empty).
"""

import hashlib
import os
import re
import sys

from gdbext.core import symbols
from gdbext.core.memory import MemoryFault
from gdbext.frontends.session import ADDRESS_OF_KINDS, CommandError, Session, StopPlace
from gdbext.targets import RawDump, RemoteTarget, open_dump

PROBE_BYTES = 64            # bytes of .text (its end) and .rodata (its start) compared with the target
_TOKEN = re.compile(r"\s*(?:(?P<number>0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|\d+)|(?P<register>\$\w+)"
                    r"|(?P<symbol>[A-Za-z_.][\w.]*)|(?P<op>[-+&()]))")
EXPRESSION_FORMS = "numbers, symbols, &symbol, $registers, + and - (a debugger takes any C expression)"


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


class Expression:
    """The CLI's evaluator of ADDR arguments: what gdb and lldb would answer, for the subset of
    C a script needs: ``0x3d5000+0x44``, ``kmalloc+0x10``, ``heap_segment_list_head``, ``&obj``,
    ``$sp - 16``, ``(a + 8) - 4``.

    A name means what it means in a debugger (:data:`~.session.ADDRESS_OF_KINDS`): a pointer or
    integer global the value it holds (read from the target), an array, function, struct or
    union its address. Arithmetic is C's: a pointer plus N moves N of what it points to (the
    DWARF says how big), as in gdb. A data object without a DWARF type is refused, as gdb
    refuses it ("has unknown type"): ``&name`` is its address. A label without a type (a
    linker symbol: ``boot_stack_top``) is its address, counted in bytes, where gdb wants a cast
    (``(char *)&boot_stack_top - 16``): the CLI answers where gdb would not, never otherwise.
    """

    def __init__(self, session, text):
        self.session, self.text = session, text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _error(self, why):
        return CommandError(f"cannot evaluate {self.text!r}: {why}")

    def _tokenize(self, text):
        tokens, pos = [], 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                bad = text[pos:].strip()[:1] or text[pos:pos + 1]
                raise self._error(f"{bad!r} is not understood: the CLI takes {EXPRESSION_FORMS}")
            tokens.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        if not tokens:
            raise self._error(f"empty: the CLI takes {EXPRESSION_FORMS}")
        return tokens

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def _take(self):
        token = self._peek()
        self.pos += 1
        return token

    def value(self):
        value, stride = self._sum()
        if self.pos != len(self.tokens):
            raise self._error(f"unexpected {self._peek()[1]!r}: the CLI takes {EXPRESSION_FORMS}")
        return value & ((1 << 64) - 1)

    # A value is (number, stride): stride None for an integer, else a pointer to stride bytes.
    def _sum(self):
        left = self._unary()
        while self._peek() in (("op", "+"), ("op", "-")):
            op = self._take()[1]
            left = self._combine(left, op, self._unary())
        return left

    def _combine(self, left, op, right):
        (a, sa), (b, sb) = left, right
        if sa is not None and sb is not None:
            if op == "+":
                raise self._error("two addresses cannot be added")
            return (a - b) // (sa or 1), None                    # pointer - pointer: elements apart
        if sa is not None:
            return (a + b * sa if op == "+" else a - b * sa), sa
        if sb is not None:
            if op == "-":
                raise self._error("an address cannot be subtracted from a number")
            return b + a * sb, sb
        return (a + b if op == "+" else a - b), None

    def _unary(self):
        kind, text = self._take()
        if (kind, text) == ("op", "-"):
            value, stride = self._unary()
            if stride is not None:
                raise self._error("an address cannot be negated")
            return -value, None
        if (kind, text) == ("op", "("):
            inner = self._sum()
            if self._take() != ("op", ")"):
                raise self._error("a '(' is not closed")
            return inner
        if (kind, text) == ("op", "&"):
            kind, text = self._take()
            if kind != "symbol":
                raise self._error("& takes a symbol (&name)")
            return self._address_of(text)
        if kind == "number":
            return int(text, 0), None
        if kind == "register":
            return self._register(text[1:]), None
        if kind == "symbol":
            return self._symbol(text)
        raise self._error(f"expected a number, a symbol or a $register, not {text or 'the end'!r}")

    def _register(self, name):
        registers = self.session.stop_place().registers
        value = registers.get(name)
        if value is None:
            known = " ".join(sorted(registers)) or "none (this target has no registers)"
            raise self._error(f"no register {name!r} (known: {known})")
        return value

    def _elf_symbol(self, name):
        elf = self.session.elf_info()
        sym = elf.symbol(name)
        if sym is None:
            raise self._error(f"no symbol {name!r} in {self.session.elf_path()}")
        return elf, sym

    def _address_of(self, name):
        """``&name``: its address, a pointer to the whole object (``&x + 1`` is past it, as in
        C); to bytes when the DWARF gives no type (a function, a label)."""
        elf, sym = self._elf_symbol(name)
        shape = elf.variable_shape(name)
        if shape is None or shape[0] == "function":
            return sym.address, 1
        return sym.address, elf.variable_size(name, 1)

    def _symbol(self, name):
        elf, sym = self._elf_symbol(name)
        shape = elf.variable_shape(name)
        if sym.kind == "func" or (shape is not None and shape[0] == "function"):
            return sym.address, 1                          # a function: its address
        if shape is None and sym.kind == "notype":
            # A label with no object behind it (the linker's boot_stack_top, _start): C declares
            # such a symbol as an array (extern char boot_stack_top[]), so it is its address.
            # gdb asks for a cast here ((char *)&boot_stack_top); it never answers otherwise.
            return sym.address, 1
        if shape is None:
            raise self._error(f"{name!r} has no type in the ELF's DWARF, so its value is unknown "
                              f"(as in gdb): &{name} is its address")
        kind, stride = shape
        if kind in ADDRESS_OF_KINDS:
            return sym.address, stride                     # an array, struct or union: its address
        if kind == "float":
            raise self._error(f"{name!r} is a floating-point variable, not an address")
        size = elf.variable_size(name, self.session.program().pointer_size)
        try:
            value = self.session.program().read_int(sym.address, size)
        except MemoryFault as fault:
            raise self._error(f"the value of {name!r} cannot be read ({fault})") from None
        return value, (stride if kind == "pointer" else None)


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
        """An ADDR argument's value (:class:`Expression`: numbers, symbols, ``&symbol``,
        ``$register``, ``+``, ``-`` and parentheses), meaning what it means in gdb and lldb."""
        return Expression(self, expression).value()

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
