"""Code facts from the kernel ELF's DWARF: source lines, compile units and a CFI unwinder.

What ``kheap blame`` needs to name a store without a debugger (the CLI has none) and after the
fact (a write is seen at a watchpoint hit; the report is made when the run is over, when that
hit's stack is long gone):

- :meth:`CodeInfo.line_at`: ``file:line`` of an address, from ``.debug_line``;
- :meth:`CodeInfo.unit_of`: the compile unit an address belongs to (``.debug_aranges``), so
  "written by the allocator" can mean "by code of the file that defines kmalloc", static
  helpers and inlined code included;
- :meth:`CodeInfo.unwind`: a backtrace from a few registers (pc, sp, the link register, the
  frame pointer) and a copy of the stack taken at the hit, by the call frame information in
  ``.debug_frame`` (gcc emits it with ``-g`` even with ``-fno-unwind-tables``).

Parsed once per ELF (path, mtime, size) and kept; pure pyelftools, no debugger.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["CodeInfo", "Frame", "code_info", "DWARF_REGISTERS", "split_symbol"]

# DWARF register numbers of the registers an unwind starts from. AArch64's pc has no DWARF
# number: it is passed on its own.
DWARF_REGISTERS = {
    "arm": {"sp": 13, "lr": 14, "fp": 11, "pc": 15},
    "aarch64": {"sp": 31, "lr": 30, "fp": 29},
}
MAX_FRAMES = 32


@dataclass(frozen=True)
class Frame:
    """One frame of a backtrace: ``pc`` (frame 0: the instruction; others: the return
    address), its function as ``name+0xoff`` and its source line (the call's, for callers)."""

    pc: int
    function: Optional[str]
    source: Optional[str]
    inlined: Optional[str] = None       # the innermost function inlined at pc, if any

    def to_json(self) -> Dict[str, object]:
        return {"pc": self.pc, "function": self.function, "source": self.source, "inlined": self.inlined}

    @property
    def name(self) -> Optional[str]:
        """The function the code is written in: the inlined one, else the symbol's."""
        return self.inlined or split_symbol(self.function)[0]


def split_symbol(text: Optional[str]) -> Tuple[Optional[str], int]:
    """``"name+0x1c"`` -> ``("name", 0x1c)``; ``"name"`` -> ``("name", 0)``."""
    if not text:
        return None, 0
    name, plus, off = text.rpartition("+0x")
    if plus and name:
        try:
            return name, int(off, 16)
        except ValueError:
            pass
    return text, 0


class CodeInfo:
    """Lines, units and call frame information of one ELF (see the module docstring)."""

    def __init__(self, path: str, elf: object) -> None:
        self.path = path
        self.elf = elf                     # the ElfInfo (symbols, pointer size, byte order)
        self.entry: Optional[int] = None
        self._lines: List[int] = []        # sorted addresses of line rows
        self._rows: List[Tuple[Optional[str], int]] = []   # (file, line), or (None, 0) past a sequence's end
        self._units: List[Tuple[int, int, int]] = []     # (low, high, unit offset), sorted
        self._unit_names: Dict[int, str] = {}
        self._fdes: List[Tuple[int, int, object]] = []   # (start, end, FDE), sorted
        self._fde_starts: List[int] = []
        self._tables: Dict[int, Tuple[List[int], list, int]] = {}
        self.has_lines = False
        self.has_cfi = False
        self._inlines: Dict[int, List[Tuple[int, int, str]]] = {}  # unit -> (low, high, name)
        self._load()

    # -- loading -------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            from elftools.elf.elffile import ELFFile
        except ImportError:                # pragma: no cover - pyelftools is a dependency
            return
        if not self.path or not os.path.isfile(self.path):
            return                         # a synthetic ElfInfo (tests): symbols only
        with open(self.path, "rb") as f:
            elf = ELFFile(f)
            self.entry = elf.header.e_entry
            if not elf.has_dwarf_info():
                return
            dwarf = elf.get_dwarf_info()
            self._load_lines(dwarf)
            self._load_units(dwarf)
            self._load_cfi(dwarf)

    def _load_lines(self, dwarf: object) -> None:
        rows: List[Tuple[int, Optional[str], int]] = []
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            header = program.header
            files = header["file_entry"]
            first = 0 if header["version"] >= 5 else 1
            names = {}
            for i, entry in enumerate(files):
                name = entry.name.decode("utf-8", "replace") if isinstance(entry.name, bytes) else str(entry.name)
                names[i + first] = os.path.basename(name)
            for entry in program.get_entries():
                state = entry.state
                if state is None:
                    continue
                if state.end_sequence:
                    rows.append((state.address, None, 0))
                else:
                    rows.append((state.address, names.get(state.file, "?"), state.line))
        # At one address the last row wins, except that a sequence's end never hides the first
        # row of the next sequence starting there.
        rows.sort(key=lambda r: (r[0], r[1] is not None))
        for address, name, line in rows:
            if self._lines and self._lines[-1] == address:
                self._rows[-1] = (name, line) if name is not None or self._rows[-1][0] is None else self._rows[-1]
                continue
            self._lines.append(address)
            self._rows.append((name, line))
        self.has_lines = bool(self._lines)

    def _load_units(self, dwarf: object) -> None:
        try:
            aranges = dwarf.get_aranges()
        except Exception:  # noqa: BLE001 - no .debug_aranges: units stay unknown
            aranges = None
        if aranges is None:
            return
        for entry in aranges.entries:
            if entry.length:
                self._units.append((entry.begin_addr, entry.begin_addr + entry.length, entry.info_offset))
        self._units.sort()
        for cu in dwarf.iter_CUs():
            try:
                name = cu.get_top_DIE().attributes["DW_AT_name"].value
            except (KeyError, Exception):  # noqa: BLE001
                continue
            self._unit_names[cu.cu_offset] = os.path.basename(
                name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))

    def _load_cfi(self, dwarf: object) -> None:
        try:
            from elftools.dwarf.callframe import FDE
        except ImportError:                # pragma: no cover
            return
        entries = []
        try:
            if dwarf.has_CFI():
                entries += dwarf.CFI_entries()
            if dwarf.has_EH_CFI():
                entries += dwarf.EH_CFI_entries()
        except Exception:  # noqa: BLE001 - malformed CFI: no unwinding, not a failure
            entries = []
        for e in entries:
            if isinstance(e, FDE):
                start = e.header["initial_location"]
                self._fdes.append((start, start + e.header["address_range"], e))
        self._fdes.sort(key=lambda t: t[0])
        self._fde_starts = [s for s, _, _ in self._fdes]
        self.has_cfi = bool(self._fdes)

    # -- lookups -------------------------------------------------------------------------------
    def line_at(self, address: int) -> Optional[str]:
        """``"file.c:123"`` of the line table row covering ``address``, or None."""
        i = bisect.bisect_right(self._lines, address) - 1
        if i < 0:
            return None
        name, line = self._rows[i]
        if name is None:
            return None
        return f"{name}:{line}"

    def address_of_line(self, name: str, line: int) -> Optional[int]:
        """The lowest address of a row of ``name:line`` (``name`` matched by basename)."""
        base = os.path.basename(name)
        best = None
        for address, (file, row_line) in zip(self._lines, self._rows):
            if file == base and row_line == line and (best is None or address < best):
                best = address
        return best

    def unit_of(self, address: int) -> Optional[int]:
        """The offset of the compile unit holding ``address`` (its identity), or None."""
        i = bisect.bisect_right(self._units, (address, float("inf"), 0)) - 1
        if i >= 0:
            low, high, unit = self._units[i]
            if low <= address < high:
                return unit
        return None

    def unit_name(self, unit: Optional[int]) -> Optional[str]:
        return self._unit_names.get(unit) if unit is not None else None

    def _load_inlines(self, unit: int) -> List[Tuple[int, int, str]]:
        """The inlined subroutines of one compile unit: (low, high, name)."""
        out: List[Tuple[int, int, str]] = []
        if not self.path or not os.path.isfile(self.path):
            return out
        try:
            from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
            from elftools.elf.elffile import ELFFile

            with open(self.path, "rb") as f:
                dwarf = ELFFile(f).get_dwarf_info()
                lists = dwarf.range_lists()
                cu = dwarf.get_CU_at(unit)
                top = cu.get_top_DIE()
                cu_base = top.attributes["DW_AT_low_pc"].value if "DW_AT_low_pc" in top.attributes else 0
                for die in cu.iter_DIEs():
                    if die.tag != "DW_TAG_inlined_subroutine":
                        continue
                    name = _origin_name(die)
                    if name is None:
                        continue
                    attrs = die.attributes
                    if "DW_AT_low_pc" in attrs and "DW_AT_high_pc" in attrs:
                        low = attrs["DW_AT_low_pc"].value
                        high = attrs["DW_AT_high_pc"]
                        end = high.value if high.form == "DW_FORM_addr" else low + high.value
                        out.append((low, end, name))
                    elif "DW_AT_ranges" in attrs and lists is not None and \
                            attrs["DW_AT_ranges"].form != "DW_FORM_rnglistx":
                        base = cu_base
                        for entry in lists.get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu):
                            if isinstance(entry, BaseAddressEntry):
                                base = entry.base_address
                            elif isinstance(entry, RangeEntry):
                                shift = 0 if entry.is_absolute else base
                                out.append((entry.begin_offset + shift, entry.end_offset + shift, name))
        except Exception:  # noqa: BLE001 - inline names are a nicety: none rather than a failure
            return out
        return out

    def inlined_at(self, address: int) -> Optional[str]:
        """The innermost function inlined at ``address`` (DWARF inlined subroutines), or None.
        Each compile unit's are read the first time an address of it is asked about."""
        unit = self.unit_of(address)
        if unit is None:
            return None
        inlines = self._inlines.get(unit)
        if inlines is None:
            inlines = self._inlines[unit] = self._load_inlines(unit)
        best = None
        for low, high, name in inlines:
            if low <= address < high and (best is None or high - low < best[1] - best[0]):
                best = (low, high, name)
        return best[2] if best else None

    def _row(self, address: int) -> Optional[dict]:
        i = bisect.bisect_right(self._fde_starts, address) - 1
        if i < 0:
            return None
        start, end, fde = self._fdes[i]
        if not start <= address < end:
            return None
        table = self._tables.get(start)
        if table is None:
            try:
                decoded = fde.get_decoded()
            except Exception:  # noqa: BLE001 - an FDE pyelftools cannot decode: no row
                return None
            rows = decoded.table
            ra = fde.cie.header.get("return_address_register", 14)
            table = ([r["pc"] for r in rows], rows, ra)
            self._tables[start] = table
        pcs, rows, _ = table
        j = bisect.bisect_right(pcs, address) - 1
        return rows[j] if j >= 0 else None

    def _return_register(self, address: int) -> Optional[int]:
        i = bisect.bisect_right(self._fde_starts, address) - 1
        if i < 0:
            return None
        start = self._fdes[i][0]
        if start not in self._tables:
            self._row(address)
        table = self._tables.get(start)
        return table[2] if table else None

    def frame(self, pc: int, caller: bool) -> Frame:
        """The frame at ``pc``: a caller's return address is named by the call before it."""
        symbolize = self.elf.symbolize            # type: ignore[attr-defined]
        look = pc - 1 if caller else pc
        name, off = split_symbol(symbolize(look))
        function = None if name is None else (name if off + (1 if caller else 0) == 0
                                               else f"{name}+0x{off + (1 if caller else 0):x}")
        return Frame(pc, function, self.line_at(look), self.inlined_at(look))

    def unwind(self, arch: str, pc: int, registers: Dict[str, int],
               read: Callable[[int, int], bytes], limit: int = MAX_FRAMES) -> Tuple[List[Frame], str]:
        """A backtrace from ``pc`` and ``registers`` (``sp``, ``lr``, ``fp`` by name) with
        ``read(address, size)`` over the stack; returns ``(frames, why it ended)``.

        Ends at the kernel's entry point (its frame is not listed), at code without call frame
        information, at a return address of 0, at a stack that does not grow toward the
        caller, or where ``read`` fails (a copy of the stack ends there)."""
        from elftools.dwarf.callframe import RegisterRule

        numbers = DWARF_REGISTERS.get(arch)
        if numbers is None:
            return [self.frame(pc, False)], f"no unwinder for {arch}"
        size = self.elf.pointer_size              # type: ignore[attr-defined]
        order = self.elf.byteorder                # type: ignore[attr-defined]
        mask = (1 << (8 * size)) - 1
        regs = {numbers[k]: v & mask for k, v in registers.items() if k in numbers and v is not None}
        sp_reg = numbers["sp"]
        entry_name, _ = split_symbol(self.elf.symbolize(self.entry)) if self.entry is not None else (None, 0)
        frames: List[Frame] = []
        previous_cfa = None
        for depth in range(limit):
            frame = self.frame(pc, depth > 0)
            name, _ = split_symbol(frame.function)
            if depth > 0 and entry_name is not None and name == entry_name:
                return frames, "kernel entry"
            frames.append(frame)
            if name is None:
                return frames, "outside the kernel image"
            look = pc - 1 if depth > 0 else pc
            row = self._row(look)
            if row is None:
                return frames, "no call frame information"
            rule = row["cfa"]
            if rule.expr is not None or rule.reg not in regs:
                return frames, "call frame rule not followed"
            cfa = (regs[rule.reg] + rule.offset) & mask
            if previous_cfa is not None and cfa < previous_cfa:
                return frames, "stack does not grow toward the caller"
            new = dict(regs)
            try:
                for number, reg_rule in row.items():
                    if not isinstance(number, int):
                        continue
                    kind = reg_rule.type
                    if kind == RegisterRule.OFFSET:
                        new[number] = int.from_bytes(read((cfa + reg_rule.arg) & mask, size), order)
                    elif kind == RegisterRule.VAL_OFFSET:
                        new[number] = (cfa + reg_rule.arg) & mask
                    elif kind == RegisterRule.REGISTER:
                        if reg_rule.arg in regs:
                            new[number] = regs[reg_rule.arg]
                    elif kind == RegisterRule.UNDEFINED:
                        new.pop(number, None)
            except Exception:  # noqa: BLE001 - the copy of the stack ends: so does the backtrace
                return frames, "end of the stack copy"
            ra_reg = self._return_register(look)
            ra = new.get(ra_reg) if ra_reg is not None else None
            if not ra:
                return frames, "return address 0"
            new[sp_reg] = cfa
            if arch == "arm":
                ra &= ~1
            if ra == pc and cfa == previous_cfa:
                return frames, "no progress"
            previous_cfa = cfa
            regs, pc = new, ra
        return frames, f"{limit} frames"


def _origin_name(die: object) -> Optional[str]:
    """The name of an inlined subroutine: its abstract origin's (or that one's specification)."""
    for _ in range(4):
        attrs = die.attributes                    # type: ignore[attr-defined]
        if "DW_AT_name" in attrs:
            value = attrs["DW_AT_name"].value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        for key in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if key in attrs:
                die = die.get_DIE_from_attribute(key)  # type: ignore[attr-defined]
                break
        else:
            return None
    return None


_cache: Dict[str, Tuple[Tuple[float, int], CodeInfo]] = {}
_lock = threading.Lock()


def code_info(elf: object) -> CodeInfo:
    """The :class:`CodeInfo` of an ElfInfo's file, parsed once per (path, mtime, size)."""
    path = os.path.abspath(elf.path or "")         # type: ignore[attr-defined]
    try:
        st = os.stat(path)
        key = (st.st_mtime, st.st_size)
    except OSError:
        key = (0.0, -1)                            # no file behind it: symbols only
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == key and hit[1].elf is elf:
            return hit[1]
    info = CodeInfo(path, elf)
    with _lock:
        _cache[path] = (key, info)
    return info
