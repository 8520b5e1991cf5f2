"""Reports: JSON-ready dicts (``schema_version`` 1) and text rendered from those same dicts.

Every command builds one report dict with a ``*_report`` function; :func:`to_json_text`
serialises it (gdb, lldb and the CLI print byte-identical JSON) and :func:`render_text`
turns it into a table, coloured through pygments with one token type per state when the face
asks for colour (the faces decide whether the output is a terminal). Rendering text from the
dict, not from the live objects, keeps the two outputs from drifting apart.

No ``print`` here, and every string that may come from target memory is escaped.
Addresses in JSON are integers; text shows them as the kernel prints them (0x + hex padded to
the pointer width).

JSON shapes (every report also has ``schema_version``: 1 and ``report``: its name; all but
snapshot and diff have ``pointer_size``, ``heap`` {start, size, end} and ``notes`` [str]):

- info: ``elf`` {path, class, pointer_size, endian, machine, arch, has_dwarf, image_start,
  image_end, symbols {name: address}, constants, layouts {segment, page, page_list, stats:
  {name, size, source, fields [{name, offset, size, type, bit_size?, data_bit_offset?}]}},
  notes}, ``heap`` {start, size, end, list_head, list_head_error, page_array, num_pages,
  header_size, sources}, ``poison`` (byte or null)
- walk: list_head, header_size, count, complete, stop {reason, address, from, detail},
  used/free {count, bytes}, bad {count}, truncated, segments [{address, size, state,
  is_allocated, next, prev, payload, extra?}]
- check: verdict ('ok'|'warnings'|'corrupt'), full, errors, warnings, segments, stop,
  findings [{code, severity, address, message, values {}, culprit {address, reason,
  classification, detail} or null}]
- stats: heap_size, segments, used/free/bad {count, bytes}, largest_free, fragmentation,
  histogram [{low, high, used, free}], walk_complete, stop_reason, kernel {heap_stats fields}
  or null, comparison [{name, kernel, walk, agree}]
- find: address, found, match {segment {...walk segment...}, offset, where, payload_offset,
  method} or null, reason (when not found)
- pages: num_pages, scanned, counts {kernel, heap, free, allocated, bad}, free_list {head,
  tail, size, walked, stop {reason, address}, bad_prev} or null, fault, page_array, findings
- map: cell_size, cells (one char per cell, see legend), legend, regions [{start, end, bytes,
  state, segments}], stop
- snapshot: tag, heap_start, heap_size, pointer_size, stop_reason, kernel_stats, used {count,
  bytes}, segments [[address, size, state]]  (read back with ``Snapshot.from_json``)
- diff: pointer_size, tags {before, after}, live {count_before, count_after, count_growth,
  bytes_before, bytes_after, bytes_growth}, new [[address, size]], freed [[address, size]],
  resized [[address, old, new]], new_by_size [[size, count]]
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pygments import format as pygments_format
from pygments.formatters.terminal import TerminalFormatter
from pygments.token import Token

from .heap import HeapWalk, SegmentMatch
from .pages import PageSummary
from .program import Program
from .snapshot import SCHEMA_VERSION, Snapshot, SnapshotDiff
from .stats import HeapStats
from .text import escape_text
from .validate import CheckReport, Finding

__all__ = ["info_report", "walk_report", "check_report", "stats_report", "find_report", "pages_report",
           "map_report", "snapshot_report", "diff_report", "to_json_text", "render_text",
           "USED", "FREE", "ERROR", "WARNING", "OK", "HEADING", "NOTE"]

# One token type per state, so a style (here: the 16 ANSI colours) can colour them.
USED = Token.Kheap.Used
FREE = Token.Kheap.Free
ERROR = Token.Kheap.Error
WARNING = Token.Kheap.Warning
OK = Token.Kheap.Ok
HEADING = Token.Kheap.Heading
NOTE = Token.Kheap.Note
PLAIN = Token.Text

_COLORS = {
    Token: ("", ""),
    USED: ("blue", "cyan"),
    FREE: ("green", "green"),
    ERROR: ("red", "brightred"),
    WARNING: ("yellow", "yellow"),
    OK: ("green", "brightgreen"),
    HEADING: ("**", "**"),
    NOTE: ("gray", "gray"),
}

_STATE_TOKEN = {"used": USED, "free": FREE, "bad": ERROR, "error": ERROR, "warning": WARNING,
                "corrupt": ERROR, "warnings": WARNING, "ok": OK, "uncovered": WARNING,
                "kernel": HEADING, "heap": USED, "allocated": USED}

Tokens = List[Tuple[Any, str]]


def _base(report: str, prog: Optional[Program]) -> Dict[str, Any]:
    d: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "report": report}
    if prog is not None:
        d["pointer_size"] = prog.pointer_size
        try:
            d["heap"] = {"start": prog.heap_start, "size": prog.heap_size, "end": prog.heap_end}
        except Exception:  # noqa: BLE001 - the info report must work without bounds
            d["heap"] = None
        d["notes"] = [escape_text(n) for n in prog.notes]
    return d


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: strings escaped, tuples as lists, dict keys as strings."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


# -- report builders ----------------------------------------------------------------------------

def info_report(prog: Program) -> Dict[str, Any]:
    """``kheap info``: ELF facts, layouts and their source, heap bounds and where they came from."""
    d = _base("info", prog)
    d.update(_clean(prog.describe()))
    return d


def _segments_json(walk: HeapWalk, limit: Optional[int]) -> List[Dict[str, Any]]:
    recs = walk.records if limit is None else walk.records[:limit]
    hdr = walk.header_size
    state = {0: "free", 1: "used"}
    out = []
    for a, n, p, f, s in recs:
        out.append({"address": a, "size": s, "state": state.get(f, "bad"), "is_allocated": f,
                    "next": n, "prev": p, "payload": a + hdr})
    if walk._extra:
        for item in out:
            extra = walk._extra.get(item["address"])
            if extra:
                item["extra"] = dict(extra)
    return out


def walk_report(prog: Program, walk: HeapWalk, limit: Optional[int] = None) -> Dict[str, Any]:
    """``kheap walk``: every segment in list order and why the walk stopped."""
    d = _base("walk", prog)
    used = [r for r in walk.records if r[3] == 1]
    free = [r for r in walk.records if r[3] == 0]
    d.update({
        "list_head": walk.list_head, "header_size": walk.header_size, "count": len(walk.records),
        "stop": walk.stop_json(), "complete": walk.complete,
        "used": {"count": len(used), "bytes": sum(r[4] for r in used)},
        "free": {"count": len(free), "bytes": sum(r[4] for r in free)},
        "bad": {"count": len(walk.records) - len(used) - len(free)},
        "truncated": limit is not None and len(walk.records) > limit,
        "segments": _segments_json(walk, limit),
    })
    return _clean(d)


def check_report(prog: Program, report: CheckReport) -> Dict[str, Any]:
    """``kheap check``: the verdict and every finding (code, severity, address, culprit)."""
    d = _base("check", prog)
    d["notes"] = [escape_text(n) for n in report.notes]
    d.update({
        "verdict": report.verdict, "full": report.full,
        "errors": len(report.errors), "warnings": len(report.warnings),
        "segments": len(report.walk), "stop": report.walk.stop_json(),
        # Errors first, then warnings (stable: each group keeps the order of the walk).
        "findings": [f.to_json() for f in sorted(report.findings, key=lambda f: f.severity != "error")],
    })
    return _clean(d)


def stats_report(prog: Program, stats: HeapStats) -> Dict[str, Any]:
    """``kheap stats``: totals, fragmentation, histogram, kernel counters side by side."""
    d = _base("stats", prog)
    d.update(stats.to_json())
    return _clean(d)


def find_report(prog: Program, address: int, match: Optional[SegmentMatch]) -> Dict[str, Any]:
    """``kheap find ADDRESS``: the segment holding it, or ``found: false``."""
    d = _base("find", prog)
    d["address"] = address
    d["found"] = match is not None
    d["match"] = match.to_json() if match is not None else None
    if match is None:
        try:
            inside = prog.heap_start <= address < prog.heap_end
        except Exception:  # noqa: BLE001
            inside = False
        d["reason"] = "inside the heap but in no segment on the list" if inside else "outside the heap"
    return _clean(d)


def pages_report(prog: Program, summary: PageSummary, findings: Sequence[Finding] = ()) -> Dict[str, Any]:
    """``kheap pages``: pages by kind, the free list as walked, and page findings if any."""
    d = _base("pages", prog)
    d.update(summary.to_json())
    d["page_array"] = prog.bounds.page_array
    d["findings"] = [f.to_json() for f in findings]
    return _clean(d)


MAP_LEGEND = {"#": "used", ".": "free", "+": "used and free", "!": "corrupt", " ": "not on the list"}


def map_report(prog: Program, walk: HeapWalk, findings: Sequence[Finding] = (), cells: int = 1024) -> Dict[str, Any]:
    """``kheap map``: one row per run of same-state segments and a block map of the whole heap.

    Each map cell covers ``cell_size`` bytes: ``#`` all used, ``.`` all free, ``+`` both,
    ``!`` a corrupt segment (bad flag or a finding at it), blank: covered by no segment.
    """
    d = _base("map", prog)
    hs, he = walk.heap_start, walk.heap_end
    size = max(he - hs, 1)
    cell_size = max(16, -(-size // max(cells, 1)))
    cell_size = -(-cell_size // 16) * 16
    ncells = -(-size // cell_size)
    used_b = bytearray(ncells)   # bit 1 used, 2 free, 4 corrupt
    bad_addrs = {f.address for f in findings if f.severity == "error" and f.address is not None}
    regions: List[Dict[str, Any]] = []
    cursor = hs
    for a, n, p, f, s in walk.records:
        state = "used" if f == 1 else "free" if f == 0 else "bad"
        if a in bad_addrs:
            state = "bad"
        # A corrupt size says nothing about the extent: only the header is known to be there.
        extent = s if walk.header_size <= s and a + s <= he else walk.header_size
        start, end = max(a, hs), min(a + extent, he)
        if start > cursor:
            _add_region(regions, cursor, start, "uncovered", 0)
        if end > start:
            _add_region(regions, start, end, state, 1)
            bit = 1 if state == "used" else 2 if state == "free" else 4
            for c in range((start - hs) // cell_size, (end - 1 - hs) // cell_size + 1):
                used_b[c] |= bit
        cursor = max(cursor, end)
    if cursor < he:
        _add_region(regions, cursor, he, "uncovered", 0)
    chars = "".join("!" if b & 4 else "+" if b == 3 else "#" if b == 1 else "." if b == 2 else " "
                    for b in used_b)
    d.update({"cell_size": cell_size, "cells": chars, "legend": dict(MAP_LEGEND), "regions": regions,
              "stop": walk.stop_json()})
    return _clean(d)


def _add_region(regions: List[Dict[str, Any]], start: int, end: int, state: str, count: int) -> None:
    if regions and regions[-1]["state"] == state and regions[-1]["end"] == start:
        regions[-1]["end"] = end
        regions[-1]["bytes"] = end - regions[-1]["start"]
        regions[-1]["segments"] += count
    else:
        regions.append({"start": start, "end": end, "bytes": end - start, "state": state, "segments": count})


def snapshot_report(snapshot: Snapshot) -> Dict[str, Any]:
    """``kheap snapshot``: the snapshot itself (what the CLI stores in a file)."""
    return _clean(snapshot.to_json())


def diff_report(diff: SnapshotDiff, pointer_size: int = 4) -> Dict[str, Any]:
    """``kheap diff``: new, freed and resized allocations, and live growth (the leak view)."""
    d: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "report": "diff", "pointer_size": pointer_size}
    d.update(diff.to_json())
    return _clean(d)


def to_json_text(report: Dict[str, Any]) -> str:
    """The one JSON serialisation every face prints (stable key order, ASCII only)."""
    return json.dumps(report, indent=2, ensure_ascii=True, allow_nan=False)


# -- text ---------------------------------------------------------------------------------------

class _Text:
    """A token stream being built: (token type, text) pairs."""

    def __init__(self, pointer_size: int) -> None:
        self.tokens: Tokens = []
        self.width = pointer_size * 2

    def add(self, text: str, token: Any = PLAIN) -> "_Text":
        self.tokens.append((token, escape_text(text)))
        return self

    def nl(self) -> "_Text":
        self.tokens.append((PLAIN, "\n"))
        return self

    def line(self, text: str = "", token: Any = PLAIN) -> "_Text":
        return self.add(text, token).nl()

    def addr(self, value: Optional[int]) -> str:
        if value is None:
            return "-"
        if value == 0:
            return "NULL"
        return f"0x{value:0{self.width}x}"

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Tuple[str, Any]]], indent: str = "  ") -> None:
        widths = [len(h) for h in header]
        for row in rows:
            for i, (cell, _) in enumerate(row):
                widths[i] = max(widths[i], len(escape_text(cell)))
        self.add(indent + "  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip(), HEADING).nl()
        for row in rows:
            self.add(indent)
            for i, (cell, tok) in enumerate(row):
                text = escape_text(cell)
                last = i == len(row) - 1
                self.tokens.append((tok, text if last else text.ljust(widths[i])))
                if not last:
                    self.tokens.append((PLAIN, "  "))
            self.nl()

    def notes(self, notes: Sequence[str]) -> None:
        for n in notes:
            self.line(f"note: {n}", NOTE)

    def render(self, color: bool) -> str:
        if not color:
            return "".join(t for _, t in self.tokens)
        return pygments_format(self.tokens, TerminalFormatter(bg="dark", colorscheme=_COLORS))


def render_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for any report dict built by this module; ``color`` adds ANSI colours (pygments)."""
    kind = report.get("report")
    out = _Text(int(report.get("pointer_size") or 4))
    fn = _RENDERERS.get(kind)
    if fn is None:
        out.line(f"(no text form for report {kind!r})")
    else:
        fn(report, out)
    text = out.render(color)
    return text if text.endswith("\n") else text + "\n"


