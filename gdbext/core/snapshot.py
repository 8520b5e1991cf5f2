"""Snapshots of the heap and their differences (the leak view).

A :class:`Snapshot` is what a walk found, small enough to keep in a JSON file between runs or
between two checkpoints; :func:`diff_snapshots` says which allocations appeared, went away or
changed size, and how live bytes grew.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, List, Optional, Tuple

from .. import SCHEMA_VERSION
from .program import Program
from .text import format_address

__all__ = ["Snapshot", "SnapshotDiff", "SnapshotError", "SnapshotMismatch", "take_snapshot", "diff_snapshots",
           "mismatch", "image_digest", "SCHEMA_VERSION"]


# (address, segment_size, state): ``address`` is the block's header
Entry = Tuple[int, int, str]


class SnapshotError(ValueError):
    """A snapshot file that is not one (wrong schema, missing fields)."""


class SnapshotMismatch(ValueError):
    """Two snapshots that are not of the same heap (another architecture, heap or kernel
    build): comparing their addresses would list everything as new and freed."""


_DIGESTS: Dict[int, Tuple[Any, str]] = {}


def image_digest(elf: Any) -> str:
    """A short digest of what the kernel ELF loads (each allocated section's name, address,
    size and bytes; .bss by its place and size): the same build gives the same digest
    wherever its file lies, another build another one. Computed once per ElfInfo."""
    hit = _DIGESTS.get(id(elf))
    if hit is not None and hit[0] is elf:
        return hit[1]
    h = hashlib.sha256()
    for sec in getattr(elf, "sections", ()):
        h.update(f"{sec.name} {sec.address:#x} {sec.size}\n".encode())
        if sec.data is not None:
            h.update(sec.data)
    digest = h.hexdigest()[:16]
    _DIGESTS[id(elf)] = (elf, digest)
    return digest


@dataclass
class Snapshot:
    """The segments of one walk: ``(address, size, state)`` in list order, plus context:
    each block's payload address (what kmalloc returned for it, by header address), and what
    says which heap it is (architecture, heap bounds, pointer size, the kernel image's
    digest) so that :func:`diff_snapshots` compares only snapshots of one heap."""

    segments: List[Entry]
    heap_start: int
    heap_size: int
    pointer_size: int
    stop_reason: str
    tag: str = ""
    kernel_stats: Optional[Dict[str, int]] = None
    payloads: Dict[int, int] = dc_field(default_factory=dict)
    arch: str = ""                 # '' in files written before it was recorded
    image: str = ""                # :func:`image_digest` of the kernel ELF

    @property
    def used(self) -> List[Entry]:
        return [e for e in self.segments if e[2] == "used"]

    @property
    def used_bytes(self) -> int:
        return sum(e[1] for e in self.segments if e[2] == "used")

    def to_json(self) -> Dict[str, Any]:
        pay = self.payloads
        return {"schema_version": SCHEMA_VERSION, "report": "snapshot", "tag": self.tag,
                "arch": self.arch, "image": self.image,
                "heap_start": self.heap_start, "heap_size": self.heap_size,
                "pointer_size": self.pointer_size, "stop_reason": self.stop_reason,
                "kernel_stats": dict(self.kernel_stats) if self.kernel_stats is not None else None,
                "used": {"count": len(self.used), "bytes": self.used_bytes},
                # [header, size, state, payload]
                "segments": [[a, s, st, pay.get(a)] for a, s, st in self.segments]}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Snapshot":
        """Rebuild from :meth:`to_json` output; raises :class:`SnapshotError` if it is not one.
        Files of earlier versions (segments without a payload, no arch or image) are read too."""
        # The messages are the reason only: the caller says which file is not a snapshot.
        if not isinstance(data, dict):
            raise SnapshotError(f"a JSON {type(data).__name__}, not an object")
        if data.get("schema_version") != SCHEMA_VERSION or data.get("report") not in (None, "snapshot"):
            what = data.get("report")
            if isinstance(what, str) and what:
                raise SnapshotError(f"it is a kheap {what} report ('kheap snapshot NAME -o FILE' writes snapshots)")
            raise SnapshotError(f"no schema_version field (a snapshot has schema_version {SCHEMA_VERSION})"
                                if "schema_version" not in data else
                                f"schema_version {data['schema_version']!r}, not {SCHEMA_VERSION}")
        try:
            segs, payloads = [], {}
            for item in data["segments"]:
                if len(item) not in (3, 4):
                    raise ValueError(f"a segment is [address, size, state, payload], not {item!r}")
                a, s, st = int(item[0]), int(item[1]), str(item[2])
                segs.append((a, s, st))
                if len(item) == 4 and item[3] is not None:
                    payloads[a] = int(item[3])
            return cls(segs, int(data["heap_start"]), int(data["heap_size"]), int(data["pointer_size"]),
                       str(data.get("stop_reason", "")), str(data.get("tag", "")),
                       data.get("kernel_stats"), payloads, str(data.get("arch") or ""),
                       str(data.get("image") or ""))
        except KeyError as exc:
            raise SnapshotError(f"no {exc.args[0]!r} field") from exc
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"a malformed field ({exc})") from exc


def take_snapshot(prog: Program, walk: Any = None, tag: str = "") -> Snapshot:
    """Capture the walk of ``prog`` (a :class:`Program`) as a :class:`Snapshot`."""
    allocator = prog.allocator
    if walk is None:
        walk = allocator.walk(prog)
    blocks = allocator.blocks(walk, prog.heap_end)
    payloads = {b.address: start for b, (start, _) in zip(blocks, allocator.payload_ranges(walk, blocks))}
    return Snapshot([(b.address, b.size, b.state) for b in blocks],
                    prog.heap_start, prog.heap_size, prog.pointer_size, walk.stop_reason, tag,
                    prog.read_kernel_stats(), payloads, prog.elf.arch, image_digest(prog.elf))


def mismatch(before: Snapshot, after: Snapshot) -> Optional[str]:
    """Why two snapshots are not of the same heap (one line), or None when they are.
    What a file of an earlier version does not record is not compared."""
    def addr(value: int, size: int) -> str:
        return format_address(value, size)

    out = []
    if before.arch and after.arch and before.arch != after.arch:
        out.append(f"architecture {before.arch} vs {after.arch}")
    if before.pointer_size != after.pointer_size:
        out.append(f"{before.pointer_size * 8}-bit vs {after.pointer_size * 8}-bit pointers")
    if before.heap_start != after.heap_start:
        out.append(f"heap start {addr(before.heap_start, before.pointer_size)} vs "
                   f"{addr(after.heap_start, after.pointer_size)}")
    if before.heap_size != after.heap_size:
        out.append(f"heap size {before.heap_size} vs {after.heap_size}")
    if before.image and after.image and before.image != after.image and not out:
        out.append(f"another kernel build (image {before.image} vs {after.image})")
    return "; ".join(out) or None


@dataclass
class SnapshotDiff:
    """What changed between two snapshots, seen from the allocations (used segments).
    Entries are ``(header, size, state)``; :meth:`payload` is what kmalloc returned for one."""

    new: List[Entry]
    freed: List[Entry]
    resized: List[Tuple[int, int, int]]          # (address, old size, new size)
    live_count_before: int
    live_count_after: int
    live_bytes_before: int
    live_bytes_after: int
    new_by_size: Dict[int, int] = dc_field(default_factory=dict)
    tags: Tuple[str, str] = ("", "")
    payloads: Dict[int, int] = dc_field(default_factory=dict)

    @property
    def live_count_growth(self) -> int:
        return self.live_count_after - self.live_count_before

    @property
    def live_bytes_growth(self) -> int:
        return self.live_bytes_after - self.live_bytes_before

    def payload(self, header: int) -> Optional[int]:
        return self.payloads.get(header)

    def to_json(self) -> Dict[str, Any]:
        def block(a: int, s: int) -> Dict[str, Any]:
            return {"payload": self.payload(a), "header": a, "size": s}

        return {"tags": {"before": self.tags[0], "after": self.tags[1]},
                "live": {"count_before": self.live_count_before, "count_after": self.live_count_after,
                         "count_growth": self.live_count_growth, "bytes_before": self.live_bytes_before,
                         "bytes_after": self.live_bytes_after, "bytes_growth": self.live_bytes_growth},
                "new": [block(a, s) for a, s, _ in self.new],
                "freed": [block(a, s) for a, s, _ in self.freed],
                "resized": [dict(block(a, n), old_size=o) for a, o, n in self.resized],
                "new_by_size": [[s, c] for s, c in sorted(self.new_by_size.items())]}


def diff_snapshots(before: Snapshot, after: Snapshot) -> SnapshotDiff:
    """New, freed and resized allocations from ``before`` to ``after``, and live growth.

    An address used in both with the same size is unchanged; with another size it is resized;
    used only after (or free before) is new; used only before (or free after) is freed.
    Raises :class:`SnapshotMismatch` for snapshots of different heaps (:func:`mismatch`).
    """
    why = mismatch(before, after)
    if why is not None:
        raise SnapshotMismatch(why)
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
    payloads = dict(before.payloads)
    payloads.update(after.payloads)
    return SnapshotDiff(new, freed, resized, len(a_used), len(b_used), sum(a_used.values()),
                        sum(b_used.values()), by_size, (before.tag, after.tag), payloads)
