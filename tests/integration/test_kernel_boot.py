"""The test kernel itself, booted in QEMU: every scenario on both builds, the healthy dumps
self-consistent, each corruption really present in guest memory, and crash ending in
kernel_panic. Memory is read through QMP (pmemsave), symbols through pyelftools."""
import re
import struct

import pytest
from elftools.elf.elffile import ELFFile

from qemu.launcher import SCENARIO_TAGS, SCENARIOS

pytestmark = pytest.mark.qemu

ARCHES = ("arm", "aarch64")
KERNEL_HEAP_SIZE = 1024 * 1024
UNASSIGNED_ADDRESS = 0xDEAD0000
HEALTHY = {"clean": ("clean",), "stress": ("stress",), "leak": ("leak-1", "leak-2")}


def layout(text):
    """The KHEAP-LAYOUT line as a dict of ints."""
    m = re.search(r"KHEAP-LAYOUT end=(0x[0-9a-f]+) num_pages=(\d+) heap_start=(0x[0-9a-f]+) "
                  r"heap_size=(\d+)", text)
    assert m, text[:2000]
    return {"end": int(m.group(1), 16), "num_pages": int(m.group(2)),
            "heap_start": int(m.group(3), 16), "heap_size": int(m.group(4))}


class Guest:
    """Typed reads of guest memory for one VM (pointer width from the arch)."""

    def __init__(self, vm):
        self.vm = vm
        self.ptr = 8 if vm.arch == "aarch64" else 4
        self.header = 32 if vm.arch == "aarch64" else 16
        with open(vm.elf, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            self.symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}

    def word(self, address, size=None):
        size = size or self.ptr
        return int.from_bytes(self.vm.read_phys(address, size), "little")

    def segment(self, address):
        """(next, prev, is_allocated, segment_size) of the header at address."""
        raw = self.vm.read_phys(address, self.header)
        fmt = "<QQII" if self.ptr == 8 else "<IIII"
        return struct.unpack_from(fmt, raw)


