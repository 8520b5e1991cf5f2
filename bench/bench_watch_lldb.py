"""Benchmark: what ``kheap watch`` costs the running kernel in lldb (bench_watch.py is gdb's).

Boots a scenario (default ``stress``, about 17,000 allocator calls and 47,600 breakpoint hits)
halted at its first instruction, runs it to ``kheap_checkpoint`` in lldb with the watch on, and
prints the wall time, operations per second and the overhead per operation and per breakpoint
hit, split into the Python time of the callbacks and lldb's own stop/resume. ``--variants``
adds lldb settings that change the stop/resume cost. Nothing is asserted.

    .venv/bin/python bench/bench_watch_lldb.py [--arch arm|aarch64|both] [--scenario stress]
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from debuggers import run_lldb  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402



def run_once(arch, scenario, pre=()):
    # 'script print' goes to lldb's stdout, not to the command's result: the time goes to a file
    with KernelVM(arch=arch, scenario=scenario, halt=True) as vm, \
            tempfile.NamedTemporaryFile("r", suffix=".txt") as timing:
        commands = ["kheap watch on", "breakpoint set -n kheap_checkpoint",
                    "script import time as _t; _bench_t0 = _t.perf_counter()", "process continue",
                    f"script open({timing.name!r}, 'w').write(str(_t.perf_counter() - _bench_t0))",
                    "kheap watch status --json"]
        run = run_lldb(vm.elf, vm.gdb_port, commands, pre=pre, timeout=3600)
        return float(open(timing.name).read()), run.json(5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64", "both"), default="arm")
    parser.add_argument("--scenario", default="stress")
    parser.add_argument("--variants", action="store_true",
                        help="also measure with 'plugin.process.gdb-remote.use-g-packet-for-reading'")
    args = parser.parse_args()
    arches = ("arm", "aarch64") if args.arch == "both" else (args.arch,)
    variants = [("default", ())]
    if args.variants:
        variants.append(("g-packet", ("settings set plugin.process.gdb-remote."
                                      "use-g-packet-for-reading true",)))
    for arch in arches:
        for name, pre in variants:
            seconds, status = run_once(arch, args.scenario, pre)
            c = status["counters"]
            ops, calls, hits = c["operations"], c["calls"], status["breakpoint_hits"]
            python = status["python_seconds"]
            print(f"{arch} {args.scenario} lldb watch [{name}]: {seconds:.2f} s for {ops} operations "
                  f"({calls} calls, {hits} breakpoint hits): {ops / seconds:.0f} ops/s")
            print(f"    {1000 * seconds / ops:.3f} ms per operation, {1000 * seconds / hits:.3f} ms "
                  f"per hit (Python callbacks: {1000 * python / hits:.3f} ms, lldb stop/resume: "
                  f"{1000 * (seconds - python) / hits:.3f} ms)")


if __name__ == "__main__":
    main()
