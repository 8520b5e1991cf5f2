"""What every report shares: the schema version, the one JSON writer, the text builder.

A report is a JSON-ready dict (``schema_version``, ``report``: its name, and its body); its text
is rendered from that same dict by the renderer registered under its name (:func:`renders`),
coloured through pygments with one token type per state when the face asks for colour. Every
string that may come from target memory is escaped; addresses in JSON are integers, in text
they are written by :func:`~gdbext.core.text.format_address`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pygments import format as pygments_format
from pygments.formatters.terminal import TerminalFormatter
from pygments.token import Token

from ... import SCHEMA_VERSION
from ..text import escape_text, format_address

__all__ = ["SCHEMA_VERSION", "report_base", "clean", "to_json_text", "render_text", "renders", "Text",
           "USED", "FREE", "ERROR", "WARNING", "OK", "HEADING", "NOTE", "PLAIN", "STATE_TOKEN",
           "heap_line", "stop_text", "finding_lines", "findings_lines", "culprit_line", "culprit_bytes"]

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

STATE_TOKEN = {"used": USED, "free": FREE, "bad": ERROR, "error": ERROR, "warning": WARNING,
               "corrupt": ERROR, "warnings": WARNING, "ok": OK, "uncovered": WARNING, "incomplete": WARNING,
               "kernel": HEADING, "heap": USED, "allocated": USED}

Tokens = List[Tuple[Any, str]]


def report_base(report: str, prog: Any = None, pointer_size: Optional[int] = None) -> Dict[str, Any]:
    """The fields every report starts with; with a program also its pointer size, the heap's
    bounds and the notes every report must show."""
    d: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "report": report}
    if prog is not None:
        d["pointer_size"] = prog.pointer_size
        try:
            d["heap"] = {"start": prog.heap_start, "size": prog.heap_size, "end": prog.heap_end}
        except Exception:  # noqa: BLE001 - the info report must work without bounds
            d["heap"] = None
        d["notes"] = [escape_text(n) for n in prog.notes]
    elif pointer_size is not None:
        d["pointer_size"] = pointer_size
    return d


def clean(value: Any) -> Any:
    """Make a value JSON-safe: strings escaped, tuples as lists, dict keys as strings."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def to_json_text(report: Dict[str, Any]) -> str:
    """The one JSON serialisation every face prints (stable key order, ASCII only)."""
    return json.dumps(report, indent=2, ensure_ascii=True, allow_nan=False)


class Text:
    """A token stream being built: (token type, text) pairs."""

    def __init__(self, pointer_size: int) -> None:
        self.tokens: Tokens = []
        self.pointer_size = pointer_size
        self.width = pointer_size * 2

    def add(self, text: str, token: Any = PLAIN) -> "Text":
        self.tokens.append((token, escape_text(text)))
        return self

    def nl(self) -> "Text":
        self.tokens.append((PLAIN, "\n"))
        return self

    def line(self, text: str = "", token: Any = PLAIN) -> "Text":
        return self.add(text, token).nl()

    def addr(self, value: Optional[int]) -> str:
        return format_address(value, self.pointer_size, missing="-", null="NULL")

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


_RENDERERS: Dict[str, Callable[[Dict[str, Any], Text], None]] = {}
_WHOLE: Dict[str, Callable[[Dict[str, Any], bool], str]] = {}


def renders(name: str, whole: bool = False) -> Callable:
    """Decorator: the text renderer of report ``name``: ``fn(report, out: Text)``, or with
    ``whole`` ``fn(report, color) -> str`` for a report made of other reports' texts."""
    def register(fn: Callable) -> Callable:
        (_WHOLE if whole else _RENDERERS)[name] = fn
        return fn
    return register


def render_text(report: Dict[str, Any], color: bool = False) -> str:
    """Text for any report dict; ``color`` adds ANSI colours (pygments)."""
    kind = report.get("report")
    if kind in _WHOLE:
        return _WHOLE[str(kind)](report, color)
    out = Text(int(report.get("pointer_size") or 4))
    fn = _RENDERERS.get(str(kind))
    if fn is None:
        out.line(f"(no text form for report {kind!r})")
    else:
        fn(report, out)
    text = out.render(color)
    return text if text.endswith("\n") else text + "\n"


def heap_line(r: Dict[str, Any], out: Text) -> str:
    h = r.get("heap")
    if not h:
        return "heap: unknown"
    return f"heap {out.addr(h['start'])}..{out.addr(h['end'])} ({h['size']} bytes)"


def stop_text(stop: Dict[str, Any], out: Text) -> str:
    reason = stop.get("reason")
    if reason == "end":
        return "list ended normally"
    where = f" at {out.addr(stop.get('address'))}" if stop.get("address") is not None else ""
    return f"walk stopped: {reason}{where} ({stop.get('detail', '')})"


def finding_lines(f: Dict[str, Any], out: Text, culprit: bool = True) -> None:
    """One finding's line, and (``culprit``) its culprit's line under it."""
    tok = ERROR if f["severity"] == "error" else WARNING
    out.add("  ").add(f"{f['severity'].upper():<7}", tok).add(f" {f['code']:<15} ", tok)
    out.add(f"{out.addr(f['address']):<{out.width + 2}}  ").line(f["message"])
    c = f.get("culprit")
    if c and culprit:
        culprit_line(c, out)


def culprit_line(c: Dict[str, Any], out: Text, label: str = "culprit:") -> None:
    where = out.addr(c["address"]) + " " if c.get("address") is not None else ""
    out.line(f"  {'':<7} {label:<15} {where}{c['reason']}{culprit_bytes(c, addr=out.addr)}", WARNING)


def findings_lines(findings: Sequence[Dict[str, Any]], out: Text) -> None:
    """Every finding, each culprit once: under the last of the consecutive findings it explains
    (an overwritten header breaks four rules at once, and the four share one culprit)."""
    run = 0
    for i, f in enumerate(findings):
        finding_lines(f, out, culprit=False)
        c = f.get("culprit")
        run += 1
        if i + 1 < len(findings) and c and findings[i + 1].get("culprit") == c:
            continue
        if c:
            culprit_line(c, out, "culprit:" if run == 1 else f"culprit of all {run}:")
        run = 0


def culprit_bytes(c: Dict[str, Any], quotes: Tuple[str, str] = ('"', '"'),
                  addr: Optional[Callable[[int], str]] = None) -> str:
    """What a culprit's bytes look like, and whose bytes they are, for its line
    (``; header at 0x003d5040 holds: ascii "..."``): the culprit is who wrote them, the bytes
    are where they landed. ``addr``: the address formatter (the report's width)."""
    if not c.get("classification"):
        return ""
    at = c.get("bytes_at")
    if at is not None:
        where = addr(at) if addr is not None else f"0x{at:x}"
        what = f"; {c.get('bytes_of') or 'bytes'} at {where} holds: {c['classification']}"
    else:
        what = f"; bytes there: {c['classification']}"
    if c.get("detail"):
        what += f" {quotes[0]}{c['detail']}{quotes[1]}" if c["classification"] == "ascii" else f" {c['detail']}"
    return what