def _heap_line(r: Dict[str, Any], out: _Text) -> str:
    h = r.get("heap")
    if not h:
        return "heap: unknown"
    return f"heap {out.addr(h['start'])}..{out.addr(h['end'])} ({h['size']} bytes)"


def _stop_text(stop: Dict[str, Any], out: _Text) -> str:
    reason = stop.get("reason")
    if reason == "end":
        return "list ended normally"
    where = f" at {out.addr(stop.get('address'))}" if stop.get("address") is not None else ""
    return f"walk stopped: {reason}{where} ({stop.get('detail', '')})"


def _render_walk(r: Dict[str, Any], out: _Text) -> None:
    out.line(f"{_heap_line(r, out)}, {r['count']} segments, {_stop_text(r['stop'], out)}",
             PLAIN if r["complete"] else ERROR)
    rows = []
    for s in r["segments"]:
        tok = _STATE_TOKEN.get(s["state"], PLAIN)
        state = s["state"] if s["state"] != "bad" else f"bad({s['is_allocated']})"
        rows.append([(out.addr(s["address"]), PLAIN), (str(s["size"]), PLAIN), (state, tok),
                     (out.addr(s["next"]), PLAIN), (out.addr(s["prev"]), PLAIN), (out.addr(s["payload"]), PLAIN)])
    out.table(["address", "size", "state", "next", "prev", "payload"], rows)
    not_shown = r.get("not_shown", r["count"] - len(r["segments"]) if r.get("truncated") else 0)
    if not_shown:
        out.line(f"  ... {not_shown} more not shown (raise or drop --limit to see them)")
    if r.get("matched") is not None and r["matched"] != r["count"]:
        out.line(f"  {r['matched']} of {r['count']} segments match the filter")
    out.add("used ", PLAIN).add(f"{r['used']['count']} ({r['used']['bytes']} bytes)", USED)
    out.add("  free ", PLAIN).add(f"{r['free']['count']} ({r['free']['bytes']} bytes)", FREE)
    if r["bad"]["count"]:
        out.add("  bad ", PLAIN).add(str(r["bad"]["count"]), ERROR)
    out.nl()
    out.notes(r.get("notes", []))


