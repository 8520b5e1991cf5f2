"""Heap statistics from a walk, and the kernel's own ``heap_stats`` beside them."""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional

from .allocator import size_bucket
from .program import Program

__all__ = ["HeapStats", "Bucket", "heap_stats", "size_bucket"]


@dataclass(frozen=True)
class Bucket:
    """Segments with ``low <= segment_size <= high``."""

    low: int
    high: int
    used: int
    free: int

    def to_json(self) -> Dict[str, int]:
        return {"low": self.low, "high": self.high, "used": self.used, "free": self.free}


@dataclass
class HeapStats:
    """Totals of a walk. ``fragmentation`` = 1 - largest_free / free_bytes (0 with no free memory)."""

    heap_size: int
    segments: int
    used_count: int
    used_bytes: int
    free_count: int
    free_bytes: int
    bad_count: int
    bad_bytes: int
    largest_free: int
    fragmentation: float
    histogram: List[Bucket]
    walk_complete: bool
    stop_reason: str
    kernel: Optional[Dict[str, int]] = None
    comparison: List[Dict[str, Any]] = dc_field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"heap_size": self.heap_size, "segments": self.segments,
                "used": {"count": self.used_count, "bytes": self.used_bytes},
                "free": {"count": self.free_count, "bytes": self.free_bytes},
                "bad": {"count": self.bad_count, "bytes": self.bad_bytes},
                "largest_free": self.largest_free, "fragmentation": round(self.fragmentation, 6),
                "histogram": [b.to_json() for b in self.histogram],
                "walk_complete": self.walk_complete, "stop_reason": self.stop_reason,
                "kernel": dict(self.kernel) if self.kernel is not None else None,
                "comparison": [dict(c) for c in self.comparison]}


def heap_stats(prog: Program, walk: Any = None) -> HeapStats:
    """Used/free totals, largest free block, fragmentation, a power-of-two size histogram, and
    ``heap_stats`` (heap_stats_t) read from memory, compared where the two should agree.

    ``prog``: the :class:`Program`; ``walk``: a walk of it by its allocator (walked if None).
    """
    allocator = prog.allocator
    if walk is None:
        walk = allocator.walk(prog)
    fig = allocator.figures(walk, histogram=True)
    frag = 1.0 - fig.largest_free / fig.free_bytes if fig.free_bytes else 0.0
    hist = [Bucket(1 << k if k else 0, (1 << (k + 1)) - 1, u, fr) for k, (u, fr) in sorted(fig.buckets.items())]
    kernel = prog.read_kernel_stats()
    comparison: List[Dict[str, Any]] = []
    if kernel is not None:
        if "allocations" in kernel and "frees" in kernel:
            live = (kernel["allocations"] - kernel["frees"]) & 0xFFFFFFFF
            comparison.append({"name": "live allocations", "kernel": live, "walk": fig.used_count,
                               "agree": live == fig.used_count})
        if "current_usage" in kernel:
            comparison.append({"name": "bytes in use", "kernel": kernel["current_usage"], "walk": fig.used_bytes,
                               "agree": kernel["current_usage"] == fig.used_bytes})
    return HeapStats(prog.heap_size, fig.blocks, fig.used_count, fig.used_bytes, fig.free_count, fig.free_bytes,
                     fig.bad_count, fig.bad_bytes, fig.largest_free, frag, hist, fig.complete, fig.stop_reason,
                     kernel, comparison)
