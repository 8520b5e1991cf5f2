"""Heap statistics from a walk, and the kernel's own ``heap_stats`` beside them."""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional

from .allocator import HeapFigures, size_bucket
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
    """The allocator's figures of a walk (:class:`~gdbext.core.allocator.HeapFigures`), the
    fragmentation (1 - largest_free / free_bytes, 0 with no free memory), the size histogram,
    and the kernel's own ``heap_stats`` beside them."""

    heap_size: int
    figures: HeapFigures
    fragmentation: float
    histogram: List[Bucket]
    kernel: Optional[Dict[str, int]] = None
    comparison: List[Dict[str, Any]] = dc_field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        # used_count, free_bytes, largest_free ...: the figures' own fields.
        if name == "figures":
            raise AttributeError(name)
        return getattr(self.figures, name)

    def to_json(self) -> Dict[str, Any]:
        f = self.figures
        return {"heap_size": self.heap_size, "segments": f.blocks,
                "used": {"count": f.used_count, "bytes": f.used_bytes},
                "free": {"count": f.free_count, "bytes": f.free_bytes},
                "bad": {"count": f.bad_count, "bytes": f.bad_bytes},
                "largest_free": f.largest_free, "fragmentation": round(self.fragmentation, 6),
                "histogram": [b.to_json() for b in self.histogram],
                "walk_complete": f.complete, "stop_reason": f.stop_reason,
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
    return HeapStats(prog.heap_size, fig, frag, hist, kernel, comparison)
