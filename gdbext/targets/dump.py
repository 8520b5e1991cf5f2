"""Offline targets: memory and registers from a file instead of a live stub.

Three kinds of file, one reader protocol (``read(address, size) -> bytes``, MemoryFault outside
the saved memory):

- an ELF core written by QEMU's ``dump-guest-memory`` with ``paging=false``: PT_LOAD segments
  at guest *physical* addresses (``p_paddr``), one ``NT_PRSTATUS`` note per CPU;
- a raw memory image plus the address its first byte had (:class:`RawDump`);
- a kheap dump written by ``kheap dump`` (:func:`write_kheap_dump`).

The kheap dump format is deliberately an ELF core of the same shape as QEMU's, so one reader
(:class:`CoreDump`) serves both and ``readelf -a`` explains either file:

- ELF header: ``ET_CORE``; ``EM_ARM``/ELFCLASS32 for ``arm``, ``EM_AARCH64``/ELFCLASS64 for
  ``aarch64``; little endian; no sections.
- one ``PT_NOTE`` holding, in order: one ``NT_PRSTATUS`` note (name ``CORE``) per CPU, with the
  core registers in the Linux ``elf_prstatus.pr_reg`` layout (ARM: r0-r15, cpsr, orig_r0 at
  offset 72 of 148 bytes; AArch64: x0-x30, sp, pc, pstate at offset 112 of 392 bytes); then
  one note named ``KHEAP``, type ``0x4b480001``, whose descriptor is UTF-8 JSON metadata:
  ``{"format": "kheap-dump", "version": 1, "arch": ..., "created": ISO-8601 UTC,
  "registers": [{name: value}, ...], ...}`` plus whatever the writer passed (for example the
  kernel's ``elf_build_id`` or ``elf_sha256``, the saved ``ranges``' purpose).
- one ``PT_LOAD`` per saved range, ``p_paddr == p_vaddr == base``, ``p_filesz == p_memsz``.

Why not a custom container: the QEMU core reader must exist anyway, the ELF header already
carries the architecture that lets the CLI refuse a dump of the other build, and standard tools
can look inside. JSON rides in a note so metadata can grow without a format change.

Files are mapped with ``mmap`` and only headers are parsed up front, so a 1 GiB core opens at
once; every bad file (missing, empty, truncated, not a core, foreign machine) is a one-line
:class:`TargetError`.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import json
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import MemoryFault, TargetError
from .regs import AARCH64_CORE, ARM_CORE

__all__ = ["CoreDump", "RawDump", "Segment", "open_dump", "write_kheap_dump",
           "KHEAP_NOTE_NAME", "KHEAP_NOTE_TYPE", "TargetError", "MemoryFault"]

EM_ARM, EM_AARCH64 = 40, 183
ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS = 1
KHEAP_NOTE_NAME = b"KHEAP"
KHEAP_NOTE_TYPE = 0x4B480001
FORMAT_VERSION = 1

_MACHINES = {EM_ARM: "arm", EM_AARCH64: "aarch64"}


@dataclass(frozen=True)
class _Prstatus:
    """Where ``pr_pid`` and ``pr_reg`` sit in one architecture's ``struct elf_prstatus``."""

    size: int
    pid_offset: int
    reg_offset: int
    reg_count: int
    reg_width: int


