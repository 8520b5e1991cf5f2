"""Preprocessor macros from an ELF built with ``-g3``: ``.debug_macro`` (DWARF 5, and GNU's
version 4 of the same format) and DWARF 4's ``.debug_macinfo``, and the integer value of a
macro's definition (``(1024 * 1024)``, ``0x100000UL``, ``(256 * PAGE_SIZE)``).

pyelftools (0.31-0.33) does not decode these sections, so this module does: it reads each
unit's header, then its entries, and keeps every ``#define`` by name. The format (DWARF 5,
section 6.3): a unit starts with ``version`` (2 bytes), ``flags`` (1 byte: bit 0 offsets are 8
bytes, bit 1 a ``.debug_line`` offset follows, bit 2 an opcode operands table follows); its
entries are an opcode byte and operands, and opcode 0 ends the unit. Units follow one another.
``DW_MACRO_define_strp`` (GCC's usual form) names its string by an offset into ``.debug_str``.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Callable, Dict, List, Optional

__all__ = ["parse_debug_macro", "parse_debug_macinfo", "macro_value", "MacroError"]

DW_MACRO_define, DW_MACRO_undef = 0x01, 0x02
DW_MACRO_start_file, DW_MACRO_end_file = 0x03, 0x04
DW_MACRO_define_strp, DW_MACRO_undef_strp = 0x05, 0x06
DW_MACRO_import = 0x07
DW_MACRO_define_sup, DW_MACRO_undef_sup, DW_MACRO_import_sup = 0x08, 0x09, 0x0A
DW_MACRO_define_strx, DW_MACRO_undef_strx = 0x0B, 0x0C

# Sizes of the forms an opcode operands table may name (vendor opcodes): fixed, or None for a
# LEB128, or 'str' for a NUL-terminated string, or 'off' for an offset of the unit's size.
_FORM_SIZES = {0x0B: 1, 0x05: 2, 0x06: 4, 0x07: 8, 0x0C: 1, 0x0D: None, 0x0F: None, 0x08: "str",
               0x0E: "off", 0x17: "off", 0x19: 0, 0x1A: None, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4}


class MacroError(ValueError):
    """The section cannot be decoded (truncated, or a form this reader does not know)."""


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def u(self, n: int) -> int:
        if self.pos + n > len(self.data):
            raise MacroError("truncated")
        value = int.from_bytes(self.data[self.pos:self.pos + n], "little")
        self.pos += n
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.u(1)
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def cstr(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise MacroError("unterminated string")
        text = self.data[self.pos:end]
        self.pos = end + 1
        return text


def _cstr_at(data: Optional[bytes], offset: int) -> Optional[bytes]:
    if data is None or offset >= len(data):
        return None
    end = data.find(b"\0", offset)
    return data[offset:end if end >= 0 else len(data)]


def _add(out: Dict[str, List[str]], definition: Optional[bytes]) -> None:
    """``NAME value`` or ``NAME(args) body`` as the section stores a #define."""
    if not definition:
        return
    text = definition.decode("utf-8", "replace")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(\([^)]*\))?\s?(.*)$", text, re.S)
    if m and m.group(2) is None:               # function-like macros are not constants
        out.setdefault(m.group(1), []).append(m.group(3).strip())


