"""The real kernel ELFs (kernel/build/<arch>/kernel.elf): layouts and symbols come out right."""

from pathlib import Path

import pytest

from gdbext.core.symbols import load_elf_info

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch,p", [("arm", 4), ("aarch64", 8)])
def test_kernel_elf_layouts_and_symbols(arch, p):
    elf = ROOT / "kernel" / "build" / arch / "kernel.elf"
    if not elf.exists():
        pytest.skip(f"{elf} not built (make -C kernel)")
    info = load_elf_info(elf)
    assert info.pointer_size == p and info.endian == "<" and info.has_dwarf
    assert info.machine == ("EM_ARM" if p == 4 else "EM_AARCH64")
    assert info.notes == []
    seg = info.layouts.segment
    assert seg.header_size == (16 if p == 4 else 32)
    assert [seg.fields[n].offset for n in ("next", "prev", "is_allocated", "segment_size")] == [0, p, 2 * p, 2 * p + 4]
    page = info.layouts.page
    assert page.size == (16 if p == 4 else 32)
    assert page.flag_bits["allocated"] == (0, 1) and page.flag_bits["kernel_heap_page"] == (2, 1)
    assert page.nextpage.offset == (8 if p == 4 else 16)
    assert info.layouts.page_list.offset("size") == 2 * p
    assert [f.name for f in info.layouts.stats.fields] == [
        "allocations", "frees", "failed", "bytes_requested", "bytes_allocated", "bytes_freed",
        "current_usage", "peak_usage"]
    assert info.constants.get("KERNEL_HEAP_SIZE") == 1024 * 1024
    for name in ("__end", "all_pages_array", "num_pages", "free_pages", "heap_segment_list_head",
                 "kernel_heap_start", "kernel_heap_size", "heap_stats", "heap_poison", "panic_info",
                 "kheap_checkpoint", "kernel_panic", "kmalloc", "kfree"):
        assert info.symbol(name) is not None, name
    assert info.heap_poison() in (0xA5, -1)
    assert info.in_image(info.address_of("kmalloc"))
    assert info.symbolize(info.address_of("kmalloc") + 4) == "kmalloc+0x4"
    assert info.variables["heap_segment_list_head"][0] in ("heap_segment_t *", "struct heap_segment *")


@pytest.mark.parametrize("arch,tool", [("arm", "arm-none-eabi-objcopy"), ("aarch64", "aarch64-linux-gnu-objcopy")])
def test_stripped_kernel_elf_uses_default_layouts_that_match_dwarf(arch, tool, tmp_path):
    import shutil
    import subprocess
    elf = ROOT / "kernel" / "build" / arch / "kernel.elf"
    if not elf.exists() or shutil.which(tool) is None:
        pytest.skip(f"{elf} not built or {tool} missing")
    stripped = tmp_path / "kernel-stripped.elf"
    subprocess.run([tool, "--strip-debug", str(elf), str(stripped)], check=True)
    full, bare = load_elf_info(elf), load_elf_info(stripped)
    assert not bare.has_dwarf and any("no DWARF" in n for n in bare.notes)
    assert bare.layouts.segment.header_size == full.layouts.segment.header_size
    assert ({k: f.offset for k, f in bare.layouts.segment.fields.items()}
            == {k: f.offset for k, f in full.layouts.segment.fields.items()})
    assert bare.layouts.page.size == full.layouts.page.size
    assert bare.layouts.page.flag_bits == full.layouts.page.flag_bits
    assert ([(f.name, f.offset, f.size) for f in bare.layouts.stats.fields]
            == [(f.name, f.offset, f.size) for f in full.layouts.stats.fields])
    assert bare.layouts.page_list.size == full.layouts.page_list.size
    assert bare.address_of("heap_segment_list_head") == full.address_of("heap_segment_list_head")
    assert bare.heap_poison() == full.heap_poison()
