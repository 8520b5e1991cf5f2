"""Struct layouts: where each field of a struct lives, read from DWARF or given by default.

Layouts are plain data (byte offset, size, bit position) decoded with :mod:`struct`, so a
typed debugger value is never needed. :class:`DwarfTypes` indexes the ELF's DWARF
(pyelftools); the page array's, free-page list's and ``heap_stats``' documented defaults live
here, the allocator family's header in its own package, and :mod:`.layouts` assembles them.

Bit positions are kept in one normal form: ``data_bit_offset`` as DWARF 4/5 defines it (bits
from the start of the struct, counted from the least significant bit of byte 0 on little-endian
targets and from the most significant bit of byte 0 on big-endian ones). The older
``DW_AT_bit_offset`` + ``DW_AT_byte_size`` form is converted into it on reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import names

__all__ = [
    "Field", "StructLayout", "PageLayout", "HEAP_ALIGN", "PAGE_SIZE", "DwarfTypes", "round_up",
    "packed_struct", "bitfield", "default_page_struct", "default_page_list_struct", "default_stats_struct",
]

HEAP_ALIGN = 16        # the kernel's HEAP_ALIGN: payloads and segment sizes are multiples of it
PAGE_SIZE = 4096       # the kernel's page size; page i describes physical address i * 4096

INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}

PAGE_NAMES = names.candidates("type", "page_t")
PAGE_LIST_NAMES = names.candidates("type", "page_list_t")
STATS_NAMES = names.candidates("type", "heap_stats_t")


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(frozen=True)
class Field:
    """One decodable field: a scalar or pointer, or a bit-field inside a storage unit.

    ``offset``/``size`` are the bytes to read. For a bit-field they cover the bits, and
    ``bit_shift``/``bit_size`` pick the value out of those bytes read as one integer in the
    target's byte order. ``data_bit_offset`` is the DWARF normal form (see the module doc).
    """

    name: str
    offset: int
    size: int
    type_name: str = ""
    is_pointer: bool = False
    signed: bool = False
    bit_size: Optional[int] = None
    bit_shift: Optional[int] = None
    data_bit_offset: Optional[int] = None

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size is not None


def bitfield(name: str, data_bit_offset: int, bit_size: int, endian: str, type_name: str = "") -> Field:
    """A :class:`Field` for a bit-field given its DWARF ``data_bit_offset``."""
    start = data_bit_offset // 8
    end = (data_bit_offset + bit_size - 1) // 8
    nbytes = end - start + 1
    if endian == "<":
        shift = data_bit_offset - start * 8
    else:
        shift = nbytes * 8 - (data_bit_offset - start * 8) - bit_size
    return Field(name, start, nbytes, type_name, bit_size=bit_size, bit_shift=shift,
                 data_bit_offset=data_bit_offset)


def _decode_field(f: Field, data: bytes, base: int, byteorder: str) -> int:
    raw = data[base + f.offset:base + f.offset + f.size]
    if len(raw) != f.size:
        raise ValueError(f"field {f.name} is past the end of the data")
    value = int.from_bytes(raw, byteorder, signed=f.signed and not f.is_bitfield)
    if f.bit_size is not None:
        value = (value >> (f.bit_shift or 0)) & ((1 << f.bit_size) - 1)
    return value


@dataclass(frozen=True)
class StructLayout:
    """A struct's size and its fields (nested struct members flattened as ``outer.inner``)."""

    name: str
    size: int
    fields: Tuple[Field, ...]
    endian: str = "<"            # '<' little-endian, '>' big-endian (struct module notation)
    source: str = "dwarf"        # 'dwarf' or 'default'

    @property
    def byteorder(self) -> str:
        return "little" if self.endian == "<" else "big"

    def field(self, name: str) -> Optional[Field]:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def has(self, name: str) -> bool:
        return self.field(name) is not None

    def offset(self, name: str) -> int:
        f = self.field(name)
        if f is None:
            raise KeyError(f"{self.name} has no field {name}")
        return f.offset

    def decode(self, data: bytes, base: int = 0, names: Optional[Iterable[str]] = None) -> Dict[str, int]:
        """Decode scalar fields (all, or ``names``) of the struct at ``data[base:]``."""
        wanted = set(names) if names is not None else None
        out: Dict[str, int] = {}
        for f in self.fields:
            if wanted is not None and f.name not in wanted:
                continue
            if f.size > 8 and f.bit_size is None:
                continue    # arrays and such: not a number
            out[f.name] = _decode_field(f, data, base, self.byteorder)
        return out

    def describe(self) -> Dict[str, Any]:
        """A JSON-ready description (used by the ``info`` report)."""
        fields = []
        for f in self.fields:
            item: Dict[str, Any] = {"name": f.name, "offset": f.offset, "size": f.size, "type": f.type_name}
            if f.bit_size is not None:
                item["bit_size"] = f.bit_size
                item["data_bit_offset"] = f.data_bit_offset
            fields.append(item)
        return {"name": self.name, "size": self.size, "source": self.source, "fields": fields}


