"""Benchmark: ``kheap leaks --scan`` (a conservative reachability scan of one moment).

1. Live, on the ``stress`` heap (about 5,000 segments, 1 MiB) of each build booted with
   qemu/launcher.py:
   - in gdb: the command as a user types it, the cache dropped before each run (``set kheap
     block-size`` empties it) so every run reads the heap, the roots and every core's registers
     again through gdb (median of ``--repeat``);
   - the CLI: ``kheap leaks --scan --remote`` in this process through the CLI's own code (the
     ELF parse cached after the first run, as in a debugger), and as a whole process;
   - offline: ``kheap leaks --scan --core`` of a ``kheap dump`` of that moment, a whole process.
   Target: under 0.5 s live.
2. Offline, on a synthetic 64 MiB heap (32- and 64-bit): segments of 32 to 512 bytes, each
   allocated payload holding a pointer to another random segment (a few to freed ones), a third
   of them roots; the scan's rate in MiB of heap per second, and the raw word scan
   (:func:`gdbext.core.reach.scan_words`) over the whole heap on its own.

Nothing is asserted: these numbers are for people to read (this 2-core VM drifts).

    .venv/bin/python bench/bench_reach.py [--arch arm|aarch64|both] [--repeat 7] [--no-live] [--mib 64]
"""

import argparse
import io
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from gdbext.core import reach  # noqa: E402
from gdbext.core.program import Program  # noqa: E402
from gdbext.core.symbols import SHF_ALLOC, SHF_WRITE, Section  # noqa: E402
from gdbext.frontends import cli  # noqa: E402
from heapbuilder import SyntheticKernel  # noqa: E402

KHEAP = REPO / ".venv" / "bin" / "kheap"


def median(samples):
    return statistics.median(samples)


def timed_process(argv, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([str(KHEAP), *map(str, argv)], capture_output=True, text=True)
        samples.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"kheap {' '.join(map(str, argv))} failed: {proc.stderr}")
    return samples


def live(arch, repeat):
    from debuggers import run_gdb
    from qemu.launcher import KernelVM

    with KernelVM(arch=arch, scenario="stress") as vm:
        vm.wait_until_settled(60)
        remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
        probe = ("python import time; t = time.perf_counter(); "
                 "gdb.execute('kheap leaks --scan --json', to_string=True); "
                 "print('SCAN %.6f' % (time.perf_counter() - t))")
        commands = ["kheap check --verdict"]
        for _ in range(repeat):
            commands += ["set kheap block-size 4096", probe]
        run = run_gdb(vm.elf, vm.gdb_port, commands, timeout=300)
        gdb_samples = [float(line.split()[1]) for step in run.steps for line in step.output.splitlines()
                       if line.startswith("SCAN ")]
        in_process = []
        for _ in range(repeat):
            out, err = io.StringIO(), io.StringIO()
            start = time.perf_counter()
            status = cli.run_cli(["leaks", "--scan", "--json", *map(str, remote)], out, err)
            in_process.append(time.perf_counter() - start)
            if status not in (0, 1):
                raise SystemExit(f"kheap leaks --scan failed: {err.getvalue()}")
        process = timed_process(["leaks", "--scan", *remote], repeat)
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "stress.kdump"
            subprocess.run([str(KHEAP), "dump", "-o", dump, *map(str, remote)], check=True,
                           capture_output=True)
            offline = timed_process(["leaks", "--scan", "--core", dump], repeat)
        lost = cli_lost(remote)
    print(f"{arch} stress ({lost} lost segments found):")
    print(f"  gdb: kheap leaks --scan, heap and roots read again    median {median(gdb_samples) * 1000:7.1f} ms"
          f"  (best {min(gdb_samples) * 1000:.1f})")
    print(f"  CLI --remote, in process (ELF cached)                 median {median(in_process) * 1000:7.1f} ms"
          f"  (best {min(in_process) * 1000:.1f})")
    print(f"  CLI --remote, whole process                           median {median(process) * 1000:7.1f} ms"
          f"  (best {min(process) * 1000:.1f})")
    print(f"  CLI --core of a kheap dump, whole process             median {median(offline) * 1000:7.1f} ms"
          f"  (best {min(offline) * 1000:.1f})")


