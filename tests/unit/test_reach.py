"""Reachability from one moment (gdbext/core/reach.py): the word scan, the roots (writable
sections, live stacks, registers), the conservative mark behind ``kheap leaks --scan``, ``kheap
refs`` and ``--dangling``, on synthetic kernels of both pointer sizes and byte orders."""

import json
import random
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from gdbext.core import reach, reports
from gdbext.core.program import Program
from gdbext.core.symbols import SHF_ALLOC, SHF_WRITE, Section
from gdbext.frontends import commands
from gdbext.frontends.session import Session

from heapbuilder import SyntheticKernel

LAYOUTS = [(4, "<"), (8, "<"), (4, ">"), (8, ">")]


# -- the word scan -------------------------------------------------------------------------------
def plain_scan(data, base, P, order, lo, hi):
    slots, values = [], []
    first = base + (-base % P)
    for addr in range(first, base + len(data) - P + 1, P):
        v = int.from_bytes(data[addr - base:addr - base + P], order)
        if lo <= v < hi:
            slots.append(addr)
            values.append(v)
    return slots, values


@settings(max_examples=200, deadline=None)
@given(P=st.sampled_from([4, 8]), order=st.sampled_from(["little", "big"]),
       base=st.integers(0, 1 << 20), lo=st.integers(0, 1 << 28), span=st.integers(1, 1 << 26),
       seed=st.integers(0, 1 << 30), n=st.integers(0, 300))
def test_scan_words_finds_exactly_the_words_in_range(P, order, base, lo, span, seed, n):
    rnd = random.Random(seed)
    hi = lo + span
    words = []
    for _ in range(n):
        pick = rnd.random()
        if pick < 0.3:
            v = rnd.randrange(lo, hi)                       # inside
        elif pick < 0.4:
            v = rnd.choice([lo, hi - 1, hi, max(lo - 1, 0)])  # the edges
        elif pick < 0.6:
            v = rnd.randrange(0, 256)                        # small integers
        else:
            v = rnd.getrandbits(8 * P)
        words.append(v.to_bytes(P, order))
    lead = bytes(rnd.randrange(0, P))                        # a buffer not starting aligned
    data = lead + b"".join(words) + bytes(rnd.randrange(0, P))
    assert reach.scan_words(data, base, P, order, lo, hi) == plain_scan(data, base, P, order, lo, hi)


def test_scan_words_on_a_memoryview_and_an_empty_range():
    data = bytearray((0x1000).to_bytes(4, "little") * 4)
    assert reach.scan_words(memoryview(data), 0, 4, "little", 0x1000, 0x1001) == ([0, 4, 8, 12], [0x1000] * 4)
    assert reach.scan_words(data, 0, 4, "little", 5, 5) == ([], [])
    assert reach.scan_words(b"", 0, 4, "little", 0, 10) == ([], [])


# -- a kernel with roots -------------------------------------------------------------------------
class Kernel:
    """A synthetic kernel plus what a scan needs: a writable .bss holding ``roots`` (8
    pointers) and two stacks back to back (``boot_stack_top``, ``irq_stack_top``)."""

    def __init__(self, P=4, endian="<", heap_size=64 * 1024):
        self.k = k = SyntheticKernel(P, endian, heap_size=heap_size)
        self.P = P
        ib = k.image_base
        self.roots = ib + 0x2800
        self.boot_top = ib + 0x3800
        self.irq_top = ib + 0x3c00
        k.symbols.update(roots=self.roots, boot_stack_top=self.boot_top, irq_stack_top=self.irq_top)
        k.sizes.update(roots=8 * P)
        self.boot_low = self.roots + 8 * P                 # where the object below the stack ends

    def elf(self):
        elf = self.k.elf_info()
        ib = self.k.image_base
        elf.sections.append(Section(".bss", ib + 0x2000, 0x2000, None, SHF_WRITE | SHF_ALLOC))
        return elf

    def program(self, holes=()):
        return Program(self.elf(), self.k.reader(holes))

    def set_root(self, i, value):
        self.k.write_int(self.roots + i * self.P, self.P, value)

    def put(self, address, value):
        self.k.write_int(address, self.P, value)


@pytest.mark.parametrize("P, endian", LAYOUTS)
def test_stack_regions_come_from_the_linker_symbols(P, endian):
    kern = Kernel(P, endian)
    regions, notes = reach.stack_regions(kern.elf())
    assert [(r.name, r.low, r.top) for r in regions] == [
        ("boot_stack", kern.boot_low, kern.boot_top), ("irq_stack", kern.boot_top, kern.irq_top)]
    assert notes == []
    # An explicit bottom symbol wins over the gap below the top.
    kern.k.symbols["boot_stack_bottom"] = kern.boot_top - 0x400
    regions, _ = reach.stack_regions(kern.elf())
    assert (regions[0].low, regions[0].top) == (kern.boot_top - 0x400, kern.boot_top)


