"""Kernels kheap has never seen (issue 12), over synthetic heaps: the names table, bit-field
and Go-like headers, a payload offset learnt from a constant or from the back pointer, the
heap size from .debug_macro or inferred, the page conventions and their setting, the culprit
of a well-formed header with a wrong size (item 5), and the heap before it is set up (item 6).
"""
from __future__ import annotations

import json
import random
import struct
from dataclasses import replace

import pytest

from gdbext.core import names
from gdbext.core.check import check
from gdbext.core.layout import Field, PageLayout, StructLayout, bitfield
from gdbext.core.layouts import default_layouts
from gdbext.core.macros import macro_value, parse_debug_macinfo, parse_debug_macro
from gdbext.core.names import Fact
from gdbext.core.program import Overrides, ProgramError
from gdbext.core.reports import info_report, render_text
from gdbext.core.seglist import find_segment, walk_heap
from gdbext.core.seglist.layout import SegmentLayout
from gdbext.frontends import commands
from gdbext.frontends.session import CommandError
from tests.unit.heapbuilder import SyntheticKernel, prog_session

P4_8 = pytest.mark.parametrize("p", [4, 8])


# -- layouts of the variants ----------------------------------------------------------------------

def bitfield_layouts(p, endian="<"):
    """The tutorial's header: ``{next, prev; uint8_t is_allocated:1; uint32_t segment_size:31}``."""
    ptr = "struct heap_segment *"
    size = 2 * p + 4 if p == 4 else 2 * p + 8
    s = StructLayout("heap_segment_t", size, (
        Field("next", 0, p, ptr, is_pointer=True), Field("prev", p, p, ptr, is_pointer=True),
        bitfield("is_allocated", 16 * p, 1, endian, "uint8_t"),
        bitfield("segment_size", 16 * p + 1, 31, endian, "uint32_t")), endian, "dwarf")
    return replace(default_layouts(p, endian), segment=SegmentLayout(s))


def reordered_layouts(p, endian="<"):
    ptr = "struct heap_segment *"
    s = StructLayout("heap_segment_t", 16 if p == 4 else 32, (
        Field("segment_size", 0, 4, "uint32_t"), Field("is_allocated", 4, 4, "uint32_t"),
        Field("next", 8, p, ptr, is_pointer=True), Field("prev", 8 + p, p, ptr, is_pointer=True)), endian, "dwarf")
    return replace(default_layouts(p, endian), segment=SegmentLayout(s))


def go_page_layout():
    page = StructLayout("main.Page", 32, (
        Field("vaddrMapped", 0, 8, "uintptr"), Field("flags", 8, 4, "uint32"),
        Field("next", 16, 8, "main.Page *", is_pointer=True), Field("prev", 24, 8, "main.Page *", is_pointer=True)),
        "<", "dwarf")
    return PageLayout(page, {"PAGE_FLAG_ALLOCATED": Fact(1, "DWARF constant", "main.PAGE_FLAG_ALLOCATED"),
                             "PAGE_FLAG_KERNEL": Fact(2, "DWARF constant", "main.PAGE_FLAG_KERNEL")})


def go_layouts(version, payload_constant=True):
    """Mazarin's header: v1 ``{next, prev; isAllocated, segmentSize uint32}`` (24, payload +24),
    v2 with ``isReserved`` (32, payload +48, the header's address at payload - 8)."""
    ptr = "main.heapSegment *"
    fields = [Field("next", 0, 8, ptr, is_pointer=True), Field("prev", 8, 8, ptr, is_pointer=True),
              Field("isAllocated", 16, 4, "uint32")]
    if version == 1:
        fields.append(Field("segmentSize", 20, 4, "uint32"))
        size, payload = 24, 24
    else:
        fields += [Field("isReserved", 20, 4, "uint32"), Field("segmentSize", 24, 4, "uint32")]
        size, payload = 32, 48
    s = StructLayout("main.heapSegment", size, tuple(fields), "<", "dwarf")
    seg = SegmentLayout(s, Fact(payload, "DWARF constant", "main.payloadOffset") if payload_constant else None,
                        Fact(16, "DWARF constant", "main.HEAP_ALIGNMENT"))
    return replace(default_layouts(8, "<"), segment=seg, page=go_page_layout())


