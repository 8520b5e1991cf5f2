"""The gdb face: a thin adapter from gdb's Python API to the shared command table.

This is the only module that imports ``gdb``. It turns gdb's errors into the core's MemoryFault
or a one-line CommandError, keeps one block cache per stop (so ``kheap check`` followed by
``kheap walk`` at the same stop reads the target once) and drops it whenever the target may have
changed: resume, a memory write by the user, an inferior call, a new objfile.
"""

import gdb  # noqa: I001 - this face exists to talk to gdb
import gdb.printing
import gdb.types

from gdbext.core.memory import MemoryFault
from gdbext.frontends import commands, describe
from gdbext.frontends.session import CommandError, Session, StopPlace


class GdbReader:
    """``read(address, size) -> bytes`` over ``Inferior.read_memory``: one call per block the
    core's cache asks for, never a typed gdb.Value per field."""

    def __init__(self, inferior):
        self._inferior = inferior

    def read(self, address, size):
        try:
            return bytes(self._inferior.read_memory(address, size))
        except gdb.MemoryError as error:
            raise MemoryFault(address, size, str(error)) from None
        except gdb.error as error:
            raise CommandError(f"cannot read target memory: {error}") from None


class GdbSession(Session):
    """What the command table needs from gdb: bytes, the ELF, expressions, where we stopped."""

    face = "gdb"

    def __init__(self):
        super().__init__()
        self._generation = 0
        self._watch = None
        self.from_tty = False       # the running command was typed at the terminal

    # The target ---------------------------------------------------------------------------
    def _live_inferior(self):
        inferior = gdb.selected_inferior()
        thread = gdb.selected_thread()
        if inferior is None or thread is None or not inferior.is_valid():
            raise CommandError("no live target: connect first (target remote HOST:PORT)")
        if thread.is_running():
            raise CommandError("the target is running: interrupt it first (Ctrl-C or 'interrupt')")
        return inferior

    def elf_path(self):
        path = gdb.current_progspace().filename
        if not path:
            raise CommandError("no kernel ELF loaded: use 'file kernel/build/<arch>/kernel.elf'")
        return path

    def reader(self):
        return GdbReader(self._live_inferior())

    def check_alive(self, program):
        # A cached Program would otherwise keep answering after QEMU died: one 1-byte read
        # (one packet) tells gdb, and us, whether the connection is still there.
        inferior = self._live_inferior()
        try:
            inferior.read_memory(program.elf.image_start or 0, 1)
        except gdb.MemoryError:
            pass
        except gdb.error as error:
            raise CommandError(f"the target is gone: {error}") from None

    def settings(self):
        return _settings()

    # Expressions and stop state -----------------------------------------------------------
    def evaluate(self, expression):
        try:
            value = gdb.parse_and_eval(expression)
            if value.type.strip_typedefs().code == gdb.TYPE_CODE_ARRAY:
                value = value.address
            return int(value) & ((1 << 64) - 1)
        except gdb.error as error:
            raise CommandError(f"cannot evaluate {expression!r}: {error}") from None

    def stop_place(self, frame_limit=16):
        self._live_inferior()
        frames = []
        try:
            frame = gdb.newest_frame()
            while frame is not None and len(frames) < frame_limit:
                sal = frame.find_sal()
                where = f"{sal.symtab.filename}:{sal.line}" if sal.symtab else ""
                frames.append({"pc": frame.pc(), "function": frame.name() or "??", "source": where})
                frame = frame.older()
        except gdb.error:
            pass  # a corrupted stack ends the backtrace, not the command
        registers = {}
        try:
            frame = gdb.newest_frame()
            for descriptor in frame.architecture().registers("general"):
                value = frame.read_register(descriptor)
                # gdb hands 32-bit registers back as signed ints: mask to the register's width.
                registers[descriptor.name] = int(value) & ((1 << (8 * value.type.sizeof)) - 1)
        except (gdb.error, AttributeError):
            pass
        thread = gdb.selected_thread()
        return StopPlace(
            pc=frames[0]["pc"] if frames else None,
            function=frames[0]["function"] if frames else None,
            frames=frames,
            registers=registers,
            thread=thread.num if thread else None,
        )

    def core_states(self, frame_limit=64):
        """Every core (a thread of QEMU's gdbstub): its general registers and its frames with
        their SP, read by selecting each thread in turn; the user's selection is put back."""
        from gdbext.core.reach import CoreState

        inferior = self._live_inferior()
        selected = gdb.selected_thread()
        try:
            selected_frame = gdb.selected_frame()
        except gdb.error:
            selected_frame = None
        cores = []
        try:
            for thread in sorted(inferior.threads(), key=lambda t: t.num):
                thread.switch()
                registers, frames = {}, []
                try:
                    frame = gdb.newest_frame()
                    for descriptor in frame.architecture().registers("general"):
                        value = frame.read_register(descriptor)
                        registers[descriptor.name] = int(value) & ((1 << (8 * value.type.sizeof)) - 1)
                    while frame is not None and len(frames) < frame_limit:
                        sp = frame.read_register("sp")
                        frames.append({"pc": frame.pc(), "function": frame.name() or "??",
                                       "sp": int(sp) & ((1 << (8 * sp.type.sizeof)) - 1)})
                        frame = frame.older()
                except (gdb.error, AttributeError):
                    pass  # a corrupt stack ends the frames, not the command
                cores.append(CoreState(thread.num, registers, frames))
        finally:
            selected.switch()
            if selected_frame is not None and selected_frame.is_valid():
                selected_frame.select()
        return cores

    def color_wanted(self):
        setting = self.current_settings()["color"]
        if setting != "auto":
            return setting == "on"
        try:    # gdb turns styling off itself when its output is not a terminal
            return bool(gdb.parameter("style enabled"))
        except (gdb.error, RuntimeError):
            return False

    def blame_target(self):
        from gdbext.frontends.gdb_blame import GdbBlameTarget

        return GdbBlameTarget(self, interactive=self.from_tty)

    def watch_controller(self):
        if self._watch is None:
            from gdbext.frontends.gdb_watch import WatchController

            self._watch = WatchController(self)
        return self._watch