def _finding_lines(f: Dict[str, Any], out: _Text) -> None:
    tok = ERROR if f["severity"] == "error" else WARNING
    out.add("  ").add(f"{f['severity'].upper():<7}", tok).add(f" {f['code']:<15} ", tok)
    out.add(f"{out.addr(f['address']):<{out.width + 2}}  ").line(f["message"])
    c = f.get("culprit")
    if c:
        what = ""
        if c.get("classification"):
            what = f"; bytes there: {c['classification']}"
            if c.get("detail"):
                what += f" \"{c['detail']}\"" if c["classification"] == "ascii" else f" {c['detail']}"
        where = out.addr(c["address"]) + " " if c.get("address") is not None else ""
        out.line(f"  {'':<7} {'culprit:':<15} {where}{c['reason']}{what}", WARNING)


def _render_check(r: Dict[str, Any], out: _Text) -> None:
    verdict = r["verdict"]
    tok = _STATE_TOKEN.get(verdict, PLAIN)
    out.add("kheap check: ").add(verdict.upper(), tok)
    out.line(f" - {r['errors']} error{'s' if r['errors'] != 1 else ''}, {r['warnings']} warning"
             f"{'s' if r['warnings'] != 1 else ''}; {r['segments']} segments walked, "
             f"{_stop_text(r['stop'], out)}{'; full page check' if r.get('full') else ''}")
    out.line(_heap_line(r, out))
    for f in r["findings"]:
        _finding_lines(f, out)
    out.notes(r.get("notes", []))


