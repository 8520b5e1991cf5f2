"""``Program``: the first argument of every helper (memory + ELF facts + heap bounds + notes).

A front end builds one per command, cheaply: the ELF is parsed once and cached by
:func:`~gdbext.core.symbols.load_elf_info`, and a :class:`~gdbext.core.memory.BlockCache` may be
passed in and kept across commands (invalidated when the target runs). Bounds are computed on
first use from a handful of globals, following docs/kernel-interface.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Union

from .families import allocator_for
from .layout import PAGE_SIZE, round_up
from .memory import BlockCache, MemoryFault, Reader
from .symbols import ElfInfo, load_elf_info
from .text import format_address

__all__ = ["Overrides", "HeapBounds", "Program", "ProgramError", "DEFAULT_HEAP_SIZE", "load_elf_info"]

DEFAULT_HEAP_SIZE = 1024 * 1024          # KERNEL_HEAP_SIZE in the contract
MAX_TRUSTED_HEAP_SIZE = 256 * 1024 * 1024  # a kernel_heap_size above this is taken as corrupt
MAX_TRUSTED_RAM = 16 * 1024 * 1024 * 1024  # num_pages above this much RAM is taken as corrupt


class ProgramError(Exception):
    """The heap cannot be located (no symbols and no overrides)."""


@dataclass(frozen=True)
class Overrides:
    """Explicit values for kernels that differ from the contract (all optional).

    ``poison``: the poison byte to check free payloads against, or -1 to turn the check off.
    """

    heap_start: Optional[int] = None
    heap_size: Optional[int] = None
    list_head: Optional[int] = None
    poison: Optional[int] = None


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
        self._allocator: Any = None

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
        return out

    def _compute_bounds(self) -> HeapBounds:
        elf, ov, p = self.elf, self.overrides, self.pointer_size
        notes = self._bound_notes
        errors: Dict[str, str] = {}
        sources: Dict[str, str] = {}
        fmt = self.fmt

        end_addr = elf.address_of("__end")
        page_array = self._try_global("all_pages_array", p, errors)
        num_pages = self._try_global("num_pages", 4, errors)
        k_start = self._try_global("kernel_heap_start", p, errors)
        k_size = self._try_global("kernel_heap_size", p, errors)

        array_base = end_addr if end_addr is not None else page_array
        if end_addr is not None and page_array is not None and page_array != end_addr:
            notes.append(f"all_pages_array is {fmt(page_array)} but &__end is {fmt(end_addr)}")
        computed: Optional[int] = None
        if array_base is not None and num_pages:
            if num_pages <= min((1 << (8 * p)), MAX_TRUSTED_RAM) // PAGE_SIZE:
                computed = round_up(array_base + num_pages * self.layouts.page.size, PAGE_SIZE)
            else:
                notes.append(f"num_pages ({num_pages}) is more RAM than a Raspberry Pi has: ignored")
                num_pages = None

        # Size: override > the kernel's variable > the DWARF enumerator > the documented default.
        const = elf.constant("KERNEL_HEAP_SIZE")
        if ov.heap_size is not None:
            size, sources["heap_size"] = ov.heap_size, "override"
        elif k_size and k_size <= MAX_TRUSTED_HEAP_SIZE and k_size % PAGE_SIZE == 0:
            size, sources["heap_size"] = k_size, "kernel_heap_size"
            if const is not None and const != k_size:
                notes.append(f"kernel_heap_size ({k_size}) differs from KERNEL_HEAP_SIZE ({const})")
        elif const:
            size, sources["heap_size"] = const, "KERNEL_HEAP_SIZE"
            if k_size is not None:
                notes.append(f"kernel_heap_size ({k_size}) is not plausible: using KERNEL_HEAP_SIZE ({const})")
        else:
            size, sources["heap_size"] = DEFAULT_HEAP_SIZE, "default"
            notes.append(f"heap size unknown (no kernel_heap_size, no KERNEL_HEAP_SIZE): assuming {size}")

        # List head: override > heap_segment_list_head.
        head_error: Optional[str] = None
        if ov.list_head is not None:
            head, sources["list_head"] = ov.list_head, "override"
        else:
            head = self._try_global("heap_segment_list_head", p, errors)
            sources["list_head"] = "heap_segment_list_head"
            if head is None:
                head_error = errors.get("heap_segment_list_head", "unknown")

        # Start: override > computed from the page array (it survives a clobbered list head)
        # when it agrees with kernel_heap_start or the list head > the two of those that agree.
        if ov.heap_start is not None:
            start, sources["heap_start"] = ov.heap_start, "override"
        else:
            candidates = [("computed from __end + num_pages * sizeof(page_t)", computed),
                          ("kernel_heap_start", k_start), ("heap_segment_list_head", head)]
            known = [(n, v) for n, v in candidates if v]
            if not known:
                missing = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
                raise ProgramError("cannot locate the heap (" + (missing or "no symbols") +
                                   "): give heap_start (and heap_size) explicitly")
            start = None
            if computed and (computed == k_start or computed == head):
                start, sources["heap_start"] = computed, "page array"
            elif k_start and k_start == head:
                start, sources["heap_start"] = k_start, "kernel_heap_start"
            else:
                start, sources["heap_start"] = known[0][1], known[0][0]
            for name, value in known:
                if value != start and name != "heap_segment_list_head":
                    notes.append(f"{name} is {fmt(value)}, heap start taken as {fmt(start)} "
                                 f"({sources['heap_start']})")
        return HeapBounds(start=start, size=size, list_head=head, list_head_error=head_error,
                          page_array=array_base, num_pages=num_pages, sources=sources)

    def heap_bytes(self) -> bytes:
        """The readable start of ``[heap_start, heap_end)``, read in bulk once per Program.

        Walkers decode headers straight from this buffer (one large read through the cache
        instead of one per field); a fault part-way leaves a shorter buffer and the walker
        reads past its end through :meth:`read`, which faults at the exact address.
        """
        if self._heap_bytes is None:
            b = self.bounds
            self._heap_bytes = self.memory.read_prefix(b.start, b.size)
        return self._heap_bytes

    def invalidate(self, keep_bounds: bool = False) -> None:
        """Drop cached memory (the target ran); bounds are recomputed on next use unless
        ``keep_bounds`` (the heap cannot move once kheap_init ran: ``kheap watch`` per stop)."""
        self.memory.invalidate()
        self._heap_bytes = None
        if keep_bounds:
            return
        self._bounds = None
        self._bound_notes = []
        self._poison = ()

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
        out["poison"] = self.poison_byte()
        out["notes"] = self.notes
        return out