# ARM: pr_info(12) pr_cursig(2)+pad(2) sigpend(4) sighold(4) pid..sid(16) 4 timevals(32).
# AArch64: the same with 8-byte sigsets and 16-byte timevals. Checked against QEMU 7.2 cores.
_PRSTATUS = {
    "arm": _Prstatus(size=148, pid_offset=24, reg_offset=72, reg_count=18, reg_width=4),
    "aarch64": _Prstatus(size=392, pid_offset=32, reg_offset=112, reg_count=34, reg_width=8),
}
_LAYOUTS = {"arm": ARM_CORE, "aarch64": AARCH64_CORE}


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD: ``[paddr, paddr + memsz)``, file bytes at ``offset`` (zeros past filesz)."""

    paddr: int
    offset: int
    filesz: int
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def _open_map(path: Union[str, os.PathLike]) -> Tuple[Any, mmap.mmap, int]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TargetError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TargetError(f"{path} is empty")
        return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except TargetError:
        f.close()
        raise
    except (OSError, ValueError) as exc:
        f.close()
        raise TargetError(f"cannot map {path}: {exc}") from None


class _Mapped:
    """Shared plumbing: the mapped file, segment lookup, and the reader protocol."""

    kind = "?"
    arch: Optional[str] = None

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = os.fspath(path)
        self._file, self._map, self.file_size = _open_map(path)
        self._segments: List[Segment] = []
        self._starts: List[int] = []

    def _set_segments(self, segments: Iterable[Segment]) -> None:
        self._segments = sorted((s for s in segments if s.memsz), key=lambda s: s.paddr)
        self._starts = [s.paddr for s in self._segments]

    @property
    def segments(self) -> List[Segment]:
        return list(self._segments)

    @property
    def ranges(self) -> List[Tuple[int, int]]:
        """Readable memory as merged ``(start, end)`` ranges."""
        out: List[Tuple[int, int]] = []
        for s in self._segments:
            if out and s.paddr <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], s.end))
            else:
                out.append((s.paddr, s.end))
        return out

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at physical ``address``; MemoryFault at the first byte not saved."""
        if size <= 0:
            if size < 0:
                raise MemoryFault(address, 0, "negative size")
            return b""
        if self._map is None:
            raise TargetError(f"{self.path} is closed")
        end = address + size
        cur = address
        parts: List[bytes] = []
        i = bisect.bisect_right(self._starts, cur) - 1
        while cur < end:
            if i < 0 or i >= len(self._segments) or not (self._segments[i].paddr <= cur < self._segments[i].end):
                raise MemoryFault(cur, end - cur, f"not in {os.path.basename(self.path)}")
            seg = self._segments[i]
            stop = min(end, seg.end)
            lo, hi = cur - seg.paddr, stop - seg.paddr
            if hi <= seg.filesz:
                parts.append(self._map[seg.offset + lo:seg.offset + hi])
            else:                                     # p_memsz beyond p_filesz reads as zeros
                have = self._map[seg.offset + lo:seg.offset + min(hi, seg.filesz)] if lo < seg.filesz else b""
                parts.append(have + bytes(hi - lo - len(have)))
            cur = stop
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class RawDump(_Mapped):
    """A raw memory image whose first byte was at physical ``base``. It has no registers."""

    kind = "raw"

    def __init__(self, path: Union[str, os.PathLike], base: int, arch: Optional[str] = None) -> None:
        if base < 0:
            raise TargetError(f"bad base address {base:#x} for {path}")
        super().__init__(path)
        self.base = int(base)
        self.arch = arch
        self.meta: Dict[str, Any] = {}
        self._set_segments([Segment(self.base, 0, self.file_size, self.file_size)])

    def registers(self, cpu: int = 0) -> Dict[str, int]:
        return {}

    def threads(self) -> List[str]:
        return []

    def __repr__(self) -> str:
        return f"RawDump({self.path!r}, base={self.base:#x})"


