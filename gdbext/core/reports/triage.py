"""The crash report (``kheap triage``): where it stopped, the panic, the fault's segment, then
the check and the statistics; the analysis is :mod:`gdbext.core.triage`'s."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..check import check
from ..program import Program
from ..stats import heap_stats
from ..text import escape_text, format_address
from ..triage import core_registers, fault_origin, read_panic_info
from .base import render_text, renders, report_base
from .heap import check_report, stats_report

__all__ = ["triage_report", "triage_text"]


def triage_report(prog: Program, stop: Dict[str, Any], full: bool = False) -> Dict[str, Any]:
    """The ``triage`` report: ``stop`` is the face's StopPlace as a dict."""
    result = check(prog, full=full)
    panic = read_panic_info(prog)
    fault = None
    if panic and panic.get("reason"):
        fault = panic.get("fault_address")
    report = report_base("triage", pointer_size=prog.pointer_size)
    report.update({
        "stop": dict(stop, registers=core_registers(stop.get("registers") or {})), "panic": panic, "fault_address": fault,
        "fault_origin": fault_origin(prog, result, fault) if fault is not None else None,
        "check": check_report(prog, result), "stats": stats_report(prog, heap_stats(prog, result.walk)),
    })
    report["verdict"] = ("panic" if fault is not None else "ok") if result.verdict == "ok" \
        else result.verdict
    if fault is not None:
        report["verdict"] = f"panic, heap {result.verdict}"
    return report


@renders("triage", whole=True)
def triage_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for a triage report: the crash first, then the check and the stats."""
    pointer_size = int(report.get("pointer_size") or 4)

    def addr(value: Optional[int]) -> str:
        return format_address(value, pointer_size)

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
