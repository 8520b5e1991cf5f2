"""One test per finding code: inject exactly that corruption, get exactly that code back."""

import pytest

from gdbext.core.seglist import validate_heap, walk_heap
from gdbext.core.program import Overrides
from gdbext.core.check import CODES, check

from heapbuilder import SyntheticKernel, busy_kernel

LAYOUTS = [(4, "<"), (4, ">"), (8, "<"), (8, ">")]
IDS = ["arm32-le", "arm32-be", "a64-le", "a64-be"]


@pytest.fixture(params=LAYOUTS, ids=IDS)
def kern(request):
    k, live = busy_kernel(*request.param)
    return k


def segs(k):
    return k.segments()


def codes(report):
    return {f.code for f in report.findings}


def run(k, full=False, **kw):
    return check(k.program(**kw), full=full)


def test_healthy_heaps_have_no_findings(kern):
    for full in (False, True):
        r = run(kern, full=full)
        assert r.findings == [] and r.verdict == "ok", [f.message for f in r.findings]
    fresh = SyntheticKernel(kern.p, kern.endian)
    assert run(fresh, full=True).findings == []


def test_heap_head_outside_the_heap(kern):
    kern.set_global("heap_segment_list_head", 0x10)
    r = run(kern)
    assert codes(r) == {"HEAP-HEAD"} and r.findings[0].address == 0x10


def test_heap_head_null(kern):
    kern.set_global("heap_segment_list_head", 0)
    assert codes(run(kern)) == {"HEAP-HEAD"}


def test_heap_head_unreadable_walks_from_the_heap_start(kern):
    """A list head that cannot be read is a missing fact, not a finding (issue 14 item 5): the
    first segment is at the heap start, so the walk starts there and a note says why."""
    globals_page = kern.symbols["heap_segment_list_head"] & ~0xFFF
    r = run(kern, overrides=Overrides(heap_start=kern.heap_start, heap_size=kern.heap_size),
            holes=((globals_page, globals_page + 0x1000),))
    assert "HEAP-HEAD" not in codes(r) and len(r.walk) == len(segs(kern))
    assert any("unreadable" in n and "the walk starts at the heap start" in n for n in r.notes), r.notes


def test_heap_bounds_next_outside_the_heap(kern):
    a = segs(kern)[2][0]
    kern.set_seg(a, next=kern.heap_end + 0x1000)
    r = run(kern)
    assert codes(r) == {"HEAP-BOUNDS"}
    f = r.findings[0]
    assert f.address == kern.heap_end + 0x1000 and f.values["from"] == a


def _lay_out(k, sizes):
    """Rewrite the heap as consecutive segments of (size, allocated); the last takes the rest."""
    hs = k.heap_start
    addrs, addr = [], hs
    for size, _ in sizes:
        addrs.append(addr)
        addr += size
    last_size = k.heap_end - addr
    entries = list(sizes) + [(last_size, 0)]
    addrs.append(addr)
    used = 0
    for i, ((size, alloc), a) in enumerate(zip(entries, addrs)):
        nxt = addrs[i + 1] if i + 1 < len(addrs) else 0
        prv = addrs[i - 1] if i else 0
        if not alloc:
            k._poison_range(a + k.hdr, a + size)
        k.header(a, nxt, prv, alloc, size)
        used += size if alloc else 0
    k.stats.update(allocations=sum(1 for _, al in entries if al), frees=0, current_usage=used,
                   bytes_allocated=used, bytes_freed=0, peak_usage=used)
    k._write_stats()
    return addrs


def test_heap_align_misaligned_segment(kern):
    h = kern.hdr
    addrs = _lay_out(kern, [(h + 24, 1), (h + 40, 0), (64, 1)])
    r = run(kern)
    assert codes(r) == {"HEAP-ALIGN"}
    assert addrs[1] in {f.address for f in r.findings}


