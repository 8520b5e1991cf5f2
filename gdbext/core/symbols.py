"""What the kernel ELF tells us before any memory is read: symbols, layouts, constants.

:func:`load_elf_info` parses the file once with pyelftools and caches the result by
(path, mtime, size): gdb calls it on every command and the DWARF pass is the slow part.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass, field as dc_field
from typing import Dict, List, Optional, Tuple

from . import names
from .layout import DwarfTypes
from .layouts import Layouts, default_layouts, layouts_from_dwarf
from .macros import MacroError, macro_value, parse_debug_macinfo, parse_debug_macro
from .names import Fact

__all__ = ["Symbol", "Section", "ElfInfo", "ElfError", "load_elf_info", "make_elf_info", "clear_elf_cache",
           "KERNEL_VARIABLES", "KERNEL_SYMBOLS"]

# The kernel's globals kheap reads (docs/kernel-interface.md, "Globals"): its variables (what
# 'kheap dump' saves beside the heap), and with them the symbols 'kheap info' shows.
KERNEL_VARIABLES = ("all_pages_array", "num_pages", "free_pages", "heap_segment_list_head", "kernel_heap_start",
                    "kernel_heap_size", "heap_stats", "heap_poison", "panic_info")
KERNEL_SYMBOLS = ("__end",) + KERNEL_VARIABLES + ("kheap_checkpoint", "kernel_panic")


class ElfError(Exception):
    """The file is not an ELF kheap can read (missing, truncated, not ELF)."""


@dataclass(frozen=True)
class Symbol:
    """One ``.symtab`` entry (local symbols included: the kernel has static helpers)."""

    name: str
    address: int
    size: int
    kind: str        # 'func', 'object', 'notype', ...
    binding: str     # 'global', 'local', 'weak'
    section: str = ""   # the defining section's name ('' for absolute or undefined)


SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    size: int
    data: Optional[bytes]      # None for NOBITS (.bss)
    flags: int = 0             # sh_flags (SHF_WRITE: the kernel writes it: .data, .bss)

    @property
    def writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)


@dataclass
class ElfInfo:
    """A parsed kernel ELF. Built by :func:`load_elf_info`; immutable by convention."""

    path: str
    elf_class: int                         # 32 or 64
    pointer_size: int
    endian: str                            # '<' or '>'
    machine: str                           # e_machine, e.g. 'EM_ARM', 'EM_AARCH64'
    symbols: Dict[str, Symbol]
    layouts: Layouts
    has_dwarf: bool
    constants: Dict[str, int] = dc_field(default_factory=dict)          # DWARF enumerators and constants
    variables: Dict[str, Tuple[str, int]] = dc_field(default_factory=dict)  # name -> (type, size)
    # name -> (kind, stride) of the variable's type (DwarfTypes.variable_shape): expressions.
    variable_shapes: Dict[str, Tuple[str, int]] = dc_field(default_factory=dict)
    sections: List[Section] = dc_field(default_factory=list)
    image_start: int = 0
    image_end: int = 0
    notes: List[str] = dc_field(default_factory=list)
    # Where each of ``constants`` came from ('DWARF enumerator', 'DWARF constant'); absent: 'constant'.
    constant_sources: Dict[str, str] = dc_field(default_factory=dict)
    # Object-like #defines from .debug_macro/.debug_macinfo (-g3): name -> definitions seen.
    macros: Dict[str, List[str]] = dc_field(default_factory=dict)
    macro_section: str = ""
    _by_address: List[Tuple[int, int, str]] = dc_field(default_factory=list, repr=False)
    _addresses: List[int] = dc_field(default_factory=list, repr=False)

    @property
    def byteorder(self) -> str:
        return "little" if self.endian == "<" else "big"

    @property
    def arch(self) -> str:
        return {"EM_ARM": "arm", "EM_AARCH64": "aarch64"}.get(self.machine, self.machine.lower())

    def symbol_name(self, name: str) -> Optional[str]:
        """The name ``name`` has in this ELF's ``.symtab``: itself, or the first of its aliases
        (:func:`names.candidates`: ``kheap_list``, ``main.heapSegmentListHead``) present."""
        return probe_symbol(self.symbols, name)

    def symbol(self, name: str) -> Optional[Symbol]:
        found = self.symbol_name(name)
        return self.symbols[found] if found is not None else None

    def address_of(self, name: str) -> Optional[int]:
        sym = self.symbol(name)
        return sym.address if sym is not None else None

    def symbol_fact(self, name: str) -> Optional[Fact]:
        """A global's address as a :class:`Fact` (the name matched, its binding)."""
        sym = self.symbol(name)
        if sym is None:
            return None
        return Fact(sym.address, "symbol", sym.name, "static (local)" if sym.binding == "local" else "")

    def constant_fact(self, name: str) -> Optional[Fact]:
        """A constant by its conventional name or an alias: a DWARF enumerator or constant
        (Go's ``main.KERNEL_HEAP_SIZE``) first, then a ``#define`` from ``.debug_macro``."""
        cands = names.candidates("constant", name)
        for cand in cands:
            if cand in self.constants:
                return Fact(self.constants[cand], self.constant_sources.get(cand, "constant"), cand)
        for cand in cands:
            if cand in self.macros:
                value = macro_value(cand, self.macros)
                if value is not None:
                    return Fact(value, self.macro_section or ".debug_macro", cand,
                                f"#define {cand} {self.macros[cand][0]}")
        return None

    def constant(self, name: str) -> Optional[int]:
        """A constant's value (see :meth:`constant_fact`), or None."""
        fact = self.constant_fact(name)
        return fact.value if fact is not None else None

    def in_image(self, address: int) -> bool:
        return self.image_start <= address < self.image_end

    def symbolize(self, address: int) -> Optional[str]:
        """``name+0xoff`` for an address inside a function or object of the image, else None."""
        i = bisect.bisect_right(self._addresses, address) - 1
        unsized = None
        # Sized symbols may nest or sit next to size-0 labels: look back a few entries.
        for j in range(i, max(i - 8, -1), -1):
            start, size, name = self._by_address[j]
            if size and address < start + size:
                return name if address == start else f"{name}+0x{address - start:x}"
            if not size and unsized is None:
                unsized = (start, name)
        # An assembly label without .size: name the nearest one when close and inside the image.
        if unsized is not None and self.in_image(address) and address - unsized[0] < 4096:
            start, name = unsized
            return name if address == start else f"{name}+0x{address - start:x}"
        return None

    def read_static(self, address: int, size: int, section: str = "") -> Optional[bytes]:
        """The initial bytes of ``[address, address+size)`` from the file, or None.

        ``section`` restricts the search to one section (needed for relocatable objects, where
        every section starts at 0)."""
        for sec in self.sections:
            if section and sec.name != section:
                continue
            if sec.address <= address and address + size <= sec.address + sec.size:
                if sec.data is None:
                    return bytes(size)    # .bss starts zeroed
                off = address - sec.address
                return sec.data[off:off + size]
        return None

    def static_int(self, name: str, size: int = 4, signed: bool = False) -> Optional[int]:
        sym = self.symbol(name)
        if sym is None:
            return None
        data = self.read_static(sym.address, size, sym.section)
        if data is None or len(data) != size:
            return None
        return int.from_bytes(data, self.byteorder, signed=signed)

    def heap_poison(self) -> Optional[int]:
        """The ``heap_poison`` constant from the file (-1 means built without poison)."""
        return self.static_int("heap_poison", 4, signed=True)

    def variable_type(self, name: str) -> Optional[Tuple[str, int]]:
        """(type name, size) of a global from DWARF, by its conventional name or an alias."""
        found = self.symbol_name(name) or name
        return self.variables.get(found)

    def variable_shape(self, name: str) -> Optional[Tuple[str, int]]:
        """(kind, stride) of a global's type from DWARF (:meth:`DwarfTypes.variable_shape`)."""
        found = self.symbol_name(name) or name
        return self.variable_shapes.get(found)

    def variable_size(self, name: str, default: int) -> int:
        v = self.variable_type(name)
        if v is not None and v[1]:
            return v[1]
        sym = self.symbol(name)
        if sym is not None and sym.size:
            return sym.size
        return default

    def _layouts_used(self) -> Dict[str, object]:
        """The layouts this kernel uses (no ``page_list_t`` when its free list is a bare pointer,
        no ``heap_stats_t`` without ``heap_stats``), each as ``StructLayout.describe``."""
        out: Dict[str, object] = {"segment": self.layouts.segment.struct.describe(),
                                  "page": self.layouts.page.struct.describe()}
        free = self.variable_type("free_pages")
        if self.symbol("free_pages") is not None and not (free is not None and free[0].endswith("*")):
            out["page_list"] = self.layouts.page_list.describe()
        elif self.symbol("free_pages") is None and self.layouts.page_list.source != "default":
            out["page_list"] = self.layouts.page_list.describe()
        if self.symbol("heap_stats") is not None or self.layouts.stats.source != "default":
            out["stats"] = self.layouts.stats.describe()
        return out

    def describe(self) -> Dict[str, object]:
        return {
            "path": self.path, "class": self.elf_class, "pointer_size": self.pointer_size,
            "endian": self.byteorder, "machine": self.machine, "arch": self.arch,
            "has_dwarf": self.has_dwarf, "image_start": self.image_start, "image_end": self.image_end,
            "symbols": {n: self.address_of(n) for n in KERNEL_SYMBOLS if self.symbol(n) is not None},
            # Conventional name -> the name it has in this ELF (where they differ).
            "names": {n: self.symbol_name(n) for n in KERNEL_SYMBOLS
                      if self.symbol_name(n) not in (None, n)},
            "constants": {k: v for k, v in self.constants.items() if k == "KERNEL_HEAP_SIZE"},
            "layouts": self._layouts_used(),
            "notes": list(self.notes),
        }


