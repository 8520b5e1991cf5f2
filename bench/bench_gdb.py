"""Benchmark: kheap check inside gdb against the floor and against a typical gdb script.

In one gdb-multiarch process attached to the ``stress`` scenario (4,000+ segments) this
measures (a) one raw bulk read of the heap region, the floor any checker pays; (b) ``kheap
check``; (c) a naive walker that reads each field through typed ``gdb.Value``s, the way most
gdb heap scripts do. It prints times and the ratios b/a (target <= 1.5) and c/b (target >= 20).
Nothing is asserted: these machines are noisy, so the figures are for people to read.

    .venv/bin/python bench/bench_gdb.py [--arch arm|aarch64] [--repeat 5]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qemu.launcher import KernelVM  # noqa: E402

MEASURE = r'''
import gdb, json, time, statistics
from gdbext.frontends import gdb as face
from gdbext.frontends import commands

repeat = {repeat}
session = face._SESSION
prog = session.program()
start, size = prog.heap_start, prog.heap_size
inferior = gdb.selected_inferior()

def timed(fn):
    times = []
    for _ in range(repeat):
        session.invalidate()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), result

def raw_read():
    return len(bytes(inferior.read_memory(start, size)))

def kheap_check():
    out = commands.execute_to_text(session, "check", ["--json"])
    return json.loads(out.text)["verdict"]

def naive_walk():
    # What a typical gdb heap checker does: follow next through typed values and read every
    # field it validates (flag, size, both links, and the successor's back link).
    seg = gdb.parse_and_eval("heap_segment_list_head")
    count = used = problems = 0
    limit = size // 16 + 1
    while int(seg) != 0 and count < limit:
        count += 1
        header = seg.dereference()
        allocated = int(header["is_allocated"])
        seg_size = int(header["segment_size"])
        nxt, prev = header["next"], header["prev"]
        if allocated:
            used += seg_size
        if allocated not in (0, 1) or seg_size < 16 or int(seg) + seg_size > start + size:
            problems += 1
        if int(nxt) and int(nxt.dereference()["prev"]) != int(seg):
            problems += 1
        seg = nxt
    return count

a = timed(raw_read)
b = timed(kheap_check)
c = timed(naive_walk)
json.dump({{"raw_read": a[:2], "kheap_check": b[:2], "naive_walk": c[:2], "segments": c[2],
           "verdict": b[2], "heap_bytes": size}}, open({out!r}, "w"))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64"), default="arm")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with KernelVM(arch=args.arch, scenario="stress") as vm, \
            tempfile.TemporaryDirectory(prefix="kheap-bench-") as tmp:
        vm.wait_for("KHEAP-READY", timeout=60)
        out = os.path.join(tmp, "result.json")
        script = os.path.join(tmp, "measure.py")
        Path(script).write_text(MEASURE.format(repeat=args.repeat, out=out))
        proc = subprocess.run(
            ["gdb-multiarch", "--batch", "-nx", "-ex", f"source {REPO}/gdbext/gdbinit.py",
             "-ex", f"file {vm.elf}", "-ex", f"target remote 127.0.0.1:{vm.gdb_port}",
             "-ex", f"source {script}", "-ex", "detach"],
            capture_output=True, text=True, timeout=600)
        if not os.path.exists(out):
            sys.exit(f"bench_gdb: gdb failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        r = json.loads(Path(out).read_text())
    a, b, c = r["raw_read"][0], r["kheap_check"][0], r["naive_walk"][0]
    print(f"arch {args.arch}, stress scenario: {r['segments']} segments, heap {r['heap_bytes']} "
          f"bytes, median of {args.repeat} (min in brackets)")
    print(f"  (a) raw bulk read of the heap   {a * 1000:9.1f} ms  [{r['raw_read'][1] * 1000:.1f}]")
    print(f"  (b) kheap check                 {b * 1000:9.1f} ms  [{r['kheap_check'][1] * 1000:.1f}]"
          f"  verdict: {r['verdict']}")
    print(f"  (c) naive gdb.Value walker      {c * 1000:9.1f} ms  [{r['naive_walk'][1] * 1000:.1f}]")
    print(f"  b/a = {b / a:.2f}  (target <= 1.5)     c/b = {c / b:.1f}  (target >= 20)")


if __name__ == "__main__":
    main()
