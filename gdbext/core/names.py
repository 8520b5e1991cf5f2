"""The kernel's conventional names and their aliases: one table for globals, types, fields and
constants, and the one rule that turns a conventional name into the names a kernel may use.

kheap's code asks for a fact by its conventional name (the C kernel's, docs/kernel-interface.md:
``heap_segment_list_head``, ``page_t``, ``KERNEL_HEAP_SIZE``); the ELF's symbols, DWARF types,
DWARF constants and ``.debug_macro`` are searched for every candidate of that name, in order:

1. the conventional name itself;
2. its aliases from :data:`TABLE` (other kernels' spellings: the ``renamed`` variant's
   ``kheap_list``, Go's camelCase ``heapSegmentListHead``);
3. each of those qualified with a Go package (``main.heapSegmentListHead``): Go names every
   package-level symbol, type and constant ``<package>.<name>`` in ``.symtab`` and DWARF.

The name that matched is recorded with the fact (``kheap info`` shows it). An allocator family
adds its own entries (its header type and fields) with :func:`register`, from its own package;
nothing else lists names.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, NamedTuple, Optional, Tuple

__all__ = ["Fact", "TABLE", "GO_PACKAGES", "candidates", "register", "field_candidates", "canonical_of"]

# The packages a Go kernel's own names are qualified with (Mazarin builds package main).
GO_PACKAGES = ("main",)

# kind -> conventional name -> aliases (most usual first). Kinds: 'global' (a variable or
# function symbol), 'type' (a struct or its typedef), 'constant' (an enumerator, a DWARF
# constant or a macro) and 'field:<type>' (a member of that conventional type).
TABLE: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "global": {
        "heap_segment_list_head": ("kheap_list", "heapSegmentListHead"),
        "kernel_heap_start": ("heap_base", "kernelHeapStart"),
        "kernel_heap_size": ("heap_bytes", "kernelHeapSize"),
        "all_pages_array": ("page_array", "allPagesArrayBase", "allPagesArray"),
        "num_pages": ("total_pages", "numPages"),
        "free_pages": ("free_page_list", "freePages"),
        "heap_stats": ("heapStats",),
        "heap_poison": ("heapPoison",),
        "panic_info": ("panicInfo",),
        "__end": (),
        "kheap_checkpoint": ("kheapCheckpoint",),
        "kernel_panic": ("kernelPanic",),
    },
    "type": {
        "page_t": ("page", "Page"),
        "page_list_t": ("page_list", "PageList"),
        "heap_stats_t": ("heap_stats", "HeapStats"),
        "panic_info": ("PanicInfo",),
    },
    "field:page_t": {
        "vaddr_mapped": ("vaddrMapped",),
        "flags": (),
        "nextpage": ("next", "nextPage"),
        "prevpage": ("prev", "prevPage"),
    },
    "constant": {
        "KERNEL_HEAP_SIZE": ("kernelHeapSize",),
        "HEAP_ALIGN": ("HEAP_ALIGNMENT", "heapAlign"),
        "PAGE_SIZE": (),
        # Hand-packed page flags (a kernel whose page flags are a plain integer, as Go's).
        "PAGE_FLAG_ALLOCATED": ("PAGE_ALLOCATED",),
        "PAGE_FLAG_KERNEL": ("PAGE_KERNEL", "PAGE_FLAG_KERNEL_PAGE"),
        "PAGE_FLAG_KERNEL_HEAP": ("PAGE_FLAG_HEAP", "PAGE_KERNEL_HEAP", "PAGE_FLAG_KERNEL_HEAP_PAGE"),
    },
}


def register(kind: str, name: str, aliases: Iterable[str]) -> None:
    """Add (or extend) an entry of the table: an allocator family's names, from its package."""
    entry = TABLE.setdefault(kind, {})
    known = entry.get(name, ())
    entry[name] = known + tuple(a for a in aliases if a not in known and a != name)


def candidates(kind: str, name: str) -> Tuple[str, ...]:
    """Every name ``name`` (a conventional name of ``kind``) may have in an ELF, in the order
    they are tried: itself, its aliases, then each qualified with a Go package."""
    plain = (name,) + TABLE.get(kind, {}).get(name, ())
    return plain + tuple(f"{pkg}.{n}" for pkg in GO_PACKAGES for n in plain)


def field_candidates(type_name: str, field: str) -> Tuple[str, ...]:
    """The names a member of a conventional type may have (fields are never package-qualified)."""
    return (field,) + TABLE.get("field:" + type_name, {}).get(field, ())


def canonical_of(kind: str, name: str) -> str:
    """The conventional name a name of ``kind`` stands for (itself when none)."""
    for canon in TABLE.get(kind, {}):
        if name in candidates(kind, canon):
            return canon
    return name


class Fact(NamedTuple):
    """A fact kheap uses, where it came from and the name that matched (``kheap info`` shows
    all three). ``source``: 'symbol', 'DWARF type', 'DWARF enumerator', 'DWARF constant',
    '.debug_macro', 'inferred', 'sizeof', 'default' or 'override'."""

    value: Any
    source: str
    name: Optional[str] = None    # the name that matched
    detail: str = ""

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"value": self.value, "source": self.source}
        if self.name:
            out["name"] = self.name
        if self.detail:
            out["detail"] = self.detail
        return out