GO_NAMES = {"heap_segment_list_head": "main.heapSegmentListHead", "all_pages_array": "main.allPagesArrayBase",
            "num_pages": "main.numPages", "free_pages": "main.freePages", "heap_poison": "main.heapPoison",
            # Mazarin has none of these: renamed out of reach of the names table.
            "kernel_heap_start": "x_heap_start", "kernel_heap_size": "x_heap_size", "heap_stats": "x_stats",
            "__end": "x_end"}


def go_kernel(version, payload_constant=True, **kw):
    k = SyntheticKernel(8, "<", layouts=go_layouts(version, payload_constant), back_pointer=version == 2,
                        vaddr_mapped_only=True, head_only_free_list=True, symbol_names=GO_NAMES,
                        payload_offset=24 if version == 1 else 48, **kw)
    return k


def go_elf(k):
    elf = k.elf_info()
    elf.constants.clear()
    elf.constants["main.KERNEL_HEAP_SIZE"] = k.heap_size
    elf.constant_sources["main.KERNEL_HEAP_SIZE"] = "DWARF constant"
    return elf


def busy(k):
    ptrs = [k.kmalloc(n) for n in (24, 100, 7, 300, 64, 64, 1000, 16, 500)]
    for i in (1, 4, 5, 7):
        k.kfree(ptrs[i])
    return [q for i, q in enumerate(ptrs) if i not in (1, 4, 5, 7)]


def run(session, line):
    argv = line.split()
    return commands.execute_to_text(session, argv[0], argv[1:])


def ProgSession(k, elf=None):
    return prog_session(k, elf, face='cli')


# -- the names table ------------------------------------------------------------------------------

def test_candidates_try_the_name_its_aliases_then_go_packages():
    c = names.candidates("global", "heap_segment_list_head")
    assert c[0] == "heap_segment_list_head" and "kheap_list" in c and "main.heapSegmentListHead" in c
    assert c.index("kheap_list") < c.index("main.heapSegmentListHead")
    assert "main.heapSegment" in names.candidates("type", "heap_segment_t")
    assert "mem_block_t" in names.candidates("type", "heap_segment_t")
    assert names.field_candidates("heap_segment_t", "is_allocated")[:3] == ("is_allocated", "in_use", "isAllocated")
    assert names.canonical_of("global", "main.numPages") == "num_pages"
    assert "main.KERNEL_HEAP_SIZE" in names.candidates("constant", "KERNEL_HEAP_SIZE")


def test_renamed_globals_are_found_by_their_aliases_and_info_names_them():
    renamed = {"heap_segment_list_head": "kheap_list", "kernel_heap_start": "heap_base",
               "kernel_heap_size": "heap_bytes", "all_pages_array": "page_array", "num_pages": "total_pages",
               "free_pages": "free_page_list"}
    k = SyntheticKernel(4, "<", symbol_names=renamed)
    busy(k)
    prog = k.program()
    assert prog.elf.address_of("heap_segment_list_head") == k.symbols["heap_segment_list_head"]
    assert prog.bounds.sources["list_head"] == "kheap_list" and prog.bounds.sources["heap_size"] == "heap_bytes"
    assert check(prog, full=True).findings == []
    info = info_report(prog)
    assert info["facts"]["list_head"] == {"value": k.heap_start, "source": "symbol", "name": "kheap_list"}
    assert info["facts"]["num_pages"]["name"] == "total_pages"
    assert info["elf"]["names"]["heap_segment_list_head"] == "kheap_list"


# -- .debug_macro ---------------------------------------------------------------------------------

