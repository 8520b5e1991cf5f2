"""stats, snapshot/diff, find_segment and the rendered reports (JSON and text)."""

import json

import pytest

from gdbext.core import reports as R
from gdbext.core.seglist import find_segment, for_each_segment, walk_heap
from gdbext.core.pages import page_summary
from gdbext.core.program import Overrides, ProgramError
from gdbext.core.snapshot import Snapshot, SnapshotError, diff_snapshots, take_snapshot
from gdbext.core.stats import heap_stats, size_bucket
from gdbext.core.check import check

from heapbuilder import SyntheticKernel, busy_kernel


@pytest.fixture(params=[(4, "<"), (8, ">")], ids=["arm32-le", "a64-be"])
def busy(request):
    return busy_kernel(*request.param)


def all_reports(k):
    p = k.program()
    w = walk_heap(p)
    c = check(p, full=True)
    snap = take_snapshot(p, w, tag="one")
    return [R.info_report(p), R.walk_report(p, w), R.check_report(p, c), R.stats_report(p, heap_stats(p, w)),
            R.find_report(p, w.addresses[1] + 40, find_segment(p, w.addresses[1] + 40)),
            R.find_report(p, 4, None), R.pages_report(p, page_summary(p)), R.map_report(p, w, c.findings),
            R.snapshot_report(snap), R.diff_report(diff_snapshots(snap, snap), p.pointer_size)]


def test_every_report_has_schema_version_and_renders(busy):
    k, _ = busy
    names = set()
    for rep in all_reports(k):
        assert rep["schema_version"] == 1
        names.add(rep["report"])
        text = R.to_json_text(rep)
        assert json.loads(text) == rep
        plain = R.render_text(rep, color=False)
        assert "\x1b" not in plain and plain.endswith("\n") and "no text form" not in plain
        assert R.render_text(rep, color=True)
    assert names == {"info", "walk", "check", "stats", "find", "pages", "map", "snapshot", "diff"}


def test_json_is_deterministic(busy):
    k, _ = busy
    a = [R.to_json_text(r) for r in all_reports(k)]
    b = [R.to_json_text(r) for r in all_reports(k)]
    assert a == b


def test_colour_uses_a_token_per_state(busy):
    k, _ = busy
    p = k.program()
    text = R.render_text(R.walk_report(p, walk_heap(p)), color=True)
    assert "\x1b[" in text and "used" in text


def test_target_bytes_never_reach_the_terminal_raw(busy):
    k, live = busy
    k.write(live[0] - k.hdr + k.seg_field(live[0] - k.hdr, "segment_size"), b"\x1b]0;pwned\x07\x1b[2J\r\n" * 4)
    p = k.program()
    c = check(p)
    assert c.verdict == "corrupt"
    for rep in (R.check_report(p, c), R.walk_report(p, c.walk), R.map_report(p, c.walk, c.findings)):
        for color in (False, True):
            text = R.render_text(rep, color=color)
            assert "\x07" not in text and "\r" not in text and "\x1b]" not in text and "\x1b[2J" not in text
        assert "\x1b" not in R.to_json_text(rep)


def test_walk_segments_and_for_each(busy):
    k, live = busy
    p = k.program()
    w = walk_heap(p)
    assert w.complete and w.stop_reason == "end"
    assert [(s.address, s.size, 1 if s.state == "used" else 0) for s in w.segments] == k.segments()
    assert list(for_each_segment(p)) == w.segments
    assert sum(s.size for s in w.segments) == k.heap_size
    assert {s.payload for s in w.segments if s.state == "used"} == set(live)


def test_find_segment_header_payload_interior_and_outside(busy):
    k, live = busy
    p = k.program()
    hdr = k.hdr
    m = find_segment(p, live[1])
    assert m.segment.address == live[1] - hdr and m.where == "payload" and m.payload_offset == 0
    assert m.method == "direct"
    m = find_segment(p, live[1] - hdr)
    assert m.where == "header" and m.offset == 0
    m = find_segment(p, live[1] + 5)
    assert m.segment.address == live[1] - hdr and m.payload_offset == 5 and m.method == "walk"
    assert find_segment(p, k.heap_start - 4) is None
    assert find_segment(p, k.heap_end) is None
    last = k.segments()[-1]
    assert find_segment(p, k.heap_end - 1).segment.address == last[0]


