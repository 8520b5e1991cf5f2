"""kheap watch's core: matching returns to calls, counting like heap_stats, the checks at each
operation, history and leaks, on synthetic operations over synthetic heaps."""

import random

import pytest

from gdbext.core.check import check
from gdbext.core.reports import render_text, watch_stop_report
from gdbext.core.seglist import validate_segments
from gdbext.core.watch import Watch, arm_condition_passed, return_sp_adjust
from heapbuilder import SyntheticKernel, busy_kernel

SP = 0x7F000
T = 1


class Driver:
    """Plays the adapter: calls Watch.enter/leave around the synthetic allocator, with SPs as
    the real ABI gives them (entry SP = caller's SP; a nested call's entry SP is lower)."""

    def __init__(self, kern, **kw):
        self.k = kern
        self.w = Watch(word_bits=8 * kern.p, **kw)
        self.stops = []

    def prog(self):
        return self.k.program(block_size=256)

    def _record(self, stop):
        if stop is not None:
            self.stops.append(stop)
        return stop

    def kmalloc(self, n, caller="app+0x10", sp=SP, thread=T):
        self._record(self.w.enter(self.prog(), "kmalloc", thread, sp, 0x8100, [n], caller=caller))
        p = self.k.kmalloc(n)
        self._record(self.w.leave(self.prog(), thread, sp, p or 0))
        return p

    def kfree(self, p, caller="app+0x20", sp=SP, thread=T, really=True):
        stop = self._record(self.w.enter(self.prog(), "kfree", thread, sp, 0x8200, [p], caller=caller))
        if stop is not None:
            return stop
        if p and really:
            self.k.kfree(p)
        return self._record(self.w.leave(self.prog(), thread, sp, 0))

    def krealloc_move(self, p, n, caller="app+0x30", sp=SP):
        """krealloc that moves: its own allocation, then a nested kfree (bl kfree, lower SP)."""
        self._record(self.w.enter(self.prog(), "krealloc", T, sp, 0x8300, [p, n], caller=caller))
        new = self.k.kmalloc(n)
        inner = sp - 24
        self._record(self.w.enter(self.prog(), "kfree", T, inner, 0x8960, [p], caller="krealloc+0xa8"))
        self.k.kfree(p)
        self._record(self.w.leave(self.prog(), T, inner, 0))
        self._record(self.w.leave(self.prog(), T, sp, new))
        return new

    def krealloc_null(self, n, caller="app+0x40", sp=SP):
        """krealloc(NULL, n): restores its frame and tail-calls kmalloc (same entry SP)."""
        self._record(self.w.enter(self.prog(), "krealloc", T, sp, 0x8400, [0, n], caller=caller))
        self._record(self.w.enter(self.prog(), "kmalloc", T, sp, 0x8400, [n], caller=caller))
        p = self.k.kmalloc(n)
        self._record(self.w.leave(self.prog(), T, sp, p))   # kmalloc's return ends both
        return p


# -- return instructions ---------------------------------------------------------------------------

@pytest.mark.parametrize("asm,arch,want", [
    ("pop\t{r4, r5, r11, pc}", "arm", (16, "al")),
    ("popeq\t{r4, r5, r11, pc}", "arm", (16, "eq")),
    ("popne\t{r4, r5, r6, r7, r11, pc}", "arm", (24, "ne")),
    ("bx\tlr", "arm", (0, "al")),
    ("bxgt\tlr", "arm", (0, "gt")),
    ("ldmfd\tsp!, {r4-r6, pc}", "arm", (16, "al")),
    ("ldmia\tsp!, {r4, lr, pc}", "arm", (12, "al")),
    ("ldr\tpc, [sp], #4", "arm", (4, "al")),
    ("pop\t{r4, r5, r11, lr}", "arm", None),
    ("b\t0x8648 <kmalloc>", "arm", None),
    ("bl\t0x8438 <take_segment>", "arm", None),
    ("ldm\tr0, {r1, pc}", "arm", None),
    ("ret", "aarch64", (0, "al")),
    ("ret\tx30", "aarch64", (0, "al")),
    ("b\t0x80650 <kmalloc>", "aarch64", None),
    ("ldp\tx29, x30, [sp], #16", "aarch64", None),
])
def test_return_instructions(asm, arch, want):
    assert return_sp_adjust(asm, arch) == want


def test_arm_conditions():
    z, n, c, v = 1 << 30, 1 << 31, 1 << 29, 1 << 28
    assert arm_condition_passed("eq", z) and not arm_condition_passed("eq", 0)
    assert arm_condition_passed("ne", 0) and not arm_condition_passed("ne", z)
    assert arm_condition_passed("hi", c) and not arm_condition_passed("hi", c | z)
    assert arm_condition_passed("ge", n | v) and arm_condition_passed("lt", n)
    assert arm_condition_passed("gt", 0) and not arm_condition_passed("le", 0)
    assert arm_condition_passed("al", 0)