def _uleb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_debug_macro_dwarf5_units_strp_inline_import_and_vendor_table():
    strs = b"\0KERNEL_HEAP_SIZE (1024 * 1024)\0PAGE_SIZE 4096u\0SQUARE(x) ((x)*(x))\0"
    off_khs, off_ps, off_sq = 1, strs.index(b"PAGE_SIZE"), strs.index(b"SQUARE")
    # Unit 1: flags 0x06 (line offset + an operands table with vendor opcode 0xE0 taking a udata).
    u1 = struct.pack("<HB", 5, 0x06) + struct.pack("<I", 0) + bytes([1, 0xE0]) + _uleb(1) + bytes([0x0F])
    u1 += bytes([0x03]) + _uleb(0) + _uleb(1)                     # start_file
    u1 += bytes([0x05]) + _uleb(14) + struct.pack("<I", off_khs)  # define_strp
    u1 += bytes([0xE0]) + _uleb(300)                              # the vendor opcode, skipped
    u1 += bytes([0x01]) + _uleb(3) + b"HEAP_ALIGN 0x10\0"         # define (inline)
    u1 += bytes([0x05]) + _uleb(9) + struct.pack("<I", off_sq)    # function-like: not a constant
    u1 += bytes([0x07]) + struct.pack("<I", 0)                    # import
    u1 += bytes([0x04, 0x00])                                     # end_file, end of unit
    # Unit 2: 64-bit offsets (flags bit 0), no line offset.
    u2 = struct.pack("<HB", 5, 0x01) + bytes([0x05]) + _uleb(9) + struct.pack("<Q", off_ps) + bytes([0x00])
    macros = parse_debug_macro(u1 + u2, strs)
    assert macros["KERNEL_HEAP_SIZE"] == ["(1024 * 1024)"] and "SQUARE" not in macros
    assert macro_value("KERNEL_HEAP_SIZE", macros) == 1 << 20
    assert macro_value("PAGE_SIZE", macros) == 4096 and macro_value("HEAP_ALIGN", macros) == 16


def test_debug_macinfo_and_macro_values():
    data = bytes([3]) + _uleb(0) + _uleb(1) + bytes([1]) + _uleb(1) + b"A (2 << 4)\0" + bytes([1]) + _uleb(2) \
        + b"B ((uintptr_t)A * 3UL)\0" + bytes([2]) + _uleb(3) + b"C\0" + bytes([4, 0])
    macros = parse_debug_macinfo(data)
    assert macro_value("B", macros) == 96
    for text, value in (("(256 * 4096)", 1 << 20), ("010", 8), ("~0u & 0xff", 255), ("(1 << 20) / 2", 1 << 19),
                        ("(unsigned long)(7 % 4)", 3), ("-4", -4)):
        assert macro_value("X", {"X": [text]}) == value, text
    for text in ("foo(1)", "\"text\"", "1.5", "(1 << 1000)", "X", "__import__('os')", "1 / 0"):
        assert macro_value("X", {"X": [text]}) is None, text
    assert macro_value("X", {"X": ["1", "2"]}) is None               # definitions that differ


def test_heap_size_from_debug_macro_when_no_symbol_and_no_enumerator():
    k = SyntheticKernel(4, "<", symbol_names={"kernel_heap_size": "x_size", "kernel_heap_start": "x_start"})
    elf = k.elf_info()
    elf.constants.clear()
    elf.macros, elf.macro_section = {"KERNEL_HEAP_SIZE": [f"({k.heap_size // 1024} * 1024)"]}, ".debug_macro"
    prog = k.program(elf=elf)
    assert prog.heap_size == k.heap_size and prog.bounds.sources["heap_size"] == ".debug_macro KERNEL_HEAP_SIZE"
    fact = info_report(prog)["facts"]["heap_size"]
    assert fact["source"] == ".debug_macro" and fact["name"] == "KERNEL_HEAP_SIZE" and "#define" in fact["detail"]


# -- bit-field and reordered headers -------------------------------------------------------------

