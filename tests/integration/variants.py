"""Ground truth for the targets of issue 12 ("kheap on kernels it has never seen").

What each target *is*, written down independently of kheap so that tests can hold kheap's
reading of a target against it: the ELF, the architecture, the heap header's size, payload
offset and fields (by role: next, prev, allocated, size, and the extras), the names and linkage
of the globals, where the heap's size is defined, the page conventions, the scenarios, and for
every corruption scenario which finding codes a correct kheap must report.

And a small reader that does not use kheap at all: ``gdb_walk`` walks the segment list with
gdb-multiarch ``x/`` commands (one gdb session; a few lines of Python inside gdb follow the
links and decode each header with the offsets below), bounded like the targets' own checkpoint
dumps, so a test can compare kheap's walk, the target's dump and gdb's raw memory.

Targets:

- the C kernel's build-time variants (``kernel/include/variant.h``, ``docs/variants.md``),
  booted by ``qemu.launcher.KernelVM(arch, scenario, variant=...)``, on both arches;
- the Go target (``userland/mazarin``, Mazarin's port of the tutorial heap) in both layouts,
  run by ``qemu.launcher.GoTarget(layout, scenario)`` under qemu-aarch64.

``launch(target, scenario, **kwargs)`` returns the right (not yet started) launcher object.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIB = 1024
KERNEL_HEAP_SIZE = 1024 * KIB
POISON_BYTE = 0xA5

# The same corruption codes as tests/integration/expectations.py (each a set of alternatives:
# at least one must be reported; True: a finding with one of them must name a culprit).
# Imported the way the tests in this directory import their helpers (pytest puts the test
# directory on sys.path), or as a package module from the repository root.
try:
    from expectations import CORRUPTION_CODES
except ImportError:                                      # pragma: no cover
    from tests.integration.expectations import CORRUPTION_CODES

C_SCENARIOS = ("clean", "stress", "overflow", "backlink", "cycle", "wild", "double-free", "uaf",
               "leak", "pages", "tutorial-bug", "crash")
GO_SCENARIOS = ("clean", "stress", "overflow", "backlink", "cycle", "wild", "uaf", "pages",
                "crash")
HEALTHY = ("clean", "stress", "leak")
# Before the heap is set up (KernelVM(preinit=True), GoTarget(preinit=True)): the list head is
# NULL and the page count 0. A correct kheap says the heap is not initialised yet (issue 12
# item 6) rather than reporting corruption.
PREINIT_STATE = {"list_head": 0, "num_pages": 0}


@dataclass(frozen=True)
class Field:
    """One field of a struct: byte offset and size, or (for a bit-field) the bit offset from
    the struct's start, counted from the least significant bit of the little-endian storage
    unit the way GCC allocates them (DW_AT_data_bit_offset), and the width."""
    name: str
    offset: int
    size: int
    bit_offset: int | None = None
    bit_size: int | None = None

    def decode(self, raw: bytes) -> int:
        if self.bit_size is None:
            return int.from_bytes(raw[self.offset:self.offset + self.size], "little")
        unit = (self.bit_offset // 8) & ~3                 # the 4-byte unit holding the bits
        word = int.from_bytes(raw[unit:unit + 4], "little")
        return (word >> (self.bit_offset - unit * 8)) & ((1 << self.bit_size) - 1)


@dataclass(frozen=True)
class Symbol:
    """A global the target defines: its name in .symtab and DWARF and its linkage."""
    name: str
    linkage: str = "global"         # "global" (STB_GLOBAL, DW_AT_external) or "local" (static)


@dataclass(frozen=True)
class Target:
    name: str                       # "bitfield/arm", "mazarin-v1"
    kind: str                       # "kernel" (bare metal, qemu-system) or "go" (qemu-user)
    variant: str                    # the kernel variant, or "mazarin-v1" / "mazarin-v2"
    arch: str                       # "arm" or "aarch64"
    elf: Path
    pointer_size: int
    header_type: str                # the DWARF name of the segment header's type
    header_size: int                # sizeof the header
    payload_offset: int             # payload = header address + this
    fields: dict                    # role -> Field: next, prev, allocated, size (+ extras)
    symbols: dict                   # role -> Symbol (None: the target has no such global)
    heap_size: int
    heap_size_source: str           # where a reader can learn the heap's size (see below)
    page_type: str
    page_size: int                  # sizeof one page entry
    page_fields: dict               # role -> Field: vaddr, flags, next, prev
    page_flags: dict                # flag -> bit within the flags word
    page_conventions: dict          # see kernel_target / go_target
    checkpoint_function: str
    scenarios: tuple
    expected: dict                  # scenario -> (set of codes, culprit needed)
    extras: dict = field(default_factory=dict)   # variant-specific facts (magic, back pointer)

    @property
    def corruption_scenarios(self) -> tuple:
        return tuple(s for s in self.scenarios if s in self.expected)

    @property
    def healthy_scenarios(self) -> tuple:
        return tuple(s for s in self.scenarios if s in HEALTHY)

    def decode_header(self, raw: bytes) -> dict:
        """Role -> value for one header's bytes (at least header_size of them)."""
        return {role: f.decode(raw) for role, f in self.fields.items()}