def test_the_stacks_setting():
    kern = Kernel()
    elf = kern.elf()
    got = reach.parse_stack_spec(elf, "boot_stack_top:0x400, 0x1000..0x2000,irq_stack_top-0x10:16")
    assert [(r.low, r.top, r.source) for r in got] == [
        (kern.boot_top - 0x400, kern.boot_top, "setting"), (0x1000, 0x2000, "setting"),
        (kern.irq_top - 0x20, kern.irq_top - 0x10, "setting")]
    assert reach.parse_stack_spec(elf, "none") == []
    for bad, words in (("nosuch_top:16", "no symbol"), ("0x2000..0x1000", "empty"), ("boot_stack_top", "TOP:SIZE"),
                       ("boot_stack_top:lots", "not a size")):
        with pytest.raises(reach.StackSpecError, match=words):
            reach.parse_stack_spec(elf, bad)


def core(sp, **registers):
    return reach.CoreState(1, {"sp": sp, **registers})


@pytest.mark.parametrize("P, endian", LAYOUTS)
def test_the_scan_marks_from_sections_the_live_stack_and_registers(P, endian):
    kern = Kernel(P, endian)
    k = kern.k
    a, b, c, d, e, f, g, h = (k.kmalloc(n) for n in (40, 100, 24, 64, 16, 30, 50, 20))
    kern.set_root(0, a)                                    # .bss -> a
    kern.put(a + P, b + 8)                                 # a -> b, an interior pointer
    sp = kern.boot_top - 0x100
    kern.put(sp + 0x20, c)                                 # the live stack -> c
    kern.put(sp - 0x40, d)                                 # a dead frame below sp -> d: lost
    kern.put(e, f)                                         # e -> f, both lost (f indirectly)
    kern.set_root(1, g - 8)                                # g's header only: lost
    prog = kern.program()
    roots = reach.gather_roots(prog, [core(sp, r5=h + 3)])  # a register -> h
    scan = reach.leak_scan(prog, roots)
    ix = scan.index
    lost = {ix.payloads[ix.used[i]][0]: scan.indirect[i] for i in scan.lost}
    assert lost == {d: 0, e: 0, f: 1, g: 0}
    stacks = {s["name"]: s for s in roots.stacks}
    assert stacks["boot_stack"]["state"] == "live" and stacks["boot_stack"]["live_from"] == sp
    assert stacks["irq_stack"]["state"] == "dead"
    # The report groups them, and lists every block in JSON.
    report = reports.leak_scan_report(prog, scan, callers={f: "make_f"})
    assert report["count"] == 4 and report["indirect"] == 1
    assert sorted(blk["payload"] for grp in report["groups"] for blk in grp["blocks"]) == sorted(lost)
    assert any(grp["callers"] == {"make_f": 1} for grp in report["groups"])
    text = reports.render_text(report)
    assert "4 allocated segments" in text and "allocated by" in text and " make_f " in text
    assert "16 dead bytes" not in text and "live from sp" in text


def test_without_registers_each_stack_is_scanned_whole():
    kern = Kernel()
    k = kern.k
    a = k.kmalloc(32)
    kern.put(kern.boot_top - 0x300, a)                   # anywhere in the stack
    prog = kern.program()
    roots = reach.gather_roots(prog, [])
    assert {s["state"] for s in roots.stacks} == {"whole"}
    assert any("scanned whole" in n for n in roots.notes)
    assert reach.leak_scan(prog, roots).lost == []


def test_text_shows_the_biggest_groups_and_counts_the_rest():
    kern = Kernel()
    k = kern.k
    for i in range(30):
        k.write(k.kmalloc(40 + 16 * (i % 3)), b"block %02d\0" % i)
    prog = kern.program()
    scan = reach.leak_scan(prog, reach.gather_roots(prog, [core(kern.boot_top)]))
    report = reports.leak_scan_report(prog, scan, groups_shown=5)
    assert len(report["groups"]) == 30 and report["count"] == 30
    text = reports.render_text(report)
    assert "25 more groups (25 segments" in text and text.count('"block ') == 5
    assert "... " not in reports.render_text(reports.leak_scan_report(prog, scan, groups_shown=0))


def test_group_by_size_and_first_bytes():
    kern = Kernel()
    k = kern.k
    for text in (b"reply one", b"reply one", b"other"):
        k.write(k.kmalloc(40), text + b"\0")
    prog = kern.program()
    report = reports.leak_scan_report(prog, reach.leak_scan(prog, reach.gather_roots(prog, [core(kern.boot_top)])))
    groups = [(grp["count"], grp["text"]) for grp in report["groups"]]
    assert groups[0] == (2, "reply one\\0" + "\\xa5" * 6) and groups[1][0] == 1   # then poison


