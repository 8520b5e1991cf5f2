"""Raw memory access: one reader protocol, one fault type, and a block cache in front.

Every byte kheap looks at comes through ``Reader.read(address, size) -> bytes``. The debugger
adapters (gdb, lldb), the remote-protocol client and the offline dump reader all implement it,
and all of them turn their own errors into :class:`MemoryFault`, the only exception a read may
raise. A remote link costs per packet rather than per byte, so :class:`BlockCache` turns many
small reads into a few large aligned ones.
"""

from __future__ import annotations

import bisect
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from .text import plural

__all__ = ["MemoryFault", "Reader", "RangesReader", "BlockCache"]


class MemoryFault(Exception):
    """A read that could not be satisfied.

    ``address`` is the first address that could not be read when the reader knows it (the
    in-memory readers and the cache always do), otherwise the start of the failed request.
    ``size`` is the number of bytes that were wanted from ``address`` on.
    """

    def __init__(self, address: int, size: int = 1, reason: str = "") -> None:
        self.address = int(address)
        self.size = int(size)
        self.reason = reason
        super().__init__(address, size, reason)

    def __str__(self) -> str:
        # One line, whatever the backend put in ``reason`` (it may come from a remote stub).
        reason = " ".join(str(self.reason).split())
        text = f"cannot read {plural(self.size, 'byte')} at 0x{self.address:x}"
        return f"{text}: {reason}" if reason else text


@runtime_checkable
class Reader(Protocol):
    """Anything that returns ``size`` bytes at ``address`` or raises :class:`MemoryFault`."""

    def read(self, address: int, size: int) -> bytes:  # pragma: no cover - protocol
        ...


class RangesReader:
    """Memory made of byte ranges: synthetic heaps in tests and offline dumps.

    Ranges may touch (a read may span adjacent ranges) but must not overlap. A read that
    reaches outside every range raises :class:`MemoryFault` at the first missing address.
    """

    def __init__(self, ranges: Iterable[Tuple[int, bytes]]) -> None:
        items = sorted((int(base), bytes(data)) for base, data in ranges if len(data))
        for (b1, d1), (b2, _) in zip(items, items[1:]):
            if b1 + len(d1) > b2:
                raise ValueError(f"ranges overlap at 0x{b2:x}")
        self._bases: List[int] = [b for b, _ in items]
        self._data: List[bytes] = [d for _, d in items]
        self.reads = 0

    @property
    def ranges(self) -> List[Tuple[int, bytes]]:
        return list(zip(self._bases, self._data))

    def read(self, address: int, size: int) -> bytes:
        self.reads += 1
        if size < 0:
            raise MemoryFault(address, 0, "negative size")
        if size == 0:
            return b""
        if address < 0:
            raise MemoryFault(address, size, "negative address")
        parts: List[bytes] = []
        cur, end = address, address + size
        i = bisect.bisect_right(self._bases, cur) - 1
        while cur < end:
            if i < 0 or i >= len(self._bases):
                raise MemoryFault(cur, end - cur, "outside the mapped ranges")
            base, data = self._bases[i], self._data[i]
            if not base <= cur < base + len(data):
                raise MemoryFault(cur, end - cur, "outside the mapped ranges")
            take = min(end, base + len(data)) - cur
            parts.append(data[cur - base:cur - base + take])
            cur += take
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)


# A block whose backend read failed keeps the pieces that could be read: (offset, bytes).
_Pieces = List[Tuple[int, bytes]]


