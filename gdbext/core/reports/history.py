"""Reports over time: snapshot and diff, and what ``kheap watch`` recorded (watch, history,
leaks), each builder beside its text."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..debuginfo import code_info
from ..snapshot import Snapshot, SnapshotDiff
from ..text import format_address, plural
from ..watch import describe_operation
from .base import ERROR, FREE, OK, PLAIN, USED, Text, clean, culprit_bytes, renders, report_base

__all__ = ["snapshot_report", "diff_report", "watch_report", "watch_stop_report", "history_report", "leaks_report",
           "leak_sources", "call_site", "DIFF_LIMIT"]


def snapshot_report(snapshot: Snapshot) -> Dict[str, Any]:
    """``kheap snapshot``: the snapshot itself (what the CLI stores in a file)."""
    return clean(snapshot.to_json())


DIFF_LIMIT = 50          # blocks each list of ``kheap diff`` shows by default


def diff_report(diff: SnapshotDiff, pointer_size: int = 4, limit: Optional[int] = DIFF_LIMIT) -> Dict[str, Any]:
    """``kheap diff``: new, freed and resized allocations, and live growth (the leak view).

    Each block is listed by its payload (what kmalloc returned, what a user greps for; as
    ``kheap leaks`` lists them) and its header. ``limit``: at most that many blocks per list
    (None or 0: all); ``counts`` has every list's length and ``not_shown`` what was left out."""
    d = report_base("diff", pointer_size=pointer_size)
    d.update(diff.to_json())
    counts = {k: len(d[k]) for k in ("new", "freed", "resized")}
    if limit:
        for k in counts:
            d[k] = d[k][:limit]
        d["new_by_size"] = sorted(d["new_by_size"], key=lambda x: -x[0] * x[1])[:limit]
    d["limit"] = limit or None
    d["counts"] = counts
    d["not_shown"] = {k: counts[k] - len(d[k]) for k in counts}
    return clean(d)


@renders("snapshot")
def _render_snapshot(r: Dict[str, Any], out: Text) -> None:
    out.line(f"snapshot {r.get('tag') or '(untagged)'}: {plural(len(r['segments']), 'segment')}, "
             f"{r['used']['count']} used ({r['used']['bytes']} bytes), walk {r['stop_reason']}")


@renders("diff")
def _render_diff(r: Dict[str, Any], out: Text) -> None:
    live = r["live"]
    tags = r.get("tags", {})
    grow = live["bytes_growth"]
    counts = r.get("counts") or {k: len(r[k]) for k in ("new", "freed", "resized")}
    hidden = r.get("not_shown") or {}
    out.add(f"{tags.get('before') or 'before'} -> {tags.get('after') or 'after'}: live bytes "
            f"{live['bytes_before']} -> {live['bytes_after']} (")
    out.add(f"{grow:+d}", ERROR if grow > 0 else OK).add(f"), allocations {live['count_before']} -> "
                                                          f"{live['count_after']} ({live['count_growth']:+d})").nl()
    out.line(f"new: {counts['new']}  freed: {counts['freed']}  resized: {counts['resized']}")
    if r["new_by_size"]:
        out.line("new allocations by size (possible leaks):")
        out.table(["size", "count", "bytes"], [[(str(s), PLAIN), (str(c), USED), (str(s * c), PLAIN)]
                                              for s, c in sorted(r["new_by_size"], key=lambda x: -x[0] * x[1])])
    for name, tok in (("new", USED), ("freed", FREE), ("resized", PLAIN)):
        items = r[name]
        if not items:
            continue
        out.line(f"{name}:")
        head = ["payload", "header", "size"] + (["was"] if name == "resized" else [])
        out.table(head, [[(out.addr(b["payload"]), tok), (out.addr(b["header"]), PLAIN), (str(b["size"]), PLAIN)]
                         + ([(str(b["old_size"]), PLAIN)] if name == "resized" else []) for b in items])
        if hidden.get(name):
            out.line(f"  ... {hidden[name]} more not shown (raise --limit, or --limit 0 for all)")


def watch_report(action: str, status: Dict[str, Any]) -> Dict[str, Any]:
    """``kheap watch on|off|status``: the breakpoints and what was recorded so far."""
    d = report_base("watch")
    d.update({"action": action, **status})
    return clean(d)