# -- matching and counting ------------------------------------------------------------------------

@pytest.mark.parametrize("p", [4, 8])
def test_counts_equal_heap_stats_after_a_random_workload(p):
    k = SyntheticKernel(p, heap_size=256 * 1024)
    d = Driver(k)
    rng = random.Random(7)
    live = []
    for _ in range(400):
        r = rng.random()
        if not live or r < 0.55:
            live.append(d.kmalloc(rng.randint(1, 200)))
        elif r < 0.65:
            i = rng.randrange(len(live))
            live[i] = d.krealloc_move(live[i], rng.randint(201, 300))
        elif r < 0.7:
            live.append(d.krealloc_null(rng.randint(1, 64)))
        else:
            d.kfree(live.pop(rng.randrange(len(live))))
    d.kfree(0)                                   # kfree(NULL) counts nothing
    assert not d.stops, [stop_text(s) for s in d.stops]
    c = d.w.counters
    for name in ("allocations", "frees", "failed", "bytes_requested", "bytes_allocated", "bytes_freed",
                 "current_usage", "peak_usage"):
        assert getattr(c, name) == k.stats[name], name
    assert c.unmatched_returns == 0 and c.abandoned_calls == 0
    assert not any(d.w.pending.values())
    assert len(d.w.live) == len(live) and set(d.w.live) == set(live)
    assert check(k.program()).verdict == "ok"


def test_nested_and_tail_calls_match_by_stack_pointer():
    k = SyntheticKernel(4)
    d = Driver(k)
    a = d.kmalloc(40, caller="setup+0x8")
    b = d.krealloc_move(a, 400, caller="grow+0x4")
    ops = list(d.w.history)
    kinds = [(o.kind, o.parent, o.effect) for o in ops]
    assert kinds == [("kmalloc", None, "alloc"), ("krealloc", None, "move"), ("kfree", 1, "free")]
    assert ops[2].origin == "grow+0x4"           # the nested free is attributed to krealloc's caller
    assert ops[1].result == b and d.w.live[b] is ops[1]
    c = d.krealloc_null(16, caller="lazy+0xc")
    tail = list(d.w.history)[-2:]
    assert [(o.kind, o.result, o.effect) for o in tail] == [("krealloc", c, "delegated"), ("kmalloc", c, "alloc")]
    assert tail[1].parent == tail[0].index
    assert d.w.counters.operations == 3 and d.w.counters.calls == 5
    assert d.w.counters.allocations == 3 == k.stats["allocations"]


def test_stale_calls_and_unmatched_returns_are_counted_not_fatal():
    k = SyntheticKernel(4)
    w = Watch()
    prog = k.program()
    w.enter(prog, "kmalloc", T, SP - 64, 0x8100, [16])   # never returns (the kernel jumped away)
    w.enter(prog, "kmalloc", T, SP, 0x8100, [16])        # shallower: the deeper one is stale
    assert w.counters.abandoned_calls == 1
    p = k.kmalloc(16)
    assert w.leave(k.program(), T, SP, p) is None
    assert w.leave(k.program(), T, SP + 64, 0) is None
    assert w.counters.unmatched_returns == 1 and w.counters.allocations == 1


def test_threads_have_their_own_pending_calls():
    k = SyntheticKernel(4)
    w = Watch()
    w.enter(k.program(), "kmalloc", 1, SP, 0x8100, [16])
    w.enter(k.program(), "kmalloc", 2, SP + 0x1000, 0x8100, [32])   # another core, its own stack
    p1 = k.kmalloc(16)
    p2 = k.kmalloc(32)
    w.leave(k.program(), 1, SP, p1)
    assert w.pending[2] and not w.pending[1]
    w.leave(k.program(), 2, SP + 0x1000, p2)
    assert w.counters.allocations == 2 and w.counters.abandoned_calls == 0
    assert {o.result for o in w.history} == {p1, p2}


def test_history_is_bounded_but_counts_are_not():
    k = SyntheticKernel(4)
    d = Driver(k, history=10)
    for _ in range(30):
        d.kfree(d.kmalloc(24))
    assert len(d.w.history) == 10 and d.w.counters.operations == 60
    assert d.w.counters.allocations == 30 == k.stats["allocations"]
    d.w.resize(5)
    assert len(d.w.history) == 5


# -- checks at an operation -----------------------------------------------------------------------

