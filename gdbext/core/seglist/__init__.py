"""The segment-list allocator family: the tutorial's ``heap_segment_t`` list, in one package.

Everything kheap knows about this allocator's data lives here and nowhere else: the header's
layout and names (:mod:`.layout`), the walk and its named records (:mod:`.walk`), the one rule
that judges a header, the culprit inference and the finding codes (:mod:`.rules`), and
:class:`SegmentList`, the family's side of the allocator seam (:mod:`gdbext.core.allocator`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..allocator import Block, HeapFigures
from ..findings import Finding
from .layout import SEGMENT_NAMES, SegmentLayout
from .rules import (OWN_FIELD_CODES, HeapJudge, PoisonCheck, Tally, walk_columns, SegmentMatch, check_header_at, culprit_for, extent, find_segment, header_problems,
                    validate_heap, validate_poison, validate_segments)
from .walk import (PROBE_SEGMENTS, STOP_BAD_HEAD, STOP_END, Header, HeapWalk, HeapWalker, Segment, for_each_segment, layout_of,
                   list_extent, segment_state, walk_heap)

__all__ = ["SegmentList", "SEGMENT_LIST", "Header", "HeapWalk", "Segment", "SegmentMatch", "SegmentLayout",
           "SEGMENT_NAMES", "walk_heap", "for_each_segment", "find_segment", "validate_heap", "validate_poison", "validate_segments",
           "header_problems", "culprit_for", "check_header_at", "extent", "segment_state"]


class SegmentList:
    """The operations the rest of kheap needs from this family (see :mod:`gdbext.core.allocator`)."""

    name = "segment-list"
    type_names = SEGMENT_NAMES

    def walk(self, prog: Any) -> HeapWalk:
        return walk_heap(prog)

    def walker(self, prog: Any) -> HeapWalker:
        """The walk in steps (``feed(data, base)`` while the heap arrives, then ``finish()``)."""
        return HeapWalker(prog)

    def find(self, prog: Any, address: int) -> Optional[SegmentMatch]:
        return find_segment(prog, address)

    def validator(self, prog: Any) -> "SegmentValidator":
        """:meth:`validate` in steps, to follow a :meth:`walker` while the heap streams in."""
        return SegmentValidator(prog)

    def validate(self, prog: Any, walk: HeapWalk) -> List[Finding]:
        """Every header by the rule, why the walk stopped, and each free payload's poison (the
        figures of the same pass are kept for :meth:`figures`)."""
        return SegmentValidator(prog).finish(walk)

    def validate_around(self, prog: Any, address: int, count: int = 4) -> List[Finding]:
        return validate_segments(prog, address, count)

    def header_of_payload(self, prog: Any, pointer: int) -> Optional[Header]:
        """The header a payload pointer (as kmalloc returned it) belongs to, read as is."""
        h, _ = check_header_at(prog, pointer - layout_of(prog).payload_offset)
        return h

    def check_payload(self, prog: Any, pointer: int) -> Tuple[Optional[Header], List[Finding]]:
        """The header of a payload pointer and what the rule finds wrong with its own fields
        (a neighbour's broken link is check's news, not a reason to distrust this block)."""
        h, problems = check_header_at(prog, pointer - layout_of(prog).payload_offset)
        return h, [p for p in problems if p.code in OWN_FIELD_CODES]

    def describe_header(self, prog: Any, address: Optional[int], raw: bytes) -> str:
        """A header's raw bytes in one line, for pretty printers and type summaries."""
        layout = layout_of(prog)
        if len(raw) < layout.decode_size:
            return f"<{layout.struct.name}: {len(raw)} bytes, need {layout.decode_size}>"
        nxt, prev, is_allocated, size = layout.unpack_from(raw, 0)
        state = segment_state(is_allocated)
        parts = [state if state != "bad" else f"bad is_allocated={is_allocated}", f"size={size}"]
        if address is not None:
            parts.append(f"payload={prog.fmt(address + layout.payload_offset)}")
            try:
                inside = prog.heap_start <= address < prog.heap_end
            except Exception:  # noqa: BLE001 - bounds unknown: describe without them
                inside = True
            if not inside:
                parts.append("outside the heap")
        link = lambda value: "NULL" if value == 0 else prog.fmt(value)  # noqa: E731
        parts += [f"next={link(nxt)}", f"prev={link(prev)}"]
        return layout.struct.name + " {" + ", ".join(parts) + "}"

    def list_end(self, prog: Any, head: int, start: int, limit: int) -> Optional[int]:
        """Where the list from ``head`` ends (:func:`list_extent`), for a heap whose size the ELF
        does not give."""
        return list_extent(prog, head, start, limit)

    def facts(self, prog: Any) -> Dict[str, Any]:
        """What ``kheap info`` shows of the header: its type and fields by role (the names
        matched), the payload offset and the alignment, each with its source."""
        layout = layout_of(prog)
        return {
            "segment_type": {"value": layout.header_size, "source": "DWARF type" if layout.source == "dwarf" else "default",
                             "name": layout.struct.name, "fields": layout.field_names(),
                             "extra_fields": [f.name for f in layout.extra_fields],
                             "bitfields": layout.bitfields},
            "payload_offset": layout.payload.to_json(),
            "alignment": layout.alignment.to_json(),
        }

    def figures(self, walk: HeapWalk, histogram: bool = False) -> HeapFigures:
        """Used/free/bad counts and bytes, the largest free segment, and with ``histogram`` the
        size histogram (a check needs only the totals)."""
        if walk._figures is None or (histogram and walk._figures.buckets is None):
            tally = Tally(histogram)
            for _, c in walk_columns(walk):
                tally(c)
            walk._figures = self._figures(walk, tally)
        return walk._figures

    @staticmethod
    def _figures(walk: HeapWalk, t: Tally) -> HeapFigures:
        return HeapFigures(len(walk), t.used_count, t.used_bytes, t.free_count, t.free_bytes,
                           len(walk) - t.used_count - t.free_count, t.total_bytes - t.used_bytes - t.free_bytes,
                           t.largest_free, t.buckets(), walk.complete, walk.stop_reason)

    def blocks(self, walk: HeapWalk, heap_end: int) -> List[Block]:
        """Each segment's extent (:func:`extent`) and state, in list order."""
        hdr = walk.header_size
        return [Block(a, extent(a, s, heap_end, hdr), s, segment_state(f))
                for a, (_, _, f, s) in zip(walk.addresses, walk.all_fields())]

    def payload_ranges(self, walk: HeapWalk, blocks: List[Block]) -> List[Tuple[int, int]]:
        """``[start, end)`` of the bytes each block hands its owner (after its header), for
        ``blocks`` as :meth:`blocks` gave them, in their order (empty when the extent holds
        only a header)."""
        off = walk.payload_offset
        return [(a + off if off < e else a + e, a + e) for a, e, _, _ in blocks]

    def links_into(self, walk: HeapWalk, address: int, span: int) -> List[Dict[str, Any]]:
        """The ``next``/``prev`` links whose value is within ``span`` bytes below ``address``
        (a kernel following a clobbered link faults at that value plus a field offset);
        ``reads``: the header field at that offset, by the kernel's name (what it was reading)."""
        out = []
        for a, (nxt, prev, _, _) in zip(walk.addresses, walk.all_fields()):
            for name, value in (("next", nxt), ("prev", prev)):
                if value and value <= address < value + span:
                    out.append({"segment": a, "field": name, "value": value, "offset": address - value,
                                "reads": _field_at(walk._layout, address - value)})
        return out

    def header_fields(self, prog: Any, address: int) -> List[Dict[str, Any]]:
        """Every field of the header at ``address`` as read, by the kernel's names, in offset
        order: ``{name, role (next, prev, is_allocated, segment_size or None for an extra
        field), offset, size, value, pointer}`` (a bit-field also ``bits``: ``[shift, width]``)
        (``kheap show``). Raises MemoryFault when the header cannot be read."""
        layout = layout_of(prog)
        raw = prog.read(address, layout.header_size)
        values = layout.struct.decode(raw)
        roles = {f.name: role for role, f in layout.fields.items()}
        out = []
        for f in sorted(layout.struct.fields, key=lambda f: (f.offset, f.bit_shift or 0)):
            if f.name not in values:
                continue
            row: Dict[str, Any] = {"name": f.name, "role": roles.get(f.name), "offset": f.offset,
                                   "size": f.size, "value": values[f.name],
                                   "pointer": f.is_pointer or roles.get(f.name) in ("next", "prev")}
            if f.is_bitfield:
                row["bits"] = [f.bit_shift, f.bit_size]
            out.append(row)
        return out

    def blame_range(self, prog: Any, finding: Finding) -> Optional[Tuple[int, int, str]]:
        """``(address, size, what)``: the bytes whose last writer explains ``finding`` (the
        field a code names, a free payload's overwritten bytes), or None (``kheap blame``)."""
        from .blame import blame_range
        return blame_range(prog, finding)

    def range_at(self, prog: Any, address: int) -> Optional[Tuple[int, int, str]]:
        """``(address, size, what)``: the header field holding ``address`` (the whole header at
        its first byte), or None outside headers (``kheap blame ADDR``)."""
        from .blame import range_at
        return range_at(prog, address)