def _render_watch(report: Dict[str, Any], out: Text) -> None:
    if report["action"] == "on":
        sites = report.get("return_sites", {})
        where = ", ".join(f"{k} (1 entry, {plural(len(v), 'return')})" for k, v in sites.items())
        out.line(f"kheap watch: on: {plural(report['breakpoints'], 'breakpoint')}: {where}; continue to run the kernel")
        return
    if report["action"] == "off":
        removed = report.get("removed")
        done = ("nothing to remove: no kheap watch breakpoints were set" if removed == 0
                else f"{plural(removed, 'breakpoint')} removed" if removed is not None else "breakpoints removed")
        out.line(f"kheap watch: off: {done}" + (
            f" ({plural(report['counters']['operations'], 'operation')} recorded)" if "counters" in report else ""))
        return
    if "counters" not in report:
        out.line("kheap watch: off (never turned on)")
        return
    c = report["counters"]
    out.line(f"kheap watch: {'on' if report['active'] else 'off'}; {plural(c['operations'], 'operation')} "
             f"({plural(c['calls'], 'call')}), history {report['history_size']}/{report['history_limit']}, "
             f"{plural(report['live'], 'live block')}, full check every {report['full_every'] or 'checkpoint'}")
    out.line(f"  allocations={c['allocations']} frees={c['frees']} failed={c['failed']} "
             f"bytes_requested={c['bytes_requested']} bytes_allocated={c['bytes_allocated']} "
             f"bytes_freed={c['bytes_freed']} current_usage={c['current_usage']} peak_usage={c['peak_usage']}")
    if report.get("last_stop"):
        stop = report["last_stop"]
        out.line(f"  last stop: {stop['reason']}: {', '.join(f['code'] for f in stop['findings'])}")


@renders("watch")
def _render_watch_and_page(report: Dict[str, Any], out: Text) -> None:
    _render_watch(report, out)
    page = report.get("html")
    if page:
        out.line(f"kheap watch: wrote {page['path']} ({page['bytes']} bytes, {plural(page['operations'], 'operation')})")


def call_site(prog: Any, caller_pc: Optional[int]) -> Optional[str]:
    """``file:line`` of the call that returns to ``caller_pc`` (the line of the instruction
    before the return address), from the ELF's DWARF; None without it."""
    if not caller_pc or prog is None:
        return None
    try:
        return code_info(prog.elf).line_at(caller_pc - 1)
    except Exception:  # noqa: BLE001 - no line table: the symbol alone is shown
        return None


def history_report(pointer_size: int, target: Optional[int], operations: List[Any], matched: int,
                   counters: Dict[str, Any], first_free: Any = None, allocated_by: Any = None,
                   prog: Any = None) -> Dict[str, Any]:
    """``kheap history [ADDR]``: the recorded operations (all, or those touching ADDR); with
    ``prog`` each has ``caller_source``: the file:line of its call."""
    d = report_base("history", pointer_size=pointer_size)

    def op_json(o: Any) -> Dict[str, Any]:
        out = o.to_json()
        out["caller_source"] = call_site(prog, o.caller_pc)
        return out

    d.update({"address": target, "matched": matched, "not_shown": matched - len(operations),
              "operations": [op_json(o) for o in operations], "counters": counters})
    if target is not None:
        d["first_free"] = op_json(first_free) if first_free else None
        d["allocated_by"] = op_json(allocated_by) if allocated_by else None
    return clean(d)


def _operation_line(op: Dict[str, Any], fmt: Any) -> str:
    line = describe_operation(op, fmt)
    return line + (f" at {op['caller_source']}" if op.get("caller_source") else "")


@renders("history")
def _render_history(r: Dict[str, Any], out: Text) -> None:
    head = (f"{plural(r['matched'], 'operation')} touched {out.addr(r['address'])}" if r["address"] is not None
            else f"{plural(r['matched'], 'operation')} recorded")
    out.line(head + (f" ({r['not_shown']} earlier not shown)" if r["not_shown"] else ""))
    for op in r["operations"]:
        out.line(_operation_line(op, lambda a: out.addr(a) if a else "NULL"))