# Settings as gdb parameters -------------------------------------------------------------------
class _Prefix(gdb.Command):
    def __init__(self, name, doc):
        self.__doc__ = doc
        super().__init__(name, gdb.COMMAND_DATA, prefix=True)


class _Parameter(gdb.Parameter):
    """A ``set kheap X`` parameter; string values are validated by the session settings."""

    def __init__(self, name, kind, doc, default, *extra):
        self.__doc__ = doc
        self.set_doc = f"Set {doc[0].lower()}{doc[1:]}"
        self.show_doc = f"Show {doc[0].lower()}{doc[1:]}"
        super().__init__(f"kheap {name}", gdb.COMMAND_DATA, kind, *extra)
        self.value = default
        self._name = name
        self._accepted = default

    def get_set_string(self):
        try:
            _SESSION.apply_setting(self._name, self.value)
        except CommandError as error:
            # Refuse the value: gdb has already stored it, so put the last good one back, and
            # 'show' keeps telling the truth about what kheap uses.
            self.value = self._accepted
            raise gdb.GdbError(str(error)) from None
        self._accepted = self.value
        return ""

    def get_show_string(self, svalue):
        return f"kheap {self._name} is {svalue or 'auto'}"


def _settings():
    return _SESSION.current_settings()


# Commands -------------------------------------------------------------------------------------
class KheapPrefix(gdb.Command):
    def __init__(self):
        self.__doc__ = commands.prefix_help("gdb")
        super().__init__("kheap", gdb.COMMAND_DATA, gdb.COMPLETE_COMMAND, prefix=True)

    def invoke(self, argument, from_tty):
        if argument.strip():
            _run(argument.split()[0], gdb.string_to_argv(argument)[1:])
        else:
            gdb.write(commands.prefix_help("gdb") + "\n")


class KheapSubcommand(gdb.Command):
    def __init__(self, command):
        self._command = command
        self.__doc__ = commands.long_help(command)
        super().__init__(f"kheap {command.name}", gdb.COMMAND_DATA, gdb.COMPLETE_EXPRESSION)

    def invoke(self, argument, from_tty):
        self.dont_repeat()
        try:
            argv = gdb.string_to_argv(argument)
        except gdb.error as error:
            gdb.write(f"kheap {self._command.name}: {error}\n", gdb.STDERR)
            return
        _SESSION.from_tty = bool(from_tty)
        try:
            _run(self._command.name, argv)
        finally:
            _SESSION.from_tty = False