_KIND = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_NOTYPE": "notype",
         "STT_SECTION": "section", "STT_FILE": "file", "STT_TLS": "tls"}
_BIND = {"STB_GLOBAL": "global", "STB_LOCAL": "local", "STB_WEAK": "weak"}


def _parse(path: str) -> ElfInfo:
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ElfError(f"pyelftools is not installed: {exc}") from exc
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ElfError(f"cannot open {path}: {exc.strerror}") from exc
    with fh:
        try:
            elf = ELFFile(fh)
            elf_class = elf.elfclass
            endian = "<" if elf.little_endian else ">"
            machine = str(elf["e_machine"])
            pointer_size = elf_class // 8
            is_arm = machine == "EM_ARM"

            symbols: Dict[str, Symbol] = {}
            by_address: List[Tuple[int, int, str]] = []
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    name = sym.name
                    # Skip empty names and ARM mapping symbols ($a, $t, $d, $x).
                    if not name or name.startswith("$"):
                        continue
                    kind = _KIND.get(sym["st_info"]["type"], str(sym["st_info"]["type"]))
                    bind = _BIND.get(sym["st_info"]["bind"], str(sym["st_info"]["bind"]))
                    if kind in ("section", "file"):
                        continue
                    value = sym["st_value"]
                    if is_arm and kind == "func":
                        value &= ~1    # Thumb functions carry bit 0
                    shndx = sym["st_shndx"]
                    sec_name = ""
                    if isinstance(shndx, int) and 0 < shndx < elf.num_sections():
                        sec_name = elf.get_section(shndx).name
                    s = Symbol(name, value, sym["st_size"], kind, bind, sec_name)
                    old = symbols.get(name)
                    # A global wins over a local of the same name (static helpers can clash).
                    if old is None or (old.binding == "local" and bind != "local"):
                        symbols[name] = s
                    if kind in ("func", "object") or (kind == "notype" and bind != "local"):
                        by_address.append((value, sym["st_size"], name))
            by_address.sort()

            sections: List[Section] = []
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & 0x2 or not sec["sh_size"]:   # SHF_ALLOC
                    continue
                data = None if sec["sh_type"] == "SHT_NOBITS" else sec.data()
                sections.append(Section(sec.name, sec["sh_addr"], sec["sh_size"], data, sec["sh_flags"]))

            loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]]
            if loads:
                image_start = min(seg["p_vaddr"] for seg in loads)
                image_end = max(seg["p_vaddr"] + seg["p_memsz"] for seg in loads)
            elif sections:
                image_start = min(s.address for s in sections)
                image_end = max(s.address + s.size for s in sections)
            else:
                image_start = image_end = 0

            notes: List[str] = []
            types: Optional[DwarfTypes] = None
            has_dwarf = elf.has_dwarf_info() and elf.get_section_by_name(".debug_info") is not None
            if has_dwarf:
                try:
                    types = DwarfTypes(elf.get_dwarf_info(), endian, pointer_size)
                except Exception as exc:   # pyelftools raises many types on odd DWARF
                    notes.append(f"DWARF could not be read ({type(exc).__name__}: {exc}): default layouts")
                    types = None
                    has_dwarf = False
            macros: Dict[str, List[str]] = {}
            macro_section = ""
            try:
                sec = elf.get_section_by_name(".debug_macro")
                if sec is not None:
                    strs = elf.get_section_by_name(".debug_str")
                    macros = parse_debug_macro(sec.data(), strs.data() if strs is not None else None,
                                               elf.little_endian)
                    macro_section = ".debug_macro"
                else:
                    sec = elf.get_section_by_name(".debug_macinfo")
                    if sec is not None:
                        macros, macro_section = parse_debug_macinfo(sec.data()), ".debug_macinfo"
            except MacroError as exc:
                notes.append(f"{macro_section or '.debug_macro'} could not be read ({exc}): macros ignored")
                macros = {}
        except ELFError as exc:
            raise ElfError(f"{path}: not a readable ELF file ({exc})") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise ElfError(f"{path}: cannot parse ELF ({exc})") from exc

    constants: Dict[str, int] = {}
    constant_sources: Dict[str, str] = {}
    if types:
        for source, table in (("DWARF enumerator", types.enumerators), ("DWARF constant", types.constants)):
            for name, value in table.items():
                if name not in constants:
                    constants[name], constant_sources[name] = value, source
    probe = ElfInfo(path=path, elf_class=elf_class, pointer_size=pointer_size, endian=endian, machine=machine,
                    symbols={}, layouts=None, has_dwarf=False, constants=constants,  # type: ignore[arg-type]
                    constant_sources=constant_sources, macros=macros, macro_section=macro_section)
    layouts = (layouts_from_dwarf(types, pointer_size, endian, probe.constant_fact) if types
               else default_layouts(pointer_size, endian))
    if types is None:
        layouts.notes.append(f"no DWARF in the ELF: using the default layouts for {pointer_size * 8}-bit "
                             "pointers (docs/kernel-interface.md)")
    notes.extend(layouts.notes)
    variables: Dict[str, Tuple[str, int]] = {}
    shapes: Dict[str, Tuple[str, int]] = {}
    if types:
        for name in types.variables:
            vt = types.variable_type(name)
            if vt is not None:
                variables[name] = vt
            shape = types.variable_shape(name)
            if shape is not None:
                shapes[name] = shape
    for key, note in layouts.missing.items():
        # Only a kernel that has the variable needs its struct: Go's freePages is a *Page, and
        # Mazarin keeps no heap_stats.
        vt = variables.get(probe_symbol(symbols, key) or "")
        if vt is not None and not vt[0].endswith("*"):
            notes.append(note)
    info = ElfInfo(path=path, elf_class=elf_class, pointer_size=pointer_size, endian=endian,
                   machine=machine, symbols=symbols, layouts=layouts, has_dwarf=types is not None,
                   constants=constants, variables=variables, variable_shapes=shapes, sections=sections,
                   image_start=image_start, image_end=image_end, notes=notes,
                   constant_sources=constant_sources, macros=macros, macro_section=macro_section)
    info._by_address = by_address
    info._addresses = [a for a, _, _ in by_address]
    return info