@P4_8
@pytest.mark.parametrize("endian", ["<", ">"])
def test_bitfield_columns_agree_with_the_per_header_decoder(p, endian):
    lay = bitfield_layouts(p, endian).segment
    assert lay.header_size == (12 if p == 4 else 24) and lay.bitfields
    rng = random.Random(p)
    raw = bytearray()
    want = []
    order = "little" if endian == "<" else "big"
    for _ in range(50):
        nxt, prv, flag, size = rng.getrandbits(8 * p), rng.getrandbits(8 * p), rng.getrandbits(1), rng.getrandbits(31)
        h = bytearray(lay.decode_size)
        h[0:p], h[p:2 * p] = nxt.to_bytes(p, order), prv.to_bytes(p, order)
        word_at = 2 * p
        word = (flag | size << 1) if endian == "<" else (flag << 31 | size)
        h[word_at:word_at + 4] = word.to_bytes(4, order)
        raw += h
        want.append((nxt, prv, flag, size))
    assert list(lay.iter_fields(bytes(raw))) == want
    assert [lay.unpack_from(raw, i * lay.decode_size) for i in range(50)] == want
    assert [list(c) for c in lay.columns(bytes(raw))] == [list(x) for x in zip(*want)]
    if endian == "<":
        assert lay._casts is not None          # the fast path: storage word column, shifted and masked


@P4_8
@pytest.mark.parametrize("make", [bitfield_layouts, reordered_layouts])
def test_bitfield_and_reordered_heaps_are_healthy_and_found(p, make):
    k = SyntheticKernel(p, "<", layouts=make(p))
    live = busy(k)
    prog = k.program()
    report = check(prog, full=True)
    assert report.findings == [] and report.notes == []
    walk = walk_heap(prog)
    assert [(s.address, s.size, s.is_allocated) for s in walk.segments] == k.segments()
    for ptr in live:
        m = find_segment(prog, ptr)
        assert m.where == "payload" and m.payload_offset == 0 and m.segment.address == ptr - k.hdr


@P4_8
def test_bitfield_overflow_is_found_with_the_culprit(p):
    k = SyntheticKernel(p, "<", layouts=bitfield_layouts(p))
    live = busy(k)
    first = live[0] - k.hdr
    victim = k.seg_field(first, "next")            # the header after live[0]'s segment
    k.write(live[0], b"A" * (victim - live[0] + k.hdr))
    report = check(k.program())
    hits = [f for f in report.findings if f.address == victim]
    assert hits and hits[0].culprit.address == first
    assert hits[0].culprit.reason.startswith("overflow from the allocated segment") and \
        hits[0].culprit.classification == "ascii"


# -- Go (Mazarin) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_go_heaps_are_healthy_found_at_payload_offset_0_and_named(version):
    k = go_kernel(version)
    live = busy(k)
    prog = k.program(elf=go_elf(k))
    report = check(prog, full=True)
    assert report.findings == [], [f.message for f in report.findings]
    assert any("vaddrMapped 0" in n for n in report.notes)           # the convention it assumed
    for ptr in live:
        m = find_segment(prog, ptr)
        assert (m.where, m.payload_offset, m.segment.address) == ("payload", 0, ptr - k.off)
    facts = info_report(prog)["facts"]
    assert facts["list_head"]["name"] == "main.heapSegmentListHead"
    assert facts["heap_size"] == {"value": k.heap_size, "source": "DWARF constant", "name": "main.KERNEL_HEAP_SIZE"}
    assert facts["payload_offset"]["value"] == k.off and facts["payload_offset"]["name"] == "main.payloadOffset"
    assert facts["segment_type"]["name"] == "main.heapSegment"
    assert facts["segment_type"]["fields"]["segment_size"] == "segmentSize"
    assert facts["page_convention"]["heap_pages"] == "no-heap-bit"
    assert facts["free_pages"]["shape"].startswith("head pointer only")
    if version == 2:
        assert walk_heap(prog).segments[0].extra == {"isReserved": 0}


