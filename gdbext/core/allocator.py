"""The allocator seam: the few operations kheap needs from an allocator family.

kheap's commands, reports, statistics, snapshots and watch never decode an allocator's data
themselves: they ask the family chosen once per :class:`~gdbext.core.program.Program`
(``prog.allocator``, from :mod:`gdbext.core.families`) to walk the heap, find the block holding an address, validate what it
walked, and give the figures statistics and snapshots need. Today there is one family, the
tutorial's ``heap_segment_t`` list (:mod:`gdbext.core.seglist`); docs/architecture.md says how
to add another (a free list without headers on used blocks, as ``linked_list_allocator``).

A family provides (see :class:`~gdbext.core.seglist.SegmentList`): ``name``, ``type_names``,
``walk(prog)`` (a walk with ``addresses``, ``segments``, ``complete``, ``stop_reason``,
``stop_json()``), ``walker(prog)`` and ``validator(prog)`` (the walk and the check in steps,
followed while a check's read streams the heap in: see :func:`gdbext.core.check.check`),
``find(prog, address)``, ``validate(prog, walk)``,
``validate_around(prog, address, count)``, ``header_of_payload(prog, pointer)``,
``check_payload(prog, pointer)``, ``figures(walk)``, ``blocks(walk, heap_end)``,
``links_into(walk, address, span)`` (with the field a fault at that offset read),
``header_fields(prog, address)`` (a header's fields by the kernel's names, for ``kheap show``),
``payload_ranges(walk, blocks)`` (the bytes each block
hands its owner: the reachability scan of :mod:`gdbext.core.reach` reads those),
``list_end(prog, head, start, limit)`` (where its list ends, for a heap whose size the ELF does
not give) and ``facts(prog)`` (its layout's facts and their sources, for ``kheap info``);
optionally, for ``kheap blame``, ``blame_range(prog, finding)`` and ``range_at(prog, address)``
(the bytes a finding names, the field at an address).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional

__all__ = ["Block", "HeapFigures", "size_bucket"]


class Block(NamedTuple):
    """One block of the heap for maps and snapshots: where it starts, the bytes it covers
    (``extent``; a corrupt size covers only its header), its size as recorded, and its state."""

    address: int
    extent: int
    size: int
    state: str            # 'used' | 'free' | 'bad'


def size_bucket(size: int) -> int:
    """The power-of-two bucket of a size: k such that 2**k <= size < 2**(k+1) (0 for size 0)."""
    return max(size.bit_length() - 1, 0)


@dataclass(frozen=True)
class HeapFigures:
    """Totals of a walk, what statistics, snapshots and the counter check need."""

    blocks: int
    used_count: int
    used_bytes: int
    free_count: int
    free_bytes: int
    bad_count: int
    bad_bytes: int
    largest_free: int
    buckets: Optional[Dict[int, List[int]]]   # size_bucket -> [used, free]; None when not counted
    complete: bool
    stop_reason: str