def _field_at(layout: Any, offset: int) -> Optional[str]:
    """The name of the header field(s) holding byte ``offset`` of a header (bit-fields sharing
    a word: ``is_allocated/segment_size``), or None past them."""
    if layout is None:
        return None
    names = [f.name for f in layout.struct.fields if f.offset <= offset < f.offset + f.size]
    return "/".join(dict.fromkeys(names)) or None


class SegmentValidator:
    """The family's check in steps: :meth:`follow` judges the headers a walker has walked and
    holds the free payloads that have arrived to the poison rule, while the rest of the heap
    arrives (a check's read calls it in its waits for the stub); :meth:`finish` does the rest,
    adds the culprits (they may read memory) and why the walk stopped. The same
    :class:`HeapJudge`, :class:`Tally` and :class:`PoisonCheck` serve a one-step
    :meth:`SegmentList.validate`."""

    def __init__(self, prog: Any) -> None:
        self.prog = prog
        self.tally = Tally()
        self.judge = HeapJudge(prog, observe=self.tally)
        self.poison = PoisonCheck(prog, self.tally)

    def follow(self, walker: HeapWalker, window: Any, base: int) -> Optional[int]:
        """After ``walker`` was fed ``window`` (the heap's bytes from ``base`` that have
        arrived): the lowest address whose bytes are still needed (None: only the walker's)."""
        judged = self.judge.done
        self.judge.follow(walker)
        done = self.judge.done
        poison = self.poison
        # Free payloads to look at come with headers judged (counted) or are still arriving;
        # the payload offset can be learnt once the walk is past the segments its probe reads.
        if poison.offset is None:
            ready = len(walker.addresses) > PROBE_SEGMENTS or walker.stop_reason is not None
        else:
            ready = done != judged or poison.waiting()
        if ready:
            poison.follow(window, base)
        need = poison.needs_from()
        if done < len(walker.addresses):         # walked, not yet counted: their payloads
            first = walker.addresses[done]
            need = first if need is None else min(need, first)
        return need

    def finish(self, walk: HeapWalk) -> List[Finding]:
        findings = self.judge.finish(walk)
        walk._figures = SegmentList._figures(walk, self.tally)
        if walk.stop_reason != STOP_BAD_HEAD:
            findings += self.poison.finish(walk)
        return findings


SEGMENT_LIST = SegmentList()
