"""Benchmark: ``kheap check --remote`` on the ``stress`` heap, in-process and as a process.

Boots the kernel (``stress``: ~5000 segments) with qemu/launcher.py and measures:

1. ``kheap check --remote`` run in this process through the CLI's own code (``cli.run_cli``,
   connection, ELF checks, the walk and every validator included; the ELF parse is cached after
   the first run, as it is in a debugger) against one raw bulk read of the heap
   (``RemoteTarget.read(heap_start, heap_size)`` through the same client on a fresh connection).
   Target ratio: at most 1.3.
2. The whole process: ``.venv/bin/kheap check --remote ... --elf ...`` as a subprocess, wall
   time (target under 0.5 s), and ``python -X importtime`` of the CLI module.
3. The client against two stubs, one connection each, 1 MiB read ``--repeat`` times: QEMU's
   system emulator (the heap; pipelined) and qemu-user 7.2 (``qemu-aarch64 -g``, a program's
   1 MiB array, see tests/integration/qemu_user.py; it waits for every ack, so one request in
   flight). MiB/s, the time per ``m`` request, and connect + handshake (the pipelining probe
   included). Skipped with a reason when qemu-aarch64 or the aarch64 compiler is missing.

Nothing is asserted: machines are noisy, these numbers are for people to read. The check and
the read alternate, and "median of pairs" is the median of each check over the read right after
it: the figure least moved by the machine's drift (this 2-core VM drifts by tens of percent).

    .venv/bin/python bench/bench_cli.py [--arch arm|aarch64] [--repeat 15]
"""

import argparse
import io
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from gdbext.frontends import cli  # noqa: E402
from gdbext.core.symbols import load_elf_info  # noqa: E402
from gdbext.targets.rsp import RemoteTarget, TargetError  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402
import qemu_user  # noqa: E402

KHEAP = REPO / ".venv" / "bin" / "kheap"


def best(samples):
    return min(samples), statistics.median(samples)


def in_process_check(remote, elf):
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    status = cli.run_cli(["check", "--remote", remote, "--elf", str(elf)], out, err)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"kheap check failed ({status}): {err.getvalue()}{out.getvalue()[:400]}")
    return elapsed


def raw_heap_read(host, port, start, size):
    t0 = time.perf_counter()
    with RemoteTarget(host, port) as target:
        data = target.read(start, size)
    elapsed = time.perf_counter() - t0
    assert len(data) == size
    return elapsed


def stub_speed(port, address, size, repeat):
    """One connection: ``size`` bytes at ``address`` read ``repeat`` times, then 200 reads of 16
    bytes (one ``m`` each: the round trip). (connect s, [read s], ``m`` requests per read,
    [round trip s], whether the stub pipelines)."""
    t0 = time.perf_counter()
    with RemoteTarget("127.0.0.1", port) as target:
        connect = time.perf_counter() - t0
        reads = []
        for _ in range(repeat):
            sent = target.packets_sent
            t = time.perf_counter()
            data = target.read(address, size)
            reads.append(time.perf_counter() - t)
            requests = target.packets_sent - sent
            assert len(data) == size
        trips = []
        for i in range(200):
            t = time.perf_counter()
            target.read(address + 16 * i, 16)
            trips.append(time.perf_counter() - t)
        return connect, reads, requests, trips, getattr(target, "pipelining", True)


def print_stub(name, size, result):
    connect, reads, requests, trips, pipelining = result
    best_s, med = min(reads), statistics.median(reads)
    mode = "pipelined" if pipelining else "one request in flight"
    print(f"  {name:<31}: {size / med / (1 << 20):6.1f} MiB/s median ({size / best_s / (1 << 20):.1f} best)"
          f" in {requests} m requests ({mode}: {med / requests * 1e6:.1f} us each); one small m "
          f"{statistics.median(trips) * 1e6:.0f} us; connect {connect * 1000:.1f} ms")