# -- the C kernel's variants ---------------------------------------------------------------------

KERNEL_VARIANTS = ("default", "bitfield", "tutorial", "tutorial-g3", "reordered", "canary",
                   "renamed")
CANARY_MAGIC = 0x4B48534D


def _kernel_elf(variant: str, arch: str) -> Path:
    base = REPO / "kernel" / "build"
    return base / arch / "kernel.elf" if variant == "default" else base / variant / arch / "kernel.elf"


def _c_header(variant: str, p: int) -> tuple:
    """(type name, size, payload offset, fields by role) of the C header for pointer size p."""
    aligned = lambda n: (n + 15) & ~15                     # noqa: E731  aligned(16)
    if variant == "bitfield":
        size = 2 * p + 4 if p == 4 else 2 * p + 8           # 12 on ARMv7, 24 on AArch64
        return "heap_segment_t", size, size, {
            "next": Field("next", 0, p), "prev": Field("prev", p, p),
            "allocated": Field("is_allocated", 2 * p, 4, bit_offset=16 * p, bit_size=1),
            "size": Field("segment_size", 2 * p, 4, bit_offset=16 * p + 1, bit_size=31)}
    if variant == "reordered":
        size = aligned(8 + 2 * p)
        return "heap_segment_t", size, size, {
            "size": Field("segment_size", 0, 4), "allocated": Field("is_allocated", 4, 4),
            "next": Field("next", 8, p), "prev": Field("prev", 8 + p, p)}
    if variant == "canary":
        size = aligned(2 * p + 12)
        return "heap_segment_t", size, size, {
            "next": Field("next", 0, p), "prev": Field("prev", p, p),
            "allocated": Field("is_allocated", 2 * p, 4), "size": Field("segment_size", 2 * p + 4, 4),
            "magic": Field("magic", 2 * p + 8, 4)}
    names = ("mem_block_t", "in_use", "block_size") if variant == "renamed" else \
        ("heap_segment_t", "is_allocated", "segment_size")
    size = aligned(2 * p + 8)
    return names[0], size, size, {
        "next": Field("next", 0, p), "prev": Field("prev", p, p),
        "allocated": Field(names[1], 2 * p, 4), "size": Field(names[2], 2 * p + 4, 4)}