class CoreDump(_Mapped):
    """An ELF core: QEMU's ``dump-guest-memory`` (kind ``elf-core``) or a kheap dump (``kheap``).

    ``arch`` is ``"arm"`` or ``"aarch64"`` (from ``e_machine``), ``elf_class`` 32 or 64,
    ``meta`` the kheap JSON metadata (empty for QEMU cores), ``cpus`` the core registers of
    each ``NT_PRSTATUS`` note in file order.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        super().__init__(path)
        try:
            self._parse()
        except TargetError:
            self.close()
            raise
        except Exception as exc:     # pyelftools and struct raise many kinds on garbage
            self.close()
            raise TargetError(f"{self.path} is not a readable ELF core: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"CoreDump({self.path!r}, kind={self.kind}, arch={self.arch})"

    def _parse(self) -> None:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        if self._map[:4] != b"\x7fELF":
            raise TargetError(f"{self.path} is not an ELF file")
        try:
            elf = ELFFile(self._file)
            header = elf.header
            phdrs = [elf.get_segment(i).header for i in range(elf.num_segments())]
        except (ELFError, struct.error, ValueError, OSError) as exc:
            raise TargetError(f"{self.path} is a damaged ELF file: {exc}") from None
        if header["e_type"] != "ET_CORE":
            what = {"ET_EXEC": "an executable", "ET_DYN": "a shared object", "ET_REL": "an object file"}
            raise TargetError(f"{self.path} is {what.get(header['e_type'], header['e_type'])}, not a core dump")
        machine = self._map[18] | (self._map[19] << 8) if elf.little_endian else (self._map[18] << 8) | self._map[19]
        if machine not in _MACHINES:
            raise TargetError(f"{self.path} is a core of an unsupported machine ({header['e_machine']})")
        self.arch = _MACHINES[machine]
        self.elf_class = elf.elfclass
        self.byteorder = "little" if elf.little_endian else "big"
        segments, notes = [], []
        for ph in phdrs:
            if ph["p_type"] in ("PT_LOAD", "PT_NOTE") and ph["p_offset"] + ph["p_filesz"] > self.file_size:
                raise TargetError(f"{self.path} is truncated: a segment at {ph['p_paddr']:#x} needs "
                                  f"{ph['p_offset'] + ph['p_filesz']} bytes, the file has {self.file_size}")
            if ph["p_type"] == "PT_LOAD":
                segments.append(Segment(ph["p_paddr"], ph["p_offset"], ph["p_filesz"], ph["p_memsz"]))
            elif ph["p_type"] == "PT_NOTE":
                notes.append((ph["p_offset"], ph["p_filesz"]))
        if not any(s.memsz for s in segments):
            raise TargetError(f"{self.path} holds no memory (no PT_LOAD segments)")
        self._set_segments(segments)
        self.meta: Dict[str, Any] = {}
        self.cpus: List[Dict[str, int]] = []
        self.cpu_ids: List[int] = []
        for offset, size in notes:
            self._parse_notes(bytes(self._map[offset:offset + size]))
        self.kind = "kheap" if self.meta.get("format") == "kheap-dump" else "elf-core"
        if self.kind == "kheap" and self.meta.get("arch") not in (None, self.arch):
            raise TargetError(f"{self.path}: metadata says {self.meta.get('arch')}, the ELF header says {self.arch}")

    def _parse_notes(self, data: bytes) -> None:
        bo = "<" if self.byteorder == "little" else ">"
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, ntype = struct.unpack_from(bo + "III", data, pos)
            pos += 12
            name = data[pos:pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos:pos + descsz]
            pos += (descsz + 3) & ~3
            if len(desc) < descsz:
                raise TargetError(f"{self.path} has a truncated note")
            if name == b"CORE" and ntype == NT_PRSTATUS:
                self._add_prstatus(desc)
            elif name == KHEAP_NOTE_NAME and ntype == KHEAP_NOTE_TYPE:
                try:
                    meta = json.loads(desc.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise TargetError(f"{self.path} has damaged kheap metadata: {exc}") from None
                if not isinstance(meta, dict):
                    raise TargetError(f"{self.path} has damaged kheap metadata: not an object")
                self.meta = meta

    def _add_prstatus(self, desc: bytes) -> None:
        # The size tells the layout apart even if a 32-bit guest was saved in an ELF64 file.
        arch = next((a for a, p in _PRSTATUS.items() if p.size == len(desc)), self.arch)
        ps = _PRSTATUS[arch]
        regs = desc[ps.reg_offset:ps.reg_offset + ps.reg_count * ps.reg_width]
        if len(regs) < ps.reg_count * ps.reg_width:
            return
        if arch == "aarch64":
            # pstate is 64 bits in pr_reg; the layout's cpsr is 32, so take the value whole.
            vals = [int.from_bytes(regs[i * 8:i * 8 + 8], self.byteorder) for i in range(34)]
            names = [r.name for r in AARCH64_CORE.registers]
            cpu = dict(zip(names, vals))
        else:
            cpu = ARM_CORE.decode(regs, self.byteorder)
        self.cpus.append(cpu)
        self.cpu_ids.append(int.from_bytes(desc[ps.pid_offset:ps.pid_offset + 4], self.byteorder))

    def registers(self, cpu: int = 0) -> Dict[str, int]:
        """Registers of CPU ``cpu`` (index into the notes); a kheap dump may hold more names."""
        saved = self.meta.get("registers") if self.kind == "kheap" else None
        if isinstance(saved, list) and cpu < len(saved) and isinstance(saved[cpu], dict):
            return {str(k): int(v) for k, v in saved[cpu].items()}
        if cpu < len(self.cpus):
            return dict(self.cpus[cpu])
        if cpu == 0:
            return {}
        raise TargetError(f"{self.path} has no CPU {cpu} (it has {len(self.cpus)})")

    def threads(self) -> List[str]:
        """One id per saved CPU, spelled like QEMU's gdbstub thread ids (``01``, ``02``...)."""
        return [f"{i + 1:02x}" for i in range(len(self.cpus))]


