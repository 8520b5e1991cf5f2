"""Which allocator family a kernel uses: the one place that lists the families.

Each family is a package under ``gdbext/core`` with the operations of the allocator seam
(:mod:`gdbext.core.allocator`). A second family (for example ``linked_list_allocator``'s hole
list) is added here, with the test that tells its kernels from the others.
"""

from __future__ import annotations

from typing import Any

from .seglist import SEGMENT_LIST

__all__ = ["FAMILIES", "allocator_for"]

FAMILIES = (SEGMENT_LIST,)


def allocator_for(prog: Any) -> Any:
    """The allocator family of ``prog``'s kernel (asked once per program).

    Today every kernel kheap knows uses the segment list; when there are more, a family is
    recognised by its type names in the ELF's DWARF (its layout's source)."""
    return FAMILIES[0]
