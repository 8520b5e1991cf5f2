"""Benchmark: what ``kheap watch`` costs the running kernel.

Boots the ``stress`` scenario (about 17,000 allocator calls) halted at its first instruction,
runs it to ``kheap_checkpoint`` in gdb-multiarch once without the watch and once with it, and
prints the wall time of each run, the operations per second, and the overhead per operation
and per breakpoint hit in ms, split into the Python time of the breakpoints' ``stop()`` and
gdb's own stop/resume over the gdbstub. Variants (``--variants``) add gdb settings that change
the stop/resume cost. Nothing is asserted: the figures are for people to read.

    .venv/bin/python bench/bench_watch.py [--arch arm|aarch64|both] [--variants]
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from debuggers import run_gdb  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402

TIMED = ["python import time as _t; _bench_t0 = _t.perf_counter()", "continue",
         "python print(_t.perf_counter() - _bench_t0)"]


def run_once(arch, scenario, watch, pre=()):
    with KernelVM(arch=arch, scenario=scenario, halt=True) as vm:
        commands = list(pre) + (["kheap watch on"] if watch else []) + ["break kheap_checkpoint"]
        first = len(commands)
        commands += TIMED + (["kheap watch status --json"] if watch else [])
        run = run_gdb(vm.elf, vm.gdb_port, commands, timeout=1800)
        seconds = float(run.output(first + 2).strip().splitlines()[-1])
        status = run.json(first + 3) if watch else None
        return seconds, status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64", "both"), default="arm")
    parser.add_argument("--scenario", default="stress")
    parser.add_argument("--variants", action="store_true",
                        help="also measure with 'set breakpoint always-inserted on' and "
                             "'set trust-readonly-sections on'")
    args = parser.parse_args()
    arches = ("arm", "aarch64") if args.arch == "both" else (args.arch,)
    variants = [("default", ())]
    if args.variants:
        variants += [("always-inserted", ("set breakpoint always-inserted on",)),
                     ("trust-readonly", ("set trust-readonly-sections on",))]
    for arch in arches:
        plain, _ = run_once(arch, args.scenario, watch=False)
        print(f"{arch} {args.scenario}: without watch {plain:.3f} s to the checkpoint")
        for name, pre in variants:
            started = time.perf_counter()
            watched, status = run_once(arch, args.scenario, watch=True, pre=pre)
            c = status["counters"]
            ops, calls, hits = c["operations"], c["calls"], status["breakpoint_hits"]
            py = status["python_seconds"]
            extra = watched - plain
            print(f"  watch [{name}]: {watched:.2f} s for {ops} operations ({calls} calls, {hits} "
                  f"breakpoint hits): {ops / watched:.0f} ops/s with watch vs "
                  f"{ops / max(plain, 1e-9):.0f} ops/s without")
            print(f"    overhead {1000 * extra / ops:.3f} ms per operation, {1000 * extra / hits:.3f} ms "
                  f"per hit (Python stop(): {1000 * py / hits:.3f} ms, gdb stop/resume: "
                  f"{1000 * (extra - py) / hits:.3f} ms); run with boot {time.perf_counter() - started:.1f} s")
            assert status["last_stop"] is None, status["last_stop"]


if __name__ == "__main__":
    main()
