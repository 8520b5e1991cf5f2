"""The page array's reports: the summary with its findings, and one ``page_t``."""

from __future__ import annotations

from typing import Any, Dict, Sequence

from ..findings import Finding
from ..layout import PAGE_SIZE
from ..pages import Page, PageSummary, kind_at, page_convention
from ..program import Program
from ..text import plural
from .base import PLAIN, STATE_TOKEN, Text, clean, finding_lines, renders, report_base

__all__ = ["pages_report", "page_report"]


def pages_report(prog: Program, summary: PageSummary, findings: Sequence[Finding] = ()) -> Dict[str, Any]:
    """``kheap pages``: pages by kind, the free list as walked, and page findings if any."""
    d = report_base("pages", prog)
    d.update(summary.to_json())
    d["page_array"] = prog.bounds.page_array
    name = prog.elf.symbol_name("free_pages")
    if name not in (None, "free_pages"):
        d["free_list_name"] = name
    d["findings"] = [f.to_json() for f in findings]
    return clean(d)


@renders("pages")
def _render_pages(r: Dict[str, Any], out: Text) -> None:
    out.line(f"page array at {out.addr(r.get('page_array'))}: {plural(r['num_pages'], 'page')}, {r['scanned']} read"
             + (f" (unreadable from {out.addr(r['fault'])})" if r.get("fault") is not None else ""))
    out.table(["kind", "pages"], [[(k, STATE_TOKEN.get(k, PLAIN)), (str(v), PLAIN)] for k, v in r["counts"].items()])
    fl = r.get("free_list")
    if fl:
        stop = fl["stop"]
        shape = (f"head {out.addr(fl['head'])} tail {out.addr(fl['tail'])} size {fl['size']}"
                 if fl.get("tail") is not None else f"head {out.addr(fl['head'])} (a head pointer only)")
        out.line(f"{r.get('free_list_name') or 'free_pages'}: {shape}, "
                 f"{fl['walked']} walked" + ("" if stop["reason"] == "end" else
                                            f", stopped: {stop['reason']} at {out.addr(stop['address'])}"))
    for f in r.get("findings", []):
        finding_lines(f, out)
    out.notes(r.get("notes", []))


def page_report(prog: Program, page: Page) -> Dict[str, Any]:
    """``kheap pages --page N``: one ``page_t`` with its flags by name."""
    d = report_base("page", prog)
    d.update({"page": page.to_json(), "flags": prog.layouts.page.flag_names(page.flags_word)})
    b = prog.bounds
    d["page"]["kind"] = kind_at(page_convention(prog), page.index, page.kind, b.start // PAGE_SIZE, -(-b.end // PAGE_SIZE))
    return clean(d)


@renders("page")
def _render_page(r: Dict[str, Any], out: Text) -> None:
    p = r["page"]
    out.line(f"page {p['index']} at {out.addr(p['address'])}: maps {out.addr(p['vaddr_mapped'])}, "
             f"flags {'|'.join(r['flags']) or 'none (free)'} (kind {p['kind']}), "
             f"nextpage {out.addr(p['nextpage'])}, prevpage {out.addr(p['prevpage'])}")