def test_heap_size_zero(kern):
    a = segs(kern)[3][0]
    kern.set_seg(a, segment_size=0)
    r = run(kern)
    assert codes(r) == {"HEAP-SIZE"} and r.findings[0].address == a


def test_heap_size_past_the_end(kern):
    a, s, _ = segs(kern)[-1]
    kern.set_seg(a, segment_size=s + 64)
    assert codes(run(kern)) == {"HEAP-SIZE"}


def test_heap_gap(kern):
    a, s, alloc = segs(kern)[0]
    assert alloc == 1
    kern.set_seg(a, segment_size=s - 16)
    r = run(kern)
    assert codes(r) == {"HEAP-GAP"} and r.findings[0].values["gap"] == 16


def test_heap_overlap(kern):
    a, s, _ = segs(kern)[2]
    kern.set_seg(a, segment_size=s + 16)
    r = run(kern)
    assert codes(r) == {"HEAP-OVERLAP"} and r.findings[0].values["overlap"] == 16


def test_heap_backlink(kern):
    a = segs(kern)[4][0]
    kern.set_seg(a, prev=kern.heap_start + 0x40)
    r = run(kern)
    assert codes(r) == {"HEAP-BACKLINK"} and r.findings[0].address == a
    assert r.findings[0].culprit is not None


def test_heap_backlink_head_prev_not_null(kern):
    kern.set_seg(kern.heap_start, prev=kern.heap_start + 0x100)
    assert codes(run(kern)) == {"HEAP-BACKLINK"}


@pytest.mark.parametrize("target", [0, 1])
def test_heap_cycle(kern, target):
    s = segs(kern)
    kern.set_seg(s[-1][0] if target == 0 else s[4][0], next=s[target][0])
    r = run(kern)
    assert codes(r) == {"HEAP-CYCLE"}
    assert r.walk.stop_reason == "cycle"


def test_heap_flag(kern):
    a = segs(kern)[1][0]
    kern.set_seg(a, is_allocated=7)
    r = run(kern)
    assert codes(r) == {"HEAP-FLAG"} and r.findings[0].values["is_allocated"] == 7
    assert r.walk.segments[1].state == "bad"


def test_heap_coverage(kern):
    a, s, alloc = segs(kern)[-1]
    assert alloc == 0
    kern.set_seg(a, segment_size=s - 32)
    r = run(kern)
    assert codes(r) == {"HEAP-COVERAGE"} and r.findings[0].values["uncovered"] == 32