def _render_stats(r: Dict[str, Any], out: _Text) -> None:
    out.line(f"{_heap_line(r, out)}, {r['segments']} segments"
             + ("" if r["walk_complete"] else f" (walk stopped: {r['stop_reason']})"))
    rows = [[("used", USED), (str(r["used"]["count"]), PLAIN), (str(r["used"]["bytes"]), PLAIN)],
            [("free", FREE), (str(r["free"]["count"]), PLAIN), (str(r["free"]["bytes"]), PLAIN)]]
    if r["bad"]["count"]:
        rows.append([("bad", ERROR), (str(r["bad"]["count"]), PLAIN), (str(r["bad"]["bytes"]), PLAIN)])
    out.table(["state", "segments", "bytes"], rows)
    out.line(f"largest free: {r['largest_free']} bytes; fragmentation: {r['fragmentation'] * 100:.1f}%")
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


def _render_find(r: Dict[str, Any], out: _Text) -> None:
    if not r["found"]:
        out.line(f"{out.addr(r['address'])}: not in any heap segment ({r.get('reason', '')})", WARNING)
    else:
        m = r["match"]
        s = m["segment"]
        tok = _STATE_TOKEN.get(s["state"], PLAIN)
        out.add(f"{out.addr(r['address'])} is in the ").add(s["state"], tok)
        where = (f"payload offset {m['payload_offset']}" if m["where"] == "payload" else
                 f"header offset {m['offset']}")
        out.line(f" segment at {out.addr(s['address'])} (size {s['size']}, payload {out.addr(s['payload'])}), {where}")
        out.line(f"  next {out.addr(s['next'])}  prev {out.addr(s['prev'])}")
    out.notes(r.get("notes", []))


