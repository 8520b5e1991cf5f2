"""Benchmark: read the kernel heap (1 MiB) from a live QEMU through gdbext.targets.rsp.

Boots the kernel (``stress`` scenario) with qemu/launcher.py, waits for KHEAP-READY, connects
one RemoteTarget and reads ``[kernel_heap_start, +KERNEL_HEAP_SIZE)`` at several pipeline depths.
Prints MB/s, packets and the chunk size QEMU accepted, and the ratio to a floor: a bare loop
with no checks at all that sends the same ``m`` packets 32 at a time over a raw socket, which
is as fast as QEMU's byte-at-a-time gdbstub can serve them (QEMU, not the wire, is the limit).
Nothing is asserted: machines are noisy, these numbers are for people to read.

    .venv/bin/python bench/bench_rsp.py [--arch arm|aarch64] [--repeat 5] [--scenario stress]
"""

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elftools.elf.elffile import ELFFile  # noqa: E402

from gdbext.targets.rsp import RemoteTarget  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402

HEAP_SIZE = 1 << 20


def heap_start(target: RemoteTarget, elf: Path) -> int:
    """``kernel_heap_start``'s value, read through the target itself (0x100000 if unknown)."""
    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name("kernel_heap_start") if symtab else None
    if not syms:
        return 0x100000
    width = 8 if target.arch == "aarch64" else 4
    return int.from_bytes(target.read(syms[0]["st_value"], width), "little") or 0x100000


def raw_floor(port: int, start: int, size: int, window: int = 32) -> float:
    """Seconds for the bare protocol: pipelined ``m`` packets, acks, no validation at all."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()

    def packet() -> bytes:
        nonlocal buf
        while True:
            end = buf.find(b"#")
            if end >= 0 and len(buf) >= end + 3:
                body = bytes(buf[buf.find(b"$") + 1:end])
                del buf[:end + 3]
                return body
            buf += sock.recv(1 << 18)

    def frame(p: bytes) -> bytes:
        return b"$%s#%02x" % (p, sum(p) & 0xFF)

    sock.sendall(frame(b"qSupported"))
    while not packet().startswith(b"PacketSize"):
        pass
    addrs = list(range(start, start + size, 2048))
    t = time.perf_counter()
    for k in range(0, len(addrs), window):
        batch = addrs[k:k + window]
        sock.sendall(b"".join(frame(b"m%x,800" % a) for a in batch))
        for _ in batch:
            packet()
            sock.sendall(b"+")
    elapsed = time.perf_counter() - t
    sock.sendall(frame(b"D"))
    sock.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="arm", choices=["arm", "aarch64"])
    ap.add_argument("--scenario", default="stress")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    with KernelVM(arch=args.arch, scenario=args.scenario, halt=False) as vm:
        vm.wait_for("KHEAP-READY", timeout=60)
        t0 = time.perf_counter()
        target = RemoteTarget("127.0.0.1", vm.gdb_port)
        connect = time.perf_counter() - t0
        with target:
            start = heap_start(target, vm.elf)
            print(f"{args.arch}: heap at {start:#x}, {HEAP_SIZE >> 10} KiB; connect+handshake "
                  f"{connect * 1e3:.1f} ms; PacketSize={target.packet_size:#x}")
            base = None
            for depth in (1, 4, 16, 32):
                target.pipeline = depth
                times = []
                for _ in range(args.repeat):
                    sent = target.packets_sent
                    t = time.perf_counter()
                    data = target.read(start, HEAP_SIZE)
                    times.append(time.perf_counter() - t)
                    packets = target.packets_sent - sent
                assert len(data) == HEAP_SIZE
                med = statistics.median(times)
                base = base or med
                print(f"  pipeline {depth:2d}: {med * 1e3:7.1f} ms median ({min(times) * 1e3:.1f} min) "
                      f"{HEAP_SIZE / med / 1e6:6.1f} MB/s  {packets} packets of {target.chunk_size} B  "
                      f"x{base / med:.1f} vs unpipelined")
            wire = 2 * HEAP_SIZE + packets * 8
            print(f"  on the wire per read: {wire / 1e6:.2f} MB of hex + framing; "
                  f"retransmissions {target.retransmissions}")
        best = min(med, base)
        floor = statistics.median(raw_floor(vm.gdb_port, start, HEAP_SIZE) for _ in range(args.repeat))
        print(f"  floor (bare pipelined loop, no checks): {floor * 1e3:.1f} ms, "
              f"{HEAP_SIZE / floor / 1e6:.1f} MB/s; RemoteTarget at depth 32 is x{med / floor:.2f} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
