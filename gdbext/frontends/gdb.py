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
from gdbext.frontends import commands, completion, describe
from gdbext.frontends.session import ADDRESS_OF_KINDS, CommandError, Session, StopPlace

# gdb's type codes as the kinds of session.ADDRESS_OF_KINDS (what an ADDR argument means).
_KINDS = {gdb.TYPE_CODE_ARRAY: "array", gdb.TYPE_CODE_FUNC: "function", gdb.TYPE_CODE_STRUCT: "struct",
          gdb.TYPE_CODE_UNION: "union"}


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
            return _address_of(gdb.parse_and_eval(expression))
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


def _address_of(value):
    """The address a gdb.Value stands for (session.ADDRESS_OF_KINDS, the same in every face): a
    number or pointer as is; an array, function, struct or union (``*seg``) by where it lies
    (gdb's int() refuses a function: "Cannot convert value to long.")."""
    if _KINDS.get(value.type.strip_typedefs().code) in ADDRESS_OF_KINDS:
        if value.address is None:
            raise CommandError(f"{value.type} is not in memory: it has no address")
        value = value.address
    return int(value) & ((1 << 64) - 1)


# Settings as gdb parameters -------------------------------------------------------------------
class _Prefix(gdb.Command):
    def __init__(self, name, doc):
        self.__doc__ = doc
        self._name = name
        super().__init__(name, gdb.COMMAND_DATA, prefix=True)

    def invoke(self, argument, from_tty):
        # An invoke makes gdb hand unknown subcommands here: say so as gdb's own prefixes do.
        if argument.strip():
            raise gdb.GdbError(f'Undefined {self._name} command: "{argument.strip()}".  '
                               f'Try "help {self._name}".')
        names = ", ".join(name for name, *_ in commands.SETTINGS)
        raise gdb.GdbError(f'"{self._name}" must be followed by a setting: {names}')


class _ShowPrefix(_Prefix):
    """``show kheap``: every setting and its value, as gdb's own ``show`` prefixes list theirs."""

    def invoke(self, argument, from_tty):
        if argument.strip():
            super().invoke(argument, from_tty)
        for name, *_ in commands.SETTINGS:
            gdb.write(gdb.execute(f"show kheap {name}", to_string=True))


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
        super().__init__("kheap", gdb.COMMAND_DATA, prefix=True)

    def invoke(self, argument, from_tty):
        # 'kheap --help' as in the CLI (and 'kheap -h'): the list of subcommands, as plain 'kheap'.
        if argument.strip() and argument.strip() not in ("-h", "--help"):
            _run(argument.split()[0], gdb.string_to_argv(argument)[1:])
        else:
            gdb.write(commands.prefix_help("gdb") + "\n")

    def complete(self, text, word):
        """``kheap <TAB>``: the subcommands (gdb completes a prefix's own list itself; this
        answers for a word it does not know, which is no subcommand)."""
        names = [c.name for c in commands.commands_for("gdb")]
        return [n for n in names if n.startswith(word or "")]


class KheapSubcommand(gdb.Command):
    def __init__(self, command):
        self._command = command
        self.__doc__ = commands.long_help(command)
        # No completer class: gdb then asks complete() below, which reads the argparse spec.
        super().__init__(f"kheap {command.name}", gdb.COMMAND_DATA)

    def complete(self, text, word):
        """TAB: option names, an option's choices, and gdb's symbol, location or file name
        completion only where the value is an address, a location or a file."""
        try:
            found = completion.complete(self._command, text)
        except Exception:  # noqa: BLE001 - a completion bug must not break the command line
            return gdb.COMPLETE_NONE
        if found.kind == completion.WORDS:
            return found.relative_to(word) if word is not None else gdb.COMPLETE_NONE
        if found.kind not in _EXPRESSION_KINDS:
            return gdb.COMPLETE_NONE
        if word is None or text.lstrip() == found.token:
            return gdb.COMPLETE_EXPRESSION      # the expression is all the text gdb hands over
        return _expression_completions(found, word)

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


# Values gdb completes as an expression (symbols, fields after '->'): a location too, since
# gdb's location completer reads the whole argument text as one linespec ('--until kmal').
_EXPRESSION_KINDS = (completion.EXPRESSION, completion.LOCATION)


def _expression_completions(found, word):
    """gdb's completions of the expression ``found.token`` when options come before it.

    gdb's expression completer parses the whole argument text, and '--around ptr->n' is no
    expression (it would offer globals for 'n'), so ask it about the token alone, as
    'print' would complete it."""
    try:
        listing = gdb.execute(f"complete print {found.token}", to_string=True)
    except gdb.error:
        return []
    words = tuple(line[len("print "):] for line in listing.splitlines() if line.startswith("print "))
    return completion.Completion(completion.WORDS, found.token, words).relative_to(word)


