"""Snapshots of the heap and their differences (the leak view).

A :class:`Snapshot` is what a walk found, small enough to keep in a JSON file between runs or
between two checkpoints; :func:`diff_snapshots` says which allocations appeared, went away or
changed size, and how live bytes grew.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Tuple

from .. import SCHEMA_VERSION
from .program import Program

__all__ = ["Snapshot", "SnapshotDiff", "SnapshotError", "take_snapshot", "diff_snapshots", "SCHEMA_VERSION"]


# (address, segment_size, state)
Entry = Tuple[int, int, str]


class SnapshotError(ValueError):
    """A snapshot file that is not one (wrong schema, missing fields)."""


@dataclass
class Snapshot:
    """The segments of one walk: ``(address, size, state)`` in list order, plus context."""

    segments: List[Entry]
    heap_start: int
    heap_size: int
    pointer_size: int
    stop_reason: str
    tag: str = ""
    kernel_stats: Optional[Dict[str, int]] = None

    @property
    def used(self) -> List[Entry]:
        return [e for e in self.segments if e[2] == "used"]

    @property
    def used_bytes(self) -> int:
        return sum(e[1] for e in self.segments if e[2] == "used")

    def to_json(self) -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "report": "snapshot", "tag": self.tag,
                "heap_start": self.heap_start, "heap_size": self.heap_size,
                "pointer_size": self.pointer_size, "stop_reason": self.stop_reason,
                "kernel_stats": dict(self.kernel_stats) if self.kernel_stats is not None else None,
                "used": {"count": len(self.used), "bytes": self.used_bytes},
                "segments": [[a, s, st] for a, s, st in self.segments]}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Snapshot":
        """Rebuild from :meth:`to_json` output; raises :class:`SnapshotError` if it is not one."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise SnapshotError("not a kheap snapshot (schema_version 1)")
        try:
            segs = [(int(a), int(s), str(st)) for a, s, st in data["segments"]]
            return cls(segs, int(data["heap_start"]), int(data["heap_size"]), int(data["pointer_size"]),
                       str(data.get("stop_reason", "")), str(data.get("tag", "")),
                       data.get("kernel_stats"))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"malformed kheap snapshot: {exc}") from exc


def take_snapshot(prog: Program, walk: Any = None, tag: str = "") -> Snapshot:
    """Capture the walk of ``prog`` (a :class:`Program`) as a :class:`Snapshot`."""
    allocator = prog.allocator
    if walk is None:
        walk = allocator.walk(prog)
    return Snapshot([(b.address, b.size, b.state) for b in allocator.blocks(walk, prog.heap_end)],
                    prog.heap_start, prog.heap_size, prog.pointer_size, walk.stop_reason, tag,
                    prog.read_kernel_stats())


@dataclass
class SnapshotDiff:
    """What changed between two snapshots, seen from the allocations (used segments)."""

    new: List[Entry]
    freed: List[Entry]
    resized: List[Tuple[int, int, int]]          # (address, old size, new size)
    live_count_before: int
    live_count_after: int
    live_bytes_before: int
    live_bytes_after: int
    new_by_size: Dict[int, int] = dc_field(default_factory=dict)
    tags: Tuple[str, str] = ("", "")

    @property
    def live_count_growth(self) -> int:
        return self.live_count_after - self.live_count_before

    @property
    def live_bytes_growth(self) -> int:
        return self.live_bytes_after - self.live_bytes_before

    def to_json(self) -> Dict[str, Any]:
        return {"tags": {"before": self.tags[0], "after": self.tags[1]},
                "live": {"count_before": self.live_count_before, "count_after": self.live_count_after,
                         "count_growth": self.live_count_growth, "bytes_before": self.live_bytes_before,
                         "bytes_after": self.live_bytes_after, "bytes_growth": self.live_bytes_growth},
                "new": [[a, s] for a, s, _ in self.new],
                "freed": [[a, s] for a, s, _ in self.freed],
                "resized": [[a, o, n] for a, o, n in self.resized],
                "new_by_size": [[s, c] for s, c in sorted(self.new_by_size.items())]}


def diff_snapshots(before: Snapshot, after: Snapshot) -> SnapshotDiff:
    """New, freed and resized allocations from ``before`` to ``after``, and live growth.

    An address used in both with the same size is unchanged; with another size it is resized;
    used only after (or free before) is new; used only before (or free after) is freed.
    """
    a_used = {a: s for a, s, st in before.segments if st == "used"}
    b_used = {a: s for a, s, st in after.segments if st == "used"}
    new, resized = [], []
    for a, s, st in after.segments:
        if st != "used":
            continue
        old = a_used.get(a)
        if old is None:
            new.append((a, s, st))
        elif old != s:
            resized.append((a, old, s))
    freed = [(a, s, st) for a, s, st in before.segments if st == "used" and a not in b_used]
    by_size: Dict[int, int] = {}
    for _, s, _ in new:
        by_size[s] = by_size.get(s, 0) + 1
    return SnapshotDiff(new, freed, resized, len(a_used), len(b_used), sum(a_used.values()),
                        sum(b_used.values()), by_size, (before.tag, after.tag))