def packed_struct(endian: str, fields: Sequence[Field], total: int) -> Tuple[struct.Struct, Tuple[int, ...]]:
    """A Struct that unpacks ``fields`` (byte-aligned, 1/2/4/8 bytes) and the order to reorder them.

    Returns the Struct (fields in offset order, padding skipped) and for each requested field
    its index in the unpacked tuple.
    """
    order = sorted(range(len(fields)), key=lambda i: fields[i].offset)
    fmt, pos = [endian], 0
    for i in order:
        f = fields[i]
        if f.offset < pos or f.size not in INT_CODES:
            raise ValueError(f"cannot pack field {f.name}")
        if f.offset > pos:
            fmt.append(f"{f.offset - pos}x")
        code = INT_CODES[f.size]
        fmt.append(code.lower() if f.signed else code)
        pos = f.offset + f.size
    if total > pos:
        fmt.append(f"{total - pos}x")
    index = tuple(order.index(i) for i in range(len(fields)))
    return struct.Struct("".join(fmt)), index


class PageLayout:
    """``page_t``: identity address, the flag bits, the free-list links, and a bulk decoder.

    ``unpack_from(buffer, offset)`` returns ``(vaddr_mapped, flags_word, nextpage, prevpage)``
    where ``flags_word`` is the whole ``flags`` member as one integer; ``ALLOCATED``,
    ``KERNEL_PAGE`` and ``KERNEL_HEAP_PAGE`` are masks into it (``KERNEL_HEAP_PAGE`` is 0 when
    the kernel has no heap-page bit). Fields are found by their conventional names or aliases
    (:mod:`.names`: Go's ``vaddrMapped``, ``next``, ``prev``). The flag bits come from the
    bit-fields of ``flags`` (DWARF), else from constants naming them (``flag_constants``: Go's
    ``PAGE_FLAG_ALLOCATED``, ...), else the contract's order. ``heap_bit``: True when the
    kernel has a heap-page bit, False when the layout says it has none (the constants name the
    other bits and no heap bit), None when nothing says; ``flag_source`` says which.
    """

    FLAG_NAMES = ("allocated", "kernel_page", "kernel_heap_page")
    FLAG_CONSTANTS = ("PAGE_FLAG_ALLOCATED", "PAGE_FLAG_KERNEL", "PAGE_FLAG_KERNEL_HEAP")

    def __init__(self, struct_layout: StructLayout, flag_constants: Optional[Dict[str, Any]] = None) -> None:
        self.struct = struct_layout
        sl = struct_layout
        self.size = sl.size

        def get(canon: str) -> Optional[Field]:
            for alias in names.field_candidates("page_t", canon):
                f = sl.field(alias)
                if f is not None:
                    return f
            return None
        self.vaddr = get("vaddr_mapped")
        self.nextpage = get("nextpage")
        self.prevpage = get("prevpage")
        if self.vaddr is None or self.nextpage is None or self.prevpage is None:
            raise ValueError(f"{sl.name} lacks vaddr_mapped/nextpage/prevpage")
        flags = get("flags")
        if flags is None or flags.size not in INT_CODES:
            raise ValueError(f"{sl.name} has no flags storage")
        self.flags = flags
        self.flag_bits: Dict[str, Tuple[int, int]] = {}   # name -> (shift in flags word, width)
        consts = {k: v for k, v in (flag_constants or {}).items() if v is not None}
        has_bitfields = any(get("flags." + n) is not None for n in self.FLAG_NAMES)
        self.heap_bit: Optional[bool] = None
        if not has_bitfields and all(c in consts for c in self.FLAG_CONSTANTS[:2]):
            # A plain integer packed by hand, its bits named by constants.
            for name, const in zip(self.FLAG_NAMES, self.FLAG_CONSTANTS):
                fact = consts.get(const)
                value = fact.value if fact is not None else 0
                if value > 0 and value & (value - 1) == 0:
                    self.flag_bits[name] = (value.bit_length() - 1, 1)
            self.heap_bit = "kernel_heap_page" in self.flag_bits
            self.flag_source = "DWARF constants " + ", ".join(
                f"{consts[c].name}={consts[c].value}" for c in self.FLAG_CONSTANTS if c in consts)
        else:
            for name in self.FLAG_NAMES + ("reserved",):
                bf = get("flags." + name)
                if bf is None:
                    if name == "reserved":
                        continue
                    # A plain integer flags member: the bit-field order of the contract.
                    shift = self.FLAG_NAMES.index(name)
                    if sl.endian == ">":
                        shift = flags.size * 8 - 1 - shift
                    self.flag_bits[name] = (shift, 1)
                    continue
                dbo = bf.data_bit_offset if bf.data_bit_offset is not None else bf.offset * 8
                rel = dbo - flags.offset * 8
                if sl.endian == "<":
                    shift = rel
                else:
                    shift = flags.size * 8 - rel - (bf.bit_size or 1)
                self.flag_bits[name] = (shift, bf.bit_size or 1)
            if has_bitfields:
                self.heap_bit = get("flags.kernel_heap_page") is not None
                self.flag_source = f"DWARF bit-fields of {flags.name}" if sl.source == "dwarf" else \
                    "default bit-fields"
            else:
                self.flag_source = "assumed: bit 0 allocated, bit 1 kernel page, bit 2 kernel heap page"
        mask = lambda name: 1 << self.flag_bits[name][0] if name in self.flag_bits else 0  # noqa: E731
        self.ALLOCATED = mask("allocated")
        self.KERNEL_PAGE = mask("kernel_page")
        self.KERNEL_HEAP_PAGE = mask("kernel_heap_page")
        if not self.ALLOCATED or not self.KERNEL_PAGE:
            raise ValueError(f"{sl.name}: no allocated or kernel page bit")
        flags_as_int = Field("flags", flags.offset, flags.size)
        packer, index = packed_struct(sl.endian, [self.vaddr, flags_as_int, self.nextpage, self.prevpage], sl.size)
        self._struct = packer
        if index == tuple(range(4)):
            self.unpack_from: Callable[..., Tuple[int, int, int, int]] = packer.unpack_from
            self.iter_unpack = packer.iter_unpack
        else:
            raw = packer.unpack_from

            def unpack_from(buf: Any, offset: int = 0) -> Tuple[int, int, int, int]:
                t = raw(buf, offset)
                return (t[index[0]], t[index[1]], t[index[2]], t[index[3]])

            def iter_unpack(buf: Any) -> Iterable[Tuple[int, int, int, int]]:
                for t in packer.iter_unpack(buf):
                    yield (t[index[0]], t[index[1]], t[index[2]], t[index[3]])
            self.unpack_from = unpack_from
            self.iter_unpack = iter_unpack

    def field_names(self) -> Dict[str, str]:
        """Role -> the field's name in this kernel's page struct."""
        return {"vaddr_mapped": self.vaddr.name, "flags": self.flags.name, "nextpage": self.nextpage.name,
                "prevpage": self.prevpage.name}

    @property
    def source(self) -> str:
        return self.struct.source

    def flag_names(self, word: int) -> List[str]:
        """The names of the flag bits set in a flags word (for messages)."""
        return [n for n in self.FLAG_NAMES if n in self.flag_bits and word >> self.flag_bits[n][0] & 1]

    def flag_value(self, word: int) -> int:
        """The three known flags as the contract's bit-field value: allocated=1, kernel=2, heap=4."""
        return ((word & self.ALLOCATED and 1 or 0) | (word & self.KERNEL_PAGE and 2 or 0)
                | (word & self.KERNEL_HEAP_PAGE and 4 or 0))