def parse_debug_macro(data: bytes, debug_str: Optional[bytes], little_endian: bool = True) -> Dict[str, List[str]]:
    """Every object-like ``#define`` in ``.debug_macro``: name -> the definitions seen (in
    section order; a header included by many files appears once per unit that defines it)."""
    if not little_endian:
        raise MacroError("big-endian .debug_macro is not supported")
    out: Dict[str, List[str]] = {}
    r = _Reader(data)
    while r.pos < len(data):
        version = r.u(2)
        if version not in (4, 5):
            raise MacroError(f"unknown .debug_macro version {version}")
        flags = r.u(1)
        offset_size = 8 if flags & 1 else 4
        if flags & 2:
            r.u(offset_size)
        vendor: Dict[int, List[int]] = {}
        if flags & 4:
            for _ in range(r.u(1)):
                opcode = r.u(1)
                vendor[opcode] = [r.u(1) for _ in range(r.uleb())]
        while True:
            op = r.u(1)
            if op == 0:
                break
            if op in (DW_MACRO_define, DW_MACRO_undef):
                r.uleb()
                text = r.cstr()
                if op == DW_MACRO_define:
                    _add(out, text)
            elif op == DW_MACRO_start_file:
                r.uleb(), r.uleb()
            elif op == DW_MACRO_end_file:
                pass
            elif op in (DW_MACRO_define_strp, DW_MACRO_undef_strp):
                r.uleb()
                offset = r.u(offset_size)
                if op == DW_MACRO_define_strp:
                    _add(out, _cstr_at(debug_str, offset))
            elif op in (DW_MACRO_import, DW_MACRO_import_sup):
                r.u(offset_size)
            elif op in (DW_MACRO_define_sup, DW_MACRO_undef_sup):
                r.uleb(), r.u(offset_size)         # a supplementary file's string: not ours
            elif op in (DW_MACRO_define_strx, DW_MACRO_undef_strx):
                r.uleb(), r.uleb()                 # needs .debug_str_offsets: skipped
            elif op in vendor:
                for form in vendor[op]:
                    size = _FORM_SIZES.get(form, -1)
                    if size == -1:
                        raise MacroError(f"vendor opcode 0x{op:02x}: unknown form 0x{form:02x}")
                    if size is None:
                        r.uleb()
                    elif size == "str":
                        r.cstr()
                    elif size == "off":
                        r.u(offset_size)
                    else:
                        r.u(size)
            else:
                raise MacroError(f"unknown .debug_macro opcode 0x{op:02x}")
    return out


def parse_debug_macinfo(data: bytes) -> Dict[str, List[str]]:
    """Every object-like ``#define`` in DWARF 2-4's ``.debug_macinfo``."""
    out: Dict[str, List[str]] = {}
    r = _Reader(data)
    while r.pos < len(data):
        op = r.u(1)
        if op == 0:
            continue                               # end of one unit's entries
        if op in (1, 2):
            r.uleb()
            text = r.cstr()
            if op == 1:
                _add(out, text)
        elif op == 3:
            r.uleb(), r.uleb()
        elif op == 4:
            pass
        elif op == 0xFF:
            r.uleb(), r.cstr()
        else:
            raise MacroError(f"unknown .debug_macinfo type 0x{op:02x}")
    return out


# -- a macro's integer value -------------------------------------------------------------------

_CAST = re.compile(r"\(\s*(?:const\s+|unsigned\s+|signed\s+|long\s+|short\s+)*"
                   r"(?:u?int(?:8|16|32|64|ptr|max)?_t|size_t|uintptr_t|unsigned|signed|int|long|short|char)"
                   r"(?:\s+(?:int|long))*\s*\)")
_NUMBER = re.compile(r"\b(0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)[uUlL]*\b")
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_OPS: Dict[type, Callable[..., int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
}
_UNARY: Dict[type, Callable[[int], int]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}


def _evaluate(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise MacroError("division by zero")
        if isinstance(node.op, ast.LShift) and not 0 <= right <= 128:
            raise MacroError("shift out of range")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise MacroError("not an integer expression")


def macro_value(name: str, macros: Dict[str, List[str]], depth: int = 0) -> Optional[int]:
    """The integer a macro stands for, or None when it is not one (or its definitions differ).

    Understands decimal, hex, octal-free and binary literals with C suffixes, casts to the usual
    integer types, + - * / % << >> | & ^ ~ and parentheses, and other macros by name."""
    values = macros.get(name)
    if not values or depth > 16:
        return None
    results = set()
    for text in dict.fromkeys(values):
        value = _value_of(text, macros, depth)
        if value is None:
            return None
        results.add(value)
    return results.pop() if len(results) == 1 else None


def _value_of(text: str, macros: Dict[str, List[str]], depth: int) -> Optional[int]:
    expr = _CAST.sub(" ", text)
    expr = _NUMBER.sub(lambda m: str(int(m.group(1), 0) if not re.fullmatch(r"0\d+", m.group(1))
                                     else int(m.group(1), 8)), expr)

    def name_value(m: "re.Match[str]") -> str:
        value = macro_value(m.group(0), macros, depth + 1)
        if value is None:
            raise MacroError(f"{m.group(0)} is not an integer macro")
        return f"({value})"
    try:
        expr = _IDENT.sub(name_value, expr).replace("/", "//")
        return _evaluate(ast.parse(expr.strip(), mode="eval"))
    except (MacroError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
