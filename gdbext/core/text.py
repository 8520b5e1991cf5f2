"""Making bytes and strings from target memory safe to show.

Anything read from the target can hold control characters or ANSI escape sequences; printed
raw, they would drive the user's terminal. Everything shown goes through these helpers.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["escape_bytes", "escape_text", "printable_ratio", "format_address", "plural", "parse_size",
           "SIZE_FORMS"]

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


def plural(count: int, word: str, many: Optional[str] = None) -> str:
    """``1 error``, ``2 errors``, ``0 segments``: a count with its noun agreeing (``many``: an
    irregular plural, e.g. ``plural(n, "entry", "entries")``). The one rule every report's text
    uses, so no line says "1 errors"."""
    return f"{count} {word if count == 1 else many or word + 's'}"


# What a size typed by a user may look like (every face, every option and setting that takes one).
SIZE_FORMS = "e.g. 4096, 0x1000, 4k, 1M"
_SIZE_SUFFIX = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: object, minimum: int = 0) -> int:
    """A byte count or count as a user types it: ``4096``, ``0x1000``, ``0o17``, ``4k``,
    ``1M``, ``2G`` (binary multiples; ``KiB``/``MiB``/``GiB`` too), ``_`` allowed (``1_000``).

    Why one function: every option and setting that takes a size (``--heap-size``,
    ``--block-size``, ``--min-size``, ``set kheap heap-size``, a stack's ``TOP:SIZE``) must
    accept the same forms in every face. Raises ValueError with a one-line reason.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip()
        lowered = raw.lower()
        scale = 1
        # Longest suffix first (kib before k); no hex digit is one of these letters.
        for suffix, factor in _SIZE_SUFFIX.items():
            if lowered.endswith(suffix) and len(lowered) > len(suffix):
                scale, lowered = factor, lowered[:-len(suffix)]
                break
        try:
            value = int(lowered, 0) * scale
        except ValueError:
            raise ValueError(f"not a number: {raw!r} ({SIZE_FORMS})") from None
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, not {value}" if minimum else
                         f"must not be negative: {value}")
    return value
