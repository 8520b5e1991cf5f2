"""Property tests: random and mutated heaps never raise undocumented errors, walks stay bounded,
and heaps built by the reference allocator are always healthy."""

from hypothesis import HealthCheck, given, settings, strategies as st

from gdbext.core import reports as R
from gdbext.core.seglist import find_segment, walk_heap
from gdbext.core.pages import page_summary
from gdbext.core.program import Overrides, ProgramError
from gdbext.core.stats import heap_stats
from gdbext.core.check import check

from heapbuilder import SyntheticKernel

LAYOUT = st.sampled_from([(4, "<"), (4, ">"), (8, "<"), (8, ">")])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _exercise(prog):
    """Everything a face may call; only ProgramError may escape (heap not locatable)."""
    try:
        walk = walk_heap(prog)
    except ProgramError:
        return None
    assert len(walk) <= walk.bound
    assert walk.stop_reason in ("end", "fault", "bound", "cycle", "outside-heap", "bad-head")
    report = check(prog, full=True)
    for f in report.findings:
        assert f.severity in ("error", "warning") and "\n" not in f.message
    stats = heap_stats(prog, walk)
    R.to_json_text(R.check_report(prog, report))
    R.render_text(R.map_report(prog, walk, report.findings), color=True)
    R.render_text(R.stats_report(prog, stats))
    R.render_text(R.pages_report(prog, page_summary(prog)))
    for address in walk.addresses[:5]:
        find_segment(prog, address + 3)
    return report


def _random_ops(k, ops):
    live = []
    for is_alloc, n in ops:
        if is_alloc or not live:
            p = k.kmalloc(n)
            if p is not None:
                live.append(p)
        else:
            k.kfree(live.pop(n % len(live)))
    return live


OPS = st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=60)


@SETTINGS
@given(LAYOUT, OPS)
def test_reference_allocator_heaps_are_healthy(layout, ops):
    k = SyntheticKernel(*layout, heap_size=32 * 1024)
    live = _random_ops(k, ops)
    prog = k.program()
    report = check(prog, full=True)
    assert report.findings == [], [f.message for f in report.findings]
    assert report.walk.complete
    assert {s.payload for s in report.walk.segments if s.state == "used"} == set(live)


@SETTINGS
@given(LAYOUT, OPS, st.lists(st.tuples(st.integers(0, 1 << 30), st.binary(min_size=1, max_size=16)), min_size=1,
                            max_size=8), st.booleans())
def test_mutated_heaps_never_raise(layout, ops, writes, target_globals):
    k = SyntheticKernel(*layout, heap_size=16 * 1024)
    _random_ops(k, ops)
    # Overwrite bytes in the heap (or in the globals and page array)
    lo, hi = (k.symbols["heap_segment_list_head"], k.heap_start) if target_globals else (k.heap_start, k.heap_end)
    for where, data in writes:
        addr = lo + where % max(hi - lo - len(data), 1)
        k.write(addr, data)
    _exercise(k.program())


