"""Offline walk + validation speed of the core on synthetic heaps (prints figures, asserts nothing).

    .venv/bin/python bench/bench_core.py [--sizes 10000,100000,1000000] [--arch arm|aarch64]

Each heap is built directly in a bytearray (alternating used and free 16/32-byte-header
segments of a few sizes, consistent links, poison in free payloads, matching heap_stats), read
through a RangesReader behind the BlockCache as an offline dump would be, then walked and
checked (heap structure, poison, kernel stats, page entries of kernel and heap). Reports
segments per second and the peak Python memory (tracemalloc) of the walk + check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "unit"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gdbext.core.seglist import walk_heap  # noqa: E402
from gdbext.core.check import check  # noqa: E402

from heapbuilder import SyntheticKernel  # noqa: E402


def build(segments: int, pointer_size: int) -> SyntheticKernel:
    """A heap of exactly ``segments`` segments: used, free, used, ... (never two free in a row)."""
    hdr = 16 if pointer_size == 4 else 32
    sizes = [hdr + 16, hdr + 48, hdr]            # cycle of segment sizes
    total = sum(sizes[i % 3] for i in range(segments - 1))
    heap_size = -(-(total + hdr + 16) // 4096) * 4096
    k = SyntheticKernel(pointer_size, "<", heap_size=heap_size)
    seg = k.layouts.segment
    import struct
    pack = struct.Struct("<" + ("I" if pointer_size == 4 else "Q") * 2 + "II" + ("" if hdr == 16 else "8x")).pack_into
    assert seg.fields["is_allocated"].offset == 2 * pointer_size
    mem, base = k.mem, k.image_base
    addr, prev = k.heap_start, 0
    used_n = used_b = 0
    poison = bytes([k.poison]) * 64
    for i in range(segments):
        last = i == segments - 1
        size = k.heap_end - addr if last else sizes[i % 3]
        alloc = 0 if last or i % 2 else 1
        if last and i % 2 == 0 and segments > 1:
            alloc = 1                             # keep "no two free segments in a row"
        nxt = 0 if last else addr + size
        pack(mem, addr - base, nxt, prev, alloc, size)
        if alloc:
            used_n += 1
            used_b += size
        elif size > hdr:
            o = addr - base + hdr
            n = size - hdr
            mem[o:o + n] = (poison * (n // 64 + 1))[:n]
        prev, addr = addr, nxt
    k.stats.update(allocations=used_n, frees=0, bytes_allocated=used_b, current_usage=used_b, peak_usage=used_b)
    k._write_stats()
    return k


def run(segments: int, pointer_size: int) -> None:
    k = build(segments, pointer_size)
    prog = k.program()
    prog.bounds                                   # bounds and the ELF are per-session costs
    tracemalloc.start()
    t0 = time.perf_counter()
    walk = walk_heap(prog)
    t1 = time.perf_counter()
    report = check(prog)                          # walks again, then validates everything
    t2 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Timing without tracemalloc (it slows allocation-heavy code down a lot).
    prog2 = k.program()
    prog2.bounds
    t3 = time.perf_counter()
    walk_heap(prog2)
    t4 = time.perf_counter()
    report2 = check(prog2)
    t5 = time.perf_counter()
    assert len(walk) == segments and report.findings == [] and report2.findings == [], \
        [f.message for f in report2.findings][:3]
    walk_s, check_s = t4 - t3, t5 - t4
    print(f"{'arm' if pointer_size == 4 else 'aarch64':8} {segments:>9,} segments  heap {k.heap_size / 2**20:7.1f} MiB"
          f"  walk {walk_s * 1e3:8.1f} ms ({segments / walk_s / 1e6:5.2f} M seg/s)"
          f"  walk+check {check_s * 1e3:8.1f} ms ({segments / check_s / 1e6:5.2f} M seg/s)"
          f"  peak {peak / 2**20:7.1f} MiB  backend reads {prog2.memory.backend_reads}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--arch", default="arm,aarch64")
    args = ap.parse_args()
    for arch in args.arch.split(","):
        for n in args.sizes.split(","):
            run(int(n), 4 if arch == "arm" else 8)


if __name__ == "__main__":
    main()