# -- default layouts (no DWARF) -----------------------------------------------------------------

def default_page_struct(pointer_size: int, endian: str) -> StructLayout:
    """``page_t``: vaddr_mapped@0, flags (u32 bit-fields)@P, nextpage, prevpage pointer-aligned."""
    p = pointer_size
    flags_at = p
    nxt = round_up(flags_at + 4, p)
    fields = [Field("vaddr_mapped", 0, p, "uintptr_t"), Field("flags", flags_at, 4, "page_flags_t")]
    # GCC allocates bit-fields from bit 0 on little-endian and from the MSB on big-endian; in
    # data_bit_offset form both are simply 0, 1, 2, 3 bits from the start of the flags member.
    for i, (name, width) in enumerate((("allocated", 1), ("kernel_page", 1), ("kernel_heap_page", 1),
                                       ("reserved", 29))):
        fields.append(bitfield("flags." + name, flags_at * 8 + i, width, endian,
                               "uint8_t" if width == 1 else "uint32_t"))
    fields += [Field("nextpage", nxt, p, "struct page *", is_pointer=True),
               Field("prevpage", nxt + p, p, "struct page *", is_pointer=True)]
    return StructLayout("page_t", round_up(nxt + 2 * p, p), tuple(fields), endian, "default")


def default_page_list_struct(pointer_size: int, endian: str) -> StructLayout:
    p = pointer_size
    return StructLayout("page_list_t", round_up(2 * p + 4, p), (
        Field("head", 0, p, "struct page *", is_pointer=True),
        Field("tail", p, p, "struct page *", is_pointer=True),
        Field("size", 2 * p, 4, "uint32_t"),
    ), endian, "default")


