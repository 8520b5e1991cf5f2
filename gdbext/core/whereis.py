"""What an address outside the heap's segments is, as pwndbg's ``xinfo`` says it.

``kheap find`` of an address in no segment used to say only "outside the heap". A kernel
developer with a pointer in a register wants to know more: ``0x00008010 is in .text:
kernel_main+0x10``, in the page array (which ``page_t``, which field, the page it describes),
in a stack (which one, how far below its top), or in no section at all (then whether the
target can read it). Everything comes from the ELF (sections, symbols, the stacks' linker
symbols) and the heap's bounds; one read of one byte at most.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .layout import PAGE_SIZE
from .memory import MemoryFault
from .reach import stack_regions
from .text import escape_text, format_address

__all__ = ["where_is", "where_text"]

SHF_EXECINSTR = 0x4


def where_is(prog: Any, address: int) -> Dict[str, Any]:
    """``{"kind": ..., ...}`` for ``address``: ``heap`` (inside the heap's bounds), ``stack``
    (``stack``, ``top``, ``below_top``), ``page-array`` (``page``: the entry's index,
    ``offset`` in it, ``field``, ``describes``: the page's first address), ``section``
    (``section``, ``symbol`` as ``name+0xoff`` or None, ``code``/``writable``), ``image`` (in
    the kernel image but no section), or ``unmapped``/``memory`` (in nothing the ELF
    describes; ``readable``: whether the target answered a one-byte read)."""
    elf = prog.elf
    try:
        b = prog.bounds
        if b.start <= address < b.end:
            return {"kind": "heap", "heap_start": b.start, "heap_end": b.end}
        page_array, num_pages = b.page_array, b.num_pages
    except Exception:  # noqa: BLE001 - bounds unknown: the ELF still says a lot
        page_array = num_pages = None
    try:
        stacks, _ = stack_regions(elf)
    except Exception:  # noqa: BLE001 - odd symbols: no stacks to name
        stacks = []
    for stack in stacks:
        if stack.low <= address < stack.top:
            return {"kind": "stack", "stack": stack.name, "low": stack.low, "top": stack.top,
                    "below_top": stack.top - address, "symbol": elf.symbolize(address)}
    page = prog.layouts.page
    if page_array is not None and num_pages and page_array <= address < page_array + num_pages * page.size:
        index, offset = divmod(address - page_array, page.size)
        return {"kind": "page-array", "page": index, "offset": offset, "field": _field_at(page.struct.fields, offset),
                "entry": page_array + index * page.size, "describes": index * PAGE_SIZE}
    for sec in elf.sections:
        if sec.address <= address < sec.address + sec.size:
            return {"kind": "section", "section": sec.name, "symbol": elf.symbolize(address),
                    "code": bool(sec.flags & SHF_EXECINSTR), "writable": sec.writable}
    if elf.in_image(address):
        return {"kind": "image", "symbol": elf.symbolize(address)}
    try:
        prog.read(address, 1)
        readable = True
    except MemoryFault:
        readable = False
    except Exception:  # noqa: BLE001 - a target that cannot say: unknown, not an error
        readable = None
    return {"kind": "unmapped" if readable is False else "memory", "readable": readable}


def _field_at(fields: Any, offset: int) -> Optional[str]:
    names: List[str] = [f.name for f in fields if f.offset <= offset < f.offset + f.size]
    return "/".join(dict.fromkeys(names)) or None


def where_text(w: Dict[str, Any], pointer_size: int) -> str:
    """The words for :func:`where_is`' answer: ``is in .text: kernel_main+0x10``."""
    def addr(value: Optional[int]) -> str:
        return format_address(value, pointer_size)

    kind = w.get("kind")
    symbol = f": {escape_text(w['symbol'])}" if w.get("symbol") else ""
    if kind == "heap":
        return "is inside the heap but in no segment on the list"
    if kind == "stack":
        return (f"is in the stack {escape_text(w['stack'])} ({addr(w['low'])}..{addr(w['top'])}), "
                f"{w['below_top']} bytes below its top")
    if kind == "page-array":
        field = f" ({escape_text(w['field'])})" if w.get("field") else ""
        return (f"is in the page array: page_t #{w['page']} at {addr(w['entry'])}, offset {w['offset']}{field}, "
                f"the entry of the page at {addr(w['describes'])}")
    if kind == "section":
        return f"is in {escape_text(w['section'])}{symbol}"
    if kind == "image":
        return f"is in the kernel image but in no section{symbol}"
    if kind == "memory":
        return "is in no section, stack, page array or heap the ELF describes (readable memory)"
    return "is unmapped: in no section, stack, page array or heap, and the target cannot read it"