def settled(vm_pool, arch, scenario):
    vm = vm_pool.get(arch, scenario)
    return vm, vm.serial_text()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_boots_and_checkpoints(vm_pool, arch, scenario):
    vm, text = settled(vm_pool, arch, scenario)
    assert f"KHEAP-BOOT arch={arch} scenario={scenario} " in text
    assert re.search(r"ram=\d+ ram_source=(mailbox|board-default)", text)
    checkpoints = vm.checkpoints()
    assert [c.tag for c in checkpoints] == list(SCENARIO_TAGS[scenario])
    for checkpoint in checkpoints:
        assert checkpoint.count == len(checkpoint.segments)
        assert set(checkpoint.stats) >= {"allocations", "frees", "failed", "current_usage",
                                         "peak_usage", "bytes_allocated", "bytes_freed"}
    if scenario == "crash":
        assert "KHEAP-READY" not in text
    else:
        assert f"KHEAP-READY scenario={scenario}" in text
        assert "KHEAP-PANIC" not in text


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", sorted(HEALTHY))
def test_healthy_dumps_are_self_consistent(vm_pool, arch, scenario):
    vm, text = settled(vm_pool, arch, scenario)
    heap = layout(text)
    assert heap["heap_size"] == KERNEL_HEAP_SIZE
    assert heap["heap_start"] % 4096 == 0
    header = 32 if arch == "aarch64" else 16
    page_t = 32 if arch == "aarch64" else 16
    assert heap["heap_start"] == -(-(heap["end"] + heap["num_pages"] * page_t) // 4096) * 4096
    for checkpoint in vm.checkpoints():
        segments, stats = checkpoint.segments, checkpoint.stats
        assert checkpoint.stop is None
        assert segments[0][0] == heap["heap_start"]
        assert sum(size for _, size, _ in segments) == KERNEL_HEAP_SIZE
        for (addr, size, state), (next_addr, _, next_state) in zip(segments, segments[1:]):
            assert next_addr == addr + size, "segments are not contiguous"
            assert not (state == "free" and next_state == "free"), "adjacent free segments"
        for addr, size, state in segments:
            assert addr % 16 == 0 and size % 16 == 0 and size >= header + 16
            assert state in ("used", "free")
        used = [size for _, size, state in segments if state == "used"]
        assert stats["allocations"] - stats["frees"] == len(used)
        assert stats["current_usage"] == sum(used)
        assert stats["bytes_allocated"] - stats["bytes_freed"] == stats["current_usage"]
        assert stats["peak_usage"] >= stats["current_usage"]


@pytest.mark.parametrize("arch", ARCHES)
def test_stress_has_thousands_of_mixed_segments(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "stress")
    (checkpoint,) = vm.checkpoints()
    states = [state for _, _, state in checkpoint.segments]
    assert len(states) >= 4000
    assert states.count("free") >= 100 and states.count("used") >= 4000


@pytest.mark.parametrize("arch", ARCHES)
def test_leak_second_checkpoint_has_many_more_live_blocks(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "leak")
    first, second = vm.checkpoints()
    used = lambda c: sum(1 for s in c.segments if s[2] == "used")  # noqa: E731
    assert used(second) >= used(first) + 50


@pytest.mark.parametrize("arch", ARCHES)
def test_overflow_clobbers_the_next_header_with_text(vm_pool, arch):
    vm, text = settled(vm_pool, arch, "overflow")
    (checkpoint,) = vm.checkpoints()
    victim = checkpoint.segments[1]
    assert victim[2].startswith("bad(")
    assert checkpoint.stop[0] == "outside-heap"
    guest = Guest(vm)
    next_ptr, prev_ptr, _, size = guest.segment(victim[0])
    ascii_bytes = next_ptr.to_bytes(guest.ptr, "little") + prev_ptr.to_bytes(guest.ptr, "little")
    assert all(0x20 <= b < 0x7F for b in ascii_bytes), ascii_bytes
    assert size == victim[1]


@pytest.mark.parametrize("arch", ARCHES)
def test_backlink_has_exactly_one_wrong_prev(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "backlink")
    (checkpoint,) = vm.checkpoints()
    guest = Guest(vm)
    addrs = [a for a, _, _ in checkpoint.segments]
    wrong = [(i, guest.segment(a)[1]) for i, a in enumerate(addrs)
             if guest.segment(a)[1] != (addrs[i - 1] if i else 0)]
    assert wrong == [(2, addrs[0])]


@pytest.mark.parametrize("arch", ARCHES)
def test_cycle_points_back_to_the_first_segment(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "cycle")
    (checkpoint,) = vm.checkpoints()
    assert checkpoint.stop == ("backwards", checkpoint.segments[0][0])


@pytest.mark.parametrize("arch", ARCHES)
def test_wild_next_points_into_the_kernel_image(vm_pool, arch):
    vm, text = settled(vm_pool, arch, "wild")
    (checkpoint,) = vm.checkpoints()
    reason, address = checkpoint.stop
    assert reason == "outside-heap"
    assert address == Guest(vm).symbols["app_list_sentinel"]


@pytest.mark.parametrize("arch", ARCHES)
def test_double_free_counts_two_frees_without_merging(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "double-free")
    (checkpoint,) = vm.checkpoints()
    states = [s for _, _, s in checkpoint.segments]
    assert states == ["used", "free", "used", "free"]
    used = [size for _, size, state in checkpoint.segments if state == "used"]
    stats = checkpoint.stats
    assert stats["allocations"] - stats["frees"] == len(used) - 1
    assert stats["current_usage"] == sum(used) - checkpoint.segments[1][1]


@pytest.mark.parametrize("arch", ARCHES)
def test_uaf_writes_into_a_poisoned_free_payload(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "uaf")
    (checkpoint,) = vm.checkpoints()
    addr, size, state = checkpoint.segments[1]
    assert state == "free"
    guest = Guest(vm)
    payload = vm.read_phys(addr + guest.header, size - guest.header)
    assert payload[4:12] == bytes([0, 0, 0, 0, 3, 0, 0, 0])      # refcount = 0, state = 3
    assert payload[12:] == b"\xa5" * (len(payload) - 12)


@pytest.mark.parametrize("arch", ARCHES)
def test_pages_heap_page_is_marked_free_and_listed(vm_pool, arch):
    vm, text = settled(vm_pool, arch, "pages")
    (checkpoint,) = vm.checkpoints()
    guest = Guest(vm)
    page_t = 32 if arch == "aarch64" else 16
    flags_offset = guest.ptr
    array = guest.word(guest.symbols["all_pages_array"])
    assert array == guest.symbols["__end"] == layout(text)["end"]
    victim_payload = checkpoint.segments[1][0] + guest.header
    victim_page = victim_payload // 4096
    flags = guest.word(array + victim_page * page_t + flags_offset, 4)
    assert flags & 0x7 == 0
    assert guest.word(guest.symbols["free_pages"]) == array + victim_page * page_t
    heap_page = layout(text)["heap_start"] // 4096 + 255          # untouched last heap page
    assert guest.word(array + heap_page * page_t + flags_offset, 4) & 0x7 == 0b101


@pytest.mark.parametrize("arch", ARCHES)
def test_tutorial_bug_leaves_stale_prev_links(vm_pool, arch):
    vm, _ = settled(vm_pool, arch, "tutorial-bug")
    (checkpoint,) = vm.checkpoints()
    guest = Guest(vm)
    addrs = [a for a, _, _ in checkpoint.segments]
    stale = [i for i, a in enumerate(addrs) if guest.segment(a)[1] != (addrs[i - 1] if i else 0)]
    assert len(stale) == 2
    states = [s for _, _, s in checkpoint.segments]
    assert any(a == b == "free" for a, b in zip(states, states[1:])), states


@pytest.mark.parametrize("arch", ARCHES)
def test_crash_ends_in_kernel_panic_at_the_unassigned_address(vm_pool, arch):
    vm, text = settled(vm_pool, arch, "crash")
    (checkpoint,) = vm.checkpoints()
    assert checkpoint.stop == ("outside-heap", UNASSIGNED_ADDRESS)
    m = re.search(r"KHEAP-PANIC reason=(\S+) fault_address=(0x[0-9a-f]+) "
                  r"fault_status=(0x[0-9a-f]+)", text)
    assert m and m.group(1) == "data-abort"
    fault = int(m.group(2), 16)
    header = 32 if arch == "aarch64" else 16
    assert UNASSIGNED_ADDRESS <= fault < UNASSIGNED_ADDRESS + header
    guest = Guest(vm)
    info = guest.symbols["panic_info"]
    assert guest.word(info, 4) == 1                                      # PANIC_DATA_ABORT
    assert guest.word(info + guest.ptr) == fault
