"""symbols.py / layout.py against real compiler output (DWARF 2/4/5, 32/64-bit, both endians)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gdbext.core.layouts import default_layouts
from gdbext.core.symbols import ElfError, clear_elf_cache, load_elf_info

CONTRACT_C = r"""
#include <stdint.h>
#define HEAP_ALIGN 16
enum { KERNEL_HEAP_SIZE = 1024 * 1024 };
typedef struct heap_segment {
    struct heap_segment *next;
    struct heap_segment *prev;
    uint32_t is_allocated;
    uint32_t segment_size;
} __attribute__((aligned(HEAP_ALIGN))) heap_segment_t;
typedef struct {
    uint8_t  allocated : 1;
    uint8_t  kernel_page : 1;
    uint8_t  kernel_heap_page : 1;
    uint32_t reserved : 29;
} page_flags_t;
typedef struct page {
    uintptr_t vaddr_mapped;
    page_flags_t flags;
    struct page *nextpage;
    struct page *prevpage;
} page_t;
typedef struct { struct page *head; struct page *tail; uint32_t size; } page_list_t;
typedef struct heap_stats {
    uint32_t allocations, frees, failed;
    uintptr_t bytes_requested, bytes_allocated, bytes_freed, current_usage, peak_usage;
} heap_stats_t;
heap_segment_t *heap_segment_list_head;
page_t *all_pages_array;
uint32_t num_pages;
page_list_t free_pages;
uintptr_t kernel_heap_start;
uintptr_t kernel_heap_size = KERNEL_HEAP_SIZE;
heap_stats_t heap_stats = { .allocations = 7, .frees = 3, .current_usage = 0x1230, .peak_usage = 0x2000 };
const int32_t heap_poison = 0xA5;
/* initialised values the tests decode with the layouts kheap read from DWARF */
heap_segment_t probe_segment = { .next = 0, .prev = 0, .is_allocated = 1, .segment_size = 0x1230 };
page_t probe_heap_page = { .vaddr_mapped = 0x5000, .flags = { .allocated = 1, .kernel_heap_page = 1, .reserved = 0x155 } };
page_t probe_kernel_page = { .vaddr_mapped = 0x1000, .flags = { .kernel_page = 1 } };
static int helper(int x) { return x * 3; }
int uart_puts(const char *s) { int n = 0; while (*s++) n += helper(n); return n; }
"""

VARIANT_C = r"""
#include <stdint.h>
typedef struct heapSegment {
    uint32_t magic;
    struct heapSegment *next;
    struct heapSegment *prev;
    uint32_t segmentSize;
    uint32_t isAllocated;
    uint32_t owner_tag;
} __attribute__((aligned(16))) heapSegment;
heapSegment probe = { .magic = 0xC0FFEE, .segmentSize = 64, .isAllocated = 1, .owner_tag = 9 };
"""

TARGETS = {
    "arm-le-dwarf5": ("arm-none-eabi-gcc", ["-gdwarf-5"]),
    "arm-le-dwarf4": ("arm-none-eabi-gcc", ["-gdwarf-4"]),
    "arm-le-dwarf2": ("arm-none-eabi-gcc", ["-gdwarf-2", "-gstrict-dwarf"]),
    "arm-be-dwarf5": ("arm-none-eabi-gcc", ["-gdwarf-5", "-mbig-endian"]),
    "arm-be-dwarf2": ("arm-none-eabi-gcc", ["-gdwarf-2", "-gstrict-dwarf", "-mbig-endian"]),
    "aarch64-le-dwarf5": ("aarch64-linux-gnu-gcc", ["-gdwarf-5", "-ffreestanding"]),
    "aarch64-le-dwarf4": ("aarch64-linux-gnu-gcc", ["-gdwarf-4", "-ffreestanding"]),
    "aarch64-be-dwarf5": ("aarch64-linux-gnu-gcc", ["-gdwarf-5", "-ffreestanding", "-mbig-endian"]),
}


def _compile(tmp: Path, name: str, source: str, target: str) -> Path:
    cc, flags = TARGETS[target]
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / f"{name}-{target}.o"
    proc = subprocess.run([cc, "-c", "-O0", *flags, str(src), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"{cc} {' '.join(flags)} failed: {proc.stderr.strip()[:200]}")
    return out


@pytest.fixture(scope="module")
def objdir(tmp_path_factory):
    return tmp_path_factory.mktemp("elf")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_contract_layouts_from_dwarf(objdir, target):
    info = load_elf_info(_compile(objdir, "contract", CONTRACT_C, target))
    p = 8 if target.startswith("aarch64") else 4
    assert info.pointer_size == p and info.elf_class == p * 8
    assert info.endian == (">" if "-be-" in target else "<")
    assert info.has_dwarf and info.notes == []
    seg = info.layouts.segment
    assert seg.source == "dwarf"
    assert seg.header_size == (16 if p == 4 else 32)
    assert {k: f.offset for k, f in seg.fields.items()} == {
        "next": 0, "prev": p, "is_allocated": 2 * p, "segment_size": 2 * p + 4}
    page = info.layouts.page
    assert page.size == (16 if p == 4 else 32)
    assert page.flags.offset == p and page.nextpage.offset == (8 if p == 4 else 16)
    assert info.layouts.page_list.offset("size") == 2 * p
    assert info.layouts.stats.offset("current_usage") == (24 if p == 4 else 40)
    assert info.constants["KERNEL_HEAP_SIZE"] == 1024 * 1024
    assert info.heap_poison() == 0xA5
    assert info.variables["free_pages"] == ("page_list_t", info.layouts.page_list.size)
    assert info.variables["heap_segment_list_head"][0] == "heap_segment_t *"
    assert info.symbolize(info.address_of("uart_puts") + 4) == "uart_puts+0x4"
    assert info.symbol("helper") is not None and info.symbol("helper").binding == "local"

    # Decode the initialised probes with the layouts: proves the bit offsets are the real ones.
    def static(name, size):
        sym = info.symbol(name)
        return info.read_static(sym.address, size, sym.section)
    s = seg.unpack_from(static("probe_segment", seg.header_size), 0)
    assert s == (0, 0, 1, 0x1230)
    for name, vaddr, flags in (("probe_heap_page", 0x5000, ["allocated", "kernel_heap_page"]),
                               ("probe_kernel_page", 0x1000, ["kernel_page"])):
        v, word, nxt, prv = page.unpack_from(static(name, page.size), 0)
        assert v == vaddr and nxt == 0 and prv == 0
        assert page.flag_names(word) == flags
    decoded = page.struct.decode(static("probe_heap_page", page.size))
    assert decoded["flags.reserved"] == 0x155 and decoded["flags.kernel_page"] == 0
    stats = info.layouts.stats.decode(static("heap_stats", info.layouts.stats.size))
    assert stats["allocations"] == 7 and stats["current_usage"] == 0x1230 and stats["peak_usage"] == 0x2000


@pytest.mark.parametrize("target", ["arm-le-dwarf5", "aarch64-le-dwarf5", "arm-be-dwarf2"])
def test_variant_segment_names_and_extra_fields(objdir, target):
    info = load_elf_info(_compile(objdir, "variant", VARIANT_C, target))
    seg = info.layouts.segment
    assert seg.struct.name == "heapSegment" and seg.source == "dwarf"
    p = info.pointer_size
    assert seg.fields["next"].offset == p and seg.fields["segment_size"].offset == 3 * p
    assert seg.fields["is_allocated"].offset == 3 * p + 4
    assert {f.name for f in seg.extra_fields} == {"magic", "owner_tag"}
    sym = info.symbol("probe")
    raw = info.read_static(sym.address, seg.header_size, sym.section)
    assert seg.unpack_from(raw, 0) == (0, 0, 1, 64)     # canonical order despite the field order
    assert seg.decode_extra(raw) == {"magic": 0xC0FFEE, "owner_tag": 9}
    # no page_t etc. in this file: defaults with a note each
    assert any("no page type" in n for n in info.notes)


@pytest.mark.parametrize("target", ["arm-le-dwarf5", "aarch64-le-dwarf5", "arm-be-dwarf5"])
def test_stripped_elf_falls_back_to_default_layouts_with_a_note(objdir, target):
    obj = _compile(objdir, "contract", CONTRACT_C, target)
    stripped = objdir / f"stripped-{target}.o"
    tool = "arm-none-eabi-objcopy" if target.startswith("arm") else "aarch64-linux-gnu-objcopy"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    subprocess.run([tool, "--strip-debug", str(obj), str(stripped)], check=True)
    full, bare = load_elf_info(obj), load_elf_info(stripped)
    assert not bare.has_dwarf
    assert any("no DWARF" in n for n in bare.notes)
    assert bare.layouts.source == "default"
    # The documented defaults match what GCC really does for the contract's types.
    assert bare.layouts.segment.header_size == full.layouts.segment.header_size
    for name in ("next", "prev", "is_allocated", "segment_size"):
        assert bare.layouts.segment.fields[name].offset == full.layouts.segment.fields[name].offset
    assert bare.layouts.page.size == full.layouts.page.size
    assert bare.layouts.page.flag_bits == full.layouts.page.flag_bits
    assert bare.layouts.stats.describe()["fields"] == [
        {k: v for k, v in f.items() if k != "type"} | {"type": g["type"]}
        for f, g in zip(full.layouts.stats.describe()["fields"], bare.layouts.stats.describe()["fields"])]
    assert bare.heap_poison() == 0xA5         # symbols and .rodata survive --strip-debug


def test_elf_info_is_cached_by_path_mtime_and_size(objdir):
    obj = _compile(objdir, "contract", CONTRACT_C, "arm-le-dwarf5")
    a = load_elf_info(obj)
    assert load_elf_info(str(obj)) is a
    os.utime(obj, (1, 1))
    assert load_elf_info(obj) is not a
    clear_elf_cache()


def test_not_an_elf_raises_elf_error(tmp_path):
    bad = tmp_path / "x.elf"
    bad.write_bytes(b"not an elf at all" * 10)
    with pytest.raises(ElfError):
        load_elf_info(bad)
    with pytest.raises(ElfError):
        load_elf_info(tmp_path / "missing.elf")


def test_default_layouts_follow_the_contract():
    arm, a64 = default_layouts(4, "<"), default_layouts(8, "<")
    assert arm.segment.header_size == 16 and a64.segment.header_size == 32
    assert arm.page.size == 16 and a64.page.size == 32
    assert arm.page.flag_bits["kernel_heap_page"] == (2, 1)
    assert default_layouts(4, ">").page.flag_bits["allocated"] == (31, 1)
