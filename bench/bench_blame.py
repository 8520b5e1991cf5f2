"""Benchmark: what ``kheap blame`` costs, per build, in gdb, the CLI and lldb.

For overflow, uaf and wild (each on a VM of its own, settled at KHEAP-READY): the wall time of
``kheap blame`` inside gdb (the command alone, timed in gdb's Python) and of a whole ``kheap
blame --remote`` CLI process, and the number of writes seen. Then the per-hit cost on a hot
word: the ``allocations`` counter of ``heap_stats`` in the stress scenario (about 10,000
writes), watched for ``--max-hits N`` writes: the seconds of the run (reset to stop point)
divided by the writes, in gdb, the CLI and lldb. Nothing is asserted: figures to read (the
target is under 2 s per scenario in gdb and the CLI).

    .venv/bin/python bench/bench_blame.py [--arch arm|aarch64|both] [--hits 2000] [--no-lldb]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from debuggers import run_gdb, run_lldb  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402

KHEAP = REPO / ".venv" / "bin" / "kheap"
SCENARIOS = ("overflow", "uaf", "wild")


def timed_gdb(vm, command):
    run = run_gdb(vm.elf, vm.gdb_port, ["python import time as _t; _bench_t0 = _t.perf_counter()",
                                        command, "python print(_t.perf_counter() - _bench_t0)"],
                  timeout=1800)
    return float(run.output(2).strip().splitlines()[-1]), run.json(1)


def timed_cli(vm, *argv):
    started = time.perf_counter()
    proc = subprocess.run([str(KHEAP), "blame", "--json", *argv, "--remote", f"127.0.0.1:{vm.gdb_port}",
                           "--elf", str(vm.elf)], capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if proc.returncode == 2:
        raise SystemExit(proc.stderr)
    return seconds, json.loads(proc.stdout)


def timed_lldb(vm, command):
    """(wall time of the whole lldb process: start, connect, blame, detach; the report)."""
    started = time.perf_counter()
    run = run_lldb(vm.elf, vm.gdb_port, [command], pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",),
                   connect=False, timeout=1800)
    return time.perf_counter() - started, run.json(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64", "both"), default="both")
    parser.add_argument("--hits", type=int, default=2000, help="writes watched on the hot word")
    parser.add_argument("--no-lldb", action="store_true")
    args = parser.parse_args()
    arches = ("arm", "aarch64") if args.arch == "both" else (args.arch,)
    for arch in arches:
        print(f"{arch}:")
        for scenario in SCENARIOS:
            with KernelVM(arch=arch, scenario=scenario) as vm:
                vm.start()
                vm.wait_until_settled(60)
                gdb_s, gdb_r = timed_gdb(vm, "kheap blame --json")
                cli_s, cli_r = timed_cli(vm)
                line = (f"  {scenario:<9} gdb {gdb_s:.2f} s ({gdb_r['hits']} writes, run {gdb_r['seconds']:.2f} s)"
                        f"   CLI process {cli_s:.2f} s ({cli_r['hits']} writes, run {cli_r['seconds']:.2f} s)")
                if not args.no_lldb:
                    lldb_s, lldb_r = timed_lldb(vm, "kheap blame --json")
                    line += f"   lldb process {lldb_s:.2f} s ({lldb_r['hits']} writes, run {lldb_r['seconds']:.2f} s)"
                print(line + f"   last writer {gdb_r['last_writer']['function']}")
        with KernelVM(arch=arch, scenario="stress") as vm:
            vm.start()
            vm.wait_until_settled(60)
            hot = f"&heap_stats --size 4 --max-hits {args.hits}"
            faces = [("gdb", lambda: timed_gdb(vm, f"kheap blame {hot} --json")),
                     ("CLI", lambda: timed_cli(vm, *hot.split()))]
            if not args.no_lldb:
                faces.append(("lldb", lambda: timed_lldb(vm, f"kheap blame {hot} --json")))
            # The stop point run without a watchpoint costs the same in every face: take it from
            # a run of 1 hit, then the per-hit cost is what the rest adds.
            for face, fn in faces:
                seconds, report = fn()
                hits = report["hits"]
                print(f"  hot word heap_stats.allocations, {face}: {hits} writes in {report['seconds']:.2f} s "
                      f"(command {seconds:.2f} s): {1000 * report['seconds'] / max(hits, 1):.2f} ms per write")


if __name__ == "__main__":
    main()
