"""What every face (gdb, lldb, CLI) gives the shared command table, and the state they share.

A face subclasses Session and supplies four things: the ELF path, a raw memory reader, an
expression evaluator and where the target stopped. Everything else (settings, the per-stop
Program with its block cache, snapshots) lives here once, so the three faces cannot drift.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from gdbext.core.memory import BlockCache
from gdbext.core.pages import parse_page_convention
from gdbext.core.program import Overrides, Program
from gdbext.core.reach import CoreState
from gdbext.core.snapshot import Snapshot, SnapshotError
from gdbext.core.symbols import load_elf_info
from gdbext.core.text import parse_size


class CommandError(Exception):
    """A problem the user can act on (no target, bad expression, unreadable file): one line."""


# What an ADDR argument (find, walk --around, refs, ...) means, the same in every face: the
# expression's value, as gdb's ``x ADDR`` takes it. A pointer or integer variable stands for the
# value it holds; an object that is not a number (an array, a function, a struct or union)
# stands for its address, as arrays and functions decay to theirs in C. The faces map their
# debugger's type to these kinds (gdb.py, lldb.py; the CLI reads the ELF's DWARF).
ADDRESS_OF_KINDS = frozenset({"array", "function", "struct", "union"})


def load_snapshot_file(path):
    """A Snapshot from a JSON file written by 'kheap snapshot -o' (or its --json output)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return Snapshot.from_json(data)
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None
    except SnapshotError as error:
        raise CommandError(f"{path} is not a kheap snapshot: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        # A dump or core given where a snapshot goes: say what a snapshot is, not the codec's error.
        raise CommandError(f"{path} is not a kheap snapshot: a binary file, not the JSON that "
                           "'kheap snapshot NAME -o FILE' writes") from None
    except ValueError as error:
        raise CommandError(f"{path} is not a kheap snapshot: not JSON ({' '.join(str(error).split())})") from None


@dataclass
class StopPlace:
    """Where the target is stopped, as the debugger sees it (for ``kheap triage``)."""

    pc: Optional[int] = None
    function: Optional[str] = None
    frames: list = field(default_factory=list)  # [{"pc", "function", "source"}], newest first
    registers: dict = field(default_factory=dict)
    thread: Optional[int] = None


# The values 'color' takes in every face (gdb 'set kheap color', lldb 'kheap set color', the CLI's
# --color): always/never are on/off as ls and git spell them.
COLOR_VALUES = ("auto", "on", "off", "always", "never")
COLOR_ALIASES = {"always": "on", "never": "off"}


def _one_of(values):
    """'a, b or c': the values a setting takes, as its error message lists them."""
    return ", ".join(values[:-1]) + " or " + values[-1]


# name, gdb parameter kind, one-line doc, default. gdb shows them with 'show kheap NAME'; lldb
# and the CLI take the same names as options, so a user moving between faces finds them again.
SETTINGS = (
    ("auto-check", "PARAM_BOOLEAN", "Whether kheap checks the heap at every stop.", False),
    ("color", "PARAM_STRING", f"Colour output: {_one_of(COLOR_VALUES)}.", "auto"),
    # 4 KiB: the cache reads each run of missing blocks in one request, so small blocks cost no
    # extra round trips and keep bulk reads exact (64 KiB blocks overfetched ~10% on the heap).
    ("block-size", "PARAM_STRING", "Bytes per cache block of target memory (a power of two).",
     "4096"),
    ("heap-start", "PARAM_STRING", "Heap start address override (empty: from the ELF).", ""),
    ("heap-size", "PARAM_STRING", "Heap size override (empty: from the ELF).", ""),
    ("list-head", "PARAM_STRING", "Address of the first segment override (empty: from the ELF).",
     ""),
    ("page-convention", "PARAM_STRING",
     "Page conventions the page array is held to: auto (from the ELF; where it cannot tell, either), "
     "identity or mapped-only (vaddr_mapped), heap-bit or no-heap-bit (heap pages' flags); "
     "comma-separated, e.g. mapped-only,no-heap-bit.", "auto"),
    ("debug", "PARAM_BOOLEAN", "Whether kheap shows Python tracebacks of its own bugs.", False),
    ("stacks", "PARAM_STRING", "Stacks for leaks --scan and refs: TOP:SIZE or LOW..TOP, comma "
     "separated, or none (empty: from the ELF's *stack_top symbols).", ""),
)


ADDRESS_SETTINGS = ("heap-start", "list-head")      # plain numbers: 0x3d5000
SIZE_SETTINGS = ("heap-size", "block-size")         # sizes: parse_size's forms (4096, 0x1000, 4k, 1M)


def _parse_setting(name, value):
    """Validate one setting's value, returning what the session keeps (None = automatic).

    Raises CommandError with the reason only: :meth:`Session.apply_setting` names the setting
    as the face spells it (``--heap-size``, ``set kheap heap-size``)."""
    if name in ("auto-check", "debug"):
        if isinstance(value, str):
            if value.lower() in ("on", "1", "yes", "true"):
                return True
            if value.lower() in ("off", "0", "no", "false"):
                return False
            raise CommandError(f"expected on or off, not {value!r}")
        return bool(value)
    if name == "color":
        text = (value or "auto").lower()
        if text not in COLOR_VALUES:
            raise CommandError(f"expected {_one_of(COLOR_VALUES)}, not {value!r}")
        return COLOR_ALIASES.get(text, text)
    if name == "page-convention":
        try:
            parse_page_convention(value)
        except ValueError as error:
            raise CommandError(str(error)) from None
        return None if value in (None, "", "auto") else str(value).replace(" ", "").lower()
    if name == "stacks":
        text = " ".join(str(value or "").split())
        if text and text.lower() != "none" and not all(":" in item or ".." in item
                                                       for item in text.split(",") if item.strip()):
            raise CommandError("expected TOP:SIZE or LOW..TOP items, comma separated, or none")
        return text or None
    if value in (None, "", "auto"):
        return None
    if name in SIZE_SETTINGS:
        try:
            number = parse_size(value, minimum=1)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if name == "block-size" and not (256 <= number <= 16 * 1024 * 1024 and number & (number - 1) == 0):
            raise CommandError(f"{value} is not a power of two between 256 and 16M (e.g. 4k, 64k)")
        return number
    try:
        number = int(str(value).strip(), 0)
    except ValueError:
        raise CommandError(f"not an address: {value!r} (e.g. 0x3d5000)") from None
    if number < 0:
        raise CommandError(f"must not be negative: {value}")
    return number


class Session:
    """Debugger-neutral session state; faces override the four target hooks below."""

    face = "none"

    def __init__(self):
        self._settings = {name: _parse_setting(name, default) for name, _, _, default in SETTINGS}
        self._program = None
        self.snapshots = {}

    # Hooks a face provides -------------------------------------------------------------------
    def elf_path(self):
        raise NotImplementedError

    def reader(self):
        raise NotImplementedError

    def evaluate(self, expression):
        """An address from an expression; faces without a debugger accept numbers and symbols."""
        raise NotImplementedError

    def stop_place(self):
        return StopPlace()

    def core_states(self):
        """Every core's registers (and frames, where the face can unwind) for the roots of a
        reachability scan: ``[CoreState]``. This default knows only the core that stopped."""
        place = self.stop_place()
        if not place.registers:
            return []
        return [CoreState(place.thread or 1, dict(place.registers), [dict(f) for f in place.frames])]

    def recorded_watch(self):
        """What ``kheap watch`` recorded in this session (a Watch), or None; never starts one."""
        return getattr(getattr(self, "_watch", None), "watch", None)

    def watch_controller(self):
        """The face's ``kheap watch`` machinery (breakpoints need a debugger: gdb has one)."""
        raise CommandError(f"kheap watch needs breakpoints in a running kernel: not available in {self.face}")

    def blame_target(self):
        """The face's ``kheap blame`` machinery (a live QEMU it can reset and watch)."""
        raise CommandError("kheap blame needs a live QEMU target it can reset: not available in "
                           f"{self.face}")

    def check_alive(self, program):
        """Raise CommandError if the target behind a cached Program has gone (faces with a
        live connection override this with one tiny uncached read)."""

    def color_wanted(self):
        """Colour when 'color' is on, or auto and the output is a terminal (the face knows)."""
        return self._settings["color"] == "on"

    def setting_spelling(self, name, value=None):
        """How a user of this face sets setting ``name`` (to ``value``): what errors and hints
        name, so a CLI user reads ``--debug`` and a gdb user ``set kheap debug on``. This is
        gdb's spelling; other faces override it."""
        return f"set kheap {name}" + ("" if value is None else f" {value}")

    # Settings --------------------------------------------------------------------------------
    def apply_setting(self, name, value):
        try:
            self._settings[name] = _parse_setting(name, value)
        except CommandError as error:
            raise CommandError(f"{self.setting_spelling(name)}: {error}") from None
        self.invalidate()

    def current_settings(self):
        return dict(self._settings)

    @property
    def auto_check(self):
        return self._settings["auto-check"]

    @property
    def debug(self):
        return self._settings["debug"]

    # The program -----------------------------------------------------------------------------
    def overrides(self):
        return Overrides(heap_start=self._settings["heap-start"],
                         heap_size=self._settings["heap-size"],
                         list_head=self._settings["list-head"],
                         page_convention=self._settings["page-convention"])

    def program(self):
        """The Program for this stop: built once, reused until the target may have changed."""
        if self._program is not None:
            try:
                self.check_alive(self._program)
            except CommandError:
                self._program = None
                raise
        if self._program is None:
            cache = BlockCache(self.reader(), block_size=self._settings["block-size"] or 4096)
            self._program = Program(load_elf_info(self.elf_path()), cache, overrides=self.overrides())
        return self._program

    def load_snapshot(self, name):
        """A snapshot taken earlier in this session, or a file saved by 'kheap snapshot -o'."""
        if name in self.snapshots:
            return self.snapshots[name]
        if os.path.isfile(name):
            return load_snapshot_file(name)
        known = ", ".join(sorted(self.snapshots)) or "none yet"
        raise CommandError(f"no snapshot named {name!r} (taken so far: {known}) and no such file; "
                           "use 'kheap snapshot NAME [-o FILE]' first")

    def invalidate(self, *_event):
        """Forget everything read from the target (it ran, or memory was written)."""
        self._program = None