@SETTINGS
@given(LAYOUT, st.binary(min_size=64, max_size=4096), st.integers(0, 4095))
def test_random_heap_images_never_raise(layout, blob, head_offset):
    k = SyntheticKernel(*layout, heap_size=4096)
    k.write(k.heap_start, (blob * (4096 // len(blob) + 1))[:4096])
    k.set_global("heap_segment_list_head", k.heap_start + head_offset)
    report = _exercise(k.program())
    assert report is not None


@SETTINGS
@given(LAYOUT, st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1))
def test_garbage_globals_and_overrides_never_raise(layout, num_pages, heap_size, head):
    k = SyntheticKernel(*layout, heap_size=8192)
    k.set_global("num_pages", num_pages)
    k.set_global("kernel_heap_size", heap_size)
    k.set_global("heap_segment_list_head", head)
    _exercise(k.program())
    _exercise(k.program(overrides=Overrides(heap_size=heap_size % (1 << 16), list_head=head)))


@SETTINGS
@given(LAYOUT, OPS, st.integers(0, 64 * 1024), st.integers(1, 8192))
def test_holes_in_memory_never_raise(layout, ops, hole_at, hole_len):
    k = SyntheticKernel(*layout, heap_size=32 * 1024)
    _random_ops(k, ops)
    start = k.image_base + hole_at
    _exercise(k.program(holes=((start, start + hole_len),), block_size=4096))


FIELD = st.sampled_from(["next", "prev", "is_allocated", "segment_size"])
PAGE_FIELD = st.sampled_from(["vaddr", "flags", "nextpage", "prevpage"])


class _TrickleReader:
    """A reader with ``read_many`` that hands over each range in pieces of any size, calling
    ``progress`` between them as the remote client does while it waits (``cuts``: where the
    pieces end)."""

    def __init__(self, reader, cuts, reverse=False):
        self.inner, self.cuts, self.calls, self.reverse = reader, cuts, 0, reverse

    def read(self, address, size):
        return self.inner.read(address, size)

    def read_many(self, requests, progress=None):
        from gdbext.core.memory import MemoryFault

        out = []
        # ``reverse``: stream the requests last to first (another order a backend may choose).
        for address, size in (reversed(requests) if self.reverse else requests):
            try:
                data = self.inner.read(address, size)
            except MemoryFault as fault:
                out.append(fault)
                continue
            chunks, have = [], 0
            for cut in sorted({c % (size + 1) for c in self.cuts}) + [size]:
                if cut > have:
                    chunks.append(data[have:cut])
                    have = cut
                if progress is not None:
                    self.calls += 1
                    progress(address, chunks)
            out.append(data)
        return out[::-1] if self.reverse else out


@SETTINGS
@given(LAYOUT, OPS, st.lists(st.tuples(st.integers(0, 10 ** 6), FIELD, st.integers(-64, 64)), max_size=2),
       st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)), max_size=2),
       st.lists(st.integers(0, 1 << 16), min_size=1, max_size=12), st.booleans(), st.sampled_from([1, 3, 8]),
       st.booleans(), st.sampled_from([None, 4096]),
       st.lists(st.tuples(st.integers(0, 10 ** 6), PAGE_FIELD, st.integers(0, 7)), max_size=2),
       st.sampled_from([1, 2, 5, 1024]), st.booleans())
def test_a_check_fed_while_the_heap_arrives_finds_what_a_plain_check_finds(layout, ops, seg_edits, writes,
                                                                          cuts, poison_off, batch, reverse,
                                                                          num_pages, page_edits, step, known):
    """A check over a reader that hands the heap over in pieces: whatever the corruption and
    wherever the pieces end, however many pieces a round waits for (``batch``) and however
    many walked headers the rule judges at once while they arrive (``step``), its findings and walk are those of a check on a plain reader."""
    from gdbext.core.memory import BlockCache
    from gdbext.core.seglist.rules import HeapJudge

    # num_pages 4096: the page entries checked are a range of their own, before the heap.
    # ``known``: the ELF gives the payload offset, so free payloads are looked at as they arrive
    # (otherwise only once the offset has been learnt from the first segments).
    from test_validate import known_payload_layouts
    k = SyntheticKernel(*layout, heap_size=16 * 1024, poison=-1 if poison_off else 0xA5, num_pages=num_pages,
                        layouts=known_payload_layouts(*layout) if known else None)
    _random_ops(k, ops)
    segs = k.segments()
    for pick, name, delta in seg_edits:
        addr = segs[pick % len(segs)][0]
        value = abs(delta) % 3 if name == "is_allocated" else k.seg_field(addr, name) + delta
        k.set_seg(addr, **{name: value})
    for pick, name, value in page_edits:
        k.set_page(pick % (k.heap_end // 4096), **{name: value * (4096 if name == "vaddr" else 1)})
    for where, data in writes:                     # stray writes: free payloads lose their poison
        k.write(k.heap_start + where % (k.heap_size - len(data)), data)
    plain = check(k.program(block_size=4096))
    prog = k.program(block_size=4096)
    trickle = _TrickleReader(prog.memory.reader, cuts, reverse)
    prog.memory = BlockCache(trickle, 4096)
    from gdbext.core.check import _Follower
    saved, HeapJudge.STEP, _Follower.BATCH = (HeapJudge.STEP, _Follower.BATCH), step, batch
    try:
        fed = check(prog)
    finally:
        HeapJudge.STEP, _Follower.BATCH = saved
    assert fed.findings == plain.findings
    assert fed.walk._figures == plain.walk._figures
    assert list(fed.walk.headers()) == list(plain.walk.headers())
    assert (fed.walk.stop_reason, fed.walk.stop_address) == (plain.walk.stop_reason, plain.walk.stop_address)