def open_dump(path: Union[str, os.PathLike], base: Optional[int] = None) -> Union[CoreDump, RawDump]:
    """A reader for ``path``: a raw image when ``base`` is given, else an ELF core of any kind.

    ``base`` wins because a raw image may start with any bytes, even an ELF magic.
    """
    if base is not None:
        return RawDump(path, base)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise TargetError(f"cannot open {path}: {exc.strerror or exc}") from None
    if magic != b"\x7fELF":
        if not magic:
            raise TargetError(f"{path} is empty")
        raise TargetError(f"{path} is not an ELF core; a raw memory image needs a base address (--base)")
    return CoreDump(path)


# -- writing -----------------------------------------------------------------------------------
def _prstatus_bytes(arch: str, regs: Mapping[str, int], pid: int) -> bytes:
    ps = _PRSTATUS[arch]
    desc = bytearray(ps.size)
    struct.pack_into("<I", desc, ps.pid_offset, pid)
    names = [r.name for r in _LAYOUTS[arch].registers]
    if arch == "arm":
        names = names + ["orig_r0"]
    for i, name in enumerate(names[:ps.reg_count]):
        value = int(regs.get(name, 0)) & ((1 << (8 * ps.reg_width)) - 1)
        off = ps.reg_offset + i * ps.reg_width
        desc[off:off + ps.reg_width] = value.to_bytes(ps.reg_width, "little")
    return bytes(desc)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name0 = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name0), len(desc), ntype) + pad(name0) + pad(desc)


def write_kheap_dump(path: Union[str, os.PathLike], ranges: Iterable[Tuple[int, bytes]],
                     registers: Union[Mapping[str, int], Sequence[Mapping[str, int]]],
                     meta: Mapping[str, Any]) -> None:
    """Write a kheap dump (format in the module docstring) atomically to ``path``.

    ``ranges``: ``(physical base, bytes)``, non-overlapping. ``registers``: one CPU's registers
    by name, or a list of them. ``meta`` must name the ``arch`` (``"arm"``/``"aarch64"``);
    anything else in it (build id, hash of the kernel ELF, scenario...) is kept as given.
    """
    arch = meta.get("arch")
    if arch not in _PRSTATUS:
        raise TargetError(f"cannot write a dump for architecture {arch!r}: expected arm or aarch64")
    cpus = [dict(registers)] if isinstance(registers, Mapping) else [dict(r) for r in registers]
    items = sorted((int(b), bytes(d)) for b, d in ranges if len(d))
    for (b1, d1), (b2, _) in zip(items, items[1:]):
        if b1 + len(d1) > b2:
            raise TargetError(f"dump ranges overlap at {b2:#x}")
    info = {"format": "kheap-dump", "version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    info.update(meta)
    info["registers"] = [{k: int(v) for k, v in c.items()} for c in cpus]
    notes = b"".join(_note(b"CORE", NT_PRSTATUS, _prstatus_bytes(arch, c, i + 1))
                     for i, c in enumerate(cpus)) + \
        _note(KHEAP_NOTE_NAME, KHEAP_NOTE_TYPE, json.dumps(info, sort_keys=True).encode())

    is64 = arch == "aarch64"
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    phnum = 1 + len(items)
    offset = ehsize + phentsize * phnum
    note_off = offset
    offset += len(notes)
    loads = []
    for base, data in items:
        offset += -offset % 16
        loads.append((base, offset, len(data)))
        offset += len(data)

    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1, 0]) + bytes(8)
    machine = EM_AARCH64 if is64 else EM_ARM
    if is64:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", ET_CORE, machine, 1, 0, ehsize, 0, 0,
                                   ehsize, phentsize, phnum, 0, 0, 0)
        ph = lambda t, off, addr, size, flags, align: struct.pack(
            "<IIQQQQQQ", t, flags, off, addr, addr, size, size, align)
    else:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", ET_CORE, machine, 1, 0, ehsize, 0, 0,
                                   ehsize, phentsize, phnum, 0, 0, 0)
        ph = lambda t, off, addr, size, flags, align: struct.pack(
            "<IIIIIIII", t, off, addr, addr, size, size, flags, align)
    phdrs = ph(PT_NOTE, note_off, 0, len(notes), 0, 4)
    phdrs += b"".join(ph(PT_LOAD, off, base, size, 6, 16) for base, off, size in loads)

    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(ehdr + phdrs + notes)
            for (base, data), (_, off, _) in zip(items, loads):
                f.seek(off)
                f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TargetError(f"cannot write {path}: {exc.strerror or exc}") from None
