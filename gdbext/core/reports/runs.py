"""The command line's own runs: ``kheap dump`` (what it saved), ``kheap demo`` (the reports of a
booted kernel) and ``kheap check`` of many dumps (one verdict each), each builder beside its text.

They are reports like every other: a JSON-ready dict printed by :func:`.base.to_json_text` with
``--json``, its text rendered from that same dict by :func:`.base.render_text`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..text import format_address, plural
from .base import HEADING, PLAIN, STATE_TOKEN, Text, clean, render_text, renders, report_base

__all__ = ["dump_report", "demo_report", "demo_text", "check_many_report", "dump_verdict_line", "DUMP_STATUSES"]

# What became of one dump in ``check --core DIR``: its check ran clean (warnings at most), found
# errors, could not read part of the heap (and found nothing wrong in the rest), or the dump
# could not be checked (unreadable, wrong ELF).
DUMP_STATUSES = ("ok", "corrupt", "incomplete", "error")


def dump_report(path: str, size: int, ranges: Sequence[Dict[str, Any]], cpus: int, stop_cpu: int,
                arch: str, elf_sha256: str, pointer_size: int) -> Dict[str, Any]:
    """``kheap dump``: the file written (absolute ``path``, ``size`` in bytes), the memory ranges
    saved (``start``, ``size``, ``what``: the names of what each covers) and the CPUs' count."""
    d = report_base("dump", pointer_size=pointer_size)
    d.update({"path": path, "bytes": size, "ranges": list(ranges), "cpus": cpus, "stop_cpu": stop_cpu,
              "arch": arch, "elf_sha256": elf_sha256})
    return clean(d)


@renders("dump")
def _render_dump(r: Dict[str, Any], out: Text) -> None:
    cpus = r["cpus"]
    out.line(f"kheap dump: wrote {r['path']} ({r['bytes'] / 1048576:.1f} MiB, "
             f"registers of {plural(cpus, 'CPU')})")
    for saved in r["ranges"]:
        out.line(f"  {format_address(saved['start'], out.pointer_size)} {saved['size']:>9} bytes  "
                 f"{', '.join(saved['what'])}")
    out.line(f"read it back with: kheap check --core {r['path']}")


def demo_report(arch: str, scenario: str, elf: str,
                steps: Sequence[Tuple[str, Sequence[str], Dict[str, Any]]]) -> Dict[str, Any]:
    """``kheap demo``: the bundled kernel booted with ``scenario``; ``steps`` are the commands run
    on it, each ``(name, its arguments, its report)``, in order."""
    d = report_base("demo")
    d.update({"arch": arch, "scenario": scenario, "elf": elf,
              "steps": [{"command": name, "argv": list(argv)} for name, argv, _ in steps],
              "reports": {name: report for name, _, report in steps}})
    return d


def _heading(text: str, color: bool) -> str:
    return Text(4).add(text, HEADING).render(color)


def _shown_path(path: str) -> str:
    """A path as a user in this directory would type it: relative when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


@renders("demo", whole=True)
def demo_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for a demo: each command as one would type it, then its report's text."""
    arch, scenario = report["arch"], report["scenario"]
    elf = _shown_path(report["elf"])
    parts = [_heading(f"kheap demo: the {arch} kernel, scenario '{scenario}', inspected live over the GDB "
                      "remote protocol", color), ""]
    for step in report["steps"]:
        line = " ".join(["$ kheap", step["command"], *step["argv"], "--remote", "HOST:PORT", "--elf", elf])
        parts += [_heading(line, color), render_text(report["reports"][step["command"]], color).rstrip("\n"), ""]
    if scenario == "crash":
        parts.append("(no backtrace without a debugger: kheap read the registers and panic_info)")
    parts.append("QEMU has been shut down. Try another scenario: kheap demo --scenario overflow "
                 "(or crash, uaf, cycle, leak, ...); scenarios are described in "
                 "docs/kernel-interface.md.")
    return "\n".join(parts) + "\n"


def check_many_report(results: Sequence[Tuple[str, str, Optional[Dict[str, Any]], Optional[str]]],
                      exit_status: int) -> Dict[str, Any]:
    """``kheap check --core DIR`` (or several ``--core``): ``results`` holds, per dump and in the
    order given, ``(path, status, its check report or None, the error line or None)`` with a
    status of :data:`DUMP_STATUSES`; ``exit_status`` is the process's."""
    dumps: List[Dict[str, Any]] = []
    for path, status, report, error in results:
        if status not in DUMP_STATUSES:
            raise ValueError(f"unknown dump status {status!r}")
        dumps.append({"path": clean(path), "status": status,
                      "verdict": report["verdict"] if report else None,
                      "errors": report["errors"] if report else None,
                      "warnings": report["warnings"] if report else None,
                      "error": clean(error), "report": report})
    d = report_base("check-many")
    d.update({"dumps": dumps, "summary": {s: sum(1 for x in dumps if x["status"] == s) for s in DUMP_STATUSES},
              "exit_status": exit_status})
    return d


def dump_verdict_line(dump: Dict[str, Any]) -> str:
    """One dump of a check-many report as one line: path, verdict, counts, the first codes."""
    report = dump["report"]
    if report is None:
        return f"{dump['path']}: UNREADABLE {dump['error']}"
    codes: List[str] = []
    for finding in report["findings"]:
        if finding["code"] not in codes:
            codes.append(finding["code"])
    line = (f"{dump['path']}: {report['verdict'].upper()} ({plural(report['errors'], 'error')}, "
            f"{plural(report['warnings'], 'warning')})")
    if codes:
        line += " " + " ".join(codes[:4]) + (" ..." if len(codes) > 4 else "")
    return line


@renders("check-many")
def _render_check_many(r: Dict[str, Any], out: Text) -> None:
    for dump in r["dumps"]:
        out.line(dump_verdict_line(dump), STATE_TOKEN.get(dump["status"], PLAIN))