def test_stats_totals_fragmentation_and_histogram(busy):
    k, _ = busy
    p = k.program()
    st = heap_stats(p)
    segs = k.segments()
    free = [s for a, s, al in segs if al == 0]
    assert st.used_count == sum(1 for *_, al in segs if al) and st.free_bytes == sum(free)
    assert st.largest_free == max(free)
    assert st.fragmentation == pytest.approx(1 - max(free) / sum(free))
    assert sum(b.used + b.free for b in st.histogram) == len(segs)
    assert all(b.low <= b.high for b in st.histogram)
    assert all(c["agree"] for c in st.comparison) and len(st.comparison) == 2
    assert size_bucket(16) == 4 and size_bucket(31) == 4 and size_bucket(32) == 5


def test_stats_with_no_free_memory():
    k = SyntheticKernel(4, "<", heap_size=4096)
    assert k.kmalloc(4096 - k.hdr) is not None
    st = heap_stats(k.program())
    assert st.free_count == 0 and st.fragmentation == 0.0


def test_snapshot_roundtrip_and_leak_diff(busy):
    k, live = busy
    before = take_snapshot(k.program(), tag="leak-1")
    leaked = [k.kmalloc(40) for _ in range(3)]
    k.kfree(live[0])
    after = take_snapshot(k.program(), tag="leak-2")
    again = Snapshot.from_json(json.loads(R.to_json_text(R.snapshot_report(after))))
    assert again == after
    d = diff_snapshots(before, again)
    assert {a + k.hdr for a, _, _ in d.new} == set(leaked)
    assert [a + k.hdr for a, _, _ in d.freed] == [live[0]]
    assert d.live_count_growth == 2
    sizes = [k.seg_field(x - k.hdr, "segment_size") for x in leaked]
    assert d.new_by_size == {s: sizes.count(s) for s in sizes}
    assert d.live_bytes_growth == sum(sizes) - k.seg_field(live[0] - k.hdr, "segment_size")
    text = R.render_text(R.diff_report(d, k.p))
    assert "leak-1 -> leak-2" in text and "possible leaks" in text


def test_snapshot_resized():
    k = SyntheticKernel(4, "<")
    a = k.kmalloc(100)
    before = take_snapshot(k.program())
    k.set_seg(a - k.hdr, segment_size=k.seg_field(a - k.hdr, "segment_size") + 16)
    d = diff_snapshots(before, take_snapshot(k.program()))
    assert d.resized and d.resized[0][0] == a - k.hdr and not d.new and not d.freed


@pytest.mark.parametrize("bad", [{}, {"schema_version": 2}, {"schema_version": 1, "segments": [[1]]}, [1, 2]])
def test_snapshot_from_json_rejects_garbage(bad):
    with pytest.raises(SnapshotError):
        Snapshot.from_json(bad)


def test_map_cells_and_regions(busy):
    k, _ = busy
    p = k.program()
    rep = R.map_report(p, walk_heap(p), cells=256)
    assert len(rep["cells"]) * rep["cell_size"] >= k.heap_size
    assert set(rep["cells"]) <= set("#.+")
    assert rep["regions"][0]["start"] == k.heap_start and rep["regions"][-1]["end"] == k.heap_end
    assert sum(g["bytes"] for g in rep["regions"]) == k.heap_size


def test_program_bounds_sources_and_notes():
    k, _ = busy_kernel(4, "<")
    p = k.program()
    assert p.bounds.sources["heap_start"] == "page array" and p.notes == []
    k.set_global("kernel_heap_start", k.heap_start + 0x1000)
    p = k.program()
    assert p.heap_start == k.heap_start and any("kernel_heap_start" in n for n in p.notes)
    p = k.program(overrides=Overrides(heap_start=k.heap_start, heap_size=8192))
    assert p.heap_size == 8192 and p.bounds.sources["heap_size"] == "override"
    p = k.program(holes=((k.image_base, k.heap_start),))
    with pytest.raises(ProgramError):
        p.bounds
    elf = k.elf_info()
    elf.symbols.clear()
    elf.constants.clear()
    with pytest.raises(ProgramError):
        k.program(elf=elf).bounds
    assert k.program(elf=elf, overrides=Overrides(heap_start=k.heap_start, list_head=k.heap_start)).heap_size == 1 << 20


def test_walk_prefetch_costs_few_backend_reads():
    k = SyntheticKernel(4, "<", heap_size=1 << 20)
    ptrs = [k.kmalloc(8) for _ in range(4000)]
    assert all(ptrs)
    p = k.program(block_size=64 * 1024)
    r = check(p)
    assert r.findings == [] and len(r.walk) == 4001
    assert p.memory.backend_reads <= 6, p.memory.counters()