@pytest.mark.parametrize("P, endian", LAYOUTS[:2])
def test_refs_name_every_holder(P, endian):
    kern = Kernel(P, endian)
    k = kern.k
    k.kmalloc(16)         # the first segment: the list head points at its header
    a, b = k.kmalloc(64), k.kmalloc(64)
    kern.set_root(3, a + 16)
    kern.put(b + 2 * P, a)
    sp = kern.boot_top - 0x80
    kern.put(sp + 0x10, a + 8)
    kern.put(sp - 0x10, a)                               # dead: not a holder
    prog = kern.program()
    frames = [{"pc": 1, "function": "inner", "sp": sp}, {"pc": 2, "function": "outer", "sp": sp + 0x40}]
    roots = reach.gather_roots(prog, [reach.CoreState(1, {"sp": sp, "r2": a + 1}, frames)])
    ix, index, refs = reach.find_refs(prog, roots, a + 5)
    assert ix.blocks[index].address == a - k.hdr
    kinds = sorted((h["kind"], h.get("symbol"), h.get("register"), h.get("segment"), h.get("offset"))
                   for h in refs.holders)
    assert kinds == sorted([("global", "roots+0x%x" % (3 * P), None, None, None),
                            ("segment", None, None, b - k.hdr, 2 * P),
                            ("stack", None, None, None, None),
                            ("register", None, "r2", None, None)])
    stack = next(h for h in refs.holders if h["kind"] == "stack")
    assert stack["frame"]["function"] == "inner" and stack["sp_offset"] == 0x10
    report = reports.refs_report(prog, ix, index, refs, a + 5, roots)
    text = reports.render_text(report)
    assert "4 places point into the used segment" in text
    assert "roots+0x" in text and "frame #0 inner" in text and "cpu 1 r2" in text


def test_dangling_lists_free_segments_still_pointed_into():
    kern = Kernel(heap_size=32 * 1024)     # (64 KiB: kernel_heap_size's value is a heap address)
    k = kern.k
    a, b, c = k.kmalloc(32), k.kmalloc(32), k.kmalloc(32)
    kern.set_root(0, a)
    kern.set_root(1, c)
    kern.set_root(2, b)
    k.kfree(b)                                           # freed, still held by roots[2]
    prog = kern.program()
    roots = reach.gather_roots(prog, [core(kern.boot_top)])
    ix, items = reach.dangling(prog, roots)
    assert [(ix.blocks[i].address, [h["symbol"] for h in holders]) for i, holders in items] == \
        [(b - k.hdr, ["roots+0x8"])]
    report = reports.dangling_report(prog, ix, items, roots)
    assert report["count"] == 1
    assert "1 free segment is still pointed into" in reports.render_text(report)
    _, index, refs = reach.find_refs(prog, roots, b)
    assert ix.blocks[index].state == "free" and len(refs.holders) == 1


def test_a_corrupt_heap_is_scanned_as_far_as_the_walk_reads():
    kern = Kernel()
    k = kern.k
    ptrs = [k.kmalloc(32) for _ in range(8)]
    for p in ptrs[:4]:
        kern.set_root(ptrs.index(p), p)
    segs = k.segments()
    k.set_seg(segs[5][0], next=segs[2][0])               # a cycle: the walk stops there
    prog = kern.program()
    roots = reach.gather_roots(prog, [core(kern.boot_top)])
    scan = reach.leak_scan(prog, roots)
    assert len(scan.index.blocks) == 6
    report = reports.leak_scan_report(prog, scan)
    assert report["walk"]["complete"] is False
    assert any("the walk stopped (cycle" in n for n in report["notes"])
    assert report["count"] == 2                          # segments 4 and 5: walked, not held
    # An unreadable tail of the heap: its segments are not scanned, and the report says so.
    kern2 = Kernel()
    ptrs = [kern2.k.kmalloc(32) for _ in range(8)]
    for i, p in enumerate(ptrs):
        kern2.set_root(i, p)
    hole = (ptrs[3], kern2.k.heap_end)
    prog = kern2.program(holes=(hole,))
    report = reports.leak_scan_report(prog, reach.leak_scan(prog, reach.gather_roots(prog, [core(kern2.boot_top)])))
    assert any("unreadable from" in n for n in report["notes"])


# -- the commands, through the command table ----------------------------------------------------
class FakeSession(Session):
    def __init__(self, prog, cores, face="cli", watch=None):
        super().__init__()
        self.prog, self.cores, self.face, self.watch = prog, cores, face, watch

    def program(self):
        return self.prog

    def core_states(self):
        return self.cores

    def recorded_watch(self):
        return self.watch


