"""A picture of the heap: one self-contained HTML page drawn from plain data (``kheap map --html``).

This module is a pure renderer. It knows nothing of Programs, walks or validators (it shares
only the wording of a culprit with the text reports): :func:`heap_page` and
:func:`watch_timeline` take plain dicts (numbers, strings, lists, built by
``core/reports/heap_page.py`` from what the JSON reports already hold) and return the text of an HTML file. The page needs no network: no
external script, style sheet, font or image, and its Content-Security-Policy forbids loading
any (``default-src 'none'``); the one inline script is allowed by its hash only.

Hostile target text. Every string here may come from target memory (finding messages, the
ASCII a culprit wrote, payload bytes, DWARF names): in the HTML it goes through
:func:`html.escape`, and the data the script draws from is embedded as JSON in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as ``\\u003c``,
``\\u003e`` and ``\\u0026`` (so no ``</script>`` or ``<!--`` can end it), and the script
puts strings into the page with ``textContent`` only, never as markup.

The heap page's data (``heap_page(data)``), version 1; every address an int:

- ``meta``: {elf, arch, pointer_size, time (ISO 8601), target (where the bytes came from),
  tool} (all optional but ``pointer_size``)
- ``heap``: {start, size, end, header_size, list_head}
- ``verdict``: 'ok' | 'warnings' | 'corrupt'
- ``walk``: {count, complete, stop {reason, address, from, detail}}
- ``segments``: [{address, size, state ('used'|'free'|'bad'), is_allocated, next, prev,
  payload, extra {name: int}?, head (hex of the payload's first bytes) or None,
  head_error (why they are missing)?}] in list order (the walk report's segments plus head)
- ``findings``: [{code, severity, address, message, values {}, culprit {address, reason,
  classification, detail} or None}] (the check report's findings)
- ``codes``: {code: one-line meaning} (optional, for the legend)
- ``stats``: the stats report's {used, free, bad, largest_free, fragmentation, histogram
  [{low, high, used, free}], kernel, comparison} or None
- ``pages``: {num_pages, scanned, entry_size, page_size, page_array, counts {kind: n},
  runs [[first_index, count, kind]], fault, free_list} or None
- ``notes``: [str]

The watch timeline's data (``watch_timeline(data)``): ``meta``, ``heap`` as above,
``operations`` [{index, kind, size, pointer, result, effect, caller, parent,
old_segment_size, new_segment_size, returned}] oldest first, ``counters`` {name: int},
``stop`` (the last stop's JSON: {reason, findings, operation, address, ...}) or None,
``stops`` (how many), ``active`` (breakpoints in place).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import html
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .reports.base import culprit_bytes

__all__ = ["heap_page", "watch_timeline", "embed_json", "DATA_VERSION"]

DATA_VERSION = 1
_SAFE_INT = (1 << 53) - 1          # JavaScript numbers are exact up to here

_STATE_CODE = {"free": 0, "used": 1, "bad": 2}


def embed_json(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: nothing in it can close the element,
    open a comment or start an entity (``<``, ``>``, ``&`` as ``\\u003c`` ...), ASCII only."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(value: Any) -> str:
    """Any value as escaped HTML text (attributes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> Any:
    """An integer as JSON the script reads exactly: a number up to 2**53, else a hex string."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_SAFE_INT <= value <= _SAFE_INT else ("-" if value < 0 else "") + hex(abs(value))
    return value


def _hex(value: Optional[int], pointer_size: int) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "NULL"
    return f"0x{value:0{pointer_size * 2}x}"


def _size_text(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def _document(title: str, body: str, data: Dict[str, Any], script: str) -> str:
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_e(_csp(script))}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta name=\"generator\" content=\"kheap\">\n",
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        body,
        "\n<script type=\"application/json\" id=\"kheap-data\">", embed_json(data), "</script>\n",
        "<script>", script, "</script>\n</body></html>\n",
    ])


# ------------------------------------------------------------------------------------------------
# The heap page
# ------------------------------------------------------------------------------------------------

def _extent(address: int, size: int, header: int, heap_end: int) -> int:
    """Bytes a segment is drawn over: its size, or only its header when the size is corrupt."""
    if header <= size and address + size <= heap_end:
        return size
    return header


def _heap_items(segs: Sequence[Dict[str, Any]], hs: int, he: int, hdr: int
                ) -> Tuple[List[int], List[List[int]], List[int]]:
    """Address order: ``items`` (segment index >= 0, or -(gap + 1)), ``gaps`` [[start, bytes]]
    for the parts of the heap no segment covers, and each segment's drawn extent."""
    extents = [_extent(s["address"], s["size"], hdr, he) for s in segs]
    order = sorted(range(len(segs)), key=lambda i: (segs[i]["address"], i))
    items: List[int] = []
    gaps: List[List[int]] = []
    cursor = hs
    for i in order:
        a = segs[i]["address"]
        if a > cursor and cursor < he:
            gaps.append([cursor, min(a, he) - cursor])
            items.append(-len(gaps))
        items.append(i)
        cursor = max(cursor, a + extents[i])
    if cursor < he:
        gaps.append([cursor, he - cursor])
        items.append(-len(gaps))
    return items, gaps, extents


def _segment_at(starts: List[int], order: List[int], extents: List[int], address: Optional[int],
                hdr: int) -> Optional[int]:
    """The index of the segment whose drawn extent (or header) holds ``address``."""
    if address is None or not starts:
        return None
    k = bisect.bisect_right(starts, address) - 1
    while k >= 0:
        i = order[k]
        if starts[k] <= address < starts[k] + max(extents[i], hdr):
            return i
        if address - starts[k] > 1 << 24:
            break
        k -= 1
    return None


def _page_run_at(runs: Sequence[Sequence[Any]], index: Optional[int]) -> Optional[int]:
    if index is None:
        return None
    firsts = [r[0] for r in runs]
    k = bisect.bisect_right(firsts, index) - 1
    if k >= 0 and runs[k][0] <= index < runs[k][0] + runs[k][1]:
        return k
    return None


def _page_index_of(finding: Dict[str, Any], pages: Dict[str, Any]) -> Optional[int]:
    values = finding.get("values") or {}
    if isinstance(values.get("index"), int):
        return values["index"]
    base, size, addr = pages.get("page_array"), pages.get("entry_size"), finding.get("address")
    if isinstance(base, int) and isinstance(size, int) and size and isinstance(addr, int):
        off = addr - base
        if 0 <= off < (pages.get("num_pages") or 0) * size:
            return off // size
    return None


def heap_page(data: Dict[str, Any]) -> str:
    """The HTML page of one moment of the heap (see the module doc for ``data``)."""
    meta = dict(data.get("meta") or {})
    ptr = int(meta.get("pointer_size") or 4)
    heap = data.get("heap") or {}
    hs, he = int(heap.get("start") or 0), int(heap.get("end") or 0)
    hdr = int(heap.get("header_size") or 16)
    segs = list(data.get("segments") or [])
    findings = list(data.get("findings") or [])
    verdict = str(data.get("verdict") or "unknown")
    walk = data.get("walk") or {}
    stats = data.get("stats")
    pages = data.get("pages")
    notes = [str(n) for n in data.get("notes") or []]
    codes = data.get("codes") or {}

    items, gaps, extents = _heap_items(segs, hs, he, hdr)
    order = [i for i in items if i >= 0]
    starts = [segs[i]["address"] for i in order]

    # Which segments (and page runs) each finding names: where it is, and its culprit.
    seg_marks: Dict[int, List[List[int]]] = {}      # seg -> [[finding, role 0 at / 1 culprit]]
    run_marks: Dict[int, List[int]] = {}
    fjson = []
    runs = (pages or {}).get("runs") or []
    for k, f in enumerate(findings):
        culprit = f.get("culprit") or None
        at = _segment_at(starts, order, extents, f.get("address"), hdr)
        origin = (f.get("values") or {}).get("from")
        if at is None and isinstance(origin, int):
            # A bad link (outside the heap, a cycle, a fault): mark the segment it leads from.
            at = _segment_at(starts, order, extents, origin, hdr)
        page_run = None
        if f.get("code", "").startswith("PAGE-") and pages:
            page_run = _page_run_at(runs, _page_index_of(f, pages))
            at = None
        by = _segment_at(starts, order, extents, culprit.get("address"), hdr) if culprit else None
        if at is not None:
            seg_marks.setdefault(at, []).append([k, 0])
        if by is not None and by != at:
            seg_marks.setdefault(by, []).append([k, 1])
        if page_run is not None:
            run_marks.setdefault(page_run, []).append(k)
        fjson.append({
            "code": str(f.get("code", "")), "sev": str(f.get("severity", "")),
            "addr": _num(f.get("address")), "msg": str(f.get("message", "")),
            "values": {str(n): _num(v) if isinstance(v, int) else str(v)
                       for n, v in (f.get("values") or {}).items()},
            "culprit": None if not culprit else {
                "addr": _num(culprit.get("address")), "reason": str(culprit.get("reason") or ""),
                "class": str(culprit.get("classification") or ""),
                "detail": str(culprit.get("detail") or "")},
            "seg": at, "by": by, "run": page_run,
        })

    # Segments as compact rows; payload heads deduplicated (free payloads are all poison).
    heads: List[str] = []
    head_index: Dict[str, int] = {}
    rows = []
    for i, s in enumerate(segs):
        head = s.get("head")
        h = -1
        if isinstance(head, str):
            h = head_index.get(head)
            if h is None:
                h = head_index[head] = len(heads)
                heads.append(head)
        error_marks = [m for m in seg_marks.get(i, []) if m[1] == 0
                       and fjson[m[0]]["sev"] == "error"]
        state = _STATE_CODE.get(s.get("state"), 2)
        if error_marks:
            state = 2
        row = [_num(s["address"]), extents[i], _num(s.get("size")), _num(s.get("is_allocated")),
               _num(s.get("next")), _num(s.get("prev")), state, h]
        extra = s.get("extra")
        if extra or s.get("head_error"):
            row.append({str(k): _num(v) for k, v in (extra or {}).items()})
            if s.get("head_error"):
                row.append(str(s["head_error"]))
        rows.append(row)

    counts = {"used": 0, "free": 0, "corrupt": 0}
    for r in rows:
        counts[("free", "used", "corrupt")[r[6]]] += 1

    embedded = {
        "v": DATA_VERSION, "ptr": ptr, "hs": _num(hs), "he": _num(he), "hdr": hdr,
        "head": _num(heap.get("list_head")), "verdict": verdict,
        "walk": {"count": int(walk.get("count", len(segs))), "complete": bool(walk.get("complete")),
                 "stop": {k: _num(v) if isinstance(v, int) else v
                          for k, v in (walk.get("stop") or {}).items()}},
        "seg": rows, "items": items, "gaps": [[_num(a), n] for a, n in gaps], "heads": heads,
        "f": fjson, "marks": {str(k): v for k, v in seg_marks.items()},
        "pages": None, "runmarks": {str(k): v for k, v in run_marks.items()},
    }
    if pages:
        embedded["pages"] = {"n": int(pages.get("num_pages") or 0), "size": int(pages.get("page_size") or 4096),
                             "runs": [[int(a), int(n), str(kind)] for a, n, kind in runs]}

    title = _page_title(verdict, findings, segs, meta)
    body = _heap_body(title, verdict, meta, heap, ptr, walk, segs, counts, findings, fjson, stats,
                      pages, notes, codes)
    return _document(title, body, embedded, _HEAP_JS)


def _page_title(verdict: str, findings: Sequence[Dict[str, Any]], segs: Sequence[Any],
                meta: Dict[str, Any]) -> str:
    errors = sum(1 for f in findings if f.get("severity") == "error")
    warnings = len(findings) - errors
    what = {"ok": "heap OK", "warnings": "heap OK with warnings", "corrupt": "heap CORRUPT"}.get(verdict, f"heap {verdict}")
    parts = [f"kheap: {what}"]
    if findings:
        parts.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    parts.append(f"{len(segs)} segments")
    elf = str(meta.get("elf") or "")
    if elf:
        parts.append(elf.rsplit("/", 1)[-1] + (f" ({meta['arch']})" if meta.get("arch") else ""))
    return " - ".join(parts)


def _meta_html(meta: Dict[str, Any]) -> str:
    rows = []
    for key, label in (("elf", "kernel ELF"), ("arch", "arch"), ("target", "read from"),
                       ("time", "time"), ("tool", "made by")):
        if meta.get(key) not in (None, ""):
            rows.append(f"<span><b>{_e(label)}:</b> <code id=\"meta-{key}\">{_e(meta[key])}</code></span>")
    return f"<div class=\"meta\">{''.join(rows)}</div>"


def _legend_html(kinds: Sequence[Tuple[str, str]]) -> str:
    return "<ul class=\"legend\">" + "".join(
        f"<li><span class=\"sw {_e(c)}\"></span>{_e(t)}</li>" for c, t in kinds) + "</ul>"


def _finding_html(k: int, f: Dict[str, Any], fj: Dict[str, Any], ptr: int) -> str:
    sev = "error" if f.get("severity") == "error" else "warning"
    out = [f"<li class=\"finding {sev}\" data-f=\"{k}\" tabindex=\"0\">",
           f"<span class=\"code\">{_e(f.get('code'))}</span> ",
           f"<span class=\"addr\">{_e(_hex(f.get('address'), ptr))}</span> ",
           f"<span class=\"msg\">{_e(f.get('message'))}</span>"]
    c = f.get("culprit")
    if c:
        what = culprit_bytes(c, ("\u201c", "\u201d"))
        where = _hex(c.get("address"), ptr) + " " if c.get("address") is not None else ""
        out.append(f"<div class=\"culprit\">culprit: {_e(where)}{_e(c.get('reason'))}{_e(what)}</div>")
    if fj["seg"] is None and fj["run"] is None:
        out.append("<div class=\"where\">(not drawn: names no segment or page)</div>")
    out.append("</li>")
    return "".join(out)


def _bucket_text(low: Any, high: Any) -> str:
    """A power-of-two bucket [low, high] as sizes: '32-63 B', '512 KiB-1 MiB' (upper bound
    exclusive once the sizes are in KiB)."""
    if not isinstance(low, int) or not isinstance(high, int):
        return f"{low}\u2013{high}"
    if high < 1024:
        return f"{low}\u2013{high} B"
    return f"{_size_text(low)}\u2013{_size_text(high + 1)}"


def _histogram_html(stats: Optional[Dict[str, Any]]) -> str:
    if not stats or not stats.get("histogram"):
        return "<p class=\"muted\">no size histogram</p>"
    hist = stats["histogram"]
    top = max(max(b.get("used", 0), b.get("free", 0)) for b in hist) or 1
    rows = []
    for b in hist:
        used, free = int(b.get("used", 0)), int(b.get("free", 0))
        rows.append(
            f"<tr><th>{_e(_bucket_text(b.get('low'), b.get('high')))}</th>"
            f"<td class=\"bars\"><div class=\"bar used\" style=\"width:{100 * used / top:.2f}%\"></div>"
            f"<div class=\"bar free\" style=\"width:{100 * free / top:.2f}%\"></div></td>"
            f"<td class=\"num\">{used}</td><td class=\"num\">{free}</td></tr>")
    return ("<table class=\"hist\" id=\"histogram\"><thead><tr><th>segment size</th><th></th>"
            "<th class=\"num\">used</th><th class=\"num\">free</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _stats_html(stats: Optional[Dict[str, Any]], counts: Dict[str, int]) -> str:
    cells = [("used", counts["used"], None), ("free", counts["free"], None)]
    parts = []
    if stats:
        parts.append(f"<div class=\"stat used\"><b>{_e(stats['used']['count'])}</b> used "
                     f"<span>{_e(_size_text(stats['used']['bytes']))}</span></div>")
        parts.append(f"<div class=\"stat free\"><b>{_e(stats['free']['count'])}</b> free "
                     f"<span>{_e(_size_text(stats['free']['bytes']))}</span></div>")
        if stats.get("bad", {}).get("count") or counts["corrupt"]:
            parts.append(f"<div class=\"stat corrupt\"><b>{_e(counts['corrupt'])}</b> corrupt</div>")
        parts.append(f"<div class=\"stat\"><b>{_e(_size_text(stats.get('largest_free')))}</b> largest free</div>")
        frag = stats.get("fragmentation")
        if isinstance(frag, (int, float)):
            parts.append(f"<div class=\"stat\"><b>{frag * 100:.1f}%</b> fragmentation</div>")
    else:
        parts = [f"<div class=\"stat {c}\"><b>{n}</b> {c}</div>" for c, n, _ in cells]
    return "<div class=\"stats\">" + "".join(parts) + "</div>"


def _kernel_stats_html(stats: Optional[Dict[str, Any]]) -> str:
    if not stats or not stats.get("comparison"):
        return ""
    rows = "".join(
        f"<tr class=\"{'ok' if c.get('agree') else 'bad'}\"><th>{_e(c.get('name'))}</th>"
        f"<td class=\"num\">{_e(c.get('kernel'))}</td><td class=\"num\">{_e(c.get('walk'))}</td>"
        f"<td>{'agree' if c.get('agree') else 'DISAGREE'}</td></tr>" for c in stats["comparison"])
    return ("<table class=\"cmp\"><thead><tr><th>heap_stats</th><th class=\"num\">kernel</th>"
            f"<th class=\"num\">walk</th><th></th></tr></thead><tbody>{rows}</tbody></table>")


def _heap_body(title: str, verdict: str, meta: Dict[str, Any], heap: Dict[str, Any], ptr: int,
               walk: Dict[str, Any], segs: Sequence[Dict[str, Any]], counts: Dict[str, int],
               findings: Sequence[Dict[str, Any]], fjson: Sequence[Dict[str, Any]],
               stats: Optional[Dict[str, Any]], pages: Optional[Dict[str, Any]],
               notes: Sequence[str], codes: Dict[str, str]) -> str:
    vclass = {"ok": "ok", "warnings": "warn", "corrupt": "bad"}.get(verdict, "warn")
    stop = walk.get("stop") or {}
    if walk.get("complete", True):
        walk_text = f"{len(segs)} segments on the list, which ends normally"
    else:
        walk_text = (f"{len(segs)} segments on the list; the walk stopped: {stop.get('reason')}"
                     + (f" at {_hex(stop.get('address'), ptr)}" if stop.get("address") is not None else "")
                     + (f" ({stop.get('detail')})" if stop.get("detail") else ""))
    heap_text = (f"heap {_hex(heap.get('start'), ptr)}\u2013{_hex(heap.get('end'), ptr)} "
                 f"({_size_text(heap.get('size'))}), header {heap.get('header_size')} bytes")
    out = [
        f"<header class=\"top {vclass}\"><h1 id=\"verdict\" data-verdict=\"{_e(verdict)}\">{_e(title)}</h1>",
        _meta_html(meta), "</header>",
        "<main>",
        f"<section id=\"summary\"><p>{_e(heap_text)}. <span id=\"walk-text\">{_e(walk_text)}</span>.</p>",
        _stats_html(stats, counts), "</section>",
        "<section id=\"heap\"><div class=\"bar-head\"><h2>The heap, in address order</h2>",
        "<div class=\"controls\" id=\"heap-controls\">",
        "<button type=\"button\" data-zoom=\"out\" title=\"zoom out (-)\">\u2212</button>",
        "<button type=\"button\" data-zoom=\"in\" title=\"zoom in (+)\">+</button>",
        "<button type=\"button\" data-zoom=\"fit\" title=\"whole heap (0)\">fit</button>",
        "<label>scale <select id=\"scale\"><option value=\"lin\">linear</option>"
        "<option value=\"log\">log</option></select></label>",
        "<span id=\"zoom-text\" class=\"muted\"></span></div></div>",
        _legend_html([("used", "used"), ("free", "free"), ("corrupt", "corrupt"),
                      ("gap", "not on the list"), ("mark", "named by a finding"),
                      ("culprit", "likely culprit"), ("warnmark", "warning"), ("sel", "selected")]),
        "<div id=\"band-view\" class=\"view\"><div id=\"band\" class=\"band\" role=\"img\" "
        "aria-label=\"heap segments\"></div></div>",
        "<noscript><p>The drawings need JavaScript; the findings, statistics and histogram below do not.</p></noscript>",
        "<div id=\"detail\" class=\"detail\"><p class=\"muted\">Click a segment for its header, "
        "payload, neighbours and the command that shows it in the debugger.</p></div>",
        "</section>",
    ]
    out.append(f"<section id=\"findings\"><h2>Findings ({len(findings)})</h2>")
    if findings:
        out.append("<ol class=\"findings\">")
        out.extend(_finding_html(k, f, fjson[k], ptr) for k, f in enumerate(findings))
        out.append("</ol>")
    else:
        out.append("<p class=\"ok\">none: every check passed</p>")
    if codes and findings:
        used_codes = sorted({str(f.get("code")) for f in findings})
        out.append("<dl class=\"codes\">" + "".join(
            f"<dt>{_e(c)}</dt><dd>{_e(codes.get(c, ''))}</dd>" for c in used_codes if c in codes) + "</dl>")
    out.append("</section>")
    if pages:
        c = pages.get("counts") or {}
        count_text = ", ".join(f"{_e(k)} {_e(v)}" for k, v in c.items())
        fl = pages.get("free_list") or None
        fl_text = ""
        if fl:
            fl_text = ((f"; free_pages: size {_e(fl.get('size'))}" if fl.get("size") is not None
                        else "; free_pages: a head pointer only")
                       + (f", {_e(fl['walked'])} walked" if fl.get("walked") is not None else "")
                       + ("" if (fl.get("stop") or {}).get("reason") in (None, "end") else
                          f", stopped: {_e(fl['stop']['reason'])}"))
        out += [
            "<section id=\"pages\"><div class=\"bar-head\"><h2>The page array</h2>",
            f"<span class=\"muted\">{_e(pages.get('num_pages'))} pages of {_e(pages.get('page_size'))} bytes: "
            f"{count_text}{fl_text}</span></div>",
            _legend_html([("kernel", "kernel"), ("heap", "heap"), ("pfree", "free"),
                          ("allocated", "allocated"), ("pbad", "bad"), ("mark", "named by a finding")]),
            "<div id=\"pages-view\" class=\"view short\"><div id=\"page-band\" class=\"band\"></div></div>",
            "</section>"]
    out += ["<section id=\"sizes\"><h2>Segment sizes</h2><div class=\"two\">", _histogram_html(stats),
            _kernel_stats_html(stats), "</div></section>"]
    if notes:
        out.append("<section id=\"notes\"><h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes)
                   + "</ul></section>")
    out.append("</main><div id=\"tip\" class=\"tip\" hidden></div>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# The watch timeline
# ------------------------------------------------------------------------------------------------

def _watch_blocks(ops: Sequence[Dict[str, Any]], hdr: int) -> Tuple[List[List[Any]], List[List[Any]]]:
    """Blocks [payload, bytes, from_op, to_op or None, alloc row, free row] and marks
    [op row, address, kind] (double free, bad pointer, failed) from operations, oldest first."""
    open_: Dict[int, List[Any]] = {}
    blocks: List[List[Any]] = []
    marks: List[List[Any]] = []
    freed: Dict[int, int] = {}
    for row, op in enumerate(ops):
        effect = op.get("effect") or ""
        if effect in ("alloc", "move") and op.get("result"):
            payload = op["result"]
            if payload in open_:                      # reused while we thought it live
                b = open_.pop(payload)
                b[3], b[5] = row, row
            size = op.get("new_segment_size") or ((op.get("size") or 0) + hdr)
            b = [payload, size, row, None, row, None]
            open_[payload] = b
            blocks.append(b)
            freed.pop(payload, None)
        elif effect == "free" and op.get("pointer"):
            p = op["pointer"]
            b = open_.pop(p, None)
            if b is not None:
                b[3], b[5] = row, row
                freed[p] = row
            elif p in freed:
                marks.append([row, p, "double-free"])
            else:                                     # allocated before the history began
                size = op.get("old_segment_size") or hdr
                blocks.append([p, size, None, row, None, row])
                freed[p] = row
        elif effect == "failed":
            marks.append([row, None, "failed"])
    return blocks, marks


def watch_timeline(data: Dict[str, Any]) -> str:
    """The HTML page of a ``kheap watch`` run: every block a bar from its allocation to its free
    (x: operation number, y: address), double frees and the first bad operation marked."""
    meta = dict(data.get("meta") or {})
    ptr = int(meta.get("pointer_size") or 4)
    heap = data.get("heap") or {}
    hdr = int(heap.get("header_size") or 16)
    ops = [o for o in (data.get("operations") or []) if o.get("parent") is None or o.get("effect")]
    ops.sort(key=lambda o: o.get("index", 0))
    blocks, marks = _watch_blocks(ops, hdr)
    stop = data.get("stop") or None
    row_of = {o.get("index"): r for r, o in enumerate(ops)}
    bad_row, bad_text, bad_codes = None, "", []
    if stop:
        bad_codes = [str(f.get("code")) for f in stop.get("findings") or []]
        op = stop.get("operation") or None
        if op is not None and op.get("index") in row_of:
            bad_row = row_of[op["index"]]
        elif ops:
            bad_row = len(ops) - 1 if stop.get("reason") != "bad-pointer" else None
        bad_text = f"{stop.get('reason')}: {', '.join(bad_codes)}"
        if bad_row is not None and any(c == "HEAP-DOUBLE-FREE" for c in bad_codes):
            addr = (op or {}).get("pointer")
            if not any(m[0] == bad_row and m[2] == "double-free" for m in marks):
                marks.append([bad_row, addr, "double-free"])
    counters = data.get("counters") or {}
    lo = min([b[0] - hdr for b in blocks] + [m[1] - hdr for m in marks if m[1]], default=heap.get("start") or 0)
    hi = max([b[0] - hdr + max(b[1], hdr) for b in blocks] + [m[1] for m in marks if m[1]],
             default=heap.get("end") or 0)
    callers: Dict[str, int] = {}                     # each caller's name stored once
    embedded = {
        "v": DATA_VERSION, "ptr": ptr, "hdr": hdr, "lo": _num(lo), "hi": _num(hi),
        "ops": [[_num(o.get("index")), str(o.get("kind") or ""), _num(o.get("size")), _num(o.get("pointer")),
                 _num(o.get("result")), str(o.get("effect") or ""),
                 callers.setdefault(str(o.get("caller") or ""), len(callers))] for o in ops],
        "blocks": [[_num(b[0]), _num(b[1]), b[4], b[5]] for b in blocks],
        "marks": [[m[0], _num(m[1]), m[2]] for m in marks],
        "bad": bad_row, "badText": bad_text,
    }
    embedded["callers"] = list(callers)
    n_double = sum(1 for m in marks if m[2] == "double-free")
    what = "no stop" if not stop else f"stopped: {bad_text}"
    title = f"kheap watch: {len(ops)} operations, {len(blocks)} blocks, {what}"
    vclass = "bad" if stop else "ok"
    summary = (f"{counters.get('operations', len(ops))} operations ({counters.get('calls', len(ops))} calls), "
               f"{counters.get('allocations', 0)} allocations, {counters.get('frees', 0)} frees, "
               f"{counters.get('failed', 0)} failed; peak usage {_size_text(counters.get('peak_usage'))}")
    dropped = max(0, int(counters.get("calls", 0) or 0) - len(data.get("operations") or []))
    body = "\n".join([
        f"<header class=\"top {vclass}\"><h1 id=\"verdict\">{_e(title)}</h1>", _meta_html(meta), "</header><main>",
        f"<section id=\"summary\"><p>{_e(summary)}.</p>"
        + (f"<p class=\"muted\">{dropped} older calls are not in the history.</p>" if dropped else "")
        + (f"<p class=\"badline\" id=\"stop-text\">{_e(what)} at operation "
           f"#{_e(ops[bad_row].get('index') if bad_row is not None else '?')}; "
           f"{n_double} double free{'s' * (n_double != 1)} marked.</p>" if stop else "")
        + "</section>",
        "<section id=\"timeline\"><div class=\"bar-head\"><h2>Blocks over time</h2>",
        "<div class=\"controls\" id=\"tl-controls\"><button type=\"button\" data-zoom=\"out\">\u2212</button>"
        "<button type=\"button\" data-zoom=\"in\">+</button><button type=\"button\" data-zoom=\"fit\">fit</button>"
        "<span id=\"zoom-text\" class=\"muted\"></span></div></div>",
        _legend_html([("used", "allocated until freed"), ("live", "still allocated"), ("dfree", "double free"),
                      ("badop", "first bad operation"), ("failed", "failed allocation")]),
        "<div id=\"tl-view\" class=\"view tall\"><div id=\"tl\"></div></div>",
        "<div id=\"detail\" class=\"detail\"><p class=\"muted\">Click a block or a mark for its "
        "operations.</p></div></section></main><div id=\"tip\" class=\"tip\" hidden></div>",
    ])
    return _document(title, body, embedded, _WATCH_JS)


# ------------------------------------------------------------------------------------------------
# Style and scripts (no external resources; system fonts only)
# ------------------------------------------------------------------------------------------------

_CSS = r"""
:root{--used:#3f6fd8;--free:#8fd19e;--corrupt:#d6263b;--gap:#d9d9de;--ink:#1d2330;--muted:#6b7280;
--kernel:#7b5ea7;--heap:#3f6fd8;--pfree:#cfe9d6;--allocated:#e0a43a;--pbad:#d6263b;--warn:#f0a020}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:#f6f7f9}
header.top{padding:14px 22px 10px;background:#fff;border-bottom:4px solid #999}
header.top.ok{border-color:#2e9d4f}header.top.warn{border-color:var(--warn)}header.top.bad{border-color:var(--corrupt)}
h1{font-size:20px;margin:0 0 6px}header.top.bad h1{color:#b1182b}header.top.ok h1{color:#1f7a3c}
h2{font-size:16px;margin:0}
.meta{display:flex;flex-wrap:wrap;gap:2px 18px;margin:0;color:var(--muted);font-size:12.5px}
.meta code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
main{padding:10px 22px 30px}
section{background:#fff;border:1px solid #e3e5ea;border-radius:8px;padding:12px 14px;margin:0 0 14px}
.bar-head{display:flex;align-items:center;gap:16px;flex-wrap:wrap;margin-bottom:6px}
.controls{display:flex;gap:6px;align-items:center}
.controls button{min-width:30px;height:26px;border:1px solid #c4c8d0;background:#f3f4f7;border-radius:5px;cursor:pointer;font-size:14px}
.controls button:hover{background:#e6e9ef}
.muted{color:var(--muted)}.ok{color:#1f7a3c}
.stats{display:flex;gap:10px;flex-wrap:wrap}
.stat{padding:6px 12px;border-radius:6px;background:#f1f3f6;border-left:5px solid #bbb}
.stat b{font-size:17px}.stat span{color:var(--muted);margin-left:4px}
.stat.used{border-color:var(--used)}.stat.free{border-color:var(--free)}.stat.corrupt{border-color:var(--corrupt);background:#fde8ea}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 14px;padding:0;margin:4px 0 8px;font-size:12.5px;color:#444}
.legend li{display:flex;align-items:center;gap:5px}
.sw{display:inline-block;width:18px;height:12px;border-radius:2px;border:1px solid rgba(0,0,0,.25)}
.view{position:relative;overflow:auto;max-height:62vh;border:1px solid #e3e5ea;border-radius:6px;background:#fbfbfc}
.view.short{max-height:30vh}.view.tall{max-height:70vh}
.band{position:relative;margin:6px 6px 6px 0}
.rowlab{position:absolute;left:0;text-align:right;font:11px/1 ui-monospace,"DejaVu Sans Mono",monospace;color:var(--muted)}
.blk{position:absolute;height:20px;border-right:1px solid #fff;cursor:pointer}
.blk.used,.sw.used{background:var(--used)}.blk.free,.sw.free{background:var(--free)}
.blk.corrupt,.sw.corrupt{background:repeating-linear-gradient(135deg,var(--corrupt) 0 4px,#ff8090 4px 7px)}
.blk.gap,.sw.gap{background:repeating-linear-gradient(45deg,#e6e6ea 0 5px,#f4f4f6 5px 10px);cursor:default}
.blk.mark,.sw.mark{box-shadow:inset 0 0 0 2px #111}.blk.mark:before{content:"";position:absolute;left:0;top:-7px;border:5px solid transparent;border-top-color:#111}
.blk.culprit,.sw.culprit{box-shadow:inset 0 0 0 2px #f0a020}
.blk.warnmark,.sw.warnmark{box-shadow:inset 0 -4px 0 0 var(--warn)}
.blk.sel,.sw.sel{outline:3px solid #d01ad0;outline-offset:1px;z-index:2}
.blk.kernel,.sw.kernel{background:var(--kernel)}.blk.heap,.sw.heap{background:var(--heap)}
.blk.pfree,.sw.pfree{background:var(--pfree)}.blk.allocated,.sw.allocated{background:var(--allocated)}
.blk.pbad,.sw.pbad{background:var(--pbad)}
.blk:hover{filter:brightness(1.15)}
.blk .in{position:absolute;left:5px;top:3px;font-size:11px;line-height:14px;white-space:nowrap;overflow:hidden;max-width:calc(100% - 8px);color:#1d2330;pointer-events:none}
.blk.used .in,.blk.heap .in,.blk.kernel .in,.blk.corrupt .in,.blk.pbad .in{color:#fff}
.detail{margin-top:10px;padding:10px 12px;border:1px solid #e3e5ea;border-radius:6px;background:#fcfcfd;min-height:60px}
.detail h3{margin:0 0 6px;font-size:15px}
.detail table{border-collapse:collapse;margin:4px 0 8px}
.detail td,.detail th{padding:1px 10px 1px 0;text-align:left;font-weight:normal;vertical-align:top}
.detail th{color:var(--muted)}
.mono,.detail td,.dump,.cmds code,.addr,.code{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.dump{white-space:pre;background:#f1f3f6;padding:6px 8px;border-radius:5px;margin:4px 0 8px;font-size:12.5px;overflow-x:auto}
.cmds code{display:block;background:#1d2330;color:#e8ecf3;padding:4px 8px;border-radius:4px;margin:2px 0;white-space:pre}
.nb{display:inline-block;margin:0 6px 4px 0;padding:2px 8px;border:1px solid #c4c8d0;border-radius:5px;background:#f3f4f7;cursor:pointer;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.flist{margin:2px 0 8px;padding-left:18px}.flist li.error{color:#a3162a}.flist li.warning{color:#8a5a00}
ol.findings{margin:6px 0;padding-left:22px}
.finding{margin:0 0 6px;padding:4px 6px;border-radius:5px;cursor:pointer}
.finding:hover,.finding.sel{background:#f1f3f6}
.finding.error .code{color:#b1182b;font-weight:700}.finding.warning .code{color:#8a5a00;font-weight:700}
.finding .addr{color:var(--muted);margin:0 4px}
.finding .culprit{color:#7a4b00;margin-top:2px}.finding .where{color:var(--muted);font-size:12px}
.codes{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;color:var(--muted);font-size:12.5px;margin:8px 0 0}
.codes dt{font-family:ui-monospace,"DejaVu Sans Mono",monospace}.codes dd{margin:0}
.two{display:flex;gap:30px;flex-wrap:wrap;align-items:flex-start}
table.hist{border-collapse:collapse;min-width:420px}
.hist th{font-weight:normal;text-align:right;padding:1px 10px 1px 0;white-space:nowrap;color:#444;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
.hist thead th{text-align:left;color:var(--muted);font-family:inherit}
.hist td.bars{width:300px;padding:2px 0}.hist .bar{height:7px;margin:1px 0;border-radius:2px;min-width:1px}
.hist .bar.used{background:var(--used)}.hist .bar.free{background:var(--free)}
.num{text-align:right;padding:0 0 0 12px;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
table.cmp{border-collapse:collapse}.cmp th,.cmp td{padding:2px 8px;text-align:left}.cmp tr.bad td:last-child{color:#b1182b;font-weight:700}
.cmp tr.ok td:last-child{color:#1f7a3c}
.tip{position:fixed;z-index:10;max-width:520px;background:#1d2330;color:#f3f5f9;padding:6px 9px;border-radius:6px;font-size:12.5px;pointer-events:none;white-space:pre-wrap;box-shadow:0 4px 14px rgba(0,0,0,.25)}
.badline{color:#b1182b;font-weight:600}
#tl svg{display:block}
.sw.live{background:#9db8f0}.sw.dfree{background:var(--corrupt);border-radius:50%}
.sw.badop{background:none;border:none;border-left:3px dashed var(--corrupt);border-radius:0}
.sw.failed{background:#777}
"""

# Shared helpers for both pages (addresses, sizes, the tooltip, building elements as text).
_COMMON_JS = r"""
'use strict';
const D = JSON.parse(document.getElementById('kheap-data').textContent);
const PTR = D.ptr || 4;
function big(v){return typeof v === 'string';}
function hex(v){
  if (v === null || v === undefined) return '-';
  if (big(v)) return v;
  if (v === 0) return 'NULL';
  return '0x' + (v < 0 ? '-' : '') + Math.abs(v).toString(16).padStart(PTR * 2, '0');
}
function addrText(v){ if (v === null || v === undefined) return '-'; return big(v) ? v : '0x' + v.toString(16).padStart(PTR * 2, '0'); }
function num(v){ return (v === null || v === undefined) ? '-' : String(v); }
function sz(n){
  if (n === null || n === undefined) return '-';
  if (big(n)) return n;
  if (n >= 1048576) return (n / 1048576).toFixed(1).replace(/\.0$/, '') + ' MiB';
  if (n >= 1024) return (n / 1024).toFixed(1).replace(/\.0$/, '') + ' KiB';
  return n + ' B';
}
function el(tag, cls, text){
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
const tip = document.getElementById('tip');
function showTip(text, ev){
  tip.textContent = text; tip.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = ev.clientY + 18 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 18;
  tip.style.left = Math.max(4, x) + 'px'; tip.style.top = Math.max(4, y) + 'px';
}
function hideTip(){ tip.hidden = true; }
function table(rows){
  const t = el('table');
  for (const [k, v] of rows){ const tr = el('tr'); tr.appendChild(el('th', '', k)); tr.appendChild(el('td', '', v)); t.appendChild(tr); }
  return t;
}
"""

_HEAP_JS = _COMMON_JS + r"""
const HS = D.hs, HE = D.he, HDR = D.hdr, SEG = D.seg, F = D.f;
const MINW = 3, MARKW = 10, LAB = 24 + 7 * (2 + 2 * PTR), ROWH = 20, ROWGAP = 8, SPLIT = 24;
const ST = ['free', 'used', 'corrupt'];
const marks = D.marks;
let mode = 'lin', bpp = 0, selected = null;
const view = document.getElementById('band-view'), band = document.getElementById('band');

function segAddr(i){ return SEG[i][0]; }
function itemBytes(it){ return it >= 0 ? SEG[it][1] : D.gaps[-it - 1][1]; }
function itemAddr(it){ return it >= 0 ? SEG[it][0] : D.gaps[-it - 1][0]; }
function rowWidth(){ return Math.max(200, view.clientWidth - LAB - 16); }
function fitBpp(){
  // The whole heap in about 24 rows (fewer on a short heap), never below one byte per pixel.
  const size = (big(HE) || big(HS)) ? 1 : HE - HS;
  return Math.max(1, size / (rowWidth() * 24));
}
function widthOf(bytes, marked){
  // Segments a finding names are never thinner than MARKW: corruption must show at a glance.
  const least = marked ? MARKW : MINW;
  if (mode === 'log') return least + 7 * Math.log2(Math.max(bytes, 16) / 16);
  return Math.max(least, bytes / bpp);
}
function classesOf(it){
  if (it < 0) return 'blk gap';
  let c = 'blk seg ' + ST[SEG[it][6]];
  const m = marks[it];
  if (m){
    if (m.some(x => x[1] === 0 && F[x[0]].sev === 'error')) c += ' mark';
    else if (m.some(x => x[1] === 0)) c += ' warnmark';
    if (m.some(x => x[1] === 1)) c += ' culprit';
  }
  return c;
}
// Lay blocks out like words in lines: each row is one band of the heap, left to right in
// address order; a block longer than what is left of a row goes on in the next one.
// spanFn(it) gives the item's [first address, end address] for the row labels (numbers).
function layout(container, items, widthFn, classFn, spanFn, onFirst, textFn, grain){
  container.textContent = '';
  const W = rowWidth(), frag = document.createDocumentFragment();
  let x = 0, row = 0, labelled = -1;
  function label(addr){
    if (labelled === row) return;
    const l = el('div', 'rowlab', addrText(addr)); l.style.top = (row * (ROWH + ROWGAP) + 5) + 'px';
    l.style.width = (LAB - 8) + 'px';
    frag.appendChild(l); labelled = row;
  }
  for (let k = 0; k < items.length; k++){
    const it = items[k], cls = classFn(it), span = spanFn(it);
    let w = widthFn(it), first = true, done = 0;
    const total = w;
    while (w > 0.01){
      let room = W - x;
      // A small block that does not fit goes whole to the next row; a long one is split.
      if (x > 0 && (room < MINW || (first && w > room && w < SPLIT))){ row++; x = 0; room = W; }
      const piece = Math.min(w, room);
      const e = el('div', first ? cls : cls.replace(' seg ', ' segc ') + ' cont');
      e.style.left = (LAB + x) + 'px'; e.style.top = (row * (ROWH + ROWGAP)) + 'px';
      e.style.width = Math.max(1, piece - (piece > 3 ? 1 : 0)) + 'px';
      e.dataset.i = it;
      if (x === 0 && span && !big(span[0]) && !big(span[1])){
        const at = span[0] + done / total * (span[1] - span[0]);
        label(done ? Math.round(at / (grain || 16)) * (grain || 16) : span[0]);
      }
      if (first){
        if (onFirst) onFirst(e, it);
        const text = textFn && piece >= 110 ? textFn(it) : '';
        if (text) e.appendChild(el('span', 'in', text));
      }
      frag.appendChild(e);
      x += piece; w -= piece; done += piece; first = false;
      if (x >= W - 0.01){ row++; x = 0; }
    }
  }
  container.appendChild(frag);
  container.style.height = ((x > 0 ? row + 1 : row) * (ROWH + ROWGAP)) + 'px';
  return row;
}
function itemSpan(it){
  const a = itemAddr(it), n = itemBytes(it);
  return big(a) ? null : [a, a + n];
}
function itemText(it){
  if (it < 0) return sz(itemBytes(it)) + ' not on the list';
  const s = SEG[it];
  return ST[s[6]] + ' ' + sz(s[2]);
}
function drawHeap(){
  if (!bpp) bpp = fitBpp();
  const keep = view.scrollTop / Math.max(1, band.offsetHeight);
  layout(band, D.items, it => widthOf(itemBytes(it), it >= 0 && marks[it]), classesOf, itemSpan, (e, it) => {
    if (it >= 0){ e.dataset.addr = addrText(SEG[it][0]); e.dataset.state = ST[SEG[it][6]]; }
  }, itemText);
  view.scrollTop = keep * band.offsetHeight;
  document.getElementById('zoom-text').textContent = mode === 'log'
    ? 'log scale: width grows with log2(size)'
    : (bpp >= 1.5 ? Math.round(bpp) + ' bytes per pixel' : (1 / bpp).toFixed(1).replace(/\.0$/, '') + ' px per byte') + ', at least ' + MINW + ' px per segment';
  if (selected !== null) highlight(selected);
}
function findingsOf(i){ return (marks[i] || []).map(m => [F[m[0]], m[1], m[0]]); }
function tipText(it){
  if (it < 0){
    const g = D.gaps[-it - 1];
    return addrText(g[0]) + ' - ' + sz(g[1]) + ' not on the list' + (D.walk.complete ? '' : '\nthe walk stopped: ' + D.walk.stop.reason);
  }
  const s = SEG[it];
  let t = addrText(s[0]) + '  ' + ST[s[6]] + '  ' + (big(s[2]) ? s[2] : s[2] + ' bytes');
  for (const [f, role] of findingsOf(it)) t += '\n' + (role ? 'culprit of ' : '') + f.code + ': ' + f.msg;
  return t;
}
function highlight(i){
  for (const e of band.querySelectorAll('.sel')) e.classList.remove('sel');
  for (const e of band.querySelectorAll('[data-i="' + i + '"]')) e.classList.add('sel');
}
function headDump(h){
  if (h < 0) return null;
  const hexs = D.heads[h], bytes = [];
  for (let k = 0; k + 1 < hexs.length; k += 2) bytes.push(parseInt(hexs.substr(k, 2), 16));
  const lines = [];
  for (let o = 0; o < bytes.length; o += 16){
    const chunk = bytes.slice(o, o + 16);
    const hx = chunk.map(b => b.toString(16).padStart(2, '0')).join(' ');
    const asc = chunk.map(b => (b >= 0x20 && b < 0x7f) ? String.fromCharCode(b) : '.').join('');
    lines.push('+' + String(o).padStart(3, '0') + '  ' + hx.padEnd(48) + '  ' + asc);
  }
  // The same bytes as one escaped string, the way kheap's text output shows target bytes.
  const esc = {0x5c: '\\\\', 0x0a: '\\n', 0x0d: '\\r', 0x09: '\\t', 0x00: '\\0'};
  const text = bytes.map(b => esc[b] || ((b >= 0x20 && b < 0x7f) ? String.fromCharCode(b) : '\\x' + b.toString(16).padStart(2, '0'))).join('');
  return [bytes.length, lines.join('\n'), text];
}
function neighbour(it, dir){
  const j = D.items.indexOf(it) + dir;
  return j >= 0 && j < D.items.length ? D.items[j] : undefined;
}
function navButton(label, it){
  const b = el('button', 'nb', label); b.type = 'button';
  b.addEventListener('click', () => select(it, true));
  return b;
}
function itemLabel(it){
  if (it < 0) return addrText(itemAddr(it)) + ' gap ' + sz(itemBytes(it));
  return addrText(SEG[it][0]) + ' ' + ST[SEG[it][6]] + ' ' + sz(SEG[it][2]);
}
function select(it, scroll){
  selected = it; highlight(it);
  const d = document.getElementById('detail'); d.textContent = '';
  d.dataset.i = it;
  for (const li of document.querySelectorAll('.finding.sel')) li.classList.remove('sel');
  if (it < 0){
    const g = D.gaps[-it - 1];
    d.appendChild(el('h3', '', 'Not on the list: ' + addrText(g[0]) + ' \u2013 ' + addrText(big(g[0]) ? g[0] : g[0] + g[1]) + ' (' + sz(g[1]) + ')'));
    d.appendChild(el('p', '', D.walk.complete ? 'No segment on the list covers these bytes.'
      : 'No segment on the list covers these bytes; the walk stopped: ' + D.walk.stop.reason + (D.walk.stop.detail ? ' (' + D.walk.stop.detail + ')' : '') + '.'));
  } else {
    const s = SEG[it];
    d.appendChild(el('h3', 'st-' + ST[s[6]], 'Segment ' + addrText(s[0]) + ': ' + ST[s[6]]));
    const rows = [['header at', addrText(s[0])], ['next', hex(s[4])], ['prev', hex(s[5])],
      ['is_allocated', num(s[3]) + (s[3] === 0 || s[3] === 1 ? '' : '  (' + hex(s[3]) + ', neither 0 nor 1)')],
      ['segment_size', num(s[2]) + (big(s[2]) ? '' : ' (' + sz(s[2]) + ')') + (s[1] !== s[2] ? '  (drawn as its header only)' : '')],
      ['payload', big(s[0]) ? '-' : addrText(s[0] + HDR)]];
    const extra = s.length > 8 ? s[8] : null;
    if (extra) for (const k of Object.keys(extra)) rows.push([k, num(extra[k])]);
    d.appendChild(table(rows));
    const fs = findingsOf(it);
    if (fs.length){
      d.appendChild(el('div', '', 'Findings:'));
      const ul = el('ul', 'flist');
      for (const [f, role, k] of fs){
        const li = el('li', f.sev, (role ? 'culprit of ' : '') + f.code + ' at ' + hex(f.addr) + ': ' + f.msg);
        if (f.culprit && f.culprit.reason) li.appendChild(el('div', 'muted', 'culprit: ' + hex(f.culprit.addr) + ' ' + f.culprit.reason + (f.culprit.class ? '; bytes there: ' + f.culprit.class + (f.culprit.detail ? ' "' + f.culprit.detail + '"' : '') : '')));
        li.dataset.f = k; ul.appendChild(li);
        const inList = document.querySelector('.finding[data-f="' + k + '"]'); if (inList) inList.classList.add('sel');
      }
      d.appendChild(ul);
    }
    const dump = headDump(s[7]);
    if (dump){
      d.appendChild(el('div', '', 'Payload, first ' + dump[0] + ' bytes:'));
      d.appendChild(el('pre', 'dump', dump[1]));
      d.appendChild(el('div', 'astext mono', 'as text: "' + dump[2] + '"'));
    } else if (s.length > 9){
      d.appendChild(el('div', 'muted', 'Payload: ' + s[9]));
    }
  }
  const nav = el('div', 'nav'); nav.appendChild(el('span', 'muted', 'Neighbours: '));
  const before = neighbour(it, -1), after = neighbour(it, 1);
  if (before !== undefined) nav.appendChild(navButton('\u2190 ' + itemLabel(before), before));
  if (after !== undefined) nav.appendChild(navButton(itemLabel(after) + ' \u2192', after));
  if (it >= 0){
    const s = SEG[it];
    for (const [name, v] of [['next', s[4]], ['prev', s[5]]]){
      if (big(v) || !v) continue;
      const target = D.items.find(j => j >= 0 && SEG[j][0] === v);
      if (target !== undefined && target !== before && target !== after) nav.appendChild(navButton(name + ': ' + itemLabel(target), target));
    }
  }
  d.appendChild(nav);
  const a = addrText(itemAddr(it));
  const cmds = el('div', 'cmds');
  cmds.appendChild(el('div', 'muted', 'In the debugger (gdb or lldb; the kheap CLI takes the same commands):'));
  if (it >= 0){
    cmds.appendChild(el('code', '', 'kheap find ' + a));
    cmds.appendChild(el('code', '', 'kheap walk --around ' + a + ' --context 2'));
    cmds.appendChild(el('code', '', 'print *(heap_segment_t *)' + a));
  } else {
    cmds.appendChild(el('code', '', 'kheap find ' + a));
    cmds.appendChild(el('code', '', 'x/16wx ' + a));
  }
  d.appendChild(cmds);
  if (scroll){
    const e = band.querySelector('[data-i="' + it + '"]');
    if (e){ const top = e.offsetTop - view.clientHeight / 3; view.scrollTop = Math.max(0, top); }
  }
}
band.addEventListener('mousemove', ev => {
  const t = ev.target.closest('.blk'); if (!t){ hideTip(); return; }
  showTip(tipText(+t.dataset.i), ev);
});
band.addEventListener('mouseleave', hideTip);
band.addEventListener('click', ev => { const t = ev.target.closest('.blk'); if (t) select(+t.dataset.i, false); });
for (const li of document.querySelectorAll('.finding')){
  const f = F[+li.dataset.f];
  const go = () => { if (f.seg !== null) { select(f.seg, true); document.getElementById('heap').scrollIntoView({block: 'start'}); }
                     else if (f.run !== null) { selectRun(f.run); } li.classList.add('sel'); };
  li.addEventListener('click', go);
  li.addEventListener('keydown', ev => { if (ev.key === 'Enter') go(); });
}
function zoom(how){
  if (how === 'fit') bpp = fitBpp();
  else if (mode === 'log') mode = 'lin';
  else if (how === 'in') bpp = Math.max(1 / 16, bpp / 2);
  else bpp = Math.min(fitBpp() * 4, bpp * 2);
  document.getElementById('scale').value = mode;
  drawHeap();
  if (selected !== null){       // zoom around the selected segment
    const e = band.querySelector('.sel');
    if (e) view.scrollTop = Math.max(0, e.offsetTop - view.clientHeight / 3);
  }
}
for (const b of document.querySelectorAll('#heap-controls button')) b.addEventListener('click', () => zoom(b.dataset.zoom));
document.getElementById('scale').addEventListener('change', ev => { mode = ev.target.value; drawHeap(); });
document.addEventListener('keydown', ev => {
  if (ev.target.tagName === 'SELECT') return;
  if (ev.key === '+' || ev.key === '=') zoom('in'); else if (ev.key === '-') zoom('out'); else if (ev.key === '0') zoom('fit');
});

// The page array: runs of pages of one kind, the same way.
const P = D.pages, pageView = document.getElementById('pages-view'), pageBand = document.getElementById('page-band');
const PK = {kernel: 'kernel', heap: 'heap', free: 'pfree', allocated: 'allocated', bad: 'pbad'};
let ppp = 1;
function drawPages(){
  if (!P || !pageBand) return;
  ppp = Math.max(1 / 4, P.n / (rowWidth() * 3));
  const items = P.runs.map((r, k) => k);
  layout(pageBand, items, k => Math.max(D.runmarks[k] || P.runs[k][2] === 'bad' ? MARKW : MINW, P.runs[k][1] / ppp),
    k => 'blk run ' + (PK[P.runs[k][2]] || 'pbad') + (D.runmarks[k] ? ' mark' : ''),
    k => [P.runs[k][0] * P.size, (P.runs[k][0] + P.runs[k][1]) * P.size],
    (e, k) => { e.dataset.kind = P.runs[k][2]; e.dataset.first = P.runs[k][0]; },
    k => P.runs[k][2] + ', ' + P.runs[k][1] + ' page' + (P.runs[k][1] === 1 ? '' : 's'), P.size);
}
function runText(k){
  const r = P.runs[k];
  let t = 'pages ' + r[0] + (r[1] > 1 ? '\u2013' + (r[0] + r[1] - 1) : '') + ' (' + r[1] + '): ' + r[2] +
    '\nphysical ' + addrText(r[0] * P.size) + ' \u2013 ' + addrText((r[0] + r[1]) * P.size);
  for (const f of (D.runmarks[k] || [])) t += '\n' + F[f].code + ': ' + F[f].msg;
  return t;
}
function selectRun(k, scroll = true){
  const d = document.getElementById('detail'); d.textContent = ''; delete d.dataset.i;
  const r = P.runs[k];
  d.appendChild(el('h3', '', 'Pages ' + r[0] + (r[1] > 1 ? '\u2013' + (r[0] + r[1] - 1) : '') + ': ' + r[2]));
  d.appendChild(el('pre', 'dump', runText(k)));
  const cmds = el('div', 'cmds'); cmds.appendChild(el('code', '', 'kheap pages --page ' + r[0])); d.appendChild(cmds);
  for (const e of pageBand.querySelectorAll('.sel')) e.classList.remove('sel');
  for (const e of pageBand.querySelectorAll('[data-i="' + k + '"]')) e.classList.add('sel');
  if (scroll) document.getElementById('heap').scrollIntoView({block: 'start'});
}
if (pageBand){
  pageBand.addEventListener('mousemove', ev => { const t = ev.target.closest('.blk'); if (!t){ hideTip(); return; } showTip(runText(+t.dataset.i), ev); });
  pageBand.addEventListener('mouseleave', hideTip);
  pageBand.addEventListener('click', ev => { const t = ev.target.closest('.blk'); if (t) selectRun(+t.dataset.i); });
}
let resizeTimer = 0;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { drawHeap(); drawPages(); }, 120); });
drawHeap(); drawPages();
// Start on the first corrupt segment, if any: that is what one opens the page for.
const firstBad = F.findIndex(f => f.sev === 'error' && f.seg !== null);
if (firstBad >= 0) select(F[firstBad].seg, true);
else { const onPage = F.findIndex(f => f.sev === 'error' && f.run !== null); if (onPage >= 0) selectRun(F[onPage].run, false); }
function clear(){
  selected = null; hideTip(); highlight(null);
  const d = document.getElementById('detail'); d.textContent = ''; delete d.dataset.i;
  d.appendChild(el('p', 'muted', 'Click a segment for its header, payload, neighbours and the command that shows it in the debugger.'));
}
window.kheapPage = {drawn: band.querySelectorAll('.seg').length, select: select, zoom: zoom, clear: clear,
                    findings: F.map(f => ({code: f.code, sev: f.sev, seg: f.seg, run: f.run})),
                    setScale: m => { mode = m; document.getElementById('scale').value = m; drawHeap(); }};
document.documentElement.dataset.rendered = String(performance.now());
"""

_WATCH_JS = _COMMON_JS + r"""
const OPS = D.ops, BL = D.blocks, MK = D.marks, HDR = D.hdr;
const view = document.getElementById('tl-view'), host = document.getElementById('tl');
const NS = 'http://www.w3.org/2000/svg';
let zoomX = 1;
const LEFT = 96, TOP = 10, BOTTOM = 28;
function svg(tag, attrs){ const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; }
const lo = big(D.lo) ? 0 : D.lo, hi = big(D.hi) ? 1 : Math.max(D.hi, lo + 1);
function opText(r){
  const o = OPS[r]; if (!o) return '';
  let call = o[1] === 'kfree' ? 'kfree(' + hex(o[3]) + ')'
    : o[1] === 'krealloc' ? 'krealloc(' + hex(o[3]) + ', ' + num(o[2]) + ') = ' + hex(o[4])
    : o[1] + '(' + num(o[2]) + ') = ' + hex(o[4]);
  const caller = D.callers[o[6]];
  return '#' + o[0] + ' ' + call + (caller ? ' from ' + caller : '') + (o[5] ? ' [' + o[5] + ']' : '');
}
function blockText(b){
  let t = addrText(b[0]) + '  ' + sz(b[1]) + ' (segment)';
  t += '\nallocated: ' + (b[2] === null ? 'before the history' : opText(b[2]));
  t += '\nfreed: ' + (b[3] === null ? 'still allocated' : opText(b[3]));
  return t;
}
function draw(){
  host.textContent = '';
  const W = Math.max(400, (view.clientWidth - 20) * zoomX), H = Math.max(300, Math.min(900, window.innerHeight * 0.62)) * Math.max(1, zoomX / 2);
  const n = Math.max(1, OPS.length), plotW = W - LEFT - 12, plotH = H - TOP - BOTTOM;
  const X = r => LEFT + (r / n) * plotW, Y = a => TOP + ((a - lo) / (hi - lo)) * plotH;
  const s = svg('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img'});
  s.appendChild(svg('rect', {x: LEFT, y: TOP, width: plotW, height: plotH, fill: '#fbfbfc', stroke: '#d5d8de'}));
  for (let k = 0; k <= 8; k++){
    const a = lo + (hi - lo) * k / 8, y = Y(a);
    s.appendChild(svg('line', {x1: LEFT - 4, x2: LEFT + plotW, y1: y, y2: y, stroke: '#eceef2'}));
    const t = svg('text', {x: LEFT - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#6b7280', 'font-family': 'monospace'});
    t.textContent = addrText(Math.round(a)); s.appendChild(t);
  }
  for (let k = 0; k <= 10; k++){
    const r = Math.round((n - 1) * k / 10), x = X(r);
    const t = svg('text', {x: x, y: H - 10, 'text-anchor': 'middle', 'font-size': 11, fill: '#6b7280'});
    t.textContent = OPS.length ? '#' + OPS[Math.min(r, OPS.length - 1)][0] : ''; s.appendChild(t);
  }
  const g = svg('g', {});
  BL.forEach((b, k) => {
    const x0 = X(b[2] === null ? 0 : b[2]), x1 = X(b[3] === null ? n : b[3] + 1);
    const y = Y(b[0] - HDR), h = Math.max(2, Y(b[0] - HDR + Math.max(b[1], HDR)) - y);
    const r = svg('rect', {x: x0, y: y, width: Math.max(1.5, x1 - x0), height: h,
      fill: b[3] === null ? '#9db8f0' : '#3f6fd8', 'fill-opacity': 0.9, stroke: '#fff', 'stroke-width': 0.5, class: 'blockbar'});
    r.dataset.b = k; g.appendChild(r);
  });
  s.appendChild(g);
  if (D.bad !== null){
    const x = X(D.bad + 0.5);
    const l = svg('line', {x1: x, x2: x, y1: TOP, y2: TOP + plotH, stroke: '#d6263b', 'stroke-width': 2, 'stroke-dasharray': '6 4', class: 'badop'});
    l.dataset.r = D.bad; s.appendChild(l);
    const right = x > LEFT + plotW / 2;
    const t = svg('text', {x: right ? x - 8 : x + 8, y: TOP + 14, 'text-anchor': right ? 'end' : 'start', 'font-size': 12, fill: '#b1182b', 'font-weight': 'bold'});
    t.textContent = 'first bad operation: ' + D.badText; s.appendChild(t);
  }
  MK.forEach((m, k) => {
    const x = X(m[0] + 0.5);
    if (m[2] === 'double-free'){
      const c = svg('circle', {cx: x, cy: m[1] === null ? TOP + 8 : Y(m[1] - HDR), r: 6, fill: '#d6263b', stroke: '#fff', 'stroke-width': 1.5, class: 'mark dfree'});
      c.dataset.m = k; s.appendChild(c);
    } else {
      const c = svg('rect', {x: x - 3, y: TOP + plotH - 8, width: 6, height: 6, fill: '#777', class: 'mark failed'});
      c.dataset.m = k; s.appendChild(c);
    }
  });
  host.appendChild(s);
  document.getElementById('zoom-text').textContent = OPS.length + ' operations, ' + BL.length + ' blocks' + (zoomX > 1 ? ', zoom x' + zoomX : '');
}
function detailFor(target){
  const d = document.getElementById('detail'); d.textContent = '';
  if (target.dataset.b !== undefined){
    const b = BL[+target.dataset.b];
    d.appendChild(el('h3', '', 'Block ' + addrText(b[0]) + ' (' + sz(b[1]) + ')'));
    d.appendChild(el('pre', 'dump', blockText(b)));
    const c = el('div', 'cmds'); c.appendChild(el('code', '', 'kheap history ' + addrText(b[0]))); d.appendChild(c);
  } else if (target.dataset.m !== undefined){
    const m = MK[+target.dataset.m];
    d.appendChild(el('h3', '', (m[2] === 'double-free' ? 'Double free of ' + hex(m[1]) : 'Failed allocation')));
    d.appendChild(el('pre', 'dump', opText(m[0])));
    if (m[1] !== null){ const c = el('div', 'cmds'); c.appendChild(el('code', '', 'kheap history ' + addrText(m[1]))); d.appendChild(c); }
  } else if (target.dataset.r !== undefined){
    d.appendChild(el('h3', '', 'First bad operation: ' + D.badText));
    d.appendChild(el('pre', 'dump', opText(+target.dataset.r)));
  }
}
function tipFor(t){
  if (t.dataset.b !== undefined) return blockText(BL[+t.dataset.b]);
  if (t.dataset.m !== undefined){ const m = MK[+t.dataset.m]; return (m[2] === 'double-free' ? 'double free of ' + hex(m[1]) + '\n' : 'failed allocation\n') + opText(m[0]); }
  if (t.dataset.r !== undefined) return 'first bad operation: ' + D.badText + '\n' + opText(+t.dataset.r);
  return null;
}
host.addEventListener('mousemove', ev => { const text = tipFor(ev.target); if (text) showTip(text, ev); else hideTip(); });
host.addEventListener('mouseleave', hideTip);
host.addEventListener('click', ev => detailFor(ev.target));
for (const b of document.querySelectorAll('#tl-controls button')) b.addEventListener('click', () => {
  zoomX = b.dataset.zoom === 'fit' ? 1 : b.dataset.zoom === 'in' ? Math.min(64, zoomX * 2) : Math.max(1, zoomX / 2); draw(); });
let resizeTimer = 0;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(draw, 120); });
draw();
window.kheapPage = {blocks: BL.length, marks: MK.length};
document.documentElement.dataset.rendered = String(performance.now());
"""