def _render_pages(r: Dict[str, Any], out: _Text) -> None:
    out.line(f"page array at {out.addr(r.get('page_array'))}: {r['num_pages']} pages, {r['scanned']} read"
             + (f" (unreadable from {out.addr(r['fault'])})" if r.get("fault") is not None else ""))
    out.table(["kind", "pages"], [[(k, _STATE_TOKEN.get(k, PLAIN)), (str(v), PLAIN)] for k, v in r["counts"].items()])
    fl = r.get("free_list")
    if fl:
        stop = fl["stop"]
        out.line(f"free_pages: head {out.addr(fl['head'])} tail {out.addr(fl['tail'])} size {fl['size']}, "
                 f"{fl['walked']} walked" + ("" if stop["reason"] == "end" else
                                            f", stopped: {stop['reason']} at {out.addr(stop['address'])}"))
    for f in r.get("findings", []):
        _finding_lines(f, out)
    out.notes(r.get("notes", []))


def _render_map(r: Dict[str, Any], out: _Text) -> None:
    out.line(f"{_heap_line(r, out)}; one cell = {r['cell_size']} bytes")
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
             (g["state"], _STATE_TOKEN.get(g["state"], PLAIN)), (str(g["segments"]), PLAIN)] for g in r["regions"]]
    out.table(["start", "end", "bytes", "state", "segments"], rows)
    if r.get("regions_not_shown"):
        out.line(f"  ... {r['regions_not_shown']} more regions not shown (--regions 0 shows all)")
    if r["stop"]["reason"] != "end":
        out.line(_stop_text(r["stop"], out), ERROR)
    out.notes(r.get("notes", []))


