"""The crash report (``kheap triage``): where it stopped, the panic, the fault's segment, then
the check and the statistics; the analysis is :mod:`gdbext.core.triage`'s."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..check import check
from ..debuginfo import code_info
from ..program import Program
from ..stats import heap_stats
from ..text import escape_text, format_address
from ..triage import core_registers, fault_origin, read_panic_info
from .base import render_text, renders, report_base
from .heap import check_report, stats_report

__all__ = ["triage_report", "triage_text", "stop_named", "register_lines"]


def triage_report(prog: Program, stop: Dict[str, Any], full: bool = False) -> Dict[str, Any]:
    """The ``triage`` report: ``stop`` is the face's StopPlace as a dict."""
    result = check(prog, full=full)
    panic = read_panic_info(prog)
    fault = None
    if panic and panic.get("reason"):
        fault = panic.get("fault_address")
    report = report_base("triage", pointer_size=prog.pointer_size)
    report.update({
        "stop": stop_named(prog, stop), "panic": panic, "fault_address": fault,
        "fault_origin": fault_origin(prog, result, fault) if fault is not None else None,
        "check": check_report(prog, result), "stats": stats_report(prog, heap_stats(prog, result.walk)),
    })
    report["verdict"] = ("panic" if fault is not None else "ok") if result.verdict == "ok" \
        else result.verdict
    if fault is not None:
        report["verdict"] = f"panic, heap {result.verdict}"
    return report


def stop_named(prog: Program, stop: Dict[str, Any]) -> Dict[str, Any]:
    """The face's stop place with its pc named by the core, the same in every face.

    Why: gdb and lldb name the newest frame by DWARF's inlined subroutines (the crash kernel's
    ``kernel_idle`` loop, inlined into ``kernel_panic``), the CLI by the ELF's symbols
    (``kernel_panic+0xac``): one stop, two names. Here ``function`` is always the ELF symbol
    and offset of the pc, ``inlined`` the function inlined there and ``source`` its line
    (:mod:`gdbext.core.debuginfo`); the face's own backtrace (``frames``) is kept as it is.
    """
    out = dict(stop, registers=core_registers(stop.get("registers") or {}))
    pc = stop.get("pc")
    if pc is None:
        return out
    try:
        frame = code_info(prog.elf).frame(pc, False)
    except Exception:  # noqa: BLE001 - no DWARF, an odd ELF: the face's name stands
        return out
    if frame.function:
        out["function"] = frame.function
    out["inlined"] = frame.inlined
    out["source"] = frame.source
    return out


# Registers in the order gdb lists them: numbered ones by number, then the named ones.
_NAMED_ORDER = ("fp", "ip", "sp", "lr", "pc", "cpsr", "xpsr")


def _register_key(name: str) -> Any:
    digits = name[1:]
    if name[:1] in ("r", "x") and digits.isdigit():
        return (0, int(digits), name)
    return (1, _NAMED_ORDER.index(name) if name in _NAMED_ORDER else len(_NAMED_ORDER), name)


def register_lines(registers: Dict[str, int], pointer_size: int) -> List[str]:
    """Registers in aligned columns, as gdb's ``info registers`` and pwndbg's context show them:
    name right-aligned, value at the pointer's width, 4 per row (3 for 64-bit)."""
    names = sorted(registers, key=_register_key)
    if not names:
        return []
    width = max(len(n) for n in names)
    cells = [f"{n:>{width}} {format_address(registers[n], pointer_size)}" for n in names]
    per_row = 4 if pointer_size <= 4 else 3
    return ["  " + "   ".join(cells[i:i + per_row]) for i in range(0, len(cells), per_row)]


@renders("triage", whole=True)
def triage_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for a triage report: the crash first, then the check and the stats."""
    pointer_size = int(report.get("pointer_size") or 4)

    def addr(value: Optional[int]) -> str:
        return format_address(value, pointer_size)

    lines = [f"kheap triage: {report['verdict'].upper()}"]
    stop = report.get("stop") or {}
    if stop.get("pc") is not None:
        where = escape_text(stop.get("function") or "??")
        if stop.get("inlined"):
            # As gdb's backtrace shows it: the inlined function, in the function that holds it.
            where = f"{escape_text(stop['inlined'])} (inlined in {where})"
        if stop.get("source"):
            where += f" at {escape_text(stop['source'])}"
        lines.append(f"stopped at {addr(stop['pc'])} in {where}"
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
                read = (f"{escape_text(link['reads'])} (offset {link['offset']})" if link.get("reads")
                        else f"offset {link['offset']}")
                lines.append(f"the fault address came from the {link['field']} link of segment "
                             f"{addr(link['segment'])}: the kernel followed it to {addr(link['value'])} and "
                             f"read {read} there: that header is corrupt")
        elif origin["kind"] == "heap-gap":
            lines.append("the fault address is inside the heap but in no segment on the list")
        else:
            lines.append("the fault address is not in the heap and no segment link holds it")
    elif panic is not None:
        lines.append("kernel_panic has not run (panic_info.reason is 0)")
    registers = stop.get("registers") or {}
    if registers:
        lines.append("registers:")
        lines += register_lines(registers, pointer_size)
    text = "\n".join(lines) + "\n\n"
    text += render_text(report["check"], color) + "\n" + render_text(report["stats"], color)
    return text