def test_the_commands_in_every_face():
    kern = Kernel(heap_size=32 * 1024)
    k = kern.k
    a, b = k.kmalloc(40), k.kmalloc(40)
    kern.set_root(0, a)
    k.write(b, b"lost reply\0")
    watch = SimpleNamespace(live={b: SimpleNamespace(caller_function="handle_request")})
    session = FakeSession(kern.program(), [core(kern.boot_top)], watch=watch)
    out = commands.execute_to_text(session, "leaks", ["--scan"])
    assert out.status == 1 and "\"lost reply\\0" in out.text and "handle_request" in out.text, out.text
    data = json.loads(commands.execute_to_text(session, "leaks", ["--scan", "--json"]).text)
    assert data["report"] == "leak-scan" and data["groups"][0]["blocks"][0]["payload"] == b
    out = commands.execute_to_text(session, "leaks", [])
    assert out.is_error and "--scan" in out.text and "\n" not in out.text
    out = commands.execute_to_text(session, "refs", [hex(a)])
    assert out.status == 0 and "roots" in out.text, out.text
    assert commands.execute_to_text(session, "refs", ["--dangling"]).status == 0
    for argv in ([], [hex(a), "--dangling"]):
        out = commands.execute_to_text(session, "refs", argv)
        assert out.is_error and "ADDR or --dangling" in out.text
    session.apply_setting("stacks", "boot_stack_top:0x100")
    data = json.loads(commands.execute_to_text(session, "leaks", ["--scan", "--json"]).text)
    assert [(s["name"], s["source"]) for s in data["roots"]["stacks"]] == [("boot_stack_top", "setting")]
    session.apply_setting("stacks", "nosuch:16")
    out = commands.execute_to_text(session, "leaks", ["--scan"])
    assert out.is_error and "no symbol 'nosuch'" in out.text


def test_missing_roots_are_named_and_partial_scans_anyway():
    kern = Kernel()
    a = kern.k.kmalloc(40)
    kern.set_root(0, a)
    ib = kern.k.image_base
    session = FakeSession(kern.program(holes=((ib + 0x2800, ib + 0x4000),)), [core(kern.boot_top)])
    out = commands.execute_to_text(session, "leaks", ["--scan"])
    assert out.is_error and out.text.count("\n") == 0
    assert "section .bss" in out.text and "stack boot_stack" not in out.text  # sp at its top: empty
    assert "'kheap dump' saves it" in out.text
    out = commands.execute_to_text(session, "leaks", ["--scan", "--partial"])
    assert out.status == 1 and "unreadable, not scanned" in out.text


def test_a_dump_keeps_the_writable_sections_and_the_stacks():
    from gdbext.frontends.cli_commands import dump_wanted

    kern = Kernel()
    prog = kern.program()
    roots = reach.plan_roots(prog, [core(kern.boot_top - 0x20)])
    what = {w: (s, e) for s, e, w in dump_wanted(prog, roots)}
    ib = kern.k.image_base
    assert what["writable section .bss"] == (ib + 0x2000, ib + 0x4000)
    assert what["stack boot_stack"] == (kern.boot_low, kern.boot_top)
    assert what["stack irq_stack"] == (kern.boot_top, kern.irq_top)


def test_scan_speed_is_linear_enough():
    """Not a benchmark (bench/bench_reach.py is): a 4 MiB heap of 20,000 blocks, each holding a
    pointer to the next, is marked in well under a second."""
    import time

    kern = Kernel(4, heap_size=4 * 1024 * 1024)
    k = kern.k
    ptrs = [k.kmalloc(160) for _ in range(20000)]
    for x, y in zip(ptrs, ptrs[1:]):
        k.write_int(x, 4, y)
    kern.set_root(0, ptrs[0])
    prog = kern.program()
    start = time.perf_counter()
    scan = reach.leak_scan(prog, reach.gather_roots(prog, [core(kern.boot_top)]))
    assert time.perf_counter() - start < 2.0
    assert scan.lost == [] and len(scan.index.used) == 20000


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 1 << 30), granule=st.sampled_from([1, 8, 16, 32]), n=st.integers(0, 60))
def test_the_granule_table_agrees_with_bisect(seed, granule, n):
    rnd = random.Random(seed)
    starts, ends, at = [], [], 0x10000
    for _ in range(n):
        at += rnd.randrange(0, 5) * granule
        size = rnd.randrange(0, 6) * granule
        starts.append(at)
        ends.append(at + size)
        at += size
    if not starts:
        starts, ends = [0x10000], [0x10000 + granule]
    lo, hi = starts[0], max(ends)
    values = [rnd.randrange(lo, hi) for _ in range(200)] if hi > lo else []
    assert reach._owner_map(starts, ends, lo, hi)(values) == reach._owners(values, starts, ends)
