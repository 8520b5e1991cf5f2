"""Reports of one stopped moment's reachability (:mod:`gdbext.core.reach`): ``kheap leaks
--scan`` (allocated blocks no root reaches), ``kheap refs ADDR`` (who points into a block) and
``kheap refs --dangling`` (free blocks still pointed into), each builder beside its text."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..text import escape_bytes, plural, printable_ratio
from .base import ERROR, FREE, HEADING, OK, PLAIN, USED, WARNING, Text, clean, renders, report_base

__all__ = ["leak_scan_report", "refs_report", "dangling_report"]

DEFAULT_PREFIX = 16
DEFAULT_GROUPS = 20          # groups a text report shows (JSON has them all)
ADDRESSES_SHOWN = 4          # payload addresses per group in text


def _first_bytes(data: bytes) -> Dict[str, Any]:
    """The bytes in hex, and as escaped text when they read as text: mostly printable, or
    starting with a C string of at least 4 characters (what follows its NUL is shown escaped)."""
    string = data.split(b"\0", 1)[0]
    text = data.rstrip(b"\0")
    printable = (len(string) >= 4 and printable_ratio(string) == 1.0) or \
        (bool(text) and printable_ratio(text) >= 0.75)
    return {"first_bytes": data.hex(), "text": escape_bytes(data, len(data)) if printable else None}


def _scan_notes(prog: Any, ix: Any, roots: Any) -> List[str]:
    notes = list(roots.notes)
    walk = ix.walk
    if not walk.complete:
        stop = walk.stop_json()
        where = f" at {prog.fmt(stop['address'])}" if stop.get("address") is not None else ""
        notes.append(f"the walk stopped ({stop['reason']}{where}: {stop.get('detail', '')}): only the "
                     f"{plural(len(ix.blocks), 'segment')} before it "
                     f"{'was' if len(ix.blocks) == 1 else 'were'} scanned and judged")
    if ix.bad:
        notes.append(f"{plural(len(ix.bad), 'segment')} with a corrupt header "
                     f"{'was' if len(ix.bad) == 1 else 'were'} neither scanned nor judged")
    if ix.readable_end < prog.heap_end:
        notes.append(f"the heap is unreadable from {prog.fmt(ix.readable_end)}: segments past it "
                     "were not scanned")
    for r in roots.missing:
        notes.append(f"root {r.name} {prog.fmt(r.start)}..{prog.fmt(r.end)}: {r.missing} of "
                     f"{r.end - r.start} bytes unreadable, not scanned")
    return notes


def _roots_json(roots: Any) -> Dict[str, Any]:
    return roots.to_json()


def leak_scan_report(prog: Any, scan: Any, prefix: int = DEFAULT_PREFIX,
                     callers: Optional[Mapping[int, str]] = None, groups_shown: int = DEFAULT_GROUPS) -> Dict[str, Any]:
    """``kheap leaks --scan``: the allocated blocks no root reaches, grouped by size and first
    bytes (biggest groups first); ``callers``: payload -> the function that allocated it
    (from ``kheap watch``, when it recorded)."""
    ix = scan.index
    callers = callers or {}
    groups: Dict[Tuple[int, bytes], Dict[str, Any]] = {}
    for k in scan.lost:
        i = ix.used[k]
        block = ix.blocks[i]
        ps, pe = ix.payloads[i]
        head = ix.payload(i, prefix)
        g = groups.get((block.size, head))
        if g is None:
            g = groups[(block.size, head)] = {"size": block.size, "payload_size": pe - ps, "count": 0,
                                              "bytes": 0, **_first_bytes(head), "callers": {},
                                              "blocks": []}
        g["count"] += 1
        g["bytes"] += block.size
        caller = callers.get(ps)
        if caller:
            g["callers"][caller] = g["callers"].get(caller, 0) + 1
        g["blocks"].append({"address": block.address, "payload": ps, "indirect": bool(scan.indirect[k]),
                            "caller": caller})
    ordered = sorted(groups.values(), key=lambda g: (-g["bytes"], -g["size"], g["first_bytes"]))
    lost = scan.lost
    d = report_base("leak-scan", prog)
    d.update({
        "count": len(lost), "bytes": sum(g["bytes"] for g in ordered),
        "indirect": sum(1 for k in lost if scan.indirect[k]), "prefix": prefix, "groups": ordered,
        "groups_shown": groups_shown,
        "roots": _roots_json(scan.roots),
        "scanned": {"used": len(ix.used), "reached": len(ix.used) - len(lost), "free": len(ix.free),
                    "bad": len(ix.bad), "words": scan.words, "root_hits": scan.root_hits,
                    "unread": [ix.blocks[ix.used[k]].address for k in scan.unread]},
        "walk": {"complete": ix.walk.complete, "stop": ix.walk.stop_json()},
    })
    d["notes"] = d.get("notes", []) + _scan_notes(prog, ix, scan.roots)
    return clean(d)


def _roots_lines(r: Dict[str, Any], out: Text) -> None:
    roots = r["roots"]
    sections: Dict[str, int] = {}
    for rng in roots["ranges"]:
        if rng["kind"] == "section":
            sections[rng["name"]] = sections.get(rng["name"], 0) + rng["read"]
    parts = [f"{name} ({size} bytes)" for name, size in sections.items()]
    out.line("roots: " + (", ".join(parts) or "no writable sections") +
             f"; registers of {len(roots['registers'])} cores")
    for s in roots["stacks"]:
        where = f"{out.addr(s['low'])}..{out.addr(s['top'])}"
        if s["state"] == "live":
            cpus = ", ".join(str(c) for c in s["cpus"])
            out.line(f"  stack {s['name']} {where}: live from sp {out.addr(s['live_from'])} "
                     f"(cpu {cpus}; {s['live']} bytes scanned, {s['dead']} dead bytes below sp not)")
        elif s["state"] == "whole":
            out.line(f"  stack {s['name']} {where}: scanned whole ({s['live']} bytes; no registers)")
        else:
            out.line(f"  stack {s['name']} {where}: no core's sp in it: dead, not scanned")


@renders("leak-scan")
def _render_leak_scan(r: Dict[str, Any], out: Text) -> None:
    sc = r["scanned"]
    if not r["count"]:
        out.add("kheap leaks --scan: ").add("no leaks", OK)
        out.line(f": all {plural(sc['used'], 'allocated segment')} reachable from the roots")
    else:
        groups = r["groups"]
        out.add("kheap leaks --scan: ").add(f"{plural(r['count'], 'allocated segment')} ({r['bytes']} bytes)", ERROR)
        extra = f", {r['indirect']} of them only from other lost segments" if r["indirect"] else ""
        out.line(f" no root reaches{extra}, in {plural(len(groups), 'group')} by size and first bytes:")
        limit = r.get("groups_shown") or len(groups)
        callers = any(g["callers"] for g in groups[:limit])
        rows = []
        for g in groups[:limit]:
            text = f"\"{g['text']}\"" if g["text"] is not None else g["first_bytes"]
            addrs = ", ".join(out.addr(b["payload"]) for b in g["blocks"][:ADDRESSES_SHOWN])
            if len(g["blocks"]) > ADDRESSES_SHOWN:
                addrs += f" (+{len(g['blocks']) - ADDRESSES_SHOWN} more)"
            row = [(str(g["size"]), PLAIN), (str(g["count"]), USED), (str(g["bytes"]), PLAIN), (text, PLAIN)]
            if callers:
                who = ", ".join(f"{name} ({n})" if len(g["callers"]) > 1 else name
                                for name, n in sorted(g["callers"].items(), key=lambda x: -x[1]))
                row.append((who or "?", WARNING))
            rows.append(row + [(addrs, PLAIN)])
        out.table(["size", "count", "bytes", f"first {r['prefix']} bytes"] + (["allocated by"] if callers else [])
                  + ["payloads"], rows)
        if len(groups) > limit:
            rest = groups[limit:]
            out.line(f"  ... {plural(len(rest), 'more group')} ({plural(sum(g['count'] for g in rest), 'segment')}, "
                     f"{sum(g['bytes'] for g in rest)} bytes) not shown: --groups 0 or --json lists all")
    _roots_lines(r, out)
    walk = "complete" if r["walk"]["complete"] else f"stopped ({r['walk']['stop']['reason']})"
    out.line(f"scanned: {plural(sc['used'], 'allocated segment')} ({sc['reached']} reached), {sc['words']} words; "
             f"walk {walk}")
    out.notes(r.get("notes", []))


def _holder_json(h: Dict[str, Any]) -> Dict[str, Any]:
    return dict(h)


def refs_report(prog: Any, ix: Any, index: Optional[int], refs: Any, address: int,
                roots: Any) -> Dict[str, Any]:
    """``kheap refs ADDR``: every place pointing into the block holding ADDR."""
    d = report_base("refs", prog)
    d["address"] = address
    if index is None:
        d.update({"found": False, "segment": None, "holders": [], "count": 0})
    else:
        b = ix.blocks[index]
        ps, pe = ix.payloads[index]
        d.update({"found": True, "segment": {"address": b.address, "size": b.size, "state": b.state,
                                             "payload": ps, "end": ix.ends[index]},
                  "holders": [_holder_json(h) for h in refs.holders], "count": len(refs.holders)})
    d["roots"] = _roots_json(roots)
    d["notes"] = d.get("notes", []) + _scan_notes(prog, ix, roots)
    return clean(d)


def _where(h: Dict[str, Any], out: Text) -> Tuple[str, str]:
    kind = h["kind"]
    if kind == "global":
        return "global", f"{h.get('symbol') or out.addr(h['slot'])} ({h['section']})"
    if kind == "stack":
        text = f"cpu {h['cpu']} {h['stack']} sp+{h['sp_offset']:#x}"
        frame = h.get("frame")
        if frame:
            text += f", frame #{frame['level']} {frame.get('function') or '??'}"
        return "stack", text
    if kind == "register":
        return "register", f"cpu {h['cpu']} {h['register']}"
    return "segment", f"{out.addr(h['segment'])} payload+{h['offset']:#x}"


def _holder_rows(holders: List[Dict[str, Any]], out: Text) -> List[List[Tuple[str, Any]]]:
    rows = []
    for h in holders:
        kind, where = _where(h, out)
        into = h.get("into", "payload")
        off = h["target_offset"]
        target = f"{into}{'+' if off >= 0 else '-'}{abs(off):#x}" if into == "payload" else f"header (payload-{-off:#x})"
        rows.append([(kind, HEADING), (where, PLAIN), (out.addr(h["slot"]) if h["slot"] is not None else "-", PLAIN),
                     (out.addr(h["value"]), PLAIN), (target, PLAIN)])
    return rows


@renders("refs")
def _render_refs(r: Dict[str, Any], out: Text) -> None:
    if not r["found"]:
        out.line(f"kheap refs: {out.addr(r['address'])} is in no segment the walk reached")
    else:
        s = r["segment"]
        tok = FREE if s["state"] == "free" else USED if s["state"] == "used" else ERROR
        head = f"{plural(r['count'], 'place')} {'points' if r['count'] == 1 else 'point'} into the "
        if not r["count"]:
            head = "nothing points into the "
        out.add(head).add(s["state"], tok).add(f" segment at {out.addr(s['address'])} (size {s['size']}, "
                                               f"payload {out.addr(s['payload'])})")
        if s["state"] == "free" and r["count"]:
            out.add(": ").add("dangling pointers", ERROR)
        out.line(":" if r["count"] else "")
        if r["count"]:
            out.table(["kind", "where", "slot", "value", "into"], _holder_rows(r["holders"], out))
    out.notes(r.get("notes", []))


def dangling_report(prog: Any, ix: Any, items: List[Tuple[int, List[Dict[str, Any]]]],
                    roots: Any) -> Dict[str, Any]:
    """``kheap refs --dangling``: every free block still pointed into, with the holders."""
    d = report_base("dangling", prog)
    segs = []
    for i, holders in items:
        b = ix.blocks[i]
        segs.append({"address": b.address, "size": b.size, "payload": ix.payloads[i][0],
                     "holders": [_holder_json(h) for h in holders]})
    d.update({"count": len(segs), "free": len(ix.free), "segments": segs, "roots": _roots_json(roots)})
    d["notes"] = d.get("notes", []) + _scan_notes(prog, ix, roots)
    return clean(d)


@renders("dangling")
def _render_dangling(r: Dict[str, Any], out: Text) -> None:
    if not r["count"]:
        out.add("kheap refs --dangling: ").add("none", OK).line(f": nothing points into any of the "
                                                                f"{plural(r['free'], 'free segment')}")
    else:
        what = "1 free segment is" if r["count"] == 1 else f"{r['count']} free segments are"
        out.add("kheap refs --dangling: ").add(f"{what} still pointed into", ERROR).line(":")
        for s in r["segments"]:
            out.line(f"free segment at {out.addr(s['address'])} (size {s['size']}, payload "
                     f"{out.addr(s['payload'])}):")
            out.table(["kind", "where", "slot", "value", "into"], _holder_rows(s["holders"], out), indent="    ")
    out.notes(r.get("notes", []))