def kernel_target(variant: str, arch: str) -> Target:
    p = 4 if arch == "arm" else 8
    type_name, size, payload, fields = _c_header(variant, p)
    tutorial = variant in ("tutorial", "tutorial-g3")
    local = "local" if tutorial else "global"
    names = {"list_head": "heap_segment_list_head", "heap_start": "kernel_heap_start",
             "heap_size": "kernel_heap_size", "page_array": "all_pages_array",
             "num_pages": "num_pages", "free_pages": "free_pages"}
    if variant == "renamed":
        names.update(list_head="kheap_list", heap_start="heap_base", heap_size="heap_bytes",
                     page_array="page_array", num_pages="total_pages", free_pages="free_page_list")
    symbols = {role: Symbol(name, local if role in ("list_head", "page_array", "num_pages",
                                                    "free_pages") else "global")
               for role, name in names.items()}
    if tutorial:
        symbols["heap_start"] = None                       # the tutorial keeps no heap bounds
        symbols["heap_size"] = None
    symbols.update(stats=Symbol("heap_stats"), poison=Symbol("heap_poison"),
                   end=Symbol("__end"), panic=Symbol("panic_info"),
                   wild_target=Symbol("app_list_sentinel"))   # where `wild` points a next
    if variant == "tutorial":
        source = "#define KERNEL_HEAP_SIZE (1024 * 1024) in kernel/include/kheap.h: in no symbol"
    elif variant == "tutorial-g3":
        source = ("#define KERNEL_HEAP_SIZE (1024 * 1024), in .debug_macro (built with -g3; "
                  "DWARF 5 DW_MACRO_define_strp)")
    else:
        source = (f"DWARF enumerator KERNEL_HEAP_SIZE and the variable "
                  f"{names['heap_size']} (uintptr_t)")
    page_size = 4 * p
    expected = {s: CORRUPTION_CODES[s] for s in C_SCENARIOS if s in CORRUPTION_CODES}
    extras = {}
    if variant == "canary":
        extras["magic"] = CANARY_MAGIC                     # in every header the allocator made
    if variant == "bitfield":
        extras["note"] = ("is_allocated is one bit: HEAP-FLAG cannot happen; payloads are only "
                          f"{p}-byte aligned (segments and sizes stay multiples of 16)")
    return Target(
        name=f"{variant}/{arch}", kind="kernel", variant=variant, arch=arch,
        elf=_kernel_elf(variant, arch), pointer_size=p, header_type=type_name,
        header_size=size, payload_offset=payload, fields=fields, symbols=symbols,
        heap_size=KERNEL_HEAP_SIZE, heap_size_source=source,
        page_type="page_t", page_size=page_size,
        page_fields={"vaddr": Field("vaddr_mapped", 0, p), "flags": Field("flags", p, 4),
                     "next": Field("nextpage", 2 * p, p), "prev": Field("prevpage", 3 * p, p)},
        page_flags={"allocated": 0, "kernel_page": 1, "kernel_heap_page": 2},
        page_conventions={
            "page_array": "all_pages_array == &__end, num_pages entries (RAM / 4096)",
            "heap_start": "align_up(&__end + num_pages * sizeof(page_t), 4096)",
            "kernel_pages": "allocated|kernel_page, pages 0 .. end of the page array",
            "heap_pages": "allocated|kernel_heap_page, the KERNEL_HEAP_SIZE / 4096 pages of the heap",
            "free_pages": "flags 0, on free_pages (page_list_t head/tail/size), ascending",
            "vaddr_mapped": ("i * 4096 on kernel and heap pages, 0 on every other page "
                             "(also on pages alloc_page hands out)") if tutorial
            else "i * 4096 on every page (identity)",
            "links": "pages not on the free list have NULL nextpage/prevpage",
        },
        checkpoint_function="kheap_checkpoint", scenarios=C_SCENARIOS, expected=expected,
        extras=extras)


# -- the Go target -------------------------------------------------------------------------------

GO_LAYOUTS = ("v1", "v2")


def go_target(layout: str) -> Target:
    if layout == "v1":
        size, payload = 24, 24
        fields = {"next": Field("next", 0, 8), "prev": Field("prev", 8, 8),
                  "allocated": Field("isAllocated", 16, 4), "size": Field("segmentSize", 20, 4)}
        extras = {}
    else:
        size, payload = 32, 48
        fields = {"next": Field("next", 0, 8), "prev": Field("prev", 8, 8),
                  "allocated": Field("isAllocated", 16, 4), "reserved": Field("isReserved", 20, 4),
                  "size": Field("segmentSize", 24, 4)}
        extras = {"back_pointer": "the header's address, 8 bytes at payload - 8 (header + 40) "
                                  "in used segments; poisoned with the rest of a free payload",
                  "reserved": "clean has one segment with isReserved=1 (kmallocReserved(256))"}
    extras["free_payload"] = ("poison (0xA5) from header + sizeof(heapSegment) to the segment's "
                              "end, as in the C kernel (Mazarin itself does not poison)")
    expected = {s: CORRUPTION_CODES[s] for s in GO_SCENARIOS if s in CORRUPTION_CODES}
    return Target(
        name=f"mazarin-{layout}", kind="go", variant=f"mazarin-{layout}", arch="aarch64",
        elf=REPO / "userland" / "mazarin" / "build" / layout / "mazarin.elf", pointer_size=8,
        header_type="main.heapSegment", header_size=size, payload_offset=payload,
        fields=fields,
        symbols={"list_head": Symbol("main.heapSegmentListHead"), "heap_start": None,
                 "heap_size": None, "page_array": Symbol("main.allPagesArrayBase"),
                 "num_pages": Symbol("main.numPages"), "free_pages": Symbol("main.freePages"),
                 "stats": None, "poison": Symbol("main.heapPoison"), "end": None, "panic": None,
                 "wild_target": Symbol("main.appListSentinel")},
        heap_size=KERNEL_HEAP_SIZE,
        heap_size_source="DW_TAG_constant main.KERNEL_HEAP_SIZE (type int, DW_AT_const_value)",
        page_type="main.Page", page_size=32,
        page_fields={"vaddr": Field("vaddrMapped", 0, 8), "flags": Field("flags", 8, 4),
                     "next": Field("next", 16, 8), "prev": Field("prev", 24, 8)},
        page_flags={"allocated": 0, "kernel_page": 1},
        page_conventions={
            "page_array": ("main.allPagesArrayBase (a uintptr, not a pointer) = main.machineMemory "
                           "rounded up to 4096; main.numPages (uint32) entries, page i describes "
                           "process address i * 4096"),
            "heap_start": "align_up(allPagesArrayBase + numPages * 32, 4096) = the list head",
            "kernel_pages": "allocated|kernel (3): pages 0 .. end of the page array",
            "heap_pages": "allocated|kernel (3): no heap-page bit",
            "free_pages": ("flags 0, on main.freePages (a *Page, no tail, no count), pushed on "
                           "the head: descending addresses"),
            "vaddr_mapped": "i * 4096 on kernel and heap pages, 0 on the others",
            "links": "pages not on the free list have nil next/prev",
        },
        checkpoint_function="main.kheapCheckpoint", scenarios=GO_SCENARIOS, expected=expected,
        extras=extras)


