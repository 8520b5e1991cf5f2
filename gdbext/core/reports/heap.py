"""The heap's reports: info, walk, check, stats, find and map, each builder beside its text."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..blame import suggest_blame
from ..check import CheckReport
from ..findings import Finding
from ..memory import MemoryFault
from ..program import Program
from ..stats import HeapStats
from ..text import escape_text, plural
from ..whereis import where_is, where_text
from .base import (ERROR, FREE, HEADING, NOTE, OK, PLAIN, STATE_TOKEN, USED, WARNING, Text, clean, findings_lines,
                   heap_line, renders, report_base, stop_text)

__all__ = ["info_report", "walk_report", "check_report", "stats_report", "find_report", "map_report",
           "verdict_line", "MAP_LEGEND", "map_page_report", "show_report", "SHOW_BYTES", "hexdump_lines"]


def info_report(prog: Program) -> Dict[str, Any]:
    """``kheap info``: ELF facts, layouts and their source, heap bounds and where they came from."""
    d = report_base("info", prog)
    d.update(clean(prog.describe()))
    return d


def walk_report(prog: Program, walk: Any, limit: Optional[int] = None) -> Dict[str, Any]:
    """``kheap walk``: every segment in list order and why the walk stopped."""
    d = report_base("walk", prog)
    fig = prog.allocator.figures(walk)
    segments = walk.segments if limit is None else walk.segments[:limit]
    d.update({
        "list_head": walk.list_head, "header_size": walk.header_size, "count": len(walk),
        "stop": walk.stop_json(), "complete": walk.complete,
        "used": {"count": fig.used_count, "bytes": fig.used_bytes},
        "free": {"count": fig.free_count, "bytes": fig.free_bytes},
        "bad": {"count": fig.bad_count},
        "truncated": limit is not None and len(walk) > limit,
        "segments": [s.to_json() for s in segments],
    })
    return clean(d)


def check_report(prog: Program, report: CheckReport) -> Dict[str, Any]:
    """``kheap check``: the verdict and every finding (code, severity, address, culprit)."""
    d = report_base("check", prog)
    d["notes"] = [escape_text(n) for n in report.notes]
    d.update({
        "verdict": report.verdict, "full": report.full,
        "errors": len(report.errors), "warnings": len(report.warnings),
        "segments": len(report.walk), "stop": report.walk.stop_json(),
        # Errors first, then warnings (stable: each group keeps the order of the walk).
        "findings": [f.to_json() for f in sorted(report.findings, key=lambda f: f.severity != "error")],
    })
    if report.unread:                                     # only then: the pinned reports keep their keys
        d["unread"] = [{"start": lo, "end": hi, "bytes": hi - lo} for lo, hi in report.unread]
    d["blame"] = suggest_blame(prog, report.findings)     # the command that finds who wrote it
    return clean(d)


def stats_report(prog: Program, stats: HeapStats) -> Dict[str, Any]:
    """``kheap stats``: totals, fragmentation, histogram, kernel counters side by side."""
    d = report_base("stats", prog)
    d.update(stats.to_json())
    return clean(d)


def find_report(prog: Program, address: int, match: Any) -> Dict[str, Any]:
    """``kheap find ADDRESS``: the segment holding it, or ``found: false``."""
    d = report_base("find", prog)
    d["address"] = address
    d["found"] = match is not None
    d["match"] = match.to_json() if match is not None else None
    if match is None:
        try:
            inside = prog.heap_start <= address < prog.heap_end
        except Exception:  # noqa: BLE001
            inside = False
        d["reason"] = "inside the heap but in no segment on the list" if inside else "outside the heap"
        if not inside:
            d["where"] = where_is(prog, address)      # what it is instead (pwndbg's xinfo)
    return clean(d)


SHOW_BYTES = 64           # payload bytes ``kheap show`` dumps by default


def show_report(prog: Program, address: int, match: Any, result: CheckReport,
                nbytes: int = SHOW_BYTES) -> Dict[str, Any]:
    """``kheap show ADDR``: one segment in full: its header's fields by the kernel's names, the
    first ``nbytes`` of its payload, its neighbours on the list, and every finding of the
    check ``result`` that touches it (at it, about its links, or naming it as the culprit).

    ``match``: what ``prog.allocator.find`` said of ``address``. The findings are the check's
    (the one header rule, judged with the true neighbours of the walk), not a second rule."""
    d = report_base("show", prog)
    seg = match.segment
    allocator = prog.allocator
    d.update({"address": address, "match": match.to_json(), "segment": seg.to_json()})
    try:
        d["fields"] = allocator.header_fields(prog, seg.address)
    except MemoryFault as fault:
        d["fields"], d["fields_error"] = [], str(fault)
    d["payload"] = _payload_dump(prog, seg, nbytes)
    walk = result.walk
    blocks = allocator.blocks(walk, prog.heap_end)
    index = next((i for i, b in enumerate(blocks) if b.address == seg.address), None)
    extent = blocks[index].extent if index is not None else prog.header_size
    d["on_list"] = index is not None
    d["neighbours"] = {
        "prev": _neighbour(prog, walk, index - 1 if index else None, seg.prev),
        "next": _neighbour(prog, walk, index + 1 if index is not None and index + 1 < len(blocks) else None,
                           seg.next),
    }
    touching = []
    for f in result.findings:
        relation = _touches(f, seg.address, extent)
        if relation:
            touching.append(dict(f.to_json(), relation=relation))
    d["findings"] = touching
    d["errors"] = sum(1 for f in touching if f["severity"] == "error")
    return clean(d)


def _payload_dump(prog: Program, seg: Any, nbytes: int) -> Dict[str, Any]:
    """The first bytes of a payload, bounded by ``nbytes``, the payload's size and the heap end
    (a corrupt size must not make us read past it)."""
    size = seg.payload_size
    try:
        limit = max(0, prog.heap_end - seg.payload)
    except Exception:  # noqa: BLE001 - bounds unknown
        limit = size
    want = max(0, min(nbytes, size, limit))
    out: Dict[str, Any] = {"address": seg.payload, "size": size, "shown": 0, "hex": ""}
    if want:
        try:
            data = prog.memory.read_prefix(seg.payload, want)
        except MemoryFault as fault:
            data, out["error"] = b"", str(fault)
        if len(data) < want and "error" not in out:
            out["error"] = f"only {len(data)} of {want} bytes readable"
        out["shown"], out["hex"] = len(data), data.hex()
    return out


def _neighbour(prog: Program, walk: Any, index: Optional[int], link: int) -> Dict[str, Any]:
    """A neighbour: the segment before/after it on the walked list, and whether its link says so."""
    out: Dict[str, Any] = {"link": link, "segment": None}
    if index is not None and index >= 0:
        out["segment"] = walk.segments[index].to_json()
    elif link:
        match = prog.allocator.find(prog, link)
        if match is not None and match.segment.address == link:
            out["segment"] = match.segment.to_json()
    out["agrees"] = out["segment"] is not None and out["segment"]["address"] == link
    return out


def _touches(f: Finding, segment: int, extent: int) -> Optional[str]:
    """How a finding touches the segment at ``segment``: 'at' it (its address, or the header a
    link finding follows from), 'culprit' (it is blamed for a neighbour's damage), or None."""
    v = f.values or {}
    if (f.address is not None and segment <= f.address < segment + extent) or \
            segment in (v.get("address"), v.get("from"), v.get("segment")):
        return "at"
    if f.culprit is not None and f.culprit.address == segment:
        return "culprit"
    return None


# The cells' legend, in the words of the region table's state column (and walk's): "bad" is a
# corrupt segment, "uncovered" a part of the heap no segment on the list covers.
MAP_LEGEND = {"#": "used", ".": "free", "+": "used and free", "!": "bad (a corrupt segment)",
              " ": "uncovered (no segment on the list)"}


def map_report(prog: Program, walk: Any, findings: Sequence[Finding] = (), cells: int = 1024,
               regions: int = 0) -> Dict[str, Any]:
    """``kheap map``: one row per run of same-state segments and a block map of the whole heap.

    Each map cell covers ``cell_size`` bytes: ``#`` all used, ``.`` all free, ``+`` both,
    ``!`` a corrupt segment (bad flag or a finding at it), blank: covered by no segment.
    ``regions``: keep at most that many rows (corrupt and uncovered first, then the largest, in
    address order) and count the rest (a fragmented heap has thousands); 0 keeps all.
    """
    d = report_base("map", prog)
    hs, he = walk.heap_start, walk.heap_end
    size = max(he - hs, 1)
    cell_size = max(16, -(-size // max(cells, 1)))
    cell_size = -(-cell_size // 16) * 16
    ncells = -(-size // cell_size)
    used_b = bytearray(ncells)   # bit 1 used, 2 free, 4 corrupt
    bad_addrs = {f.address for f in findings if f.severity == "error" and f.address is not None}
    rows: List[Dict[str, Any]] = []
    cursor = hs
    for block in prog.allocator.blocks(walk, he):
        state = "bad" if block.address in bad_addrs else block.state
        start, end = max(block.address, hs), min(block.address + block.extent, he)
        if start > cursor:
            _add_region(rows, cursor, start, "uncovered", 0)
        if end > start:
            _add_region(rows, start, end, state, 1)
            bit = 1 if state == "used" else 2 if state == "free" else 4
            for c in range((start - hs) // cell_size, (end - 1 - hs) // cell_size + 1):
                used_b[c] |= bit
        cursor = max(cursor, end)
    if cursor < he:
        _add_region(rows, cursor, he, "uncovered", 0)
    chars = "".join("!" if b & 4 else "+" if b == 3 else "#" if b == 1 else "." if b == 2 else " "
                    for b in used_b)
    shown = _bounded(rows, regions)
    d.update({"cell_size": cell_size, "cells": chars, "legend": dict(MAP_LEGEND), "regions": shown,
              "regions_total": len(rows), "regions_not_shown": len(rows) - len(shown), "stop": walk.stop_json()})
    return clean(d)


def _bounded(rows: List[Dict[str, Any]], limit: int) -> List[Dict[str, Any]]:
    """At most ``limit`` region rows (0: all): corrupt and uncovered first, then the largest,
    in address order."""
    if not limit or len(rows) <= limit:
        return rows
    rank = sorted(range(len(rows)), key=lambda i: (rows[i]["state"] in ("used", "free"), -rows[i]["bytes"], i))
    return [rows[i] for i in sorted(rank[:limit])]


def _add_region(regions: List[Dict[str, Any]], start: int, end: int, state: str, count: int) -> None:
    if regions and regions[-1]["state"] == state and regions[-1]["end"] == start:
        regions[-1]["end"] = end
        regions[-1]["bytes"] = end - regions[-1]["start"]
        regions[-1]["segments"] += count
    else:
        regions.append({"start": start, "end": end, "bytes": end - start, "state": state, "segments": count})


@renders("info")
def _render_info(r: Dict[str, Any], out: Text) -> None:
    e = r.get("elf", {})
    out.line(f"{e.get('path')}: {e.get('arch')} ELF{e.get('class')} {e.get('endian')}-endian, "
             f"DWARF {'yes' if e.get('has_dwarf') else 'no'}")
    h = r.get("heap") or {}
    if "error" in h:
        out.line(f"heap: {h['error']}", ERROR)
    elif h:
        out.line(f"heap {out.addr(h.get('start'))}..{out.addr(h.get('end'))} ({h.get('size')} bytes), "
                 f"list head {out.addr(h.get('list_head'))}, header {h.get('header_size')} bytes")
        out.line("  from: " + ", ".join(f"{k}={v}" for k, v in h.get("sources", {}).items()))
        pages = h.get("num_pages")
        out.line(f"  page array {out.addr(h.get('page_array'))}, "
                 + (plural(pages, "page") if isinstance(pages, int) else f"{pages} pages"))
    poison = r.get("poison")
    out.line(f"poison: {'off' if poison is None else f'0x{poison:02x}'}")
    facts = r.get("facts") or {}
    if facts:
        out.line("where each fact came from:", HEADING)
        rows = []
        for key, fact in facts.items():
            rows.append([(key, PLAIN), (_fact_value(key, fact, out), PLAIN), (_fact_source(fact), PLAIN)])
        out.table(["fact", "value", "from"], rows)
    for key in ("segment", "page", "page_list", "stats"):
        lay = e.get("layouts", {}).get(key)
        if not lay:
            continue
        out.line(f"{lay['name']} ({lay['size']} bytes, from {lay['source']}):", HEADING)
        rows = []
        bits = any("bit_size" in f for f in lay["fields"])
        for f in lay["fields"]:
            row = [(f["name"], PLAIN), (str(f["offset"]), PLAIN)]
            if bits:
                row.append((_bits_text(f), PLAIN))
            rows.append(row + [(str(f["size"]), PLAIN), (f.get("type", ""), PLAIN)])
        out.table(["field", "offset"] + (["bits"] if bits else []) + ["size", "type"], rows)
        if bits:
            out.line(f"  (bit-fields: bits counted from the byte at the offset, bit 0 its "
                     f"{'most' if e.get('endian') == 'big' else 'least'} significant)", NOTE)
    out.notes(r.get("notes", []))


def _bits_text(f: Dict[str, Any]) -> str:
    """A bit-field's bits, counted from its byte offset: ``0 (1 bit)``, ``1..31 (31 bits)``."""
    if "bit_size" not in f:
        return ""
    first, n = f["data_bit_offset"] - 8 * f["offset"], f["bit_size"]
    return f"{first} ({plural(n, 'bit')})" if n == 1 else f"{first}..{first + n - 1} ({plural(n, 'bit')})"


def _extra_text(value: Any) -> str:
    if value is None:
        return "-"
    return f"0x{value:x}" if value > 0xFFFF else str(value)


def _fact_value(key: str, fact: Dict[str, Any], out: Text) -> str:
    if key == "page_convention":
        return f"vaddr_mapped {fact.get('vaddr_mapped')}, heap pages {fact.get('heap_pages')}"
    value = fact.get("value")
    if key in ("list_head", "heap_start", "page_array", "free_pages", "heap_stats", "panic_info", "end") \
            and isinstance(value, int):
        return out.addr(value)
    if key == "poison" and isinstance(value, int):
        return f"0x{value:02x}"
    text = "" if value is None else str(value)
    if key == "segment_type" and fact.get("fields"):
        renamed = {k: v for k, v in fact["fields"].items() if k != v}
        text += f" bytes{' (' + ', '.join(f'{k}={v}' for k, v in renamed.items()) + ')' if renamed else ''}"
        if fact.get("bitfields"):
            text += ", bit-fields"
        if fact.get("extra_fields"):
            text += ", extra " + ", ".join(fact["extra_fields"])
    if key == "page_type":
        text += " bytes"
    if key == "free_pages" and fact.get("shape"):
        text += f" ({fact['shape']})"
    return text


def _fact_source(fact: Dict[str, Any]) -> str:
    if "vaddr_source" in fact:
        return f"vaddr_mapped: {fact['vaddr_source']}; heap pages: {fact['heap_source']}"
    parts = [str(fact.get("source", ""))]
    if fact.get("name"):
        parts.append(str(fact["name"]))
    text = " ".join(parts)
    detail = fact.get("detail") or fact.get("flags")
    return text + (f" ({detail})" if detail else "")


@renders("walk")
def _render_walk(r: Dict[str, Any], out: Text) -> None:
    out.line(f"{heap_line(r, out)}, {plural(r['count'], 'segment')}, {stop_text(r['stop'], out)}",
             PLAIN if r["complete"] else ERROR)
    rows = []
    # Fields of the header beyond the four the walk reads (a canary's magic, Mazarin's isReserved).
    extra = list(dict.fromkeys(k for s in r["segments"] for k in (s.get("extra") or {})))
    # walk --around: the segment holding the address asked about is marked, as gdb's x/i marks pc.
    target = r.get("target")
    for s in r["segments"]:
        tok = STATE_TOKEN.get(s["state"], PLAIN)
        state = s["state"] if s["state"] != "bad" else f"bad({s['is_allocated']})"
        values = s.get("extra") or {}
        mark = [("->" if s["address"] == target else "", HEADING)] if target is not None else []
        rows.append(mark + [(out.addr(s["address"]), PLAIN), (str(s["size"]), PLAIN), (state, tok),
                            (out.addr(s["next"]), PLAIN), (out.addr(s["prev"]), PLAIN), (out.addr(s["payload"]), PLAIN)]
                    + [(_extra_text(values.get(k)), PLAIN) for k in extra])
    out.table(([""] if target is not None else []) + ["address", "size", "state", "next", "prev", "payload"] + extra,
              rows)
    not_shown = r.get("not_shown", r["count"] - len(r["segments"]) if r.get("truncated") else 0)
    if not_shown:
        out.line(f"  ... {not_shown} more not shown (--limit 0 shows all)")
    if r.get("matched") is not None and r["matched"] != r["count"]:
        out.line(f"  {r['matched']} of {plural(r['count'], 'segment')} "
                 f"{'matches' if r['matched'] == 1 else 'match'} the filter")
    out.add("used ", PLAIN).add(f"{r['used']['count']} ({plural(r['used']['bytes'], 'byte')})", USED)
    out.add("  free ", PLAIN).add(f"{r['free']['count']} ({plural(r['free']['bytes'], 'byte')})", FREE)
    if r["bad"]["count"]:
        out.add("  bad ", PLAIN).add(str(r["bad"]["count"]), ERROR)
    out.nl()
    out.notes(r.get("notes", []))


@renders("check")
def _render_check(r: Dict[str, Any], out: Text) -> None:
    verdict = r["verdict"]
    tok = STATE_TOKEN.get(verdict, PLAIN)
    out.add("kheap check: ").add(verdict.upper(), tok)
    out.line(f" - {plural(r['errors'], 'error')}, {plural(r['warnings'], 'warning')}; "
             f"{plural(r['segments'], 'segment')} walked, "
             f"{stop_text(r['stop'], out)}{'; full page check' if r.get('full') else ''}")
    out.line(heap_line(r, out))
    findings_lines(r["findings"], out)
    if r.get("blame"):
        out.line(f"which instruction wrote it: {r['blame']['command']}  (on the live target; "
                 "restarts the kernel)", NOTE)
    out.notes(r.get("notes", []))


@renders("stats")
def _render_stats(r: Dict[str, Any], out: Text) -> None:
    out.line(f"{heap_line(r, out)}, {plural(r['segments'], 'segment')}"
             + ("" if r["walk_complete"] else f" (walk stopped: {r['stop_reason']})"))
    rows = [[("used", USED), (str(r["used"]["count"]), PLAIN), (str(r["used"]["bytes"]), PLAIN)],
            [("free", FREE), (str(r["free"]["count"]), PLAIN), (str(r["free"]["bytes"]), PLAIN)]]
    if r["bad"]["count"]:
        rows.append([("bad", ERROR), (str(r["bad"]["count"]), PLAIN), (str(r["bad"]["bytes"]), PLAIN)])
    out.table(["state", "segments", "bytes"], rows)
    out.line(f"largest free: {plural(r['largest_free'], 'byte')}; fragmentation: {r['fragmentation'] * 100:.1f}%")
    if r["histogram"]:
        out.line("size histogram:")
        out.table(["size", "used", "free"],
                  [[(f"{b['low']}-{b['high']}", PLAIN), (str(b["used"]), USED), (str(b["free"]), FREE)]
                   for b in r["histogram"]])
    if r.get("kernel") is not None:
        out.line("kernel heap_stats beside the walk:")
        rows = [[(c["name"], PLAIN), (str(c["kernel"]), PLAIN), (str(c["walk"]), PLAIN),
                 ("agree" if c["agree"] else "DISAGREE", OK if c["agree"] else ERROR)] for c in r["comparison"]]
        out.table(["", "kernel", "walk", ""], rows)
        k = r["kernel"]
        out.line("  " + ", ".join(f"{name}={k[name]}" for name in k))
    else:
        out.line("kernel heap_stats: not available", NOTE)
    out.notes(r.get("notes", []))


@renders("find")
def _render_find(r: Dict[str, Any], out: Text) -> None:
    if not r["found"]:
        if r.get("where"):
            out.line(f"{out.addr(r['address'])} {where_text(r['where'], out.pointer_size)} "
                     "(not in any heap segment)", WARNING)
        else:
            out.line(f"{out.addr(r['address'])}: not in any heap segment ({r.get('reason', '')})", WARNING)
    else:
        m = r["match"]
        s = m["segment"]
        tok = STATE_TOKEN.get(s["state"], PLAIN)
        out.add(f"{out.addr(r['address'])} is in the ").add(s["state"], tok)
        where = (f"payload offset {m['payload_offset']}" if m["where"] == "payload" else
                 f"header offset {m['offset']}")
        out.line(f" segment at {out.addr(s['address'])} (size {s['size']}, payload {out.addr(s['payload'])}), {where}")
        out.line(f"  next {out.addr(s['next'])}  prev {out.addr(s['prev'])}")
    out.notes(r.get("notes", []))


@renders("show")
def _render_show(r: Dict[str, Any], out: Text) -> None:
    s, m = r["segment"], r["match"]
    tok = STATE_TOKEN.get(s["state"], PLAIN)
    out.add(f"segment at {out.addr(s['address'])}: ").add(s["state"], tok)
    out.add(f", size {s['size']}, payload {out.addr(s['payload'])} ({r['payload']['size']} bytes)")
    where = (f"payload offset {m['payload_offset']}" if m["where"] == "payload" else f"header offset {m['offset']}")
    out.line(f"; {out.addr(r['address'])} is at its {where}" if r["address"] != s["address"] else "")
    if not r.get("on_list"):
        out.line("  not on the walked list (found by its header alone)", WARNING)
    out.line("header:", HEADING)
    if r.get("fields_error"):
        out.line(f"  unreadable: {r['fields_error']}", ERROR)
    rows = []
    for f in r["fields"]:
        value = f["value"]
        text = out.addr(value) if f.get("pointer") else (f"{value} (0x{value:x})" if value > 9 else str(value))
        pos = str(f["offset"]) + (f" bits {f['bits'][0]}+{f['bits'][1]}" if f.get("bits") else "")
        rows.append([(f["name"], PLAIN), (pos, PLAIN), (str(f["size"]), PLAIN), (text, PLAIN)])
    if rows:
        out.table(["field", "offset", "size", "value"], rows)
    p = r["payload"]
    out.line(f"payload: first {p['shown']} of {p['size']} bytes" + (" (raise --bytes to see more)"
                                                                     if p["shown"] < p["size"] and not p.get("error")
                                                                     else ""), HEADING)
    for line in hexdump_lines(bytes.fromhex(p["hex"]), p["address"], out.addr):
        out.line(line)
    if p.get("error"):
        out.line(f"  {p['error']}", WARNING)
    out.line("neighbours on the list:", HEADING)
    for name in ("prev", "next"):
        n = r["neighbours"][name]
        seg = n["segment"]
        if seg is None:
            what = "none (NULL)" if not n["link"] else f"{out.addr(n['link'])}: no segment there"
            out.line(f"  {name}  {what}", PLAIN if not n["link"] else ERROR)
            continue
        line = (f"  {name}  {out.addr(seg['address'])}  {seg['state']:<4}  size {seg['size']}  "
                f"payload {out.addr(seg['payload'])}")
        if not n["agrees"]:
            line += f"  (but its {name} link holds {out.addr(n['link']) if n['link'] else 'NULL'})"
        out.line(line, STATE_TOKEN.get(seg["state"], PLAIN) if n["agrees"] else ERROR)
    if r["findings"]:
        out.line("findings touching it:", HEADING)
        findings_lines(r["findings"], out)
    else:
        out.line("findings touching it: none ('kheap check' judged the whole heap)", OK)
    out.notes(r.get("notes", []))


def hexdump_lines(data: bytes, address: int, addr: Any, per_line: int = 16) -> List[str]:
    """``address  hex bytes (two groups of 8)  |ascii|`` lines as ``xxd``/``hexdump -C`` print
    them; the ASCII column shows printable bytes and ``.`` for the rest (never raw control
    characters from target memory)."""
    lines = []
    for i in range(0, len(data), per_line):
        chunk = data[i:i + per_line]
        hexes = [f"{b:02x}" for b in chunk] + ["  "] * (per_line - len(chunk))
        half = per_line // 2
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"  {addr(address + i)}  {' '.join(hexes[:half])}  {' '.join(hexes[half:])}  |{text}|")
    return lines


@renders("map")
def _render_map(r: Dict[str, Any], out: Text) -> None:
    out.line(f"{heap_line(r, out)}; one cell = {plural(r['cell_size'], 'byte')}")
    tok = {"#": USED, ".": FREE, "+": USED, "!": ERROR, " ": PLAIN}
    cells = r["cells"]
    heap = r.get("heap") or {"start": 0}
    per_line = 64
    for i in range(0, len(cells), per_line):
        out.add(f"  {out.addr(heap['start'] + i * r['cell_size'])} |")
        chunk = cells[i:i + per_line]
        j = 0
        while j < len(chunk):
            k = j
            while k < len(chunk) and chunk[k] == chunk[j]:
                k += 1
            out.tokens.append((tok.get(chunk[j], PLAIN), chunk[j:k]))
            j = k
        out.line("|")
    out.line("  legend: " + ", ".join(f"'{k}' {v}" for k, v in r["legend"].items()))
    rows = [[(out.addr(g["start"]), PLAIN), (out.addr(g["end"]), PLAIN), (str(g["bytes"]), PLAIN),
             (g["state"], STATE_TOKEN.get(g["state"], PLAIN)), (str(g["segments"]), PLAIN)] for g in r["regions"]]
    out.table(["start", "end", "bytes", "state", "segments"], rows)
    if r.get("regions_not_shown"):
        out.line(f"  ... {plural(r['regions_not_shown'], 'more region')} not shown (--limit 0 shows all)")
    if r["stop"]["reason"] != "end":
        out.line(stop_text(r["stop"], out), ERROR)
    out.notes(r.get("notes", []))


def verdict_line(report: Dict[str, Any]) -> str:
    """The one line auto-check prints: verdict, counts, and the first finding if any (or, with
    none, what could not be read)."""
    counts = (f"{plural(report['errors'], 'error')}, {plural(report['warnings'], 'warning')}, "
              f"{plural(report['segments'], 'segment')}")
    line = f"kheap: heap {report['verdict'].upper()} ({counts})"
    if report["findings"]:
        first = report["findings"][0]
        line += f"; first: {first['code']} at 0x{(first.get('address') or 0):x}: {first['message']}"
        line += " - see 'kheap check'"
    elif report.get("unread"):
        unread = report["unread"]
        line += (f"; {plural(sum(u['bytes'] for u in unread), 'byte')} of the heap could not be read "
                 f"from 0x{unread[0]['start']:x}")
    return line


def map_page_report(written: Dict[str, Any]) -> Dict[str, Any]:
    """``kheap map --html FILE``: where the page went and what it shows."""
    d = report_base("map-html")
    d.update(written)
    return clean(d)


@renders("map-html")
def _render_map_page(r: Dict[str, Any], out: Text) -> None:
    out.line(f"kheap map: wrote {r['path']} ({plural(r['bytes'], 'byte')}): heap {r['verdict'].upper()}, "
             f"{plural(r['segments'], 'segment')}, {plural(r['errors'], 'error')}, "
             f"{plural(r['warnings'], 'warning')}; open it in a browser")