class BlockCache:
    """An aligned block cache in front of any :class:`Reader`.

    Why: on QEMU's gdbstub each packet carries about 2 KiB, so a heap walk done field by field
    costs thousands of round trips. Blocks are aligned to ``block_size``; a request that misses
    several consecutive blocks is one backend read per missing run, not one per block. When a
    backend read faults, the run is split and finally probed in ``probe_size`` pieces (and the
    fault address the backend reports is used to keep the readable start of a piece), so a
    partly unreadable region still serves its readable part and faults at the exact address.

    The target's memory changes whenever it runs: front ends call :meth:`invalidate` then.
    """

    # Longest run of blocks fetched in one backend read, and the most a single read_prefix
    # looks ahead: a corrupt size must not make the cache walk gigabytes of unmapped blocks.
    MAX_RUN_BYTES = 4 * 1024 * 1024

    def __init__(self, reader: Reader, block_size: int = 64 * 1024, probe_size: int = 4096) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError("block_size must be a power of two")
        self.reader = reader
        self.block_size = block_size
        self.probe_size = max(1, min(probe_size, block_size))
        # Block index -> (the run it was read in, that run's address). A run is kept whole,
        # never split into per-block copies: a read inside one run is one slice of it, and the
        # heap's 1 MiB comes back as the very object the backend returned.
        self._blocks: Dict[int, Tuple[bytes, int]] = {}
        self._partial: Dict[int, _Pieces] = {}
        self.backend_reads = 0
        self.backend_bytes = 0
        self.backend_faults = 0
        self.hits = 0
        self.misses = 0

    # -- bookkeeping -------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget everything (the target ran, or memory was written)."""
        self._blocks.clear()
        self._partial.clear()

    def counters(self) -> Dict[str, int]:
        return {"backend_reads": self.backend_reads, "backend_bytes": self.backend_bytes,
                "backend_faults": self.backend_faults, "hits": self.hits, "misses": self.misses,
                "cached_blocks": len(self._blocks) + len(self._partial)}

    def _backend(self, address: int, size: int) -> bytes:
        self.backend_reads += 1
        try:
            data = self.reader.read(address, size)
        except MemoryFault:
            self.backend_faults += 1
            raise
        if len(data) != size:
            # A short read is a fault at the first missing byte, whatever the backend thinks.
            self.backend_faults += 1
            raise MemoryFault(address + len(data), size - len(data), "short read")
        self.backend_bytes += size
        return data

    # -- filling -----------------------------------------------------------------------------
    def _fill_run(self, first: int, count: int) -> None:
        """Read blocks ``first .. first+count-1`` (all missing) with as few reads as possible."""
        bs = self.block_size
        try:
            data = self._backend(first * bs, count * bs)
        except MemoryFault as fault:
            if count == 1:
                self._probe_block(first)
                return
            # Keep what the fault says was readable, then split the rest.
            good = (fault.address - first * bs) // bs if fault.address > first * bs else 0
            good = min(good, count - 1)
            if good:
                self._fill_run(first, good)
            rest_first, rest = first + good, count - good
            if rest == 1:
                self._probe_block(rest_first)
            elif good:
                self._fill_run(rest_first, rest)
            else:
                half = rest // 2
                self._fill_run(rest_first, half)
                self._fill_run(rest_first + half, rest - half)
            return
        self._store_run(first, count, data)

    def _store_run(self, first: int, count: int, data: bytes) -> None:
        entry = (data, first * self.block_size)
        blocks = self._blocks
        for k in range(first, first + count):
            blocks[k] = entry

    def _probe_block(self, index: int) -> None:
        """Find the readable pieces of a block whose whole read faulted."""
        bs, step = self.block_size, self.probe_size
        base = index * bs
        pieces: _Pieces = []
        for off in range(0, bs, step):
            addr = base + off
            try:
                pieces.append((off, self._backend(addr, step)))
                continue
            except MemoryFault as fault:
                hint = fault.address
            # The backend says where the fault began: keep the readable start of the piece.
            if addr < hint < addr + step:
                try:
                    pieces.append((off, self._backend(addr, hint - addr)))
                except MemoryFault:
                    pass
        # Merge touching pieces so a lookup finds the longest readable stretch at once.
        merged: _Pieces = []
        for off, data in pieces:
            if merged and merged[-1][0] + len(merged[-1][1]) == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + data)
            else:
                merged.append((off, data))
        self._partial[index] = merged

    def _missing_runs(self, first: int, last: int) -> List[Tuple[int, int]]:
        """``(first block, count)`` of every run of missing blocks in ``first..last``, each at
        most ``MAX_RUN_BYTES`` long."""
        blocks, partial = self._blocks, self._partial
        step = max(1, self.MAX_RUN_BYTES // self.block_size)
        runs: List[Tuple[int, int]] = []
        run_start: Optional[int] = None
        for idx in range(first, last + 2):
            if idx <= last and idx not in blocks and idx not in partial:
                self.misses += 1
                if run_start is None:
                    run_start = idx
                continue
            if run_start is not None:
                for start in range(run_start, idx, step):
                    runs.append((start, min(step, idx - start)))
                run_start = None
        return runs

    def _ensure(self, first: int, last: int) -> None:
        for start, count in self._missing_runs(first, last):
            self._fill_run(start, count)

    def prefetch(self, address: int, size: int) -> None:
        """Bring ``[address, address+size)`` into the cache; never raises on faults."""
        self.prefetch_ranges([(address, size)])

    def prefetch_ranges(self, ranges: Iterable[Tuple[int, int]],
                        progress: Optional[Callable[[int, List[bytes]], None]] = None) -> None:
        """Bring every ``(address, size)`` into the cache; never raises on faults.

        Why several at once: a backend with ``read_many`` (the remote-protocol client) sends
        all their missing runs in one pipelined stream, so a check pays the link's latency
        once for the heap and the page entries together, not once per range. Such a backend
        also calls ``progress(run address, replies so far)`` while it waits for the link (see
        ``RemoteTarget.read_many``); other backends never call it.
        """
        bs = self.block_size
        runs: List[Tuple[int, int]] = []
        spans = merge_ranges([(a // bs, (a + n - 1) // bs + 1) for a, n in ranges if n > 0 and a >= 0])
        for first, end in spans:
            runs += self._missing_runs(first, end - 1)
        if not runs:
            return
        read_many = getattr(self.reader, "read_many", None)
        if read_many is None or (len(runs) < 2 and progress is None):
            for start, count in runs:
                self._fill_run(start, count)
            return
        self.backend_reads += 1
        results = read_many([(start * bs, count * bs) for start, count in runs], progress=progress)
        for (start, count), data in zip(runs, results):
            if isinstance(data, bytes) and len(data) == count * bs:
                self.backend_bytes += len(data)
                self._store_run(start, count, data)
            else:
                self._fill_run(start, count)      # it faulted: find the readable part the slow way

    # -- reading -----------------------------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            if size < 0:
                raise MemoryFault(address, 0, "negative size")
            return b""
        if address < 0:
            raise MemoryFault(address, size, "negative address")
        bs = self.block_size
        first, last = address // bs, (address + size - 1) // bs
        blocks = self._blocks
        entry = blocks.get(first)
        if entry is None or entry[1] + len(entry[0]) <= address + size - 1:
            self._ensure(first, last)
            entry = blocks.get(first)
        if entry is not None:
            data, base = entry
            off = address - base
            if off + size <= len(data):           # all in one run: one slice (or the run itself)
                self.hits += 1
                return data[off:off + size]
        parts: List[bytes] = []
        cur, end = address, address + size
        for idx in range(first, last + 1):
            lo = max(cur, idx * bs) - idx * bs
            hi = min(end, (idx + 1) * bs) - idx * bs
            entry = blocks.get(idx)
            if entry is not None:
                data, base = entry
                o = idx * bs - base
                parts.append(data[o + lo:o + hi])
                cur = idx * bs + hi
                continue
            for off, data in self._partial.get(idx, ()):
                if off <= lo < off + len(data):
                    take = min(hi, off + len(data))
                    parts.append(data[lo - off:take - off])
                    if take < hi:
                        raise MemoryFault(idx * bs + take, end - (idx * bs + take), "unreadable")
                    break
            else:
                raise MemoryFault(idx * bs + lo, end - (idx * bs + lo), "unreadable")
            cur = idx * bs + hi
        self.hits += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_prefix(self, address: int, size: int) -> bytes:
        """The readable start of ``[address, address+size)`` (possibly empty); never raises.

        Reads in chunks of at most ``MAX_RUN_BYTES`` and stops at the first fault, so asking
        for a huge range (a corrupt count) costs no more than its readable start.
        """
        if size <= 0 or address < 0:
            return b""
        parts: List[bytes] = []
        cur, end = address, address + size
        while cur < end:
            n = min(end - cur, self.MAX_RUN_BYTES)
            try:
                parts.append(self.read(cur, n))
            except MemoryFault as fault:
                if fault.address > cur:
                    try:
                        parts.append(self.read(cur, min(fault.address, cur + n) - cur))
                    except MemoryFault:
                        pass
                break
            cur += n
        return parts[0] if len(parts) == 1 else b"".join(parts)


    def unreadable_ranges(self, address: int, size: int) -> List[Tuple[int, int]]:
        """``[(start, end)]``: the parts of ``[address, address+size)`` that cannot be read, in
        order and merged ([] when all of it can). Never raises MemoryFault. Each starts at the
        byte that faulted; it may run on to the end of the ``probe_size`` piece the fault was
        in (what the cache knows), so it never counts an unread byte as read.

        Why: a caller that read the readable start of a range (:meth:`read_prefix`) must say
        which bytes it could not judge (a dump cut short, a stub answering E14), not treat
        them as fine. Every block is brought in first (a faulting run is split and probed, as
        any read would), then the blocks' readable pieces are subtracted.
        """
        if size <= 0 or address < 0:
            return []
        bs = self.block_size
        end = address + size
        first, last = address // bs, (end - 1) // bs
        self._ensure(first, last)
        out: List[Tuple[int, int]] = []

        def missing(lo: int, hi: int) -> None:
            lo, hi = max(lo, address), min(hi, end)
            if lo >= hi:
                return
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))

        for idx in range(first, last + 1):
            if idx in self._blocks:
                continue
            base, cur = idx * bs, idx * bs
            for off, data in self._partial.get(idx, ()):
                missing(cur, base + off)
                cur = base + off + len(data)
            missing(cur, base + bs)
        return out


def merge_ranges(ranges: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Sort and merge ``(start, end)`` ranges, so prefetching touches each block once."""
    out: List[Tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