@pytest.mark.parametrize("p", [4, 8])
def test_double_free_stops_at_the_second_free_naming_the_first(p):
    k = SyntheticKernel(p)
    d = Driver(k)
    left, req, right = d.kmalloc(40), d.kmalloc(40, caller="alloc_request+0x8"), d.kmalloc(40)
    d.kfree(req, caller="complete_request+0x10")
    stop = d.kfree(req, caller="error_path+0x24")
    assert stop is not None and stop.reason == "bad-pointer"
    assert [f.code for f in stop.findings] == ["HEAP-DOUBLE-FREE"]
    assert stop.first_free.caller == "complete_request+0x10"
    assert stop.allocated_by.caller == "alloc_request+0x8"
    assert "complete_request" in stop.findings[0].message
    assert [o.kind for o in stop.history] == ["kmalloc", "kfree", "kfree"]
    assert "first freed by" in stop_text(stop) and "complete_request" in stop_text(stop)
    assert d.w.last_stop is stop and stop.to_json()["findings"][0]["code"] == "HEAP-DOUBLE-FREE"
    assert k.stats["frees"] == 1                # stopped before the kernel's kfree ran


def test_double_free_of_a_block_merged_since_is_still_a_double_free():
    k = SyntheticKernel(4)
    d = Driver(k)
    a, b = d.kmalloc(40), d.kmalloc(40)
    d.kfree(b)
    d.kfree(a)                                  # a absorbs b: b's header is poison now
    stop = d.kfree(b, caller="again+0x4")
    assert stop.findings[0].code == "HEAP-DOUBLE-FREE"


def test_interior_and_wild_pointers():
    k = SyntheticKernel(4)
    d = Driver(k)
    a = d.kmalloc(100, caller="owner+0x4")
    stop = d.kfree(a + 20)
    assert stop.findings[0].code == "HEAP-INTERIOR-FREE"
    assert stop.findings[0].values["offset"] == 20 and stop.allocated_by.caller == "owner+0x4"
    stop = d.kfree(k.symbols["heap_stats"])
    assert stop.findings[0].code == "HEAP-WILD-FREE"
    stop = d.kfree(k.heap_end - 64)             # inside the heap, inside the free tail's payload
    assert stop.findings[0].code in ("HEAP-INTERIOR-FREE", "HEAP-DOUBLE-FREE")
    assert len(d.stops) == 3


def test_krealloc_of_a_freed_block_is_checked_too():
    k = SyntheticKernel(4)
    d = Driver(k)
    a = d.kmalloc(40)
    d.kmalloc(40)
    d.kfree(a)
    stop = d.w.enter(k.program(), "krealloc", T, SP, 0x8300, [a, 100], caller="late+0x4")
    assert stop.findings[0].code == "HEAP-DOUBLE-FREE"


def test_nested_calls_are_not_rechecked():
    """krealloc's nested kfree is the same pointer: checked once, at krealloc's entry."""
    k = SyntheticKernel(4)
    d = Driver(k)
    a = d.kmalloc(40)
    d.krealloc_move(a, 200)
    assert not d.stops


def test_corruption_touched_by_an_operation_stops_after_it():
    k = SyntheticKernel(4)
    d = Driver(k)
    a, b, c = d.kmalloc(24), d.kmalloc(64), d.kmalloc(64)
    k.write(a, b"sensor 3 reported an out-of-range reading; retrying.")   # overflow into b's header
    stop = d.kfree(c)
    assert stop is None or stop.reason == "corrupt-after"
    if stop is None:                            # c's neighbourhood may not reach b: free a
        stop = d.kfree(a)
    assert stop is not None and stop.reason in ("corrupt-after", "bad-pointer")
    codes = {f.code for f in stop.findings}
    assert codes & {"HEAP-FLAG", "HEAP-SIZE", "HEAP-BACKLINK", "HEAP-BOUNDS", "HEAP-GAP", "HEAP-OVERLAP"}


def test_allocation_next_to_a_clobbered_header_stops_after_the_allocation():
    k = SyntheticKernel(4)
    d = Driver(k)
    a, b = d.kmalloc(24), d.kmalloc(64)
    seg_b = b - k.hdr
    k.set_seg(seg_b, prev=0x1234)               # a stale back link (kernel bug or wild write)
    d.kmalloc(32)                               # not touching b: no stop
    d.kfree(a)                                  # a's neighbourhood includes b
    assert d.stops and d.stops[-1].findings[0].code == "HEAP-BACKLINK"
    assert d.stops[-1].operation.kind == "kfree"


def test_full_check_every_n_operations_finds_distant_corruption():
    k = SyntheticKernel(4)
    d = Driver(k, full_every=5)
    blocks = [d.kmalloc(32) for _ in range(6)]
    d.kfree(blocks[1])
    k.write(blocks[1] + 8, b"\x00\x01\x02\x03")   # use after free, far from later operations
    for _ in range(3):
        d.kfree(d.kmalloc(900))
    assert d.stops and d.stops[0].reason == "full-check"
    assert d.stops[0].findings[0].code == "HEAP-POISON"


