"""Crash triage: everything a crash report needs in one report.

Where the kernel stopped (given by the face: pc, function, backtrace, registers), what its
``kernel_panic`` recorded in ``panic_info``, which heap segment the fault address hits or, when
the address is wild, which segment's link held it (a kernel that follows a clobbered ``next``
faults at that value plus a field offset), then the full check and the statistics.
"""

from __future__ import annotations

import re

from typing import Any, Dict, List, Optional

from .check import CheckReport
from .layout import Field, StructLayout
from .memory import MemoryFault
from .program import Program



def reason_name(prog: Program, reason: int) -> str:
    """The kernel's own name for a panic reason, from its DWARF enumerators (PANIC_DATA_ABORT
    -> "data abort"); the numbering is the kernel's business, not ours."""
    for name, value in prog.elf.constants.items():
        if name.startswith("PANIC_") and value == reason:
            return name[len("PANIC_"):].lower().replace("_", " ")
    return f"reason {reason}"


_CORE_REGISTER = re.compile(r"^(r\d+|x\d+|sp|lr|pc|fp|cpsr|xpsr)$")


def core_registers(registers: Dict[str, int]) -> Dict[str, int]:
    """The general-purpose registers a crash report needs (r0-r15/x0-x30, sp, lr, pc, cpsr),
    not the hundreds of system registers QEMU's target description adds."""
    return {name: value for name, value in registers.items() if _CORE_REGISTER.match(name)}


def panic_layout(prog: Program) -> StructLayout:
    """``struct panic_info`` from DWARF when the ELF has it, else the documented default
    ``{uint32_t reason; uintptr_t fault_address, fault_status, elr}``."""
    found = prog.layouts.extra.get("panic_info")
    if found is not None:
        return found
    p = prog.pointer_size
    fields = (Field("reason", 0, 4), Field("fault_address", p, p), Field("fault_status", 2 * p, p),
              Field("elr", 3 * p, p))
    return StructLayout("panic_info", 4 * p, fields, prog.endian, "default")


def read_panic_info(prog: Program) -> Optional[Dict[str, Any]]:
    """``panic_info`` decoded, or None when the kernel has no such symbol or it is unreadable."""
    address = prog.elf.address_of("panic_info")
    if address is None:
        return None
    layout = panic_layout(prog)
    try:
        values = layout.decode(prog.read(address, layout.size))
    except MemoryFault:
        return None
    reason = values.get("reason", 0)
    values["reason_text"] = reason_name(prog, reason)
    values["layout_source"] = layout.source
    if values.get("elr") is not None:
        values["elr_symbol"] = prog.elf.symbolize(values["elr"])
    return values


def fault_origin(prog: Program, report: CheckReport, fault: int) -> Dict[str, Any]:
    """Which block the fault address belongs to, or whose link it came from."""
    allocator = prog.allocator
    match = allocator.find(prog, fault)
    if match is not None:
        return {"kind": "inside", "segment": match.segment.address, "state": match.segment.state,
                "offset": fault - match.segment.address, "match": match.to_json()}
    links = allocator.links_into(report.walk, fault, prog.header_size)
    if links:
        return {"kind": "link", "links": links, "segment": links[0]["segment"]}
    try:
        inside = prog.heap_start <= fault < prog.heap_end
    except Exception:  # noqa: BLE001 - bounds unknown
        inside = False
    return {"kind": "heap-gap" if inside else "unrelated", "segment": None}