def test_go_v2_payload_offset_inferred_from_the_back_pointer():
    k = go_kernel(2, payload_constant=False)
    live = busy(k)
    prog = k.program(elf=go_elf(k))
    assert prog.layouts.segment.payload_offset == 32 and not prog.layouts.segment.payload_known
    assert check(prog).findings == []
    assert prog.layouts.segment.payload_offset == 48                  # learnt by the walk
    fact = info_report(prog)["facts"]["payload_offset"]
    assert fact["value"] == 48 and fact["source"] == "inferred" and "payload - 8" in fact["detail"]
    prog = k.program(elf=go_elf(k))                                   # find alone learns it too
    assert find_segment(prog, live[2]).payload_offset == 0
    # v1 stores no back pointer: its payload follows the header.
    k1 = go_kernel(1, payload_constant=False)
    live1 = busy(k1)
    prog1 = k1.program(elf=go_elf(k1))
    assert find_segment(prog1, live1[0]).payload_offset == 0
    assert info_report(prog1)["facts"]["payload_offset"]["source"] == "sizeof"


# -- page conventions ------------------------------------------------------------------------------

def test_mapped_only_pages_are_healthy_and_said_and_the_setting_chooses():
    k = SyntheticKernel(4, "<", vaddr_mapped_only=True)
    busy(k)
    session = ProgSession(k)
    text = run(session, "check --full")
    assert "OK" in text.text and "assumed the kernel sets it only on the pages it maps" in text.text
    run(session, "pages")                                             # no error either
    session.apply_setting("page-convention", "identity")
    res = run(session, "check --full --json")
    report = json.loads(res.text)
    assert report["verdict"] == "corrupt" and {f["code"] for f in report["findings"]} == {"PAGE-FLAGS"}
    session.apply_setting("page-convention", "auto")
    k2 = SyntheticKernel(4, "<")
    busy(k2)
    s2 = ProgSession(k2)
    assert "page convention" not in run(s2, "check --full").text      # the contract: no note
    s2.apply_setting("page-convention", "mapped-only")
    report = json.loads(run(s2, "check --full --json").text)
    assert {f["code"] for f in report["findings"]} == {"PAGE-FLAGS"} and "expected 0x00000000" in \
        report["findings"][0]["message"]
    with pytest.raises(CommandError):
        s2.apply_setting("page-convention", "sideways")