def qemu_user_speed(repeat):
    why = qemu_user.missing()
    if why:
        return f"skipped: {why}"
    with tempfile.TemporaryDirectory(prefix="kheap-bench-") as tmp:
        elf = qemu_user.build_program(Path(tmp))
        address, _ = qemu_user.symbols(elf)
        with qemu_user.QemuUser(elf) as proc:
            try:
                return stub_speed(proc.port, address, qemu_user.PATTERN_SIZE, repeat)
            except TargetError as exc:
                return f"failed: {exc}"


def import_time():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gdbext.frontends.cli"],
                          capture_output=True, text=True, cwd=REPO)
    total = 0
    heaviest = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and not m.group(3).strip(" ") and len(m.group(3)) == 1:
            total += int(m.group(2))                # top-level imports only
        if m:
            heaviest.append((int(m.group(2)), m.group(4)))
    heaviest.sort(reverse=True)
    return total / 1e6, heaviest[:5]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("arm", "aarch64"), default="arm")
    parser.add_argument("--scenario", default="stress")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    with KernelVM(arch=args.arch, scenario=args.scenario) as vm:
        vm.wait_until_settled(60)
        remote = f"127.0.0.1:{vm.gdb_port}"
        elf = load_elf_info(vm.elf)
        with RemoteTarget("127.0.0.1", vm.gdb_port) as target:
            start = int.from_bytes(target.read(elf.address_of("kernel_heap_start"), elf.pointer_size), "little")
            size = int.from_bytes(target.read(elf.address_of("kernel_heap_size"), elf.pointer_size), "little")
        in_process_check(remote, vm.elf)                           # warm: ELF parse, imports
        # Interleaved, one check then one read: on a shared machine the speed drifts by tens
        # of percent within a minute, and a drift must land on both sides of the ratio.
        checks, reads = [], []
        for _ in range(args.repeat):
            checks.append(in_process_check(remote, vm.elf))
            reads.append(raw_heap_read("127.0.0.1", vm.gdb_port, start, size))
        walls = []
        exe = [str(KHEAP)] if KHEAP.exists() else [sys.executable, "-m", "gdbext"]
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            proc = subprocess.run(exe + ["check", "--remote", remote, "--elf", str(vm.elf)],
                                  capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"kheap check exited {proc.returncode}: {proc.stderr}")
        found = re.search(r"(\d+) segments walked", proc.stdout)
        segments = found.group(1) if found else "?"
        system = stub_speed(vm.gdb_port, start, size, args.repeat)
    user = qemu_user_speed(args.repeat)

    imports, heaviest = import_time()
    c_best, c_med = best(checks)
    r_best, r_med = best(reads)
    w_best, w_med = best(walls)
    print(f"kheap CLI on {args.arch}/{args.scenario}: heap {size} bytes at {start:#x}, {segments} segments")
    print(f"  kheap check --remote, in process : best {c_best * 1000:7.1f} ms  median {c_med * 1000:7.1f} ms")
    print(f"  raw bulk read of the heap        : best {r_best * 1000:7.1f} ms  median {r_med * 1000:7.1f} ms")
    pairs = statistics.median(c / r for c, r in zip(checks, reads))
    print(f"  ratio check / raw read           : best {c_best / r_best:5.2f}   median {c_med / r_med:5.2f}"
          f"   median of pairs {pairs:5.2f}   (target <= 1.3)")
    print(f"  whole process (.venv/bin/kheap)  : best {w_best * 1000:7.1f} ms  median {w_med * 1000:7.1f} ms"
          f"   (target < 500 ms)")
    print(f"  import gdbext.frontends.cli      : {imports * 1000:7.1f} ms; heaviest: "
          + ", ".join(f"{name} {us / 1000:.1f} ms" for us, name in heaviest))
    print("RemoteTarget against two stubs (one connection each, 1 MiB per read):")
    print_stub(f"qemu-system-{args.arch} (the heap)", size, system)
    if isinstance(user, str):
        print(f"  {'qemu-user (qemu-aarch64 -g)':<31}: {user}")
    else:
        print_stub("qemu-user (qemu-aarch64 -g)", qemu_user.PATTERN_SIZE, user)


if __name__ == "__main__":
    main()
