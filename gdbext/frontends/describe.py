"""One-line descriptions of a ``heap_segment_t`` or ``page_t``, for gdb's pretty printers and
lldb's type summaries.

Both debuggers hand us a value; we take its raw bytes and decode them with the same DWARF
layouts the walker uses, so ``print *seg`` in gdb and ``frame variable *seg`` in lldb agree
with ``kheap walk`` to the bit (flags included), and a corrupt header is called corrupt.
"""

from gdbext.core.families import FAMILIES
from gdbext.core.layout import PAGE_NAMES

# The type names whose values are described: every family's header types, and the page array's.
SEGMENT_TAGS = tuple(name for family in FAMILIES for name in family.type_names)
PAGE_TAGS = PAGE_NAMES


def type_spellings(names):
    """Each type name as a debugger may spell it: the name, and ``struct name`` for a struct tag
    (a name ending in ``_t`` is a typedef)."""
    out = []
    for name in names:
        out.append(name)
        if not name.endswith("_t"):
            out.append(f"struct {name}")
    return out


def _link(prog, value):
    """A link as the tables print it: NULL for 0, else the kernel's address format."""
    return "NULL" if value == 0 else prog.fmt(value)


def describe_segment(session, address, raw):
    """A header of the kernel's allocator (``heap_segment_t``) at ``address`` -> one line."""
    prog = session.program()
    return prog.allocator.describe_header(prog, address, raw)


def describe_page(session, address, raw):
    """``page_t`` at ``address`` -> page number, decoded flags and free-list links."""
    prog = session.program()
    layout = prog.layouts.page
    if len(raw) < layout.size:
        return f"<page_t: {len(raw)} bytes, need {layout.size}>"
    vaddr, flags, nextpage, prevpage = layout.unpack_from(raw, 0)
    names = layout.flag_names(flags) or ["free"]
    parts = []
    array = prog.bounds.page_array if address is not None else None
    if array is not None and address >= array and (address - array) % layout.size == 0:
        parts.append(f"#{(address - array) // layout.size}")
    parts += [f"vaddr={prog.fmt(vaddr)}", "flags=" + "|".join(names),
              f"next={_link(prog, nextpage)}", f"prev={_link(prog, prevpage)}"]
    return "page_t {" + ", ".join(parts) + "}"


def describer_for(tag):
    """The describer for a struct tag or typedef name, or None for other types."""
    if tag in SEGMENT_TAGS:
        return describe_segment
    if tag in PAGE_TAGS:
        return describe_page
    return None
