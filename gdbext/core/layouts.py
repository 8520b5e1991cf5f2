"""Every layout kheap reads, assembled once per ELF: from DWARF where it describes them, else
the documented defaults (docs/kernel-interface.md), with a note for each fallback.

The allocator family's own header comes from the family (:mod:`.seglist.layout`); the page
array, the free-page list, ``heap_stats`` and ``panic_info`` are the kernel's, from
:mod:`.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import names
from .layout import (PAGE_LIST_NAMES, PAGE_NAMES, STATS_NAMES, DwarfTypes, PageLayout, StructLayout,
                     default_page_list_struct, default_page_struct, default_stats_struct)
from .names import Fact
from .seglist.layout import SEGMENT_NAMES, SegmentLayout, default_segment_struct, segment_layout_from

__all__ = ["Layouts", "default_layouts", "layouts_from_dwarf", "EXTRA_STRUCT_NAMES"]

EXTRA_STRUCT_NAMES = ("panic_info",)


@dataclass
class Layouts:
    """Every layout kheap uses, plus where they came from."""

    segment: SegmentLayout
    page: PageLayout
    page_list: StructLayout
    stats: StructLayout
    pointer_size: int
    endian: str
    notes: List[str] = dc_field(default_factory=list)
    # Optional structs DWARF lacks (key -> the note to show if the kernel turns out to use
    # one: a kernel without heap_stats needs no heap_stats_t).
    missing: Dict[str, str] = dc_field(default_factory=dict)
    # Other structs kheap reads when the kernel has them (e.g. ``panic_info`` for triage),
    # by struct name; absent from the dict when DWARF does not describe them.
    extra: Dict[str, StructLayout] = dc_field(default_factory=dict)

    @property
    def source(self) -> str:
        sources = {self.segment.source, self.page.source, self.page_list.source, self.stats.source}
        return sources.pop() if len(sources) == 1 else "mixed"


def default_layouts(pointer_size: int, endian: str) -> Layouts:
    """The documented layouts for an ELF without DWARF."""
    return Layouts(
        SegmentLayout(default_segment_struct(pointer_size, endian)),
        PageLayout(default_page_struct(pointer_size, endian)),
        default_page_list_struct(pointer_size, endian),
        default_stats_struct(pointer_size, endian),
        pointer_size, endian,
    )


def layouts_from_dwarf(types: Optional[DwarfTypes], pointer_size: int, endian: str,
                       constant: Optional[Callable[[str], Optional[Fact]]] = None) -> Layouts:
    """Layouts from DWARF where present; each missing one falls back to its default with a note.

    Types are looked up by every name :func:`names.candidates` gives (``main.heapSegment``...);
    ``constant(name)``: the ELF's constants (payload offset, alignment, Go's hand-packed page
    flags), as :class:`Fact`."""
    constant = constant or (lambda name: None)
    defaults = default_layouts(pointer_size, endian)
    notes: List[str] = []
    if types is None:
        defaults.notes.append("no DWARF in the ELF: using the default layouts for "
                              f"{pointer_size * 8}-bit pointers (docs/kernel-interface.md)")
        return defaults

    missing: Dict[str, str] = {}

    def pick(names: Sequence[str], what: str, make: Callable[[StructLayout], Any], fallback: Any,
             optional: str = "") -> Any:
        found = types.find_struct(names)
        if found is None:
            note = f"no {what} type in DWARF (looked for {', '.join(names)}): using the default layout"
            if optional:
                missing[optional] = note
            else:
                notes.append(note)
            return fallback
        try:
            return make(types.struct_layout(found[0], found[1]))
        except (ValueError, KeyError) as exc:
            notes.append(f"DWARF {found[0]} not usable ({exc}): using the default layout")
            return fallback

    segment = pick(SEGMENT_NAMES, "heap segment", lambda s: segment_layout_from(s, constant), defaults.segment)
    page = pick(PAGE_NAMES, "page",
                lambda s: PageLayout(s, {c: constant(c) for c in PageLayout.FLAG_CONSTANTS}), defaults.page)
    page_list = pick(PAGE_LIST_NAMES, "page list", lambda s: s, defaults.page_list, optional="free_pages")
    stats = pick(STATS_NAMES, "heap statistics", lambda s: s, defaults.stats, optional="heap_stats")
    extra: Dict[str, StructLayout] = {}
    for name in EXTRA_STRUCT_NAMES:
        found = types.find_struct(names.candidates("type", name))
        if found is not None:
            try:
                extra[name] = types.struct_layout(found[0], found[1])
            except (ValueError, KeyError):
                pass     # unusable: the reader of that struct falls back to its own default
    return Layouts(segment, page, page_list, stats, pointer_size, endian, notes, missing, extra)