def leak_sources(prog: Any, watch: Any, groups: List[Dict[str, Any]]) -> None:
    """Add ``sources`` to each group of :meth:`Watch.leaks`: the file:line of each call that
    allocated its blocks (the outermost call's, as the group's caller is: kcalloc's own
    kmalloc is not the caller), most blocks first."""
    by_index = {o.index: o for o in watch.history}
    for g in groups:
        lines: Dict[str, int] = {}
        for payload in g["blocks"]:
            op = watch.live.get(payload)
            while op is not None and op.parent is not None and op.parent in by_index:
                op = by_index[op.parent]
            where = call_site(prog, op.caller_pc) if op is not None and op.parent is None else None
            if where:
                lines[where] = lines.get(where, 0) + 1
        g["sources"] = sorted(lines, key=lambda k: (-lines[k], k))


def leaks_report(pointer_size: int, mark: int, groups: List[Dict[str, Any]], blocks_shown: int = 8,
                 mark_set: bool = False) -> Dict[str, Any]:
    """``kheap leaks``: live allocations since the mark, by caller (``mark_set``: --mark ran);
    each group's ``blocks`` are payload addresses (what kmalloc returned), ``sources`` the
    calls' file:line (:func:`leak_sources`)."""
    d = report_base("leaks", pointer_size=pointer_size)
    d.update({"mark": mark, "groups": groups, "count": sum(g["count"] for g in groups),
              "bytes": sum(g["bytes"] for g in groups), "blocks_shown": blocks_shown, "mark_set": mark_set})
    return clean(d)


@renders("leaks")
def _render_leaks(r: Dict[str, Any], out: Text) -> None:
    if r.get("mark_set"):
        out.line(f"kheap leaks: mark set at operation #{r['mark']}")
        return
    out.line(f"{plural(r['count'], 'live block')} ({plural(r['bytes'], 'byte')}) allocated since operation "
             f"#{r['mark']} and not freed" + (", by caller (payload addresses, as kmalloc returned them):"
                                              if r["groups"] else ""))
    n = r.get("blocks_shown", 8)
    for g in r["groups"]:
        shown = ", ".join(out.addr(b) for b in g["blocks"][:n])
        more = f" (+{len(g['blocks']) - n} more)" if len(g["blocks"]) > n else ""
        out.line(f"  {g['caller']:<28} {g['count']:>6} {'block ' if g['count'] == 1 else 'blocks'} {g['bytes']:>9} bytes: {shown}{more}")
        if g.get("sources"):
            out.line(f"  {'':<28} at {', '.join(g['sources'][:4])}"
                     + (f" (+{len(g['sources']) - 4} more)" if len(g["sources"]) > 4 else ""))


_STOP_REASONS = {"bad-pointer": "bad pointer passed to the allocator",
                 "corrupt-after": "heap corrupt after an allocator call",
                 "checkpoint": "heap corrupt at kheap_checkpoint",
                 "full-check": "heap corrupt at a periodic full check"}


def watch_stop_report(stop: Any, pointer_size: int) -> Dict[str, Any]:
    """Where ``kheap watch`` stopped the kernel: why, the operation, the findings, the history."""
    d = report_base("watch-stop", pointer_size=pointer_size)
    d.update(stop.to_json())
    return clean(d)


@renders("watch-stop")
def _render_watch_stop(r: Dict[str, Any], out: Text) -> None:
    def fmt(value: Optional[int]) -> str:
        return format_address(value, out.pointer_size, missing="NULL")

    out.line(f"kheap watch: stopped: {_STOP_REASONS.get(r['reason'], r['reason'])}")
    if r.get("operation"):
        out.line(f"  operation: {describe_operation(r['operation'], fmt)}")
    errors = [f for f in r["findings"] if f["severity"] == "error"]
    for i, f in enumerate(errors):
        out.line(f"  {f['code']} at {fmt(f['address'])}: {f['message']}")
        c = f.get("culprit")
        if c and (i + 1 == len(errors) or errors[i + 1].get("culprit") != c):    # once per header
            out.line(f"    culprit: {fmt(c['address'])} ({c['reason']}){culprit_bytes(c, addr=fmt)}")
    if r.get("allocated_by"):
        out.line(f"  allocated by: {describe_operation(r['allocated_by'], fmt)}")
    if r.get("first_free"):
        out.line(f"  first freed by: {describe_operation(r['first_free'], fmt)}")
    history = r.get("history") or []
    if history:
        out.line(f"  history of {fmt(r['address'])} ({plural(len(history), 'operation')}):")
        for op in history[-12:]:
            out.line(f"    {describe_operation(op, fmt)}")