def _run(name, argv):
    """Run one command and print its output; never let an exception reach gdb."""
    text = commands.execute_to_text(_SESSION, name, argv)
    if text.text:
        gdb.write(text.text if text.text.endswith("\n") else text.text + "\n",
                  gdb.STDERR if text.is_error else gdb.STDOUT)
    if text.named is not None:
        _keep_named(text.named)


def _keep_named(named):
    """``$_``: the header of the segment the command named, typed as a pointer to the header
    (``p *$_`` prints it), and ``$__`` its payload (``void *``; ``x/16xb $__``), as ``x`` and
    ``info line`` leave ``$_`` at the address they looked at."""
    try:
        gdb.set_convenience_variable("_", _segment_pointer(named.header))
        gdb.set_convenience_variable("__", gdb.Value(named.payload).cast(gdb.lookup_type("void").pointer()))
    except gdb.error:
        pass  # no types to give them (never worth failing the command that ran)


def _segment_pointer(address):
    """``address`` as a pointer to the kernel's segment header type (or an unsigned long)."""
    value = gdb.Value(address)
    for name in describe.type_spellings(describe.SEGMENT_TAGS):
        try:
            return value.cast(gdb.lookup_type(name).pointer())
        except gdb.error:
            continue
    return value.cast(gdb.lookup_type("unsigned long"))


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


# The printer's parts: 'info pretty-printer' lists them under 'kheap' and each can be disabled
# on its own ('disable pretty-printer global kheap;page').
_PRINTED = (("heap_segment", describe.SEGMENT_TAGS), ("page", describe.PAGE_TAGS))


class KheapPrinter(gdb.printing.PrettyPrinter):
    """The pretty printer named ``kheap`` (gdb's convention: ``info pretty-printer`` shows it,
    ``disable pretty-printer global kheap`` turns it off), a subprinter per struct kind."""

    def __init__(self):
        super().__init__("kheap", [gdb.printing.SubPrettyPrinter(name) for name, _ in _PRINTED])

    def __call__(self, value):
        try:
            tag = gdb.types.get_basic_type(value.type).tag
            if value.type.strip_typedefs().code != gdb.TYPE_CODE_STRUCT:
                return None
        except (gdb.error, RuntimeError):
            return None
        for sub, (_, tags) in zip(self.subprinters, _PRINTED):
            if sub.enabled and tag in tags:
                return _StructPrinter(value, commands.struct_describer(tag))
        return None


class SegmentFunction(gdb.Function):
    """$kheap_segment(ADDR): the heap_segment_t header address of the segment holding ADDR
    (a payload pointer, an interior pointer or a header), or 0 if ADDR is not in the heap."""

    def __init__(self):
        super().__init__("kheap_segment")

    def invoke(self, *args):
        # gdb hands every argument the user typed: a wrong count is one line, not a TypeError.
        if len(args) != 1:
            raise gdb.GdbError(f"$kheap_segment takes one argument, an address or pointer "
                               f"(e.g. $kheap_segment($r0)), not {len(args)}")
        try:
            address = _address_of(args[0])
        except (gdb.error, CommandError):
            raise gdb.GdbError(f"$kheap_segment: expected an address or pointer, not a value of "
                               f"type {args[0].type}") from None
        try:
            header = commands.segment_header_for(_SESSION, address)
        except Exception as error:  # noqa: BLE001
            raise gdb.GdbError(f"$kheap_segment: {error}") from None
        return _segment_pointer(header or 0)


# Events ---------------------------------------------------------------------------------------
def _on_stop(event):
    _SESSION.invalidate()
    if not _SESSION.auto_check:
        return
    line = commands.execute_to_text(_SESSION, "check", ["--verdict"])
    gdb.write(line.text if line.text.endswith("\n") else line.text + "\n")


def _on_new_objfile(event):
    _SESSION.invalidate()


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
    _ShowPrefix("show kheap", "Show kheap options.")
    for name, kind, doc, default in commands.SETTINGS:
        _Parameter(name, getattr(gdb, kind), doc, default)
    SegmentFunction()
    gdb.printing.register_pretty_printer(None, KheapPrinter())
    for event, handler in ((gdb.events.stop, _on_stop), (gdb.events.cont, _SESSION.invalidate),
                           (gdb.events.memory_changed, _SESSION.invalidate),
                           (gdb.events.inferior_call, _SESSION.invalidate),
                           (gdb.events.exited, _SESSION.invalidate),
                           (gdb.events.new_objfile, _on_new_objfile),
                           (gdb.events.clear_objfiles, _SESSION.invalidate)):
        event.connect(handler)
    gdb.write("kheap loaded: 'help kheap' lists the commands\n")
