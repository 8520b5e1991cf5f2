"""Crash triage over synthetic heaps: where a fault address came from, panic reasons by name."""

import pytest

from gdbext.core.symbols import make_elf_info
from gdbext.core.reports import triage_report, triage_text
from gdbext.core.triage import core_registers, fault_origin, reason_name
from gdbext.core.check import check
from heapbuilder import SyntheticKernel


@pytest.mark.parametrize("pointer_size,endian", [(4, "<"), (8, "<"), (4, ">"), (8, ">")])
def test_fault_address_is_traced_to_the_link_that_held_it(pointer_size, endian):
    k = SyntheticKernel(pointer_size, endian)
    ptrs = [k.kmalloc(40) for _ in range(4)]
    victim = ptrs[1] - k.hdr
    k.set_seg(victim, next=0xDEAD0000)
    prog = k.program()
    report = check(prog)
    origin = fault_origin(prog, report, 0xDEAD0000 + 2 * pointer_size)
    assert origin["kind"] == "link"
    assert origin["segment"] == victim
    assert origin["links"][0] == {"segment": victim, "field": "next", "value": 0xDEAD0000,
                                  "offset": 2 * pointer_size, "reads": "is_allocated"}


def test_fault_inside_a_segment_and_unrelated_faults():
    k = SyntheticKernel(4, "<")
    ptr = k.kmalloc(64)
    prog = k.program()
    report = check(prog)
    inside = fault_origin(prog, report, ptr + 8)
    assert inside["kind"] == "inside" and inside["segment"] == ptr - k.hdr
    assert inside["offset"] == 8 + k.hdr
    assert fault_origin(prog, report, 0x10)["kind"] == "unrelated"


def test_report_without_a_panic_symbol_is_the_check_and_stats():
    k = SyntheticKernel(8, "<")
    k.kmalloc(100)
    prog = k.program()
    # A pc in no symbol of the ELF: the face's name for it stands (escaped).
    stop = {"pc": 0x40, "function": "kernel_idle\x1b[31m", "frames": [], "registers": {"x0": 1, "MAIR_EL1": 5}, "thread": 1}
    report = triage_report(prog, stop)
    assert report["panic"] is None and report["fault_address"] is None
    assert report["verdict"] == "ok"
    assert report["stop"]["registers"] == {"x0": 1}
    text = triage_text(report)
    assert "\x1b" not in text and "kernel_idle\\x1b[31m" in text


def test_panic_reasons_come_from_the_kernels_enumerators():
    k = SyntheticKernel(4, "<")
    prog = k.program(elf=make_elf_info(4, "<", k.symbols, k.sizes, constants={"PANIC_DATA_ABORT": 7},
                                       layouts=k.layouts))
    assert reason_name(prog, 7) == "data abort"
    assert reason_name(prog, 1) == "reason 1"


def test_core_registers_keeps_the_general_purpose_ones():
    regs = {"r0": 1, "sp": 2, "lr": 3, "pc": 4, "cpsr": 5, "fpscr": 6, "x30": 7, "DBGBVR5_EL1": 8}
    assert core_registers(regs) == {"r0": 1, "sp": 2, "lr": 3, "pc": 4, "cpsr": 5, "x30": 7}
