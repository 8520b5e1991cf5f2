"""``Program``: the first argument of every helper (memory + ELF facts + heap bounds + notes).

A front end builds one per command, cheaply: the ELF is parsed once and cached by
:func:`~gdbext.core.symbols.load_elf_info`, and a :class:`~gdbext.core.memory.BlockCache` may be
passed in and kept across commands (invalidated when the target runs). Bounds are computed on
first use from a handful of globals, following docs/kernel-interface.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Tuple, Union

from .families import allocator_for
from .layout import PAGE_SIZE, round_up
from .memory import BlockCache, MemoryFault, Reader
from .names import Fact
from .symbols import ElfInfo, load_elf_info
from .text import format_address, plural

__all__ = ["Overrides", "HeapBounds", "Program", "ProgramError", "DEFAULT_HEAP_SIZE", "load_elf_info"]

DEFAULT_HEAP_SIZE = 1024 * 1024          # KERNEL_HEAP_SIZE in the contract
MAX_TRUSTED_HEAP_SIZE = 256 * 1024 * 1024  # a kernel_heap_size above this is taken as corrupt
MAX_TRUSTED_RAM = 16 * 1024 * 1024 * 1024  # num_pages above this much RAM is taken as corrupt


class ProgramError(Exception):
    """The heap cannot be located (no symbols and no overrides).

    ``needs``: the settings that would locate it (``heap-start``, ``heap-size``), which each
    face names in its own spelling (``--heap-start`` in the CLI, ``set kheap heap-start`` in
    gdb): the core does not know which face asked."""

    def __init__(self, message: str, needs: tuple = ()) -> None:
        super().__init__(message)
        self.needs = tuple(needs)


@dataclass(frozen=True)
class Overrides:
    """Explicit values for kernels that differ from the contract (all optional).

    ``poison``: the poison byte to check free payloads against, or -1 to turn the check off.
    ``page_convention``: the page conventions to hold the page array to (see
    :func:`gdbext.core.pages.parse_page_convention`; None: from the ELF, else either).
    """

    heap_start: Optional[int] = None
    heap_size: Optional[int] = None
    list_head: Optional[int] = None
    poison: Optional[int] = None
    page_convention: Optional[str] = None


@dataclass(frozen=True)
class HeapBounds:
    """Where the heap is, and where the facts came from."""

    start: int
    size: int
    list_head: Optional[int]              # heap_segment_list_head's value (None: unknown)
    list_head_error: Optional[str]        # why it is unknown (unreadable, no symbol)
    page_array: Optional[int]             # &all_pages_array[0] (= &__end)
    num_pages: Optional[int]
    sources: Dict[str, str] = dc_field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.size


class Program:
    """Memory reader (behind a block cache) + :class:`ElfInfo` + heap bounds + notes."""

    def __init__(self, elf: ElfInfo, reader: Reader, overrides: Optional[Overrides] = None,
                 block_size: int = 64 * 1024) -> None:
        self.elf = elf
        # Reuse a cache the front end keeps across commands; otherwise wrap the reader.
        self.memory: BlockCache = reader if isinstance(reader, BlockCache) else BlockCache(reader, block_size)
        self.overrides = overrides or Overrides()
        self.layouts = elf.layouts
        self.pointer_size = elf.pointer_size
        self.endian = elf.endian
        self.byteorder = elf.byteorder
        self._bounds: Optional[HeapBounds] = None
        self._bound_notes: List[str] = []
        self._poison: Any = ()    # () = not computed yet
        self._heap_bytes: Optional[bytes] = None
        self._unread: Optional[List[Tuple[int, int]]] = None
        self._allocator: Any = None
        self._facts: Dict[str, Fact] = {}

    @classmethod
    def open(cls, elf_path: "Union[str, os.PathLike[str]]", reader: Reader,
             overrides: Optional[Overrides] = None, block_size: int = 64 * 1024) -> "Program":
        """Load (or reuse the cached parse of) the ELF and wrap ``reader``."""
        return cls(load_elf_info(elf_path), reader, overrides, block_size)

    # -- memory helpers ------------------------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        """Raw bytes; raises :class:`MemoryFault`."""
        return self.memory.read(address, size)

    def read_int(self, address: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.memory.read(address, size), self.byteorder, signed=signed)

    def read_pointer(self, address: int) -> int:
        return self.read_int(address, self.pointer_size)

    def read_global(self, name: str, size: Optional[int] = None, signed: bool = False) -> Optional[int]:
        """A global integer/pointer by symbol name; None if no symbol. Raises MemoryFault."""
        addr = self.elf.address_of(name)
        if addr is None:
            return None
        if size is None:
            size = self.elf.variable_size(name, self.pointer_size)
        return self.read_int(addr, size, signed)

    def _try_global(self, name: str, size: int, errors: Dict[str, str]) -> Optional[int]:
        try:
            value = self.read_global(name, size)
        except MemoryFault as fault:
            errors[name] = f"unreadable ({fault})"
            return None
        if value is None:
            errors[name] = "no symbol"
        return value

    def fmt(self, address: Optional[int]) -> str:
        """An address as the kernel prints it (:func:`~gdbext.core.text.format_address`)."""
        return format_address(address, self.pointer_size, missing="NULL")

    # -- bounds --------------------------------------------------------------------------------
    @property
    def bounds(self) -> HeapBounds:
        if self._bounds is None:
            self._bounds = self._compute_bounds()
        return self._bounds

    @property
    def heap_start(self) -> int:
        return self.bounds.start

    @property
    def heap_size(self) -> int:
        return self.bounds.size

    @property
    def heap_end(self) -> int:
        return self.bounds.end

    @property
    def list_head(self) -> Optional[int]:
        return self.bounds.list_head

    @property
    def header_size(self) -> int:
        return self.layouts.segment.header_size

    @property
    def allocator(self) -> Any:
        """The allocator family of this kernel (:mod:`gdbext.core.families`), chosen once."""
        if self._allocator is None:
            self._allocator = allocator_for(self)
        return self._allocator

    @property
    def notes(self) -> List[str]:
        """Everything a report must show: layout fallbacks, disagreeing symbols, guesses."""
        if self._bounds is None:
            try:
                self.bounds
            except ProgramError:
                pass     # reported where the bounds are needed (describe(), the commands)
        out = list(self.elf.notes)
        out.extend(n for n in self._bound_notes if n not in out)
        unread = self._unread_note()
        if unread is not None:
            out.append(unread)
        return out

    def _symbol_fact(self, name: str, value: Optional[int]) -> Optional[Fact]:
        f = self.elf.symbol_fact(name)
        return None if f is None else Fact(value, "symbol", f.name, f.detail)

    def add_note(self, note: str) -> None:
        """A note a validator learnt on the way (which convention the pages followed)."""
        if note not in self._bound_notes:
            self._bound_notes.append(note)

    def _compute_bounds(self) -> HeapBounds:
        elf, ov, p = self.elf, self.overrides, self.pointer_size
        notes = self._bound_notes
        errors: Dict[str, str] = {}
        sources: Dict[str, str] = {}
        facts = self._facts = {}
        fmt = self.fmt
        name = lambda n: elf.symbol_name(n) or n   # noqa: E731 - the name a global has in this ELF

        end_addr = elf.address_of("__end")
        page_array = self._try_global("all_pages_array", p, errors)
        num_pages = self._try_global("num_pages", 4, errors)
        k_start = self._try_global("kernel_heap_start", p, errors)
        k_size = self._try_global("kernel_heap_size", p, errors)
        for key, value in (("page_array", page_array), ("num_pages", num_pages)):
            fact = self._symbol_fact({"page_array": "all_pages_array"}.get(key, key), value)
            if fact is not None:
                facts[key] = fact

        array_base = end_addr if end_addr is not None else page_array
        if end_addr is not None and page_array is not None and page_array != end_addr:
            notes.append(f"{name('all_pages_array')} is {fmt(page_array)} but &__end is {fmt(end_addr)}")
        computed: Optional[int] = None
        if array_base is not None and num_pages:
            if num_pages <= min((1 << (8 * p)), MAX_TRUSTED_RAM) // PAGE_SIZE:
                computed = round_up(array_base + num_pages * self.layouts.page.size, PAGE_SIZE)
            else:
                notes.append(f"{name('num_pages')} ({num_pages}) is more RAM than a Raspberry Pi has: ignored")
                num_pages = None

        # Size: override > the kernel's variable > a DWARF enumerator or constant (Go's) > a
        # #define in .debug_macro > inferred from memory (below, once the start is known) > default.
        const = elf.constant_fact("KERNEL_HEAP_SIZE")
        size: Optional[int] = None
        if ov.heap_size is not None:
            size, sources["heap_size"] = ov.heap_size, "override"
            facts["heap_size"] = Fact(size, "override")
        elif k_size and k_size <= MAX_TRUSTED_HEAP_SIZE and k_size % PAGE_SIZE == 0:
            size, sources["heap_size"] = k_size, name("kernel_heap_size")
            facts["heap_size"] = self._symbol_fact("kernel_heap_size", k_size) or Fact(size, "symbol")
            if const is not None and const.value != k_size:
                notes.append(f"{name('kernel_heap_size')} ({k_size}) differs from {const.name} ({const.value})")
        elif const is not None and 0 < const.value <= MAX_TRUSTED_HEAP_SIZE:
            size = const.value
            sources["heap_size"] = const.name if const.source == "DWARF enumerator" else f"{const.source} {const.name}"
            facts["heap_size"] = const
            if k_size is not None:
                notes.append(f"{name('kernel_heap_size')} ({k_size}) is not plausible: using {const.name} ({const.value})")

        # List head: override > heap_segment_list_head (or its alias).
        head_error: Optional[str] = None
        if ov.list_head is not None:
            head, sources["list_head"] = ov.list_head, "override"
            facts["list_head"] = Fact(head, "override")
        else:
            head = self._try_global("heap_segment_list_head", p, errors)
            sources["list_head"] = name("heap_segment_list_head")
            if head is None:
                head_error = errors.get("heap_segment_list_head", "unknown")
            else:
                facts["list_head"] = self._symbol_fact("heap_segment_list_head", head) or Fact(head, "symbol")

        # Start: override > computed from the page array (it survives a clobbered list head)
        # when it agrees with kernel_heap_start or the list head > the two of those that agree.
        if ov.heap_start is not None:
            start, sources["heap_start"] = ov.heap_start, "override"
            facts["heap_start"] = Fact(start, "override")
        else:
            candidates = [("computed from __end + num_pages * sizeof(page_t)", computed),
                          (name("kernel_heap_start"), k_start), (name("heap_segment_list_head"), head)]
            known = [(n, v) for n, v in candidates if v]
            if not known:
                if head == 0 and "heap_segment_list_head" not in errors:
                    raise ProgramError(self._not_initialised(head, num_pages, k_start, page_array))
                missing = ", ".join(f"{name(k)}: {v}" for k, v in sorted(errors.items()))
                raise ProgramError("cannot locate the heap (" + (missing or "no symbols") + ")",
                                   needs=("heap-start", "heap-size"))
            start = None
            if computed and (computed == k_start or computed == head):
                start, sources["heap_start"] = computed, "page array"
            elif k_start and k_start == head:
                start, sources["heap_start"] = k_start, name("kernel_heap_start")
            else:
                start, sources["heap_start"] = known[0][1], known[0][0]
            for what, value in known:
                if value != start and what != name("heap_segment_list_head"):
                    notes.append(f"{what} is {fmt(value)}, heap start taken as {fmt(start)} "
                                 f"({sources['heap_start']})")
            how = sources["heap_start"]
            if how == "page array":
                agrees = name("kernel_heap_start") if computed == k_start else name("heap_segment_list_head")
                facts["heap_start"] = Fact(start, "inferred", None,
                                           f"the end of the page array ({'&__end' if end_addr is not None else name('all_pages_array')} "
                                           f"+ {name('num_pages')} * {self.layouts.page.size}, page-aligned), "
                                           f"agreeing with {agrees}")
            elif how == name("kernel_heap_start"):
                facts["heap_start"] = self._symbol_fact("kernel_heap_start", start) or Fact(start, "symbol")
            elif how == name("heap_segment_list_head"):
                facts["heap_start"] = Fact(start, "symbol", how, "the list head (the first segment)")
            else:
                facts["heap_start"] = Fact(start, "inferred", None, how)

        if head is None:
            # No list head to read (no symbol, or unreadable) but the heap start is known: the
            # first segment is at the heap start (docs/kernel-interface.md), so the walk starts
            # there. A missing fact is never a finding (no HEAP-HEAD "no symbol").
            notes.append(f"{name('heap_segment_list_head')}: {head_error}: the walk starts at the heap "
                         f"start {fmt(start)} ({sources['heap_start']})")
            head, head_error, sources["list_head"] = start, None, "heap start"
            facts["list_head"] = Fact(start, "inferred", None,
                                      f"the heap start ({name('heap_segment_list_head')}: {errors.get('heap_segment_list_head', 'unknown')})")
        if size is None and (ov.heap_start is not None or ov.list_head is not None):
            size, sources["heap_size"] = DEFAULT_HEAP_SIZE, "default"     # overrides: the user's heap
            facts["heap_size"] = Fact(size, "default")
            notes.append(f"heap size unknown (no kernel_heap_size, no KERNEL_HEAP_SIZE): assuming {size}")
        elif size is None:
            size = self._infer_heap_size(start, head, array_base, num_pages, sources, notes)
        return HeapBounds(start=start, size=size, list_head=head, list_head_error=head_error,
                          page_array=array_base, num_pages=num_pages, sources=sources)

    def _not_initialised(self, head: Optional[int], num_pages: Optional[int], k_start: Optional[int],
                         page_array: Optional[int]) -> str:
        """Item 6 of issue 12: the symbols are there, the kernel has not set its heap up yet."""
        elf = self.elf
        seen = [f"{elf.symbol_name('heap_segment_list_head')} = NULL"]
        for canon, value in (("num_pages", num_pages), ("all_pages_array", page_array),
                             ("kernel_heap_start", k_start)):
            if value is not None and elf.symbol_name(canon):
                seen.append(f"{elf.symbol_name(canon)} = " + (str(value) if canon == "num_pages" else "NULL" if value == 0 else self.fmt(value)))
        return ("the heap is not initialised yet (" + ", ".join(seen) + "): the kernel has not set up its "
                "page array and heap; stop it later (after its memory init) and try again")

    def _infer_heap_size(self, start: int, head: Optional[int], array_base: Optional[int],
                         num_pages: Optional[int], sources: Dict[str, str], notes: List[str]) -> int:
        """The heap's size when the ELF does not say it: the run of heap pages in the page array
        from the heap's first page, else the extent of the segment list; else the default."""
        limit = MAX_TRUSTED_HEAP_SIZE
        by_pages = by_list = None
        try:
            by_pages = self._heap_pages_run(start, array_base, num_pages)
        except MemoryFault:
            by_pages = None
        if head:
            end = self.allocator.list_end(self, head, start, limit)
            if end is not None and end > start:
                by_list = round_up(end - start, PAGE_SIZE)
        if by_pages:
            size = by_pages
            sources["heap_size"] = "inferred from the page array"
            self._facts["heap_size"] = Fact(size, "inferred", None,
                                            f"{size // PAGE_SIZE} heap pages in the page array from the heap's first page")
        elif by_list:
            size = by_list
            sources["heap_size"] = "inferred from the segment list"
            self._facts["heap_size"] = Fact(size, "inferred", None, "the extent of the segment list (its last segment's end)")
        else:
            size = DEFAULT_HEAP_SIZE
            sources["heap_size"] = "default"
            self._facts["heap_size"] = Fact(size, "default")
            notes.append(f"heap size unknown (no kernel_heap_size, no KERNEL_HEAP_SIZE, nothing to infer it from): "
                         f"assuming {size}")
            return size
        if by_pages and by_list and by_pages != by_list:
            notes.append(f"the page array says the heap is {by_pages} bytes, the segment list spans {by_list}: "
                         f"using {by_pages}")
        notes.append(f"heap size {size} {sources['heap_size']} (the ELF does not say it: no kernel_heap_size, "
                     "no KERNEL_HEAP_SIZE enumerator, constant or macro)")
        return size

    def _heap_pages_run(self, start: int, array_base: Optional[int], num_pages: Optional[int]) -> Optional[int]:
        """Bytes of the run of heap pages from page ``start // PAGE_SIZE``: flagged as the
        layout's heap pages (allocated|kernel_heap_page, or allocated|kernel_page where the kernel
        has no heap-page bit)."""
        if array_base is None or not num_pages or start % PAGE_SIZE:
            return None
        layout = self.layouts.page
        heap_values = {5} if layout.heap_bit else {3} if layout.heap_bit is False else {5, 3}
        first = start // PAGE_SIZE
        last = min(num_pages, first + MAX_TRUSTED_HEAP_SIZE // PAGE_SIZE)
        run, chunk = 0, 1024
        for lo in range(first, last, chunk):
            n = min(chunk, last - lo)
            data = self.memory.read_prefix(array_base + lo * layout.size, n * layout.size)
            whole = len(data) // layout.size * layout.size
            for _, word, _, _ in layout.iter_unpack(memoryview(data)[:whole]):
                if layout.flag_value(word) not in heap_values:
                    return run * PAGE_SIZE or None
                run += 1
            if whole < n * layout.size:
                break
        return run * PAGE_SIZE or None

    def heap_bytes(self) -> bytes:
        """The readable start of ``[heap_start, heap_end)``, read in bulk once per Program.

        Walkers decode headers straight from this buffer (one large read through the cache
        instead of one per field); a fault part-way leaves a shorter buffer and the walker
        reads past its end through :meth:`read`, which faults at the exact address.
        """
        if self._heap_bytes is None:
            b = self.bounds
            self._heap_bytes = self.memory.read_prefix(b.start, b.size)
            if len(self._heap_bytes) < b.size:
                self.unread_heap()          # which bytes are missing: every report's notes say
        return self._heap_bytes

    def unread_heap(self) -> List[Tuple[int, int]]:
        """``[(start, end)]``: the parts of the heap that cannot be read ([] when all of it can).

        Why: a check judges what it read; bytes it could not read (a raw image or dump cut
        inside the heap, a stub answering E14 for its last pages) are never silently fine.
        While there are any, :attr:`notes` names them, so every report shows them."""
        if self._unread is None:
            b = self.bounds
            have = len(self.heap_bytes())
            self._unread = [] if have >= b.size else self.memory.unreadable_ranges(b.start + have, b.size - have)
        return self._unread

    def _unread_note(self) -> Optional[str]:
        if not self._unread:
            return None
        total = sum(hi - lo for lo, hi in self._unread)
        shown = ", ".join(f"{self.fmt(lo)}..{self.fmt(hi)}" for lo, hi in self._unread[:3])
        more = f" and {plural(len(self._unread) - 3, 'more range')}" if len(self._unread) > 3 else ""
        return f"{plural(total, 'byte')} of the heap could not be read ({shown}{more}): not checked"

    def invalidate(self, keep_bounds: bool = False) -> None:
        """Drop cached memory (the target ran); bounds are recomputed on next use unless
        ``keep_bounds`` (the heap cannot move once kheap_init ran: ``kheap watch`` per stop)."""
        self.memory.invalidate()
        self._heap_bytes = None
        self._unread = None
        if keep_bounds:
            return
        self._bounds = None
        self._bound_notes = []
        self._poison = ()
        self.layouts = self.elf.layouts        # a layout the family refined from memory (payload offset)

    # -- other facts ---------------------------------------------------------------------------
    def poison_byte(self) -> Optional[int]:
        """The poison byte for free payloads, or None when poison is off or unknown.

        Override > ``heap_poison`` from the ELF's .rodata > ``heap_poison`` in target memory.
        """
        if self._poison != ():
            return self._poison
        value: Optional[int] = None
        if self.overrides.poison is not None:
            value = self.overrides.poison
        else:
            value = self.elf.heap_poison()
            if value is None and self.elf.address_of("heap_poison") is not None:
                try:
                    value = self.read_global("heap_poison", 4, signed=True)
                except MemoryFault:
                    value = None
        self._poison = None if value is None or value < 0 else value & 0xFF
        return self._poison

    def read_kernel_stats(self) -> Optional[Dict[str, int]]:
        """``heap_stats`` (heap_stats_t) as a dict, or None when absent or unreadable."""
        addr = self.elf.address_of("heap_stats")
        if addr is None:
            return None
        layout = self.layouts.stats
        try:
            data = self.read(addr, layout.size)
        except MemoryFault:
            return None
        return layout.decode(data)

    def describe(self) -> Dict[str, Any]:
        """The facts behind every report (the ``info`` report's body)."""
        out: Dict[str, Any] = {"elf": self.elf.describe()}
        try:
            b = self.bounds
            out["heap"] = {"start": b.start, "size": b.size, "end": b.end, "list_head": b.list_head,
                           "list_head_error": b.list_head_error, "page_array": b.page_array,
                           "num_pages": b.num_pages, "header_size": self.header_size,
                           "sources": dict(b.sources)}
        except ProgramError as exc:
            out["heap"] = {"error": str(exc)}
            if exc.needs:
                out["heap"]["needs"] = list(exc.needs)       # the face names them its own way
        out["poison"] = self.poison_byte()
        out["facts"] = self.facts()
        out["notes"] = self.notes
        return out

    def facts(self) -> Dict[str, Any]:
        """Every fact kheap uses, with where it came from ('symbol', 'DWARF type', 'DWARF
        constant', '.debug_macro', 'inferred', 'default', ...) and the name it matched."""
        from .pages import free_list_is_head_only, page_convention   # pages imports this module
        elf = self.elf
        out: Dict[str, Any] = {}
        try:
            self.bounds
        except ProgramError:
            pass
        for key, fact in self._facts.items():
            out[key] = fact.to_json()
        for key, canon in (("free_pages", "free_pages"), ("heap_stats", "heap_stats"),
                           ("panic_info", "panic_info"), ("end", "__end")):
            fact = elf.symbol_fact(canon)
            if fact is not None:
                out[key] = fact.to_json()
        if "free_pages" in out:
            out["free_pages"]["shape"] = ("head pointer only (no tail, no count)" if free_list_is_head_only(self)
                                          else self.layouts.page_list.name)
        poison = elf.symbol_fact("heap_poison")
        if self.overrides.poison is not None:
            out["poison"] = Fact(self.poison_byte(), "override").to_json()
        elif poison is not None:
            static = elf.heap_poison()
            out["poison"] = Fact(self.poison_byte(), "symbol", poison.name,
                                 "initial value in the ELF" if static is not None else "read from memory").to_json()
        try:
            out.update(self.allocator.facts(self))
        except (ProgramError, MemoryFault):
            pass
        page = self.layouts.page
        out["page_type"] = {"value": page.size, "source": "DWARF type" if page.source == "dwarf" else "default",
                            "name": page.struct.name, "fields": page.field_names(), "flags": page.flag_source}
        conv = page_convention(self)
        out["page_convention"] = conv.to_json()
        return out
