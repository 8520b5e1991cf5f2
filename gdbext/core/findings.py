"""Findings: what a validator says is wrong, as data, and the registry of finding codes.

A :class:`Finding` is a stable ``code`` (scripts and tests match on it), a severity, the address,
a one-line message, the values read, and where one can be inferred the likely :class:`Culprit`.
Renderers turn findings into text or JSON; the CLI turns them into an exit code.

Every code is declared once, by the module whose rule produces it, with :func:`register_code`;
:data:`CODES` is the registry (``kheap --help``, the README's table and a test read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, Optional, Tuple

from .text import escape_bytes, printable_ratio

__all__ = ["Finding", "Culprit", "CODES", "STRUCTURAL", "UNREAD", "ERROR", "WARNING", "register_code",
           "classify_bytes", "spaced_hex"]

ERROR, WARNING = "error", "warning"

# code -> one-line meaning, in the order the codes were declared.
CODES: Dict[str, str] = {}
# The codes that say the list itself is broken (its totals then mean nothing).
STRUCTURAL: set = set()
# The codes that say memory could not be read: a missing fact, not a broken heap (a check
# whose only errors are these is INCOMPLETE, exit 2, never CORRUPT).
UNREAD: set = set()


def register_code(code: str, meaning: str, structural: bool = False, unread: bool = False) -> str:
    """Declare a finding code (once, beside the rule that produces it); returns ``code``.
    ``unread``: the code says memory could not be read (see :data:`UNREAD`)."""
    if CODES.get(code, meaning) != meaning:
        raise ValueError(f"finding code {code} declared twice with different meanings")
    CODES[code] = meaning
    if structural:
        STRUCTURAL.add(code)
    if unread:
        UNREAD.add(code)
    return code


@dataclass(frozen=True)
class Culprit:
    """Who probably did it: a segment address, why we think so, and what the bytes look like.

    ``classification``: 'ascii' (``detail`` is the escaped text), 'zeros', 'poison', 'pointer'
    (``detail`` is ``symbol+0xoff``), 'binary' (``detail`` is hex), 'heap-pointer', 'header' (the
    bytes are a well-formed header: ``detail`` is its fields), or '' when not classified.

    ``bytes_at`` / ``bytes_of``: where the classified bytes were read and what they are (the
    clobbered ``header`` of the segment after the culprit, its ``prev`` word, a free
    ``payload``): the culprit is who wrote them, not where they are.
    """

    address: Optional[int]
    reason: str
    classification: str = ""
    detail: str = ""
    bytes_at: Optional[int] = None
    bytes_of: str = ""

    def to_json(self) -> Dict[str, Any]:
        out = {"address": self.address, "reason": self.reason,
               "classification": self.classification, "detail": self.detail}
        if self.bytes_at is not None:
            out.update(bytes_at=self.bytes_at, bytes_of=self.bytes_of)
        return out


@dataclass(frozen=True)
class Finding:
    """One problem: stable ``code``, ``severity``, ``address``, one-line ``message``, values read."""

    code: str
    severity: str
    address: Optional[int]
    message: str
    values: Dict[str, Any] = dc_field(default_factory=dict)
    culprit: Optional[Culprit] = None

    def with_culprit(self, culprit: Optional[Culprit]) -> "Finding":
        return Finding(self.code, self.severity, self.address, self.message, self.values, culprit)

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "address": self.address,
                "message": self.message, "values": dict(self.values),
                "culprit": self.culprit.to_json() if self.culprit else None}


def classify_bytes(prog: Any, data: bytes) -> Tuple[str, str]:
    """What overwrote something: ('zeros'|'poison'|'ascii'|'pointer'|'binary', detail).

    ``prog``: the :class:`~gdbext.core.program.Program` (poison byte, symbols, byte order)."""
    if not data:
        return "", ""
    if not any(data):
        return "zeros", f"{len(data)} zero bytes"
    poison = prog.poison_byte()
    if poison is not None and data.count(poison) == len(data):
        return "poison", f"0x{poison:02x} fill"
    if printable_ratio(data) >= 0.75 and sum(1 for b in data if 0x20 < b < 0x7F) >= 4:
        return "ascii", escape_bytes(data.rstrip(b"\0"))
    p = prog.pointer_size
    order = prog.byteorder
    for off in range(0, len(data) - p + 1, p):
        value = int.from_bytes(data[off:off + p], order)
        if value and prog.elf.in_image(value):
            name = prog.elf.symbolize(value)
            if name:
                return "pointer", name
    return "binary", spaced_hex(data)


HEX_BYTES = 32          # bytes a culprit's hex shows (a 64-bit header); more are "..."


def spaced_hex(data: bytes, limit: int = HEX_BYTES) -> str:
    """Bytes as hex, one pair per byte in memory order, spaced (``00 00 ad de``), at most
    ``limit`` of them (then ``...``): one unspaced run of 64 digits cannot be read."""
    return data[:limit].hex(" ") + (" ..." if len(data) > limit else "")
