"""Offline targets: kheap dumps round-trip, ELF cores parse, bad files are one-line errors."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gdbext.core.memory import MemoryFault
from gdbext.targets.dump import (CoreDump, RawDump, TargetError, open_dump, write_kheap_dump)

RNG = random.Random(7)
HEAP = bytes(RNG.randrange(256) for _ in range(8192))
PAGES = bytes(RNG.randrange(256) for _ in range(4096))
ARM_REGS = {**{f"r{i}": 0x100 + i for i in range(13)}, "sp": 0x7FF0, "lr": 0x8123, "pc": 0x8000,
            "cpsr": 0x600001D3}
A64_REGS = {**{f"x{i}": 0x1000_0000_0000 + i for i in range(31)}, "sp": 0x80000, "pc": 0x80004,
            "cpsr": 0x3C5}


def make(tmp_path, arch="arm", ranges=None, registers=None, meta=None, name="k.dump"):
    path = tmp_path / name
    ranges = ranges if ranges is not None else [(0x112000, HEAP), (0x11A000, PAGES), (0x11B000, b"tail")]
    regs = registers if registers is not None else (ARM_REGS if arch == "arm" else A64_REGS)
    write_kheap_dump(path, ranges, regs, {"arch": arch, "elf_sha256": "ab" * 32, **(meta or {})})
    return path


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# -- kheap dumps ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_kheap_dump_roundtrip(tmp_path, arch):
    extra = {"fpscr": 7}
    regs = {**(ARM_REGS if arch == "arm" else A64_REGS), **extra}
    path = make(tmp_path, arch, registers=regs, meta={"scenario": "clean"})
    with open_dump(path) as d:
        assert isinstance(d, CoreDump) and d.kind == "kheap" and d.arch == arch
        assert d.elf_class == (32 if arch == "arm" else 64)
        assert d.read(0x112000, len(HEAP)) == HEAP
        assert d.read(0x112010, 4) == HEAP[16:20]
        assert d.read(0x11A000 + 4000, 96 + 4) == PAGES[4000:] + b"tail"     # adjacent ranges
        assert d.registers() == regs                                          # full set from JSON
        core_only = d.cpus[0]
        assert core_only["pc"] == regs["pc"] and "fpscr" not in core_only     # PRSTATUS too
        assert d.meta["scenario"] == "clean" and d.meta["elf_sha256"] == "ab" * 32
        assert d.meta["format"] == "kheap-dump" and d.meta["version"] == 1 and d.meta["created"]
        assert d.threads() == ["01"]
        assert d.ranges == [(0x112000, 0x114000), (0x11A000, 0x11B004)]


def test_kheap_dump_is_a_standard_elf_core(tmp_path):
    from elftools.elf.elffile import ELFFile
    for arch, machine in (("arm", "EM_ARM"), ("aarch64", "EM_AARCH64")):
        with open(make(tmp_path, arch, name=arch), "rb") as f:
            elf = ELFFile(f)
            assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == machine
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            assert [s["p_paddr"] for s in loads] == [0x112000, 0x11A000, 0x11B000]
            assert loads[0].data() == HEAP
            notes = [n for s in elf.iter_segments() if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
            assert [n["n_name"] for n in notes] == ["CORE", "KHEAP"]


def test_faults_outside_saved_memory(tmp_path):
    with open_dump(make(tmp_path)) as d:
        with pytest.raises(MemoryFault) as e:
            d.read(0x112000 + 8000, 400)
        assert e.value.address == 0x114000 and e.value.size == 0x112000 + 8400 - 0x114000
        with pytest.raises(MemoryFault) as e:
            d.read(0x111FFC, 8)
        assert e.value.address == 0x111FFC
        with pytest.raises(MemoryFault) as e:
            d.read(0x11B000, 5)
        assert e.value.address == 0x11B004 and e.value.size == 1
        assert d.read(0x11B000, 0) == b""
        assert "\n" not in str(e.value)


def test_several_cpus(tmp_path):
    cpus = [dict(ARM_REGS, r0=i) for i in range(4)]
    with open_dump(make(tmp_path, registers=cpus)) as d:
        assert d.threads() == ["01", "02", "03", "04"]
        assert [d.registers(i)["r0"] for i in range(4)] == [0, 1, 2, 3]
        assert d.cpu_ids == [1, 2, 3, 4]
        with pytest.raises(TargetError):
            d.registers(9)


def test_core_without_kheap_note_reads_prstatus(tmp_path):
    """A QEMU-shaped core: same ELF, registers only from NT_PRSTATUS."""
    for arch, regs in (("arm", ARM_REGS), ("aarch64", A64_REGS)):
        path = make(tmp_path, arch, name=arch)
        data = path.read_bytes()
        patch(path, data.index(b"KHEAP\0"), b"QEMU\0\0")
        with open_dump(path) as d:
            assert d.kind == "elf-core" and d.meta == {}
            assert d.registers() == regs
            assert d.read(0x112000, 64) == HEAP[:64]


def test_memsz_past_filesz_reads_zeros(tmp_path):
    path = make(tmp_path, ranges=[(0x1000, b"\x11" * 32)])
    # ELF32: the PT_LOAD header follows the PT_NOTE one; p_memsz is its 6th word.
    patch(path, 52 + 32 + 20, struct.pack("<I", 48))
    with open_dump(path) as d:
        assert d.read(0x1000 + 24, 24) == b"\x11" * 8 + bytes(16)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(TargetError, match="architecture"):
        write_kheap_dump(tmp_path / "x", [(0, b"a")], {}, {"arch": "x86"})
    with pytest.raises(TargetError, match="overlap"):
        write_kheap_dump(tmp_path / "x", [(0, b"abcd"), (2, b"ef")], {}, {"arch": "arm"})
    with pytest.raises(TargetError, match="cannot write"):
        write_kheap_dump(tmp_path / "no" / "such" / "dir", [(0, b"a")], {}, {"arch": "arm"})
    assert not list(tmp_path.glob("*.tmp*"))


# -- raw images ----------------------------------------------------------------------------
def test_raw_dump(tmp_path):
    path = tmp_path / "mem.bin"
    path.write_bytes(HEAP)
    with open_dump(path, base=0x112000) as d:
        assert isinstance(d, RawDump) and d.kind == "raw" and d.registers() == {}
        assert d.read(0x112000 + 100, 28) == HEAP[100:128]
        with pytest.raises(MemoryFault) as e:
            d.read(0x111FF0, 32)
        assert e.value.address == 0x111FF0
        with pytest.raises(MemoryFault) as e:
            d.read(0x113FF0, 32)
        assert e.value.address == 0x114000 and e.value.size == 16
        assert d.ranges == [(0x112000, 0x114000)]


def test_raw_wins_over_elf_magic(tmp_path):
    path = make(tmp_path)
    with open_dump(path, base=0) as d:
        assert d.kind == "raw" and d.read(0, 4) == b"\x7fELF"


# -- bad files -----------------------------------------------------------------------------
def one_line_error(path, **kw):
    with pytest.raises(TargetError) as e:
        open_dump(path, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_empty_and_garbage(tmp_path):
    assert "cannot open" in one_line_error(tmp_path / "nope.core")
    (tmp_path / "empty").write_bytes(b"")
    assert "empty" in one_line_error(tmp_path / "empty")
    assert "empty" in one_line_error(tmp_path / "empty", base=0x1000)
    (tmp_path / "junk").write_bytes(os.urandom(5000))
    assert "--base" in one_line_error(tmp_path / "junk")
    (tmp_path / "elfjunk").write_bytes(b"\x7fELF" + os.urandom(200))
    one_line_error(tmp_path / "elfjunk")
    (tmp_path / "tiny").write_bytes(b"\x7fELF\x01")
    one_line_error(tmp_path / "tiny")
    assert "cannot open" in one_line_error(tmp_path, base=0)            # a directory


def test_truncated_core(tmp_path):
    path = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 10])
    assert "truncated" in one_line_error(path)


def test_not_a_core_and_foreign_machine(tmp_path):
    path = make(tmp_path)
    patch(path, 16, struct.pack("<H", 2))               # ET_EXEC: somebody passed the kernel
    assert "executable, not a core" in one_line_error(path)
    path = make(tmp_path, name="x86")
    patch(path, 18, struct.pack("<H", 62))              # EM_X86_64
    assert "unsupported machine" in one_line_error(path)


def test_closed_dump(tmp_path):
    d = open_dump(make(tmp_path))
    d.close()
    d.close()
    with pytest.raises(TargetError):
        d.read(0x112000, 4)


@given(cut=st.integers(min_value=0, max_value=20000), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=255)),
    max_size=6))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damaged_files_never_traceback(tmp_path, cut, flips):
    good = make(tmp_path, name="good").read_bytes()
    data = bytearray(good[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "bad"
    path.write_bytes(bytes(data))
    try:
        d = open_dump(path)
    except TargetError as e:
        assert "\n" not in str(e)
        return
    with d:
        for addr, size in ((0x112000, 64), (0x11A000, 4096), (0, 4)):
            try:
                d.read(addr, size)
            except MemoryFault:
                pass
        d.registers()


def test_huge_core_opens_lazily(tmp_path):
    """A 1 GiB (sparse) core opens and reads at once: nothing is read up front."""
    path = make(tmp_path, ranges=[(0, b"\x5a" * 16)])
    size = 1 << 30
    patch(path, 52 + 32 + 16, struct.pack("<II", size, size))      # p_filesz, p_memsz
    off = struct.unpack_from("<I", path.read_bytes(), 52 + 32 + 4)[0]
    with open(path, "r+b") as f:
        f.truncate(off + size)
    t0 = time.perf_counter()
    with open_dump(path) as d:
        assert d.read(0, 16) == b"\x5a" * 16
        assert d.read(size - 16, 16) == bytes(16)
    assert time.perf_counter() - t0 < 0.5
