"""Making bytes and strings from target memory safe to show.

Anything read from the target can hold control characters or ANSI escape sequences; printed
raw, they would drive the user's terminal. Everything shown goes through these helpers.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["escape_bytes", "escape_text", "printable_ratio", "format_address"]

_ESC = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x00: "\\0"}
_TABLE = [(_ESC.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")) for b in range(256)]


def escape_bytes(data: bytes, limit: int = 64) -> str:
    """Printable ASCII as is, everything else as ``\\xNN`` (``\\n``, ``\\t``, ``\\0``, ``\\\\``)."""
    text = "".join(_TABLE[b] for b in data[:limit])
    return text + ("..." if len(data) > limit else "")


def escape_text(text: str) -> str:
    """A str that may contain target-controlled characters, made terminal-safe (one line)."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def printable_ratio(data: bytes) -> float:
    if not data:
        return 0.0
    good = sum(1 for b in data if 0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D))
    return good / len(data)


def format_address(value: Optional[int], pointer_size: int, missing: str = "-", null: Optional[str] = None) -> str:
    """An address as the kernel prints it: 0x + hex padded to the pointer width.

    ``missing`` stands for None (no address); ``null``, when given, for 0 (tables write NULL
    links that way). The one address formatter of kheap: messages, text reports and faces.
    """
    if value is None:
        return missing
    if value == 0 and null is not None:
        return null
    return f"0x{value:0{pointer_size * 2}x}"
