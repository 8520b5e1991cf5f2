"""gdbext.targets against real QEMU 7.2 for both builds: the live stub and its own core dumps.

The guest is a tiny bare-metal loop compiled here (so these tests do not wait for the kernel),
plus the real kernel when ``kernel/build/<arch>/kernel.elf`` exists. Ground truth is the ELF:
what QEMU loaded from a PT_LOAD must read back byte for byte, live and from the dump.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from gdbext.core.memory import MemoryFault
from gdbext.targets.dump import CoreDump, open_dump, write_kheap_dump
from gdbext.targets.rsp import RemoteTarget, TargetError

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]
ARCHES = {
    # arch: (qemu, machine, gcc, link address, loop source)
    "arm": ("qemu-system-arm", "raspi2b", "arm-none-eabi-gcc", 0x8000,
            "ldr r0, =0x11223344\n mov r1, #1\n1: add r1, r1, #1\n b 1b\n"),
    "aarch64": ("qemu-system-aarch64", "raspi3b", "aarch64-linux-gnu-gcc", 0x80000,
                "ldr x0, =0x1122334455667788\n mov x1, #1\n1: add x1, x1, #1\n b 1b\n"),
}
# raspi2b/raspi3b: the BCM2836/7 local peripherals end here; the next byte answers E14.
FIRST_UNMAPPED = 0x40000100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_elves(tmp_path_factory):
    out = {}
    d = tmp_path_factory.mktemp("tiny")
    for arch, (_, _, gcc, link, body) in ARCHES.items():
        if not shutil.which(gcc):
            continue
        src = d / f"{arch}.S"
        src.write_text(".global _start\n.text\n_start:\n" + body +
                       ".data\nmsg: .ascii \"KHEAP-TEST-DATA-0123456789abcdef\"\n")
        elf = d / f"{arch}.elf"
        subprocess.run([gcc, "-nostdlib", "-static", f"-Ttext={link:#x}", "-o", str(elf), str(src)],
                       check=True, capture_output=True)
        out[arch] = elf
    return out


class Qemu:
    """One QEMU with gdbstub and QMP; always killed by the fixture's finalizer."""

    def __init__(self, arch: str, elf: Path, workdir: Path, halted: bool = True) -> None:
        qemu, machine = ARCHES[arch][:2]
        self.arch, self.elf, self.port = arch, elf, free_port()
        self.qmp_path = str(workdir / f"qmp-{self.port}.sock")
        cmd = [qemu, "-M", machine, "-kernel", str(elf), "-gdb", f"tcp:127.0.0.1:{self.port}",
               "-display", "none", "-serial", "null", "-monitor", "none",
               "-qmp", f"unix:{self.qmp_path},server,nowait"] + (["-S"] if halted else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {self.proc.stderr.read().decode(errors='replace')[:300]}")
            if os.path.exists(self.qmp_path):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    # That probe connection paused a running VM; QEMU resumes nothing on its
                    # own, so a running guest is resumed through QMP.
                    if not halted:
                        self.qmp("cont")
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("QEMU did not open its gdbstub")

    def qmp(self, command: str, **arguments):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(self.qmp_path)
            f = s.makefile("rw")
            json.loads(f.readline())
            for msg in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                f.write(json.dumps(msg) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "error" in reply:
                        raise RuntimeError(reply["error"])
                    if "return" in reply:
                        break
            return reply["return"]

    def target(self, **kw) -> RemoteTarget:
        return RemoteTarget("127.0.0.1", self.port, timeout=10, **kw)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stderr.close()


@pytest.fixture(params=[(a, k) for a in ARCHES for k in ("tiny", "kernel")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def guest(request, tiny_elves):
    arch, kind = request.param
    if not shutil.which(ARCHES[arch][0]):
        pytest.skip(f"{ARCHES[arch][0]} not installed")
    if kind == "tiny":
        if arch not in tiny_elves:
            pytest.skip(f"{ARCHES[arch][2]} not installed")
        return arch, tiny_elves[arch]
    real = REPO / "kernel" / "build" / arch / "kernel.elf"
    if not real.exists():
        pytest.skip(f"{real} not built (make -C kernel)")
    return arch, real


@pytest.fixture
def qemu(guest, tmp_path, request):
    vm = Qemu(guest[0], guest[1], tmp_path)
    request.addfinalizer(vm.kill)
    return vm


def loaded_bytes(elf_path: Path):
    """(paddr, bytes) of every PT_LOAD's file part: what QEMU put in RAM before reset."""
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        return [(s["p_paddr"], s.data()) for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_filesz"]], elf.header["e_entry"]


# -- live ------------------------------------------------------------------------------------
def test_live_memory_matches_elf(qemu):
    loads, entry = loaded_bytes(qemu.elf)
    with qemu.target() as t:
        assert t.arch == qemu.arch
        for paddr, data in loads:
            assert t.read(paddr, len(data)) == data
            assert t.read(paddr + 1, 7) == data[1:8]            # unaligned, tiny
        assert t.chunk_size == 2048


def test_live_registers_threads_and_stop(qemu):
    _, entry = loaded_bytes(qemu.elf)
    with qemu.target() as t:
        assert not t.was_running
        assert t.stop_reason().signal == 5
        regs = t.registers()
        assert regs["pc"] == entry
        assert "cpsr" in regs and ("r0" in regs if qemu.arch == "arm" else "x30" in regs)
        ids = t.threads()
        assert len(ids) == 4                                    # four Cortex-A cores
        assert "pc" in t.registers(ids[1])                      # a secondary core, any pc
        assert t.registers(ids[0])["pc"] == entry               # Hg switched back


def test_live_unmapped_read_faults_at_exact_address(qemu):
    with qemu.target() as t:
        with pytest.raises(MemoryFault) as e:
            t.read(FIRST_UNMAPPED - 0x80, 0x1000)
        assert e.value.address == FIRST_UNMAPPED
        assert e.value.size == 0x1000 - 0x80
        with pytest.raises(MemoryFault) as e:
            t.read(0x50000000, 4)
        assert e.value.address == 0x50000000
        assert len(t.read(FIRST_UNMAPPED - 0x100, 0x100)) == 0x100   # the link survives


def test_qemu_packet_limit_is_2048(qemu):
    """QEMU 7.2 answers E22 above 2048 bytes: a client that starts bigger learns it."""
    loads, _ = loaded_bytes(qemu.elf)
    paddr, data = loads[0]
    with qemu.target(pipeline=1) as t:
        assert t.packet_size == 0x1000
        t.chunk_size = 16384
        assert t.read(paddr, len(data)) == data
        assert t.chunk_size == (2048 if len(data) > 2048 else 16384)
        assert len(t.read(0, 65536)) == 65536
        assert t.chunk_size == 2048
        assert t._m(0, 2049) == "E22" and isinstance(t._m(0, 2048), bytes)


def test_halted_stays_halted_running_keeps_running(guest, tmp_path, request):
    arch, elf = guest
    halted = Qemu(arch, elf, tmp_path, halted=True)
    request.addfinalizer(halted.kill)
    with halted.target() as t:
        assert not t.was_running
    assert halted.qmp("query-status")["status"] == "prelaunch"
    running = Qemu(arch, elf, tmp_path, halted=False)
    request.addfinalizer(running.kill)
    assert running.qmp("query-status")["running"]
    with running.target() as t:
        assert t.was_running                                    # QEMU paused it for us
        assert not running.qmp("query-status")["running"]
        t.read(0, 64)
    assert running.qmp("query-status")["running"]               # and D resumed it


def test_nothing_listening_and_dead_stub(qemu):
    with pytest.raises(TargetError, match="cannot connect"):
        RemoteTarget("127.0.0.1", free_port(), timeout=2)
    t = qemu.target()
    qemu.kill()
    with pytest.raises(TargetError) as e:
        t.read(0, 4096)
    assert "\n" not in str(e.value)
    t.close()


# -- dumps -----------------------------------------------------------------------------------
def test_dump_guest_memory_matches_live(qemu, tmp_path):
    core = tmp_path / "guest.core"
    loads, entry = loaded_bytes(qemu.elf)
    with qemu.target() as t:
        live_regs = [t.registers(i) for i in t.threads()]
        live_low = t.read(0, 1 << 20)
        qemu.qmp("dump-guest-memory", paging=False, protocol=f"file:{core}")
        t0 = time.perf_counter()
        with open_dump(core) as d:
            opened = time.perf_counter() - t0
            assert isinstance(d, CoreDump) and d.kind == "elf-core" and d.arch == qemu.arch
            assert d.elf_class == (32 if qemu.arch == "arm" else 64)
            assert d.read(0, 1 << 20) == live_low
            for paddr, data in loads:
                assert d.read(paddr, len(data)) == data
            assert len(d.threads()) == len(live_regs)
            for i, regs in enumerate(live_regs):
                mine = d.registers(i)
                assert {k: mine[k] for k in regs} == regs
            assert d.registers()["pc"] == entry
            with pytest.raises(MemoryFault):
                d.read(0x50000000, 4)
        assert opened < 1.0, f"opening a {core.stat().st_size >> 20} MiB core took {opened:.2f}s"
        # kheap's own format from the same live target reads back identically.
        own = tmp_path / "own.kheap"
        write_kheap_dump(own, [(0, live_low)], live_regs, {"arch": t.arch, "elf": str(qemu.elf)})
    with open_dump(own) as d:
        assert d.kind == "kheap" and d.arch == qemu.arch
        assert d.read(0, 1 << 20) == live_low
        assert [d.registers(i) for i in range(len(live_regs))] == live_regs
        with pytest.raises(MemoryFault) as e:
            d.read((1 << 20) - 4, 8)
        assert e.value.address == 1 << 20
