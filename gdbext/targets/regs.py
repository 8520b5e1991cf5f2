"""Register layouts: which bytes of a ``g`` reply (or a core's ``pr_reg``) hold which register.

A stub describes its registers in ``target.xml`` (plus the files it ``xi:include``s); the ``g``
packet carries them in register-number order, each ``bitsize`` wide, in target byte order.
Only the first few (the "core" registers) are in ``g``, so decoding stops when bytes run out.

When a stub offers no description we fall back to the layouts QEMU's ARM stubs use. Why two for
32-bit ARM: before a client reads ``target.xml``, QEMU still sends the eight legacy 96-bit FPA
registers and ``fps`` between ``pc`` and ``cpsr`` (168 bytes); after it, they vanish (68 bytes).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["Register", "RegisterLayout", "ARM_CORE", "ARM_CORE_FPA", "AARCH64_CORE",
           "layout_from_target_xml", "fallback_layout", "layout_for_arch"]


@dataclass(frozen=True)
class Register:
    name: str
    bitsize: int
    regnum: int


@dataclass(frozen=True)
class RegisterLayout:
    """Registers in ``g``-packet order, and the architecture they belong to."""

    arch: Optional[str]          # "arm", "aarch64" or None when unknown
    registers: Tuple[Register, ...]

    def decode(self, data: bytes, byteorder: str = "little") -> Dict[str, int]:
        """Registers present in ``data`` (a ``g`` reply or a ``pr_reg`` array) by name."""
        values: Dict[str, int] = {}
        offset = 0
        for reg in self.registers:
            width = (reg.bitsize + 7) // 8
            if offset + width > len(data):
                break
            values[reg.name] = int.from_bytes(data[offset:offset + width], byteorder)
            offset += width
        return values

    def fits(self, g_size: int) -> bool:
        """True when ``g_size`` bytes end exactly at a register boundary of this layout."""
        offset = 0
        for reg in self.registers:
            if offset == g_size:
                return True
            offset += (reg.bitsize + 7) // 8
        return offset == g_size

    def size(self) -> int:
        return sum((r.bitsize + 7) // 8 for r in self.registers)


def _seq(names: Sequence[str], bitsize: int, first: int = 0) -> List[Register]:
    return [Register(n, bitsize, first + i) for i, n in enumerate(names)]


_ARM_GPRS = [f"r{i}" for i in range(13)] + ["sp", "lr", "pc"]
ARM_CORE = RegisterLayout("arm", tuple(_seq(_ARM_GPRS, 32) + [Register("cpsr", 32, 25)]))
ARM_CORE_FPA = RegisterLayout("arm", tuple(
    _seq(_ARM_GPRS, 32) + _seq([f"f{i}" for i in range(8)], 96, 16)
    + [Register("fps", 32, 24), Register("cpsr", 32, 25)]))
AARCH64_CORE = RegisterLayout("aarch64", tuple(
    _seq([f"x{i}" for i in range(31)] + ["sp", "pc"], 64) + [Register("cpsr", 32, 33)]))


def layout_for_arch(arch: str) -> RegisterLayout:
    """The core-register layout of ``arch`` ("arm" or "aarch64")."""
    return AARCH64_CORE if arch == "aarch64" else ARM_CORE


def fallback_layout(g_size: int) -> RegisterLayout:
    """Guess the layout from the size of a ``g`` reply when the stub describes nothing."""
    for layout in (ARM_CORE, ARM_CORE_FPA, AARCH64_CORE):
        if g_size == layout.size():
            return layout
    # Unknown size: 8-byte registers are far more likely on a 64-bit-sized reply.
    return AARCH64_CORE if g_size >= AARCH64_CORE.size() else ARM_CORE


_ARCH_RE = re.compile(r"aarch64|arm", re.I)


def layout_from_target_xml(fetch: Callable[[str], str], annex: str = "target.xml") -> RegisterLayout:
    """Parse a target description, following ``xi:include`` through ``fetch(annex) -> text``.

    Register numbers continue from the previous register unless ``regnum`` says otherwise, across
    included files in document order (the GDB rules); the ``g`` order is ascending regnum.
    """
    regs: List[Register] = []
    arch: List[Optional[str]] = [None]
    next_num = [0]
    seen = set()

    def walk(name: str) -> None:
        if name in seen or len(seen) > 32:      # a loop or an absurd tree: stop quietly
            return
        seen.add(name)
        text = fetch(name)
        # Namespaced tags (xi:include) are matched by local name; drop the DOCTYPE, which
        # ElementTree ignores anyway, and tolerate a missing xi namespace declaration.
        text = re.sub(r"<!DOCTYPE[^>]*>", "", text)
        text = text.replace("xi:include", "include")
        root = ET.fromstring(text)
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "architecture" and el.text:
                m = _ARCH_RE.search(el.text)
                if m:
                    arch[0] = m.group(0).lower()
            elif tag == "include" and el.get("href"):
                walk(el.get("href"))
            elif tag == "reg" and el.get("name"):
                num = int(el.get("regnum", next_num[0]))
                regs.append(Register(el.get("name"), int(el.get("bitsize", "32")), num))
                next_num[0] = num + 1

    walk(annex)
    regs.sort(key=lambda r: r.regnum)
    return RegisterLayout(arch[0], tuple(regs))