def test_heap_pages_without_a_heap_bit():
    k = go_kernel(1)
    busy(k)
    elf = go_elf(k)
    prog = k.program(elf=elf)
    from gdbext.core.pages import page_summary
    counts = page_summary(prog).counts
    assert counts["heap"] == k.heap_size // 4096 and counts["kernel"] == k.heap_start // 4096
    prog = k.program(elf=elf, overrides=Overrides(page_convention="heap-bit"))
    codes = {f.code for f in check(prog).findings}
    assert codes == {"PAGE-FLAGS"}
    # A kernel whose flags are a plain integer and nothing names the bits: either, said.
    page = StructLayout("page_t", 16, (Field("vaddr_mapped", 0, 4), Field("flags", 4, 4),
                                       Field("nextpage", 8, 4, is_pointer=True), Field("prevpage", 12, 4, is_pointer=True)),
                        "<", "dwarf")
    plain = replace(default_layouts(4, "<"), page=PageLayout(page))
    assert plain.page.heap_bit is None
    k3 = SyntheticKernel(4, "<", layouts=plain)
    for i in range(k3.heap_start // 4096, k3.heap_end // 4096):
        k3.set_page(i, flags=3)
    report = check(k3.program())
    assert report.findings == [] and any("no heap-page bit" in n for n in report.notes)


# -- heap size inferred ----------------------------------------------------------------------------

def test_heap_size_inferred_from_the_page_array_then_the_list():
    hidden = {"kernel_heap_size": "x_size", "kernel_heap_start": "x_start"}
    k = SyntheticKernel(4, "<", heap_size=128 * 1024, symbol_names=hidden)
    busy(k)
    elf = k.elf_info()
    elf.constants.clear()
    prog = k.program(elf=elf)
    assert prog.heap_size == 128 * 1024 and prog.bounds.sources["heap_size"] == "inferred from the page array"
    assert check(prog).findings == [] and any("inferred from the page array" in n for n in prog.notes)
    for i in range(k.heap_start // 4096, k.heap_end // 4096):
        k.set_page(i, flags=0)                                         # no heap pages: the list's extent
    prog = k.program(elf=elf)
    assert prog.heap_size == 128 * 1024 and prog.bounds.sources["heap_size"] == "inferred from the segment list"
    assert info_report(prog)["facts"]["heap_size"]["source"] == "inferred"


# -- item 5: a well-formed header with the wrong size -----------------------------------------------

@P4_8
def test_wrong_merge_size_blames_the_allocator_not_an_overflow(p):
    k = SyntheticKernel(p, "<")
    a, b, c = k.kmalloc(40), k.kmalloc(40), k.kmalloc(40)
    k.kfree(b)
    seg_b = b - k.hdr
    # A merge that added the wrong neighbour's size: b's header says it also holds c's segment,
    # links untouched.
    k.set_seg(seg_b, segment_size=k.seg_field(seg_b, "segment_size") + k.seg_field(c - k.hdr, "segment_size"))
    report = check(k.program())
    hit = next(f for f in report.findings if f.address == seg_b)
    assert hit.code == "HEAP-OVERLAP"
    assert hit.culprit.classification == "header" and hit.culprit.address == seg_b
    assert "split or merge" in hit.culprit.reason and "overflow" not in hit.culprit.reason
    # The same size written by an overflow that also wrote non-header bytes: an overwrite.
    k2 = SyntheticKernel(p, "<")
    a2, b2, c2 = k2.kmalloc(40), k2.kmalloc(40), k2.kmalloc(40)
    k2.write(b2 - k2.hdr, b"overflow!" * 8)
    hit2 = next(f for f in check(k2.program()).findings if f.address == b2 - k2.hdr)
    assert hit2.culprit.reason.startswith("overflow from the allocated segment before it")
    assert hit2.culprit.classification == "ascii"


# -- item 6: before the heap is set up -------------------------------------------------------------

def test_before_heap_init_every_command_says_not_initialised():
    k = SyntheticKernel(4, "<")
    for name in ("heap_segment_list_head", "num_pages", "kernel_heap_start", "all_pages_array"):
        k.set_global(name, 0)
    with pytest.raises(ProgramError, match="not initialised yet") as exc:
        k.program().bounds
    assert "heap_segment_list_head = NULL" in str(exc.value) and "num_pages = 0" in str(exc.value)
    session = ProgSession(k)
    for line in ("check", "walk", "stats", "find 0x1000", "map", "pages"):
        res = run(session, line)
        assert res.status == 2 and "not initialised yet" in res.text and "no symbol" not in res.text, line
    info = run(session, "info")
    assert "not initialised yet" in info.text
    # Without the symbols it is still "cannot locate".
    elf = k.elf_info()
    elf.symbols.clear()
    with pytest.raises(ProgramError, match="cannot locate"):
        k.program(elf=elf).bounds


def test_info_text_says_where_each_fact_came_from():
    k = go_kernel(2)
    busy(k)
    text = render_text(info_report(k.program(elf=go_elf(k))), color=False)
    assert "where each fact came from" in text
    assert "DWARF constant main.KERNEL_HEAP_SIZE" in text and "symbol main.heapSegmentListHead" in text
    assert "DWARF constant main.payloadOffset" in text and "DWARF type main.heapSegment" in text


def test_cli_page_convention_option_is_checked_in_one_line(capsys):
    from gdbext.frontends.cli import main
    status = main(["check", "--page-convention", "sideways", "--raw", "/dev/null", "--base", "0",
                   "--elf", "/nonexistent.elf"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "unknown page convention 'sideways'" in err
    assert "internal error" not in err