def cli_lost(remote):
    import json

    out, err = io.StringIO(), io.StringIO()
    cli.run_cli(["leaks", "--scan", "--json", *map(str, remote)], out, err)
    return json.loads(out.getvalue())["count"]


def synthetic(mib, pointer_size, seed=1):
    """A ``mib`` MiB heap built straight into memory: (program, cores, used count, lost count)."""
    rnd = random.Random(seed)
    heap_size = mib * 1024 * 1024
    k = SyntheticKernel(pointer_size, "<", heap_size=heap_size)
    hdr, P = k.hdr, pointer_size
    word = "I" if P == 4 else "Q"
    header = struct.Struct("<" + word * 2 + "II").pack_into
    ptr = struct.Struct("<" + word).pack_into
    mem, base = k.mem, k.image_base
    segs = []
    addr = k.heap_start
    while addr < k.heap_end:
        size = min(rnd.randrange(hdr // 16 + 1, 33) * 16, k.heap_end - addr)
        if k.heap_end - addr - size < hdr + 16:
            size = k.heap_end - addr
        used = rnd.random() < 0.8 or addr + size == k.heap_end
        segs.append((addr, size, used))
        addr += size
    prev = 0
    for i, (a, size, used) in enumerate(segs):
        nxt = segs[i + 1][0] if i + 1 < len(segs) else 0
        header(mem, a - base, nxt, prev, 1 if used else 0, size)
        prev = a
    used = [(a, size) for a, size, u in segs if u]
    # Payload words: random data, then one pointer to another used payload (interior) per
    # segment; a third of the segments are held by the roots (a root table beside .bss).
    for a, size in used:
        n = size - hdr
        mem[a - base + hdr:a - base + size] = rnd.randbytes(n)
        target, tsize = used[rnd.randrange(len(used))]
        ptr(mem, a - base + hdr, target + hdr + rnd.randrange(0, tsize - hdr) // P * P)
    roots = [a + hdr for a, _ in rnd.sample(used, len(used) // 3)]
    table = bytearray(b"".join(struct.pack("<" + word, r) for r in roots))
    table_base = -(-(k.heap_end + 4096) // 4096) * 4096
    elf = k.elf_info()
    elf.sections.append(Section(".bss", table_base, len(table), None, SHF_WRITE | SHF_ALLOC))
    from gdbext.core.memory import RangesReader

    reader = RangesReader([(base, bytes(mem)), (table_base, bytes(table))])
    prog = Program(elf, reader)
    return prog, len(used)


def offline(mib, repeat):
    for P in (4, 8):
        prog, used = synthetic(mib, P)
        heap = prog.heap_bytes()             # read once (a dump is mapped; not what we time)
        walk = prog.allocator.walk(prog)
        samples, words = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            roots = reach.gather_roots(prog, [])
            scan = reach.leak_scan(prog, roots, walk)
            samples.append(time.perf_counter() - start)
        for _ in range(repeat):
            start = time.perf_counter()
            reach.scan_words(heap, prog.heap_start, P, prog.byteorder, prog.heap_start, prog.heap_end)
            words.append(time.perf_counter() - start)
        lost = len(scan.lost)
        t, w = median(samples), median(words)
        print(f"synthetic {mib} MiB heap, {P * 8}-bit: {used} allocated segments, {lost} unreachable")
        print(f"  leak scan (roots, candidates, mark, lost set)   median {t * 1000:7.1f} ms  "
              f"{mib / t:7.1f} MiB/s")
        print(f"  word scan of the whole heap (scan_words)        median {w * 1000:7.1f} ms  "
              f"{mib / w:7.1f} MiB/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--no-live", action="store_true")
    args = parser.parse_args()
    if not args.no_live:
        for arch in (("arm", "aarch64") if args.arch == "both" else (args.arch,)):
            live(arch, args.repeat)
    offline(args.mib, max(3, args.repeat // 2))


if __name__ == "__main__":
    main()