def test_heap_unmerged_is_a_warning(kern):
    a, s, _ = segs(kern)[-1]
    mid = a + (s // 2) // 16 * 16
    after = kern.seg_field(a, "next")
    kern.header(mid, after, a, 0, a + s - mid)
    kern.set_seg(a, next=mid, segment_size=mid - a)
    r = run(kern)
    assert codes(r) == {"HEAP-UNMERGED"}
    assert r.findings[0].severity == "warning" and r.verdict == "warnings"


def test_heap_poison_use_after_free(kern):
    a = next(a for a, s, al in segs(kern) if al == 0 and s > 64)
    kern.write(a + kern.hdr + 8, b"hello")
    r = run(kern)
    assert codes(r) == {"HEAP-POISON"}
    f = r.findings[0]
    assert f.address == a + kern.hdr + 8 and f.values["changed_bytes"] == 5
    assert f.culprit.address == a and f.culprit.classification == "ascii" and f.culprit.detail == "hello"


def test_heap_poison_off_when_heap_poison_is_minus_one():
    k, _ = busy_kernel(4, "<", poison=-1)
    a = next(a for a, s, al in segs(k) if al == 0)
    k.write(a + k.hdr, b"junk")
    r = run(k)
    assert r.findings == [] and any("poison check off" in n for n in r.notes)


def test_heap_poison_read_from_target_memory_when_not_in_the_elf(kern):
    a = next(a for a, s, al in segs(kern) if al == 0 and s > 64)
    kern.write(a + kern.hdr, b"\0\0\0\0")
    r = check(kern.program(elf=kern.elf_info(with_poison_section=False)))
    assert codes(r) == {"HEAP-POISON"} and r.findings[0].culprit.classification == "zeros"


def test_heap_stats(kern):
    kern.stats["current_usage"] += 16
    kern._write_stats()
    r = run(kern)
    assert codes(r) == {"HEAP-STATS"}
    kern.stats["current_usage"] -= 16
    kern.stats["frees"] += 1
    kern._write_stats()
    assert codes(run(kern)) == {"HEAP-STATS"}


def test_heap_unreadable(kern):
    a = segs(kern)[3][0]
    r = run(kern, holes=((a, a + kern.hdr),))
    assert codes(r) == {"HEAP-UNREADABLE"}
    assert r.findings[0].address == a and r.walk.stop_reason == "fault"


def test_page_flags(kern):
    heap_page = kern.heap_start // 4096 + 3
    kern.set_page(heap_page, flags=1)
    r = run(kern)
    assert codes(r) == {"PAGE-FLAGS"} and r.findings[0].values["index"] == heap_page
    kern.set_page(heap_page, flags=5)
    kern.set_page(1, flags=0)
    assert codes(run(kern)) == {"PAGE-FLAGS"}


def test_page_flags_beyond_the_heap_only_in_full_mode(kern):
    kern.set_page(kern.free_page_indexes[5], flags=4)
    assert codes(run(kern)) == set()
    assert codes(run(kern, full=True)) == {"PAGE-FLAGS"}


def test_page_freelist_heap_page_with_links(kern):
    kern.set_page(kern.heap_start // 4096, nextpage=kern.page_addr(kern.free_page_indexes[0]))
    assert codes(run(kern)) == {"PAGE-FREELIST"}


def test_page_freelist_head_is_a_heap_page(kern):
    head_tail_size = (kern.page_addr(kern.heap_start // 4096 + 1), kern.page_addr(kern.free_page_indexes[-1]),
                      len(kern.free_page_indexes))
    kern.set_free_list(*head_tail_size)
    assert codes(run(kern)) == {"PAGE-FREELIST"}


def test_page_freelist_full_mode_count_cycle_and_non_free_page(kern):
    free = kern.free_page_indexes
    kern.set_free_list(kern.page_addr(free[0]), kern.page_addr(free[-1]), len(free) - 1)
    assert codes(run(kern)) == set()                 # plausible count: only the full walk sees it
    assert codes(run(kern, full=True)) == {"PAGE-FREELIST"}
    kern.set_free_list(kern.page_addr(free[0]), kern.page_addr(free[-1]), len(free))
    kern.set_page(free[-1], nextpage=kern.page_addr(free[2]))
    r = run(kern, full=True)
    assert codes(r) == {"PAGE-FREELIST"} and "cycle" in r.findings[0].message
    kern.set_page(free[-1], nextpage=0)
    kern.set_page(free[7], flags=1)                  # handed out by alloc_page but still listed
    r = run(kern, full=True)
    assert codes(r) == {"PAGE-FREELIST"} and any("not free" in f.message for f in r.findings)


def test_overflow_culprit_ascii_text(kern):
    s = segs(kern)
    i = next(i for i in range(len(s) - 1) if s[i][2] == 1)
    a, size, _ = s[i]
    text = b"OVERFLOWING-TEXT-FROM-A-STRCPY-THAT-NEVER-STOPS!!"[:size - kern.hdr + kern.hdr]
    kern.write(a + kern.hdr, b"x" * (size - kern.hdr) + b"\x1b[31mRED-ALERT-OVERFLOW-TEXT-HERE-0123456789"[:kern.hdr])
    r = run(kern)
    victims = [f for f in r.findings if f.address == s[i + 1][0]]
    assert victims and {"HEAP-FLAG", "HEAP-SIZE"} & {f.code for f in victims}
    for f in victims:
        assert f.culprit.address == a and f.culprit.reason.startswith("overflow")
        assert f.culprit.classification == "ascii"
        assert f.culprit.detail.startswith("\\x1b[31mRED") and "\x1b" not in f.culprit.detail


def test_culprit_pointer_into_the_kernel_image(kern):
    s = segs(kern)
    kern.set_seg(s[2][0], next=kern.symbols["uart_puts"] + 0x10)
    r = run(kern)
    assert codes(r) == {"HEAP-BOUNDS"}
    c = r.findings[0].culprit
    assert c.classification == "pointer" and c.detail == "uart_puts+0x10"
    assert c.address == s[1][0]


def test_culprit_zeroed_header(kern):
    s = segs(kern)
    kern.write(s[3][0], bytes(kern.hdr))
    r = run(kern)
    assert {f.culprit.classification for f in r.findings if f.culprit} == {"zeros"}
    assert "HEAP-SIZE" in codes(r)


def test_every_code_is_documented_and_tested():
    """Every registered finding code has a row in the README's table and a unit test naming it."""
    from pathlib import Path

    import gdbext.core.watch  # noqa: F401 - registers watch's codes too

    here = Path(__file__).resolve().parent
    readme = (here.parent.parent / "README.md").read_text()
    tests = "".join(p.read_text() for p in here.glob("test_*.py"))
    assert len(CODES) >= 18
    for code in CODES:
        assert f"`{code}`" in readme, code
        assert f'"{code}"' in tests, code


# -- subtle corruptions: each one alone must give a finding --------------------------------------

def _screen_heap():
    k = SyntheticKernel(4, "<", heap_size=16 * 1024)
    a, b, c = k.kmalloc(100), k.kmalloc(200), k.kmalloc(50)
    k.kfree(b)
    return k, [s[0] for s in k.segments()]          # used, free, used, the free rest


def _last_size(k, segs, size):
    k.set_seg(segs[-1], segment_size=size)


def _unaligned_head(k, segs):
    k.header(k.heap_start + 8, 0, 0, 0, k.heap_size - 16)
    k.set_global("heap_segment_list_head", k.heap_start + 8)


SCREEN_CASES = {
    "last size unaligned": lambda k, s: _last_size(k, s, k.seg_field(s[-1], "segment_size") - 8),
    "last size past the heap": lambda k, s: _last_size(k, s, k.seg_field(s[-1], "segment_size") + 16),
    "last size below a header": lambda k, s: _last_size(k, s, 0),
    "two free in a row": lambda k, s: k.set_seg(s[2], is_allocated=0),
    "flag 2": lambda k, s: k.set_seg(s[0], is_allocated=2),
    "back link": lambda k, s: k.set_seg(s[2], prev=0),
    "first prev not NULL": lambda k, s: k.set_seg(s[0], prev=s[1]),
    "gap, links consistent": lambda k, s: k.set_seg(s[0], next=s[2]) or k.set_seg(s[2], prev=s[0]),
    "last next into unreadable memory": lambda k, s: (k.set_seg(s[-1], next=s[-1] + 0x100),
                                                      {"holes": ((s[-1] + 0x100, s[-1] + 0x200),)})[1],
    "unaligned address, aligned sizes": _unaligned_head,
}


@pytest.mark.parametrize("case", sorted(SCREEN_CASES))
def test_each_subtle_corruption_gives_a_structural_finding(case):
    """One small edit each (a size 8 short, two free in a row, a stale prev ...): the per-header
    rule must see every one of them."""
    k, segs = _screen_heap()
    options = SCREEN_CASES[case](k, segs) or {}
    prog = k.program(**options)
    assert validate_heap(prog, walk_heap(prog)), case


# -- check() over a reader that hands the heap over in pieces ------------------------------------

def _fed_and_plain(k, cuts):
    """(findings of a check fed in pieces ending at ``cuts`` (heap offsets), plain findings)."""
    from gdbext.core.memory import BlockCache
    from gdbext.core.check import _Follower
    from gdbext.core.seglist.rules import HeapJudge
    from test_properties import _TrickleReader

    plain = check(k.program(block_size=4096)).findings
    prog = k.program(block_size=4096)
    run_start = min(prog.bounds.start, prog.bounds.page_array)     # the page array and heap may be one run
    cuts = [prog.bounds.start - run_start + c for c in cuts]
    fed = []
    for step in (1, HeapJudge.STEP):            # each walked header judged at once, or a few thousand
        prog = k.program(block_size=4096)
        prog.memory = BlockCache(_TrickleReader(prog.memory.reader, cuts), 4096)
        saved, HeapJudge.STEP, _Follower.BATCH = (HeapJudge.STEP, _Follower.BATCH), step, 1
        try:
            fed.append(check(prog).findings)
        finally:
            HeapJudge.STEP, _Follower.BATCH = saved
    assert fed[0] == fed[1]
    return fed[0], plain


@pytest.mark.parametrize("index", range(1, 8))
def test_a_corrupt_back_link_right_after_a_piece_ends_is_found(index):
    # The piece ends one byte into header ``index``.
    k, _ = busy_kernel()
    segs = [s[0] for s in k.segments()]
    k.set_seg(segs[index], prev=segs[index] + 16)
    fed, plain = _fed_and_plain(k, [segs[index] + 1 - k.heap_start])
    assert any(f.code == "HEAP-BACKLINK" for f in plain)
    assert fed == plain


@pytest.mark.parametrize("index", range(1, 8))
def test_two_free_segments_across_a_piece_end_are_unmerged(index):
    k, _ = busy_kernel()
    segs = [s for s in k.segments()]
    frees = [i for i, s in enumerate(segs) if s[2] == 0]
    i = frees[index % len(frees)]
    if i + 1 < len(segs):
        k.set_seg(segs[i + 1][0], is_allocated=0)
    else:
        k.set_seg(segs[i - 1][0], is_allocated=0)
        i -= 1
    fed, plain = _fed_and_plain(k, [segs[i + 1][0] + 1 - k.heap_start])
    assert any(f.code == "HEAP-UNMERGED" for f in plain)
    assert fed == plain


@pytest.mark.parametrize("cut", [0x20, 0x800, 0x1800, 0x3000])
def test_poison_lost_past_a_piece_end_in_the_last_free_payload_is_found(cut):
    k, _ = busy_kernel(heap_size=16 * 1024)
    tail = k.segments()[-1]
    assert tail[2] == 0
    k.write(tail[0] + tail[1] - 8, b"UAF!")
    fed, plain = _fed_and_plain(k, [tail[0] - k.heap_start + cut])
    assert any(f.code == "HEAP-POISON" for f in plain)
    assert fed == plain


@pytest.mark.parametrize("victim", range(0, 4))
def test_poison_lost_in_a_cleared_free_payload_is_found(victim):
    k, _ = busy_kernel(heap_size=16 * 1024)
    frees = [s for s in k.segments() if s[2] == 0 and s[1] > 64]
    seg = frees[victim % len(frees)]
    k.write(seg[0] + 40, b"\x00")
    fed, plain = _fed_and_plain(k, [0x3000, 0x3800])
    assert any(f.code == "HEAP-POISON" for f in plain)
    assert fed == plain


def known_payload_layouts(pointer_size=4, endian="<"):
    """The default layouts with the payload offset given by the ELF (a constant), so a check
    need not learn it from memory before it can look at payloads."""
    from dataclasses import replace
    from gdbext.core.layouts import default_layouts
    from gdbext.core.names import Fact
    ls = default_layouts(pointer_size, endian)
    return replace(ls, segment=ls.segment.with_payload(Fact(ls.segment.header_size, "DWARF constant",
                                                            "HEAP_PAYLOAD_OFFSET")))


@pytest.mark.parametrize("known", [False, True])
@pytest.mark.parametrize("short", [1, 8, 32])
def test_a_free_payload_cut_short_by_a_piece_end_is_not_judged_until_it_has_arrived(short, known):
    """While the heap arrives, a free payload whose last bytes are still on the wire is left
    for later: held to the poison rule early, a clean heap would show lost poison."""
    k, _ = busy_kernel(heap_size=16 * 1024, layouts=known_payload_layouts() if known else None)
    frees = [s for s in k.segments() if s[2] == 0 and s[1] > 64]
    for seg in frees:
        fed, plain = _fed_and_plain(k, [seg[0] + seg[1] - short - k.heap_start])
        assert plain == [] and fed == plain, hex(seg[0])
    last = frees[-2]
    k.write(last[0] + last[1] - 1, b"!")          # only the payload's last byte is lost
    fed, plain = _fed_and_plain(k, [last[0] + last[1] - 1 - k.heap_start])
    assert [f.code for f in plain] == ["HEAP-POISON"] and fed == plain


@pytest.mark.parametrize("known", [False, True])
@pytest.mark.parametrize("past", [16, 40, 63])
def test_an_oversized_free_segment_is_held_to_poison_only_once_all_it_covers_has_arrived(past, known):
    """A free segment whose size runs 64 bytes into the next one: the next header arrives
    (and the walk goes on) before the end of what the size covers."""
    k, _ = busy_kernel(heap_size=16 * 1024, layouts=known_payload_layouts() if known else None)
    segs = k.segments()
    i = next(i for i, s in enumerate(segs) if s[2] == 0 and i + 1 < len(segs))
    a, size = segs[i][0], segs[i][1]
    k.set_seg(a, segment_size=size + 64)
    fed, plain = _fed_and_plain(k, [a + size + past - k.heap_start])
    assert {"HEAP-OVERLAP", "HEAP-POISON"} <= {f.code for f in plain}
    assert fed == plain


@pytest.mark.parametrize("back", [0, 2, 4])
def test_a_cycle_found_while_the_heap_arrives_is_judged_as_a_plain_check_judges_it(back):
    """The walk stops at a cycle before the heap has all arrived: the header whose next closes
    it is judged knowing that (the cycle explains its next), as a plain check judges it."""
    k, _ = busy_kernel(heap_size=16 * 1024)
    segs = [s[0] for s in k.segments()]
    k.set_seg(segs[5], next=segs[back])
    fed, plain = _fed_and_plain(k, [segs[6] + 16 - k.heap_start, segs[-1] - k.heap_start])
    assert "HEAP-CYCLE" in {f.code for f in plain}
    assert fed == plain


@pytest.mark.parametrize("known", [False, True])
@pytest.mark.parametrize("where", [None, 0, 1, "edge", "edge2", 0x7FF, 0x800, 0x1234, -1])
def test_a_free_payload_arriving_in_many_pieces_is_judged_as_a_whole(where, known):
    """The free tail arrives in 512-byte pieces and is looked at piece by piece while it
    arrives; lost poison anywhere in it (first byte, a piece's edges, last byte) gives the
    finding a plain check gives, with the same offsets and counts."""
    k, _ = busy_kernel(heap_size=16 * 1024, layouts=known_payload_layouts() if known else None)
    tail = k.segments()[-1]
    assert tail[2] == 0 and tail[1] > 0x2000
    payload = tail[0] + k.hdr
    if isinstance(where, str):                    # the first byte after the payload's first (second) piece
        where = (512 if where == "edge" else 1024) - k.hdr
    if where is not None:
        k.write(payload + (where if where >= 0 else tail[1] - k.hdr - 1), b"\x00")
    first = tail[0] - k.heap_start
    fed, plain = _fed_and_plain(k, list(range(first, k.heap_size, 512)))
    assert [f.code for f in plain] == ([] if where is None else ["HEAP-POISON"])
    assert fed == plain