def probe_symbol(symbols: Dict[str, Symbol], name: str) -> Optional[str]:
    """The name a conventional global has among ``symbols`` (see :meth:`ElfInfo.symbol_name`)."""
    for cand in names.candidates("global", name):
        if cand in symbols:
            return cand
    return None


_cache: Dict[str, Tuple[Tuple[float, int], ElfInfo]] = {}
_lock = threading.Lock()


def load_elf_info(path: "str | os.PathLike[str]") -> ElfInfo:
    """Parse a kernel ELF (symbols, DWARF layouts, constants), cached by (path, mtime, size).

    Raises :class:`ElfError` when the file cannot be read as ELF.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ElfError(f"cannot open {path}: {exc.strerror}") from exc
    key = (st.st_mtime, st.st_size)
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
    info = _parse(path)
    with _lock:
        _cache[path] = (key, info)
    return info


def make_elf_info(pointer_size: int = 4, endian: str = "<", symbols: Optional[Dict[str, int]] = None,
                  sizes: Optional[Dict[str, int]] = None, constants: Optional[Dict[str, int]] = None,
                  layouts: Optional[Layouts] = None, image: Tuple[int, int] = (0, 0),
                  sections: Optional[List[Section]] = None, machine: str = "",
                  path: str = "<synthetic>", notes: Optional[List[str]] = None) -> ElfInfo:
    """An :class:`ElfInfo` without a file: synthetic heaps in tests, or a front end that only
    has overrides. Symbols given as name -> address (kind 'object' unless sized 0 and named
    like a function by the caller's ``sizes``)."""
    syms: Dict[str, Symbol] = {}
    sizes = sizes or {}
    for name, addr in (symbols or {}).items():
        syms[name] = Symbol(name, addr, sizes.get(name, 0), "object", "global")
    lay = layouts or default_layouts(pointer_size, endian)
    info = ElfInfo(path=path, elf_class=pointer_size * 8, pointer_size=pointer_size, endian=endian,
                   machine=machine or ("EM_AARCH64" if pointer_size == 8 else "EM_ARM"), symbols=syms,
                   layouts=lay, has_dwarf=False, constants=dict(constants or {}),
                   sections=list(sections or []), image_start=image[0], image_end=image[1],
                   notes=list(notes if notes is not None else lay.notes))
    by = sorted((s.address, s.size, s.name) for s in syms.values())
    info._by_address = by
    info._addresses = [a for a, _, _ in by]
    return info


def clear_elf_cache() -> None:
    with _lock:
        _cache.clear()