def default_stats_struct(pointer_size: int, endian: str) -> StructLayout:
    p = pointer_size
    fields = [Field("allocations", 0, 4, "uint32_t"), Field("frees", 4, 4, "uint32_t"),
              Field("failed", 8, 4, "uint32_t")]
    off = round_up(12, p)
    for name in ("bytes_requested", "bytes_allocated", "bytes_freed", "current_usage", "peak_usage"):
        fields.append(Field(name, off, p, "uintptr_t"))
        off += p
    return StructLayout("heap_stats_t", round_up(off, p), tuple(fields), endian, "default")


# -- DWARF -------------------------------------------------------------------------------------

_STRIP_TAGS = {"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_restrict_type", "DW_TAG_atomic_type"}
_SIZED_TAGS = {"DW_TAG_base_type", "DW_TAG_structure_type", "DW_TAG_union_type",
               "DW_TAG_enumeration_type", "DW_TAG_class_type"}


def _name(die: Any) -> Optional[str]:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _uleb(data: Sequence[int]) -> int:
    result = shift = 0
    for byte in data:
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return result


def _member_location(die: Any) -> Optional[int]:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return None
    value = attr.value
    if isinstance(value, int):
        return value
    # DWARF 2 style: a location expression, in practice DW_OP_plus_uconst <uleb128>.
    if isinstance(value, (list, tuple, bytes)) and value and value[0] == 0x23:
        return _uleb(value[1:])
    return None


