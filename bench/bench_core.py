"""Offline walk + validation speed of the core on synthetic heaps (prints figures, asserts nothing).

    .venv/bin/python bench/bench_core.py [--sizes 10000,100000,1000000] [--arch arm|aarch64]
    .venv/bin/python bench/bench_core.py --vs ../old-worktree [--rounds 5] [--sizes 100000,1000000]

``--vs TREE`` measures this checkout and another one (say the commit before, made with
``git worktree add ../old-worktree HEAD~1``) side by side: each round runs every size and arch
once in a fresh process of each tree, alternating, and the table gives the medians and the
median of the per-round ratios new/old (the figure that moves least when the machine drifts),
of wall time and of the process's CPU time (less moved by other processes on a busy machine).

Each heap is built directly in a bytearray (alternating used and free 16/32-byte-header
segments of a few sizes, consistent links, poison in free payloads, matching heap_stats), read
through a RangesReader behind the BlockCache as an offline dump would be, then walked and
checked (heap structure, poison, kernel stats, page entries of kernel and heap). Reports
segments per second and the peak Python memory (tracemalloc) of the walk + check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc

# ``--tree DIR``: measure that checkout's gdbext (with its own synthetic-heap builder).
_TREE = os.path.abspath(sys.argv[sys.argv.index("--tree") + 1]) if "--tree" in sys.argv else \
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(_TREE, "tests", "unit"))
sys.path.insert(0, _TREE)

try:
    from gdbext.core.check import check  # noqa: E402
    from gdbext.core.seglist import walk_heap  # noqa: E402
except ImportError:                       # a tree from before the allocator family package
    from gdbext.core.heap import walk_heap  # type: ignore  # noqa: E402
    from gdbext.core.validate import check  # type: ignore  # noqa: E402

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


def measure(segments: int, pointer_size: int) -> dict:
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
    t3, c3 = time.perf_counter(), time.process_time()
    walk_heap(prog2)
    t4 = time.perf_counter()
    c4 = time.process_time()
    report2 = check(prog2)
    t5, c5 = time.perf_counter(), time.process_time()
    assert len(walk) == segments and report.findings == [] and report2.findings == [], \
        [f.message for f in report2.findings][:3]
    return {"arch": "arm" if pointer_size == 4 else "aarch64", "segments": segments, "heap": k.heap_size,
            "walk": t4 - t3, "check": t5 - t4, "check_cpu": c5 - c4, "peak": peak, "reads": prog2.memory.backend_reads}


def line(m: dict) -> str:
    return (f"{m['arch']:8} {m['segments']:>9,} segments  heap {m['heap'] / 2**20:7.1f} MiB"
            f"  walk {m['walk'] * 1e3:8.1f} ms ({m['segments'] / m['walk'] / 1e6:5.2f} M seg/s)"
            f"  walk+check {m['check'] * 1e3:8.1f} ms ({m['segments'] / m['check'] / 1e6:5.2f} M seg/s)"
            f"  peak {m['peak'] / 2**20:7.1f} MiB  backend reads {m['reads']}")


def side_by_side(other: str, sizes: list, arches: list, rounds: int) -> None:
    """This tree against ``other``, alternating fresh processes; medians and paired ratios."""
    me = os.path.abspath(__file__)
    here = os.path.abspath(os.path.join(os.path.dirname(me), ".."))
    results: dict = {}
    for r in range(rounds):
        for arch in arches:
            for n in sizes:
                for name, tree in (("old", other), ("new", here)):
                    out = subprocess.run([sys.executable, me, "--json", "--tree", tree, "--sizes", str(n),
                                          "--arch", arch], capture_output=True, text=True, check=True).stdout
                    results.setdefault((arch, n), {}).setdefault(name, []).append(json.loads(out))
    print(f"{rounds} rounds, old = {other}, new = {here}")
    print(f"{'arch':8} {'segments':>9}  {'walk+check old':>14} {'new':>9} {'new/old':>8} {'cpu new/old':>12}   "
          f"{'walk old':>9} {'new':>8}   {'peak old':>9} {'new':>9}")
    for (arch, n), got in results.items():
        old, new = got["old"], got["new"]
        med = lambda runs, key: statistics.median(x[key] for x in runs)  # noqa: E731
        ratio = statistics.median(b["check"] / a["check"] for a, b in zip(old, new))
        cpu = statistics.median(b["check_cpu"] / a["check_cpu"] for a, b in zip(old, new))
        print(f"{arch:8} {n:>9,}  {med(old, 'check') * 1e3:11.1f} ms {med(new, 'check') * 1e3:6.1f} ms {ratio:8.2f} {cpu:12.2f}"
              f"   {med(old, 'walk') * 1e3:6.1f} ms {med(new, 'walk') * 1e3:5.1f} ms"
              f"   {max(x['peak'] for x in old) / 2**20:5.1f} MiB {max(x['peak'] for x in new) / 2**20:5.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--arch", default="arm,aarch64")
    ap.add_argument("--vs", metavar="TREE", help="another checkout to measure side by side")
    ap.add_argument("--rounds", type=int, default=5, help="rounds with --vs (default 5)")
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    arches = args.arch.split(",")
    if args.vs:
        side_by_side(os.path.abspath(args.vs), sizes, arches, args.rounds)
        return
    for arch in arches:
        for n in sizes:
            m = measure(n, 4 if arch == "arm" else 8)
            print(json.dumps(m) if args.json else line(m), flush=True)


if __name__ == "__main__":
    main()