def _render_info(r: Dict[str, Any], out: _Text) -> None:
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
        out.line(f"  page array {out.addr(h.get('page_array'))}, {h.get('num_pages')} pages")
    poison = r.get("poison")
    out.line(f"poison: {'off' if poison is None else f'0x{poison:02x}'}")
    for key in ("segment", "page", "page_list", "stats"):
        lay = e.get("layouts", {}).get(key)
        if not lay:
            continue
        out.line(f"{lay['name']} ({lay['size']} bytes, from {lay['source']}):", HEADING)
        rows = []
        for f in lay["fields"]:
            pos = str(f["offset"])
            if "bit_size" in f:
                pos += f" bits {f['data_bit_offset']}+{f['bit_size']}"
            rows.append([(f["name"], PLAIN), (pos, PLAIN), (str(f["size"]), PLAIN), (f.get("type", ""), PLAIN)])
        out.table(["field", "offset", "size", "type"], rows)
    out.notes(r.get("notes", []))


def _render_snapshot(r: Dict[str, Any], out: _Text) -> None:
    out.line(f"snapshot {r.get('tag') or '(untagged)'}: {len(r['segments'])} segments, "
             f"{r['used']['count']} used ({r['used']['bytes']} bytes), walk {r['stop_reason']}")


def _render_diff(r: Dict[str, Any], out: _Text) -> None:
    live = r["live"]
    tags = r.get("tags", {})
    grow = live["bytes_growth"]
    out.add(f"{tags.get('before') or 'before'} -> {tags.get('after') or 'after'}: live bytes "
            f"{live['bytes_before']} -> {live['bytes_after']} (")
    out.add(f"{grow:+d}", ERROR if grow > 0 else OK).add(f"), allocations {live['count_before']} -> "
                                                          f"{live['count_after']} ({live['count_growth']:+d})").nl()
    out.line(f"new: {len(r['new'])}  freed: {len(r['freed'])}  resized: {len(r['resized'])}")
    if r["new_by_size"]:
        out.line("new allocations by size (possible leaks):")
        out.table(["size", "count", "bytes"], [[(str(s), PLAIN), (str(c), USED), (str(s * c), PLAIN)]
                                              for s, c in sorted(r["new_by_size"], key=lambda x: -x[0] * x[1])])
    for name, items, tok in (("new", r["new"], USED), ("freed", r["freed"], FREE)):
        if items:
            out.line(f"{name}:")
            out.table(["address", "size"], [[(out.addr(a), tok), (str(s), PLAIN)] for a, s in items[:200]])
            if len(items) > 200:
                out.line(f"  ... {len(items) - 200} more")
    if r["resized"]:
        out.line("resized:")
        out.table(["address", "old", "new"], [[(out.addr(a), PLAIN), (str(o), PLAIN), (str(n), PLAIN)]
                                              for a, o, n in r["resized"]])


_RENDERERS = {"walk": _render_walk, "check": _render_check, "stats": _render_stats, "find": _render_find,
              "pages": _render_pages, "map": _render_map, "info": _render_info, "snapshot": _render_snapshot,
              "diff": _render_diff}
