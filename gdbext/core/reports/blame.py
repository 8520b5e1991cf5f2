"""``kheap blame``: the last writer of the watched bytes, every earlier write, and whether the
re-run was deterministic; built from a :class:`~gdbext.core.blame.BlameRun`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..blame import Writers, compare_bytes
from ..text import escape_bytes, plural, printable_ratio
from .base import ERROR, HEADING, NOTE, OK, PLAIN, WARNING, Text, clean, renders, report_base

__all__ = ["blame_report", "WRITES_SHOWN"]

WRITES_SHOWN = 40                 # earlier writes listed in text (JSON has all of them)


def _value_text(hexed: Optional[str], byteorder: str = "little") -> str:
    """Bytes as hex words, and what they read as: a number (up to 8 bytes) or ASCII."""
    if hexed is None:
        return "-"
    data = bytes.fromhex(hexed)
    if not data:
        return "(no bytes)"
    words = " ".join(data[i:i + 4].hex() for i in range(0, len(data), 4))
    extra = ""
    if len(data) in (1, 2, 4, 8):
        extra = f" = {int.from_bytes(data, byteorder):#x}"
    elif printable_ratio(data) >= 0.75:
        extra = f' "{escape_bytes(data)}"'
    return words + extra


def _changes(before: Optional[bytes], after: bytes, fields: List[List[Any]], word: int = 4) -> List[List[Any]]:
    """The members (else 4-byte words) that differ between two values of the watched bytes:
    [offset, old, new, name] (old and new in hex; name None for a plain word)."""
    if before is None or len(before) != len(after):
        return []
    spans = [(f[0], f[1], f[2]) for f in fields] or [(i, word, None) for i in range(0, len(after), word)]
    return [[off, before[off:off + n].hex(), after[off:off + n].hex(), name]
            for off, n, name in spans if before[off:off + n] != after[off:off + n]]


def _change_text(w: Dict[str, Any], order: str) -> str:
    """A wide value as the words this write changed (``+12: 0x78``), a narrow one whole."""
    data = bytes.fromhex(w["value"])
    if len(data) <= 8 or w.get("changes") is None:
        return _value_text(w["value"], order)
    if not w["changes"]:
        return "(no change)"
    parts = [f"{name or f'+{off}'}: {int.from_bytes(bytes.fromhex(new), order):#x}"
             for off, _, new, name in w["changes"][:4]]
    more = len(w["changes"]) - 4
    return ", ".join(parts) + (f" (+{more} more words)" if more > 0 else "")


def blame_report(prog: Any, run: Any, writers: Optional[Writers] = None) -> Dict[str, Any]:
    """The ``blame`` report. ``run``: a :class:`~gdbext.core.blame.BlameRun`."""
    writers = writers or Writers(prog)
    hits = run.hits
    d = report_base("blame", prog)
    same = compare_bytes(run.before, run.after) if run.after is not None else None
    last = None
    if hits and run.ended == "until":
        last = writers.describe(hits[-1], frames=True)
        last["instruction"] = run.instruction
        last["of"] = len(hits)
    writes = [writers.describe(h) for h in (hits[:-1] if last is not None else hits)]
    # What each write changed, member by member, from the value the write before it left.
    d_fields = [list(f) for f in run.plan.fields]
    previous: Optional[bytes] = None
    for w, hit in zip(writes + ([last] if last is not None else []), hits):
        w["changes"] = _changes(previous, hit.value, d_fields) if previous is not None else None
        previous = hit.value
    if run.ended != "until":
        verdict = "incomplete"
    elif not hits:
        verdict = "no-writes"
    elif same is not None and not same["equal"]:
        verdict = "not-deterministic"
    else:
        verdict = "found"
    final_matches = None
    if hits and run.after is not None:
        final_matches = hits[-1].value == run.after
    d.update({
        "verdict": verdict,
        "watch": run.plan.to_json(),
        "until": {"address": run.until, "function": prog.elf.symbolize(run.until) if run.until is not None else None},
        "ended": run.ended,
        "hits": len(hits),
        "max_hits": run.max_hits,
        "last_writer": last,
        "writes": writes,
        "before": run.before.hex(),
        "after": run.after.hex() if run.after is not None else None,
        "deterministic": same["equal"] if same is not None else None,
        "differences": same["differences"] if same is not None else [],
        "last_write_is_final": final_matches,
        "stop": {"before": {"pc": run.start_pc, "function": prog.elf.symbolize(run.start_pc) if run.start_pc is not None else None},
                 "after": {"pc": run.end_pc, "function": prog.elf.symbolize(run.end_pc) if run.end_pc is not None else None},
                 "same_place": run.same_place,
                 "idle": {"pc": run.idle_pc, "function": prog.elf.symbolize(run.idle_pc)} if run.idle_pc is not None else None},
        "removed": dict(run.removed),
        "seconds": round(run.seconds, 3),
        "face": run.face,
        "byteorder": prog.byteorder,
    })
    d["notes"] = list(d.get("notes", [])) + list(run.notes)
    return clean(d)


def _function(w: Dict[str, Any]) -> str:
    """``name+0xoff``, or ``inlined (in name+0xoff)`` for inlined code."""
    if w.get("inlined"):
        return f"{w['inlined']} (inlined in {w.get('function') or '??'})"
    return w.get("function") or "??"


def _writer_line(w: Dict[str, Any], out: Text) -> str:
    where = f"{out.addr(w['pc'])} {_function(w)}"
    if w.get("caller"):
        where += f" (from {_function(w['caller'])})"
    return where


@renders("blame")
def _render_blame(r: Dict[str, Any], out: Text) -> None:
    watch = r["watch"]
    order = r.get("byteorder", "little")
    verdict = r["verdict"]
    tok = {"found": OK, "no-writes": WARNING, "incomplete": WARNING, "not-deterministic": ERROR}.get(verdict, PLAIN)
    out.add("kheap blame: ").add(verdict.upper(), tok)
    out.line(f" - {plural(watch['size'], 'byte')} at {out.addr(watch['address'])}: "
             f"{watch['what']}")
    f = watch.get("finding")
    if f:
        out.line(f"  from {f['code']} at {out.addr(f['address'])}: {f['message']}")
    until = r["until"]
    out.line(f"re-ran the kernel from reset to {out.addr(until['address'])} {until.get('function') or ''}".rstrip()
             + f": {plural(r['hits'], 'write')} in {r['seconds']:.2f} s")
    last = r.get("last_writer")
    if last:
        out.add("last write: ", HEADING).add(f"{last['number']} of {last['of']}, ")
        out.add(f"{out.addr(last['pc'])} {_function(last)}", ERROR if not last["allocator"] else PLAIN)
        out.line(f" at {last['source']}" if last.get("source") else "")
        if last.get("instruction"):
            out.line(f"    {last['instruction']}")
        if last.get("caller"):
            c = last["caller"]
            out.line(f"  called from {_function(c)}" + (f" at {c['source']}" if c.get("source") else ""))
        out.line(f"  by {'the allocator' if last['allocator'] else 'code outside the allocator'}"
                 + (f", thread {last['thread']}" if last.get("thread") else ""))
        if last.get("requested_by"):
            q = last["requested_by"]
            out.line(f"  on behalf of {_function(q)}" + (f" at {q['source']}" if q.get("source") else ""))
        out.line(f"  value after it: {_value_text(last['value'], order)}")
        if len(bytes.fromhex(last["value"])) > 8 and last.get("changes"):
            out.line(f"  it changed: {_change_text(last, order)}")
        out.line("  backtrace:")
        for i, frame in enumerate(last.get("backtrace") or []):
            out.line(f"    #{i:<2} {out.addr(frame['pc'])} {_function(frame)}"
                     + (f" at {frame['source']}" if frame.get("source") else ""))
        if last.get("backtrace_end"):
            out.line(f"    (ends: {last['backtrace_end']})", NOTE)
    writes: List[Dict[str, Any]] = r.get("writes") or []
    if writes:
        title = "earlier writes" if last else "writes seen"
        out.line(f"{title} ({len(writes)}), oldest first:", HEADING)
        shown = writes if len(writes) <= WRITES_SHOWN else writes[:5] + writes[-(WRITES_SHOWN - 5):]
        width = max(len(_writer_line(w, out)) for w in shown)
        for i, w in enumerate(shown):
            if len(writes) > WRITES_SHOWN and i == 5:
                out.line(f"    ... {len(writes) - WRITES_SHOWN} more not shown (--json lists all)", NOTE)
            who = "allocator" if w["allocator"] else "other"
            out.add(f"  {w['number']:>5}  ").add(_writer_line(w, out).ljust(width))
            out.add(f"  {who:<9}", PLAIN if w["allocator"] else WARNING)
            out.line(f"  {_change_text(w, order)}")
    if r["ended"] in ("max-hits", "max-hits-until"):
        out.line(f"stopped watching after {r['max_hits']} writes (--max-hits): the last writer is not known; "
                 "run again with a larger --max-hits or an earlier --until", WARNING)
    elif r["ended"] == "interrupted":
        out.line("interrupted: the run did not reach the stop point, so the last writer is not known", WARNING)
    elif r["ended"] not in ("until",):
        out.line(f"the run ended early ({r['ended']}): the last writer is not known", WARNING)
    complete = r["ended"] == "until"
    if r.get("deterministic") is True and complete:
        out.line(f"the bytes at the stop point equal those read before the re-run ({_value_text(r['after'], order)})", OK)
    elif r.get("deterministic") is False and complete:
        out.line("the re-run was NOT deterministic: the bytes at the stop point differ from those read before", ERROR)
        out.line(f"  before: {_value_text(r['before'], order)}")
        out.line(f"  after:  {_value_text(r['after'], order)}")
        offsets = ", ".join(str(d["offset"]) for d in r["differences"][:16])
        out.line(f"  differing byte offsets: {offsets}")
    if r.get("last_write_is_final") is False and r["ended"] == "until":
        out.line("  the bytes changed after the last write kheap saw (a write no watchpoint sees: DMA, "
                 "or a write the debugger skipped)", WARNING)
    stop = r["stop"]
    after = stop["after"]
    place = f"{out.addr(after['pc'])} {after.get('function') or ''}".rstrip()
    if stop.get("same_place"):
        idle = stop.get("idle")
        if idle and after["pc"] == idle["pc"]:
            out.line(f"the target is stopped where it was: at the wfi it was halted in ({place}; it halts "
                     "there again when it runs on)")
        else:
            out.line(f"the target is stopped where it was ({place})")
    elif r["ended"] in ("until", "max-hits-until") and after["pc"] == r["until"]["address"]:
        out.line(f"the target is stopped at the stop point asked for ({place}); before blame it was at "
                 f"{out.addr(stop['before']['pc'])} {stop['before'].get('function') or ''}".rstrip())
    else:
        out.line(f"the target is stopped at {place}, not where it was "
                 f"({out.addr(stop['before']['pc'])} {stop['before'].get('function') or ''})".rstrip(), WARNING)
    removed = r.get("removed") or {}
    out.line(f"removed what kheap set: {plural(removed.get('watchpoints', 0), 'watchpoint')}, "
             f"{plural(removed.get('breakpoints', 0), 'breakpoint')}")
    out.notes(r.get("notes", []))
