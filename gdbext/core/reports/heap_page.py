"""The data behind ``kheap map --html`` and ``kheap watch --html``.

:mod:`gdbext.core.html_page` draws pages from plain dicts and imports nothing of kheap. The
dicts are built here, from the same reports the commands print (walk, check, stats), plus what
only the page needs: the first bytes of each payload, the page array as runs of one kind, and
where and when it all came from (``meta``, given by the face).
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, Dict, List, Optional

from ..check import CODES, CheckReport
from ..layout import PAGE_SIZE
from ..memory import MemoryFault
from ..pages import kind_at, page_convention, page_kind, read_free_list_head, read_pages
from ..program import Program
from ..stats import heap_stats
from .heap import check_report, stats_report, walk_report

__all__ = ["heap_page_data", "watch_page_data", "HEAD_BYTES"]

HEAD_BYTES = 32          # payload bytes shown per segment (read through the walk's own cache)


def heap_page_data(prog: Program, result: CheckReport, meta: Dict[str, Any], head_bytes: int = HEAD_BYTES,
                   pages: bool = True) -> Dict[str, Any]:
    """The dict :func:`html_page.heap_page` draws (its shape is in that module's doc).

    ``prog``: the Program the check ``result`` came from (its block cache holds the heap, so the
    payload bytes cost no target reads); ``meta``: where and when; ``pages``: also read the whole
    page array for the page band (one bulk read: 4 MiB on the real kernel).
    """
    walk = result.walk
    walk_r = walk_report(prog, walk)
    check_r = check_report(prog, result)
    stats_r = stats_report(prog, heap_stats(prog, walk))
    heap_end = walk.heap_end
    segments = walk_r["segments"]
    # What a segment's payload may show: its extent as the allocator sees it (a corrupt size
    # covers only its header: then up to the heap's end, the bytes are still worth a look).
    for s, block in zip(segments, prog.allocator.blocks(walk, heap_end)):
        end = block.address + block.extent if block.extent == block.size else heap_end
        n = max(0, min(head_bytes, end - s["payload"], heap_end - s["payload"]))
        try:
            s["head"] = prog.read(s["payload"], n).hex() if n else ""
        except MemoryFault as fault:
            s["head"], s["head_error"] = None, f"unreadable ({fault})"
    b = prog.bounds
    return {
        "meta": dict(meta, pointer_size=prog.pointer_size),
        "heap": {"start": b.start, "size": b.size, "end": b.end, "header_size": walk.header_size,
                 "list_head": b.list_head},
        "verdict": check_r["verdict"],
        "walk": {"count": walk_r["count"], "complete": walk_r["complete"], "stop": walk_r["stop"]},
        "segments": segments,
        "findings": check_r["findings"],
        "codes": dict(CODES),
        "stats": {k: stats_r[k] for k in ("used", "free", "bad", "largest_free", "fragmentation",
                                           "histogram", "kernel", "comparison")},
        "pages": _page_band(prog) if pages else None,
        "notes": check_r.get("notes", []),
    }


def _page_band(prog: Program) -> Optional[Dict[str, Any]]:
    """The page array as runs of one kind, with its counts and the free list's head."""
    b = prog.bounds
    if b.page_array is None or not b.num_pages:
        return None
    rng = read_pages(prog)
    fv = prog.layouts.page.flag_value
    conv = page_convention(prog)
    kernel_end, heap_end = b.start // PAGE_SIZE, -(-b.end // PAGE_SIZE)
    kinds: Dict[int, str] = {}
    runs: List[List[Any]] = []
    index = rng.first
    words = [entry[1] for entry in rng.entries]
    # Runs of one flags word within each region (a kernel without a heap-page bit flags its
    # kernel and heap pages alike: where a page stands says which it is).
    for lo, hi in ((rng.first, kernel_end), (kernel_end, heap_end), (heap_end, rng.first + len(words))):
        lo, hi = max(lo, rng.first), min(hi, rng.first + len(words))
        for word, group in groupby(words[lo - rng.first:max(lo, hi) - rng.first]):
            n = sum(1 for _ in group)
            kind = kinds.get(word) or kinds.setdefault(word, page_kind(fv(word)))
            kind = kind_at(conv, index, kind, kernel_end, heap_end)
            if runs and runs[-1][2] == kind:
                runs[-1][1] += n
            else:
                runs.append([index, n, kind])
            index += n
    counts = {"kernel": 0, "heap": 0, "free": 0, "allocated": 0, "bad": 0}
    for _, n, kind in runs:
        counts[kind] += n
    head = read_free_list_head(prog)
    return {"num_pages": b.num_pages, "scanned": len(rng.entries), "counts": counts,
            "free_list": None if head is None else dict(zip(("head", "tail", "size"), head)),
            "fault": rng.fault, "page_array": b.page_array, "entry_size": prog.layouts.page.size,
            "page_size": PAGE_SIZE, "runs": runs}


def watch_page_data(watch: Any, prog: Program, meta: Dict[str, Any], active: bool) -> Dict[str, Any]:
    """The dict :func:`html_page.watch_timeline` draws, from what ``kheap watch`` recorded."""
    heap: Dict[str, Any] = {"header_size": prog.header_size}
    try:
        b = prog.bounds
        heap.update(start=b.start, size=b.size, end=b.end)
    except Exception:  # noqa: BLE001 - bounds unknown before kheap_init: the timeline still draws
        pass
    return {
        "meta": dict(meta, pointer_size=prog.pointer_size),
        "heap": heap,
        "operations": [o.to_json() for o in watch.history],
        "counters": watch.counters.to_json(),
        "stop": watch.last_stop.to_json() if watch.last_stop else None,
        "stops": watch.stops,
        "active": active,
    }