def _run(name, argv):
    """Run one command and print its output; never let an exception reach gdb."""
    text = commands.execute_to_text(_SESSION, name, argv)
    if text.text:
        gdb.write(text.text if text.text.endswith("\n") else text.text + "\n",
                  gdb.STDERR if text.is_error else gdb.STDOUT)


# Pretty printers and $kheap_segment ------------------------------------------------------------
class _StructPrinter:
    """Prints a heap_segment_t or page_t the way kheap sees it, decoded by the core."""

    def __init__(self, value, describe):
        self._value = value
        self._describe = describe

    def to_string(self):
        try:
            address = int(self._value.address) if self._value.address is not None else None
            raw = bytes(gdb.selected_inferior().read_memory(address, self._value.type.sizeof)) \
                if address is not None else bytes(self._value.bytes)
            return self._describe(_SESSION, address, raw)
        except Exception as error:  # noqa: BLE001 - a printer must never break 'print'
            return f"<kheap: {error}>"


def _lookup_printer(value):
    try:
        tag = gdb.types.get_basic_type(value.type).tag
    except (gdb.error, RuntimeError):
        return None
    describe = commands.struct_describer(tag)
    if describe is None or value.type.strip_typedefs().code != gdb.TYPE_CODE_STRUCT:
        return None
    return _StructPrinter(value, describe)


class SegmentFunction(gdb.Function):
    """$kheap_segment(ADDR): the heap_segment_t header address of the segment holding ADDR
    (a payload pointer, an interior pointer or a header), or 0 if ADDR is not in the heap."""

    def __init__(self):
        super().__init__("kheap_segment")

    def invoke(self, address):
        try:
            header = commands.segment_header_for(_SESSION, int(address))
        except Exception as error:  # noqa: BLE001
            raise gdb.GdbError(f"$kheap_segment: {error}") from None
        value = gdb.Value(header or 0)
        for name in describe.type_spellings(describe.SEGMENT_TAGS):
            try:
                return value.cast(gdb.lookup_type(name).pointer())
            except gdb.error:
                continue
        return value.cast(gdb.lookup_type("unsigned long"))


# Events ---------------------------------------------------------------------------------------
def _on_stop(event):
    _SESSION.invalidate()
    if not _SESSION.auto_check:
        return
    line = commands.execute_to_text(_SESSION, "check", ["--verdict"])
    gdb.write(line.text if line.text.endswith("\n") else line.text + "\n")


def _register_printers(objfile):
    """Printers for heap_segment_t and page_t, attached to the kernel's objfile."""
    if _lookup_printer not in objfile.pretty_printers:
        objfile.pretty_printers.append(_lookup_printer)


def _on_new_objfile(event):
    _SESSION.invalidate()
    _register_printers(event.new_objfile)


_SESSION = GdbSession()
_registered = False


def register():
    """Create the kheap commands, parameters, printers and event hooks (once per gdb)."""
    global _registered
    if _registered:
        gdb.write("kheap: already loaded\n")
        return
    _registered = True
    KheapPrefix()
    for command in commands.commands_for("gdb"):
        KheapSubcommand(command)
    _Prefix("set kheap", "Set kheap options.")
    _Prefix("show kheap", "Show kheap options.")
    for name, kind, doc, default in commands.SETTINGS:
        _Parameter(name, getattr(gdb, kind), doc, default)
    SegmentFunction()
    for objfile in gdb.objfiles():
        _register_printers(objfile)
    for event, handler in ((gdb.events.stop, _on_stop), (gdb.events.cont, _SESSION.invalidate),
                           (gdb.events.memory_changed, _SESSION.invalidate),
                           (gdb.events.inferior_call, _SESSION.invalidate),
                           (gdb.events.exited, _SESSION.invalidate),
                           (gdb.events.new_objfile, _on_new_objfile),
                           (gdb.events.clear_objfiles, _SESSION.invalidate)):
        event.connect(handler)
    gdb.write("kheap loaded: 'help kheap' lists the commands\n")
