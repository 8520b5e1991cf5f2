"""Crash triage: everything a crash report needs in one report.

Where the kernel stopped (given by the face: pc, function, backtrace, registers), what its
``kernel_panic`` recorded in ``panic_info``, which heap segment the fault address hits or, when
the address is wild, which segment's link held it (a kernel that follows a clobbered ``next``
faults at that value plus a field offset), then the full check and the statistics.
"""

from __future__ import annotations

import re

from typing import Any, Dict, List, Optional

from .heap import find_segment
from .layout import StructLayout, Field
from .memory import MemoryFault
from .program import Program
from .render import SCHEMA_VERSION, check_report, render_text, stats_report
from .stats import heap_stats
from .text import escape_text
from .validate import CheckReport, check



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
    """Which segment the fault address belongs to, or whose link it came from."""
    match = find_segment(prog, fault)
    if match is not None:
        return {"kind": "inside", "segment": match.segment.address, "state": match.segment.state,
                "offset": fault - match.segment.address, "match": match.to_json()}
    header = prog.header_size
    links: List[Dict[str, Any]] = []
    for a, nxt, prev, _, _ in report.walk.records:
        for name, value in (("next", nxt), ("prev", prev)):
            if value and value <= fault < value + header:
                links.append({"segment": a, "field": name, "value": value, "offset": fault - value})
    if links:
        return {"kind": "link", "links": links, "segment": links[0]["segment"]}
    try:
        inside = prog.heap_start <= fault < prog.heap_end
    except Exception:  # noqa: BLE001 - bounds unknown
        inside = False
    return {"kind": "heap-gap" if inside else "unrelated", "segment": None}


def triage_report(prog: Program, stop: Dict[str, Any], full: bool = False) -> Dict[str, Any]:
    """The ``triage`` report: ``stop`` is the face's StopPlace as a dict."""
    result = check(prog, full=full)
    panic = read_panic_info(prog)
    fault = None
    if panic and panic.get("reason"):
        fault = panic.get("fault_address")
    report: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "report": "triage", "pointer_size": prog.pointer_size,
        "stop": dict(stop, registers=core_registers(stop.get("registers") or {})), "panic": panic, "fault_address": fault,
        "fault_origin": fault_origin(prog, result, fault) if fault is not None else None,
        "check": check_report(prog, result), "stats": stats_report(prog, heap_stats(prog, result.walk)),
    }
    report["verdict"] = ("panic" if fault is not None else "ok") if result.verdict == "ok" \
        else result.verdict
    if fault is not None:
        report["verdict"] = f"panic, heap {result.verdict}"
    return report


def triage_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for a triage report: the crash first, then the check and the stats."""
    width = int(report.get("pointer_size") or 4) * 2

    def addr(value: Optional[int]) -> str:
        return "-" if value is None else f"0x{value:0{width}x}"

    lines = [f"kheap triage: {report['verdict'].upper()}"]
    stop = report.get("stop") or {}
    if stop.get("pc") is not None:
        lines.append(f"stopped at {addr(stop['pc'])} in {escape_text(stop.get('function') or '??')}"
                     + (f" (thread {stop['thread']})" if stop.get("thread") else ""))
    for i, frame in enumerate(stop.get("frames") or []):
        lines.append(f"  #{i:<2} {addr(frame.get('pc'))} {escape_text(frame.get('function') or '??')}"
                     + (f" at {escape_text(frame['source'])}" if frame.get("source") else ""))
    panic = report.get("panic")
    if panic and panic.get("reason"):
        elr = addr(panic.get("elr"))
        if panic.get("elr_symbol"):
            elr += f" ({escape_text(panic['elr_symbol'])})"
        lines.append(f"kernel_panic: {panic['reason_text']} at fault address "
                     f"{addr(panic.get('fault_address'))}, status 0x{panic.get('fault_status', 0):x}, "
                     f"faulting instruction {elr}")
    origin = report.get("fault_origin")
    if origin:
        if origin["kind"] == "inside":
            lines.append(f"the fault address is inside the {origin['state']} segment at "
                         f"{addr(origin['segment'])} (offset {origin['offset']})")
        elif origin["kind"] == "link":
            for link in origin["links"]:
                lines.append(f"the fault address came from the {link['field']} link of segment "
                             f"{addr(link['segment'])} (value {addr(link['value'])}, field offset "
                             f"{link['offset']}): that header is corrupt")
        elif origin["kind"] == "heap-gap":
            lines.append("the fault address is inside the heap but in no segment on the list")
        else:
            lines.append("the fault address is not in the heap and no segment link holds it")
    elif panic is not None:
        lines.append("kernel_panic has not run (panic_info.reason is 0)")
    registers = stop.get("registers") or {}
    if registers:
        names = list(registers)
        lines.append("registers: " + " ".join(f"{n}={addr(registers[n])}" for n in names))
    text = "\n".join(lines) + "\n\n"
    text += render_text(report["check"], color) + "\n" + render_text(report["stats"], color)
    return text