def test_checkpoint_runs_a_full_check():
    k, _ = busy_kernel(4)
    w = Watch()
    assert w.checkpoint(k.program()) is None
    seg = k.segments()[1][0]
    k.set_seg(seg, is_allocated=7)
    stop = w.checkpoint(k.program())
    assert stop.reason == "checkpoint" and "HEAP-FLAG" in {f.code for f in stop.findings}


# -- leaks and history ----------------------------------------------------------------------------

def test_leaks_grouped_by_caller_since_the_mark():
    k = SyntheticKernel(4, heap_size=128 * 1024)
    d = Driver(k)
    early = d.kmalloc(64, caller="boot+0x4")
    d.w.set_mark()
    kept = [d.kmalloc(64, caller="open_session+0x8") for _ in range(4)]
    for i in range(12):
        d.kmalloc(40 + i % 24, caller="leak_handle_request+0x14")
    tmp = d.kmalloc(500, caller="scratch+0x4")
    d.kfree(tmp)
    groups = d.w.leaks()
    assert [g["caller"] for g in groups] == ["leak_handle_request", "open_session"]
    assert groups[0]["count"] == 12 and groups[1]["count"] == 4
    assert groups[0]["bytes"] > groups[1]["bytes"]
    assert early not in sum((g["blocks"] for g in groups), [])
    assert set(groups[1]["blocks"]) == set(kept)
    assert sum(g["count"] for g in d.w.leaks(since=0)) == 17


def test_history_of_an_address_includes_interior_addresses():
    k = SyntheticKernel(4)
    d = Driver(k)
    a = d.kmalloc(100)
    d.kmalloc(20)
    d.kfree(a)
    ops = d.w.history_of(k.hdr, a + 50)
    assert [o.kind for o in ops] == ["kmalloc", "kfree"]
    assert d.w.history_of(k.hdr, a - k.hdr)[0].result == a
    assert d.w.history_of(k.hdr, a, limit=1)[0].kind == "kfree"
    assert "kmalloc(100)" in ops[0].describe() and ops[1].to_json()["pointer"] == a


# -- validate_segments ----------------------------------------------------------------------------

@pytest.mark.parametrize("p", [4, 8])
def test_validate_segments_is_quiet_on_a_healthy_heap(p):
    k, _ = busy_kernel(p)
    prog = k.program(block_size=256)
    for addr, _, _ in k.segments():
        assert [f for f in validate_segments(prog, addr, 4) if f.severity == "error"] == []


def test_validate_segments_reads_only_a_few_blocks():
    k, _ = busy_kernel(4, heap_size=512 * 1024)
    prog = k.program(block_size=256)
    validate_segments(prog, k.segments()[2][0], 4)
    assert prog.memory.backend_reads <= 6


def test_validate_segments_finds_broken_headers_with_a_culprit():
    k, _ = busy_kernel(4)
    segs = k.segments()
    victim = segs[2][0]
    k.write(victim, b"overflowing ascii text!!")
    found = validate_segments(k.program(), segs[1][0], 4)
    codes = {f.code for f in found}
    assert codes & {"HEAP-FLAG", "HEAP-SIZE", "HEAP-BOUNDS", "HEAP-BACKLINK"}
    assert any(f.culprit and f.culprit.address == segs[1][0] and f.culprit.classification == "ascii"
               for f in found)


def test_validate_segments_link_and_bound_problems():
    k, _ = busy_kernel(4)
    segs = k.segments()
    a = segs[3][0]
    k.set_seg(a, prev=segs[0][0])
    assert "HEAP-BACKLINK" in {f.code for f in validate_segments(k.program(), a, 2)}
    k2, _ = busy_kernel(4)
    s2 = k2.segments()
    k2.set_seg(s2[1][0], next=k2.symbols["heap_stats"])
    assert "HEAP-BOUNDS" in {f.code for f in validate_segments(k2.program(), s2[1][0], 2)}
    k3, _ = busy_kernel(4)
    s3 = k3.segments()
    k3.set_seg(s3[-1][0], segment_size=s3[-1][1] - 16)
    assert "HEAP-COVERAGE" in {f.code for f in validate_segments(k3.program(), s3[-1][0], 2)}
    assert "HEAP-UNREADABLE" in {f.code for f in validate_segments(k3.program(), 0x10, 2)}


def stop_text(stop):
    """What the faces print at a watch stop."""
    return render_text(watch_stop_report(stop, 4))