class DwarfTypes:
    """The types, enumerators and global variables of one ELF's DWARF, indexed by name."""

    def __init__(self, dwarf: Any, endian: str, address_size: int) -> None:
        self.endian = endian
        self.address_size = address_size
        self.structs: Dict[str, Any] = {}
        self.typedefs: Dict[str, Any] = {}
        self.enumerators: Dict[str, int] = {}
        self.constants: Dict[str, int] = {}          # DW_TAG_constant (Go's package constants)
        self.variables: Dict[str, Any] = {}
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                tag = die.tag
                if tag == "DW_TAG_structure_type":
                    name = _name(die)
                    if name and "DW_AT_declaration" not in die.attributes:
                        self.structs.setdefault(name, die)
                elif tag == "DW_TAG_typedef":
                    name = _name(die)
                    if name:
                        self.typedefs.setdefault(name, die)
                elif tag == "DW_TAG_enumerator":
                    name = _name(die)
                    attr = die.attributes.get("DW_AT_const_value")
                    if name and attr is not None and isinstance(attr.value, int):
                        self.enumerators.setdefault(name, attr.value)
                elif tag == "DW_TAG_variable":
                    self._add_variable(die)
                elif tag == "DW_TAG_constant":
                    name = _name(die)
                    attr = die.attributes.get("DW_AT_const_value")
                    if name and attr is not None and isinstance(attr.value, int):
                        self.constants.setdefault(name, attr.value)

    def _add_variable(self, die: Any) -> None:
        attrs = die.attributes
        spec = die
        if "DW_AT_specification" in attrs:
            spec = die.get_DIE_from_attribute("DW_AT_specification")
        elif "DW_AT_abstract_origin" in attrs:
            return
        name = _name(spec)
        if not name or "DW_AT_type" not in spec.attributes:
            return
        parent = die.get_parent()
        if parent is None or parent.tag != "DW_TAG_compile_unit":
            return
        # Prefer a definition over a bare declaration of the same variable.
        if name in self.variables and "DW_AT_declaration" in attrs:
            return
        self.variables[name] = spec

    # -- type helpers --------------------------------------------------------------------------
    def strip(self, die: Any) -> Any:
        """Follow typedef/const/volatile down to the underlying type DIE."""
        for _ in range(64):
            if die is None or die.tag not in _STRIP_TAGS:
                return die
            if "DW_AT_type" not in die.attributes:
                return None
            die = die.get_DIE_from_attribute("DW_AT_type")
        return die

    def type_of(self, die: Any) -> Any:
        if die is None or "DW_AT_type" not in die.attributes:
            return None
        return die.get_DIE_from_attribute("DW_AT_type")

    def size_of(self, die: Any) -> int:
        base = self.strip(die)
        if base is None:
            return 0
        attr = base.attributes.get("DW_AT_byte_size")
        if attr is not None and isinstance(attr.value, int):
            return attr.value
        if base.tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return self.address_size
        if base.tag == "DW_TAG_array_type":
            count = 1
            for child in base.iter_children():
                if child.tag == "DW_TAG_subrange_type":
                    a = child.attributes
                    if "DW_AT_count" in a and isinstance(a["DW_AT_count"].value, int):
                        count *= a["DW_AT_count"].value
                    elif "DW_AT_upper_bound" in a and isinstance(a["DW_AT_upper_bound"].value, int):
                        count *= a["DW_AT_upper_bound"].value + 1
                    else:
                        count = 0
            return count * self.size_of(self.type_of(base))
        return 0

    def type_name(self, die: Any, depth: int = 0) -> str:
        if die is None:
            return "void"
        if depth > 16:
            return "?"
        tag = die.tag
        name = _name(die)
        if tag == "DW_TAG_pointer_type":
            return self.type_name(self.type_of(die), depth + 1) + " *"
        if tag == "DW_TAG_const_type":
            return "const " + self.type_name(self.type_of(die), depth + 1)
        if tag == "DW_TAG_volatile_type":
            return "volatile " + self.type_name(self.type_of(die), depth + 1)
        if tag == "DW_TAG_structure_type":
            return f"struct {name}" if name else "struct <anonymous>"
        if tag == "DW_TAG_union_type":
            return f"union {name}" if name else "union <anonymous>"
        if tag == "DW_TAG_enumeration_type":
            return f"enum {name}" if name else "enum <anonymous>"
        if tag == "DW_TAG_array_type":
            return self.type_name(self.type_of(die), depth + 1) + "[]"
        return name or tag

    def _is_signed(self, die: Any) -> bool:
        base = self.strip(die)
        if base is None or base.tag != "DW_TAG_base_type":
            return False
        enc = base.attributes.get("DW_AT_encoding")
        # DW_ATE_signed = 5, DW_ATE_signed_char = 6
        return enc is not None and enc.value in (5, 6)

    # -- lookups -------------------------------------------------------------------------------
    def find_struct(self, names: Iterable[str]) -> Optional[Tuple[str, Any]]:
        """The first of ``names`` that is a struct (directly or through a typedef)."""
        for name in names:
            td = self.typedefs.get(name)
            if td is not None:
                die = self.strip(td)
                if die is not None and die.tag == "DW_TAG_structure_type" and "DW_AT_declaration" not in die.attributes:
                    return name, die
                if die is not None and die.tag == "DW_TAG_structure_type":
                    full = self.structs.get(_name(die) or "")
                    if full is not None:
                        return name, full
            die = self.structs.get(name)
            if die is not None:
                return name, die
        return None

    def struct_layout(self, display_name: str, die: Any) -> StructLayout:
        fields: List[Field] = []
        self._flatten(die, "", 0, fields, 0)
        return StructLayout(display_name, self.size_of(die), tuple(fields), self.endian, "dwarf")

    def _flatten(self, die: Any, prefix: str, base_bits: int, out: List[Field], depth: int) -> None:
        if depth > 8:
            return
        for member in die.iter_children():
            if member.tag != "DW_TAG_member":
                continue
            name = _name(member) or ""
            full = prefix + name
            mtype = self.type_of(member)
            tname = self.type_name(mtype)
            msize = self.size_of(mtype)
            a = member.attributes
            loc = _member_location(member)
            if "DW_AT_bit_size" in a:
                bits = a["DW_AT_bit_size"].value
                if "DW_AT_data_bit_offset" in a:
                    dbo = a["DW_AT_data_bit_offset"].value
                elif "DW_AT_bit_offset" in a:
                    # DWARF 2/3: bits from the MSB of a storage unit of DW_AT_byte_size bytes at
                    # the member location down to the field's MSB.
                    unit = a["DW_AT_byte_size"].value if "DW_AT_byte_size" in a else msize
                    bit_offset = a["DW_AT_bit_offset"].value
                    if self.endian == "<":
                        dbo = (loc or 0) * 8 + unit * 8 - bit_offset - bits
                    else:
                        dbo = (loc or 0) * 8 + bit_offset
                else:
                    dbo = (loc or 0) * 8
                out.append(bitfield(full, base_bits + dbo, bits, self.endian, tname))
                continue
            offset = base_bits // 8 + (loc or 0)
            stripped = self.strip(mtype)
            is_ptr = stripped is not None and stripped.tag == "DW_TAG_pointer_type"
            out.append(Field(full, offset, msize, tname, is_pointer=is_ptr, signed=self._is_signed(mtype)))
            if stripped is not None and stripped.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                self._flatten(stripped, full + ".", offset * 8, out, depth + 1)

    def variable_type(self, name: str) -> Optional[Tuple[str, int]]:
        die = self.variables.get(name)
        if die is None:
            return None
        t = self.type_of(die)
        return self.type_name(t), self.size_of(t)

    def variable_shape(self, name: str) -> Optional[Tuple[str, int]]:
        """``(kind, stride)`` of a global, what an expression needs of its type: ``kind`` is
        'integer', 'float', 'pointer', 'array', 'struct', 'union' or 'function'; ``stride``
        the bytes ``+ 1`` moves (a pointer's target, an array's element; 1 for void and
        functions, as gdb counts them). None when the DWARF does not say."""
        die = self.variables.get(name)
        t = self.strip(self.type_of(die)) if die is not None else None
        if t is None:
            return None
        tag = t.tag
        if tag == "DW_TAG_base_type":
            enc = t.attributes.get("DW_AT_encoding")
            return ("float" if enc is not None and enc.value == 4 else "integer"), 1   # DW_ATE_float
        if tag == "DW_TAG_enumeration_type":
            return "integer", 1
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return "pointer", self.size_of(self.type_of(t)) or 1
        if tag == "DW_TAG_array_type":
            dims = [c for c in t.iter_children() if c.tag == "DW_TAG_subrange_type"]
            first = dims[0].attributes if dims else {}
            count = (first["DW_AT_count"].value if "DW_AT_count" in first else
                     first["DW_AT_upper_bound"].value + 1 if "DW_AT_upper_bound" in first else 0)
            whole = self.size_of(t)
            stride = whole // count if isinstance(count, int) and count > 0 and whole else 0
            return "array", stride or self.size_of(self.type_of(t)) or 1
        if tag in ("DW_TAG_structure_type", "DW_TAG_class_type"):
            return "struct", self.size_of(t) or 1
        if tag == "DW_TAG_union_type":
            return "union", self.size_of(t) or 1
        if tag == "DW_TAG_subroutine_type":
            return "function", 1
        return None
