"""One-line descriptions of a ``heap_segment_t`` or ``page_t``, for gdb's pretty printers and
lldb's type summaries.

Both debuggers hand us a value; we take its raw bytes and decode them with the same DWARF
layouts the walker uses, so ``print *seg`` in gdb and ``frame variable *seg`` in lldb agree
with ``kheap walk`` to the bit (flags included), and a corrupt header is called corrupt.
"""

from gdbext.core.heap import segment_state

SEGMENT_TAGS = ("heap_segment", "heap_segment_t", "heapSegment")


def _link(prog, value):
    """A link as the tables print it: NULL for 0, else the kernel's address format."""
    return "NULL" if value == 0 else prog.fmt(value)
PAGE_TAGS = ("page", "page_t")


def describe_segment(session, address, raw):
    """``heap_segment_t`` (struct heap_segment) at ``address`` -> its state in one line."""
    prog = session.program()
    layout = prog.layouts.segment
    if len(raw) < layout.decode_size:
        return f"<heap_segment_t: {len(raw)} bytes, need {layout.decode_size}>"
    nxt, prev, is_allocated, size = layout.unpack_from(raw, 0)
    state = segment_state(is_allocated)
    state_text = state if state != "bad" else f"bad is_allocated={is_allocated}"
    parts = [state_text, f"size={size}"]
    if address is not None:
        parts.append(f"payload={prog.fmt(address + layout.header_size)}")
        try:
            inside = prog.heap_start <= address < prog.heap_end
        except Exception:  # noqa: BLE001 - bounds unknown: describe without them
            inside = True
        if not inside:
            parts.append("outside the heap")
    parts += [f"next={_link(prog, nxt)}", f"prev={_link(prog, prev)}"]
    return "heap_segment_t {" + ", ".join(parts) + "}"


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