def kernel_targets(arches=("arm", "aarch64"), variants=KERNEL_VARIANTS) -> list:
    return [kernel_target(v, a) for v in variants for a in arches]


def go_targets() -> list:
    return [go_target(layout) for layout in GO_LAYOUTS]


def all_targets() -> list:
    return kernel_targets() + go_targets()


def target(name: str) -> Target:
    for t in all_targets():
        if t.name == name:
            return t
    raise KeyError(name)


def launch(t: Target, scenario: str = "clean", **kwargs):
    """The (not yet started) launcher object for target t: KernelVM or GoTarget."""
    from qemu.launcher import GoTarget, KernelVM
    if t.kind == "go":
        return GoTarget(layout=t.variant.split("-", 1)[1], scenario=scenario, **kwargs)
    return KernelVM(arch=t.arch, scenario=scenario, variant=t.variant, **kwargs)


def symbol_address(t: Target, role: str) -> int:
    """The address of a global, from .symtab (local symbols included)."""
    from elftools.elf.elffile import ELFFile
    name = t.symbols[role].name
    with open(t.elf, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return sym["st_value"]
    raise KeyError(f"{t.elf}: no symbol {name}")


# -- an independent reader: gdb-multiarch x/ commands ---------------------------------------------

def _tool(name: str) -> str:
    """A program from PATH, else from the system directories (a runner's PATH may be minimal)."""
    import shutil
    return shutil.which(name) or shutil.which(name, path="/usr/local/bin:/usr/bin:/bin") or name


GDB = _tool("gdb-multiarch")

_WALKER = textwrap.dedent('''
    import gdb, json
    P = json.load(open({params!r}))

    UNIT = P["pointer_size"]                 # x/ prints one value per unit: words, not bytes
    LETTER = "w" if UNIT == 4 else "g"

    def read(address, count):
        """count bytes (a multiple of the pointer size) at address, through one x/ command."""
        text = gdb.execute("x/%dx%s %d" % (count // UNIT, LETTER, address), to_string=True)
        out = bytearray()
        for line in text.splitlines():
            for token in line.split(":", 1)[1].split():
                out += int(token, 16).to_bytes(UNIT, "little")
        return bytes(out)

    def field(raw, f):
        offset, size, bit_offset, bit_size = f
        if bit_size is None:
            return int.from_bytes(raw[offset:offset + size], "little")
        unit = (bit_offset // 8) & ~3
        word = int.from_bytes(raw[unit:unit + 4], "little")
        return (word >> (bit_offset - unit * 8)) & ((1 << bit_size) - 1)

    result = {{"segments": [], "stop": None}}
    try:
        head = int.from_bytes(read(P["head_symbol"], P["pointer_size"]), "little")
        result["head"] = head
        start, end, hsize = P["heap_start"], P["heap_start"] + P["heap_size"], P["header_size"]
        seg, previous = head, 0
        while seg:
            if seg < start or seg + hsize > end:
                result["stop"] = ["outside-heap", seg]; break
            if seg % 16:
                result["stop"] = ["misaligned", seg]; break
            if result["segments"] and seg <= previous:
                result["stop"] = ["backwards", seg]; break
            if len(result["segments"]) >= P["heap_size"] // P["payload_offset"]:
                result["stop"] = ["limit", seg]; break
            raw = read(seg, hsize)
            values = {{role: field(raw, f) for role, f in P["fields"].items()}}
            values["address"] = seg
            result["segments"].append(values)
            previous, seg = seg, values["next"]
    except gdb.error as error:
        result["error"] = str(error)
    json.dump(result, open({out!r}, "w"))
''')


@dataclass
class GdbWalk:
    head: int | None
    segments: list                  # [{"address", "next", "prev", "allocated", "size", ...}]
    stop: tuple | None              # (reason, address) as in the checkpoint dump
    error: str | None = None

    def as_dump(self) -> list:
        """[(address, size, state)] in the checkpoint dump's terms."""
        states = {0: "free", 1: "used"}
        return [(s["address"], s["size"], states.get(s["allocated"], f"bad({s['allocated']})"))
                for s in self.segments]


def gdb_walk(t: Target, port: int, heap_start: int, timeout: float = 180) -> GdbWalk:
    """Walks the segment list of the target on 127.0.0.1:port with gdb-multiarch ``x/``
    commands, with the ground truth's offsets (not kheap's, not gdb's idea of the types), and
    the checkpoint dump's bounds: it stops at a segment outside
    [heap_start, heap_start + heap_size), misaligned, not above the previous one, or past the
    number of segments the heap can hold. The gdb session detaches at the end."""
    params = {
        "head_symbol": symbol_address(t, "list_head"), "pointer_size": t.pointer_size,
        "heap_start": heap_start, "heap_size": t.heap_size, "header_size": t.header_size,
        "payload_offset": t.payload_offset,
        "fields": {role: [f.offset, f.size, f.bit_offset, f.bit_size] for role, f in t.fields.items()},
    }
    with tempfile.TemporaryDirectory(prefix="kheap-gdbwalk-") as tmp:
        params_file, out_file, script = (os.path.join(tmp, n) for n in ("p.json", "o.json", "w.py"))
        Path(params_file).write_text(json.dumps(params))
        Path(script).write_text(_WALKER.format(params=params_file, out=out_file))
        argv = [GDB, "--batch", "-nx", "-iex", "set pagination off", "-iex", "set confirm off",
                "-iex", "set auto-load no", "-ex", f"file {t.elf}",
                "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"source {script}",
                "-ex", "detach"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if not os.path.exists(out_file):
            raise AssertionError(f"gdb walk produced nothing (rc {proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        data = json.loads(Path(out_file).read_text())
    stop = tuple(data["stop"]) if data.get("stop") else None
    return GdbWalk(data.get("head"), data["segments"], stop, data.get("error"))


def gdb_read(t: Target, port: int, commands, timeout: float = 60) -> str:
    """Runs gdb commands (``x/``, ``print``, ...) against the target; returns gdb's stdout."""
    argv = [GDB, "--batch", "-nx", "-iex", "set pagination off", "-iex", "set confirm off",
            "-iex", "set auto-load no", "-ex", f"file {t.elf}",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        argv += ["-ex", command]
    argv += ["-ex", "detach"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def gdb_gcore(t: Target, port: int, path, timeout: float = 180) -> Path:
    """A dump of the target as gdb's ``gcore`` writes it. For the Go target (through the
    launcher's proxy) that is an ELF core of the process built from the ELF's sections (qemu-user
    offers no /proc/PID/maps): PT_LOAD segments at the process's virtual addresses, PhysAddr 0,
    ``.noptrbss`` (the heap and page array) included. For a kernel, prefer QEMU's own
    ``dump-guest-memory`` (``KernelVM.qmp``), which is what ``kheap --core`` reads."""
    path = Path(path)
    argv = [GDB, "--batch", "-nx", "-iex", "set pagination off", "-iex", "set confirm off",
            "-iex", "set auto-load no", "-ex", f"file {t.elf}",
            "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"gcore {path}", "-ex", "detach"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if not path.is_file():
        raise AssertionError(f"gcore wrote nothing:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return path


def core_read(path, address: int, size: int) -> bytes:
    """size bytes at virtual address from an ELF core's PT_LOAD segments."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= address and \
                    address + size <= seg["p_vaddr"] + seg["p_filesz"]:
                f.seek(seg["p_offset"] + address - seg["p_vaddr"])
                return f.read(size)
    raise KeyError(f"{path}: {address:#x}+{size} is in no PT_LOAD")
