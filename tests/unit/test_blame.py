"""``kheap blame`` without QEMU: what it watches, what a hit records, who a writer is, the
report, the run's sequence and cleanup (a scripted target), and the RSP client's gate.

The real thing (QEMU, gdb, lldb, the CLI) is tests/integration/test_blame.py.
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import gdbext.core.symbols as symbols
import gdbext.frontends.session as session_module
from gdbext.core import reports
from gdbext.core.blame import (BlameError, BlameRun, Recorder, Writers, compare_bytes, idle_instruction_before,
                               plan_blame, suggest_blame)
from gdbext.core.check import check
from gdbext.core.debuginfo import code_info, split_symbol
from gdbext.core.memory import MemoryFault
from gdbext.core.symbols import load_elf_info
from gdbext.frontends import cli, commands
from gdbext.frontends.blame_controller import BlameTarget, run_blame
from gdbext.frontends.session import CommandError, Session
from gdbext.targets import write_kheap_dump
from gdbext.targets.rsp import RemoteTarget, WriteForbidden, check_read_only, check_run_control

from fake_gdbstub import FakeGdbStub, StubConfig
from heapbuilder import busy_kernel

REPO = Path(__file__).resolve().parents[2]
REAL_ELF = {arch: REPO / "kernel" / "build" / arch / "kernel.elf" for arch in ("arm", "aarch64")}
LAYOUTS = [(4, "<"), (8, "<"), (4, ">")]


def needs_real(arch):
    if not REAL_ELF[arch].exists():
        pytest.skip(f"{REAL_ELF[arch]} not built (make -C kernel)")
    return load_elf_info(REAL_ELF[arch])


def field_range(k, segment, name):
    f = k.layouts.segment.fields[name]
    return segment + f.offset, f.size


# -- what to watch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS, ids=["arm32", "a64", "arm32-be"])
def test_each_header_finding_watches_the_field_it_names(layout):
    for field_name, change, code in (("is_allocated", {"is_allocated": 7}, "HEAP-FLAG"),
                                     ("prev", "prev", "HEAP-BACKLINK"),
                                     ("next", "next", "HEAP-BOUNDS")):
        k, _ = busy_kernel(*layout)
        segs = k.segments()
        victim = segs[3][0]
        if change == "prev":
            k.set_seg(victim, prev=segs[0][0])
        elif change == "next":
            k.set_seg(victim, next=0x10)
        else:
            k.set_seg(victim, **change)
        prog = k.program()
        plan = plan_blame(prog)
        assert plan.finding["code"] == code, plan
        assert (plan.address, plan.size) == field_range(k, victim, field_name)
        assert plan.origin == "finding" and field_name in plan.what


def test_every_family_code_names_bytes():
    from gdbext.core.findings import Finding

    k, _ = busy_kernel(4, "<")
    prog = k.program()
    a, b = k.segments()[1][0], k.segments()[2][0]
    head = k.symbols["heap_segment_list_head"]
    cases = [
        ("HEAP-BACKLINK", a, {"prev": b, "expected_prev": b}, field_range(k, b, "next")),
        ("HEAP-BACKLINK", a, {"prev": 0x10, "expected_prev": b}, field_range(k, a, "prev")),
        ("HEAP-GAP", a, {}, field_range(k, a, "next")),
        ("HEAP-OVERLAP", a, {}, field_range(k, a, "next")),
        ("HEAP-SIZE", a, {}, field_range(k, a, "segment_size")),
        ("HEAP-CYCLE", a, {"from": b}, field_range(k, b, "next")),
        ("HEAP-UNREADABLE", 0x10, {"from": b}, field_range(k, b, "next")),
        ("HEAP-HEAD", 0, {}, (head, 4)),
        ("HEAP-COVERAGE", a, {}, (a, k.hdr)),
        ("HEAP-ALIGN", a, {}, (a, k.hdr)),
        ("HEAP-UNMERGED", a, {}, (a, k.hdr)),
    ]
    for code, address, values, want in cases:
        got = prog.allocator.blame_range(prog, Finding(code, "error", address, "m", values))
        assert got[:2] == want, (code, values, got)
    assert prog.allocator.blame_range(prog, Finding("PAGE-FLAGS", "error", 0x1000, "m")) is None


def test_poison_watches_the_overwritten_bytes_of_the_free_payload():
    k, _ = busy_kernel(4, "<")
    free = [a for a, size, alloc in k.segments() if not alloc and size > 64][0]
    payload = free + k.hdr
    k.write(payload + 4, b"\x07\x00\x00\x00\x03\x00\x00\x00")
    plan = plan_blame(k.program())
    assert plan.finding["code"] == "HEAP-POISON"
    assert (plan.address, plan.size) == (payload + 4, 8)
    assert "payload bytes 4..11" in plan.what


def test_counters_watch_heap_stats_and_a_clean_heap_has_nothing_to_blame():
    k, _ = busy_kernel(4, "<")
    with pytest.raises(BlameError, match="checks clean"):
        plan_blame(k.program())
    k.write_int(k.symbols["heap_stats"], 4, 999)      # allocations
    plan = plan_blame(k.program())
    assert plan.finding["code"] == "HEAP-STATS"
    assert plan.address == k.symbols["heap_stats"] and plan.size == k.sizes["heap_stats"]


def test_an_address_watches_the_header_field_there_or_one_word():
    k, live = busy_kernel(8, "<")
    prog = k.program()
    seg = k.segments()[2][0]
    whole = plan_blame(prog, seg)
    assert (whole.address, whole.size) == (seg, k.hdr) and whole.origin == "address"
    size_field = plan_blame(prog, field_range(k, seg, "segment_size")[0] + 1)
    assert (size_field.address, size_field.size) == field_range(k, seg, "segment_size")
    word = plan_blame(prog, live[0] + 8)
    assert (word.address, word.size) == (live[0] + 8, 8)
    sized = plan_blame(prog, seg, size=3)
    assert (sized.address, sized.size) == (seg, 3) and "3 bytes" in sized.what


def test_check_suggests_the_blame_command_of_its_first_error():
    k, _ = busy_kernel(4, "<")
    prog = k.program()
    assert reports.check_report(prog, check(prog))["blame"] is None
    seg = k.segments()[3][0]
    k.set_seg(seg, is_allocated=9)
    prog = k.program()
    report = reports.check_report(prog, check(prog))
    address, size = field_range(k, seg, "is_allocated")
    assert report["blame"]["command"] == f"kheap blame 0x{address:08x} --size {size}"
    assert "kheap blame 0x" in reports.render_text(report)
    assert suggest_blame(prog, []) is None


# -- hits, writers, bytes --------------------------------------------------------------------------
def test_recorder_stops_at_max_hits_reports_progress_and_drops_stacks_it_will_not_need():
    clock = iter(x * 0.6 for x in range(100))
    lines = []
    plan = SimpleNamespace()
    rec = Recorder(plan, max_hits=3, progress=lines.append, keep_stack=lambda pc: pc == 0x20,
                   clock=lambda: next(clock))
    assert rec.record(0x10, {"sp": 1}, b"\x01", stack=b"s1")
    assert rec.record(0x20, {"sp": 1}, b"\x02", stack=b"s2")
    assert not rec.record(0x30, {"sp": 1}, b"\x03", stack=b"s3") and rec.full
    assert [h.number for h in rec.hits] == [1, 2, 3]
    assert rec.hits[0].stack == b"" and rec.hits[1].stack == b"s2" and rec.hits[2].stack == b"s3"
    assert lines and "writes so far" in lines[0]
    unlimited = Recorder(plan, max_hits=0)
    assert all(unlimited.record(i, {}, b"") for i in range(50))


def test_hit_stack_reads_fault_outside_the_copy():
    rec = Recorder(SimpleNamespace(), 10)
    rec.record(0, {}, b"", stack_base=0x1000, stack=bytes(range(16)))
    hit = rec.hits[0]
    assert hit.read_stack(0x1004, 4) == bytes([4, 5, 6, 7])
    with pytest.raises(MemoryFault):
        hit.read_stack(0x100e, 4)


def test_compare_bytes():
    assert compare_bytes(b"abcd", b"abcd") == {"equal": True, "differences": []}
    diff = compare_bytes(b"abcd", b"abXd")
    assert not diff["equal"] and diff["differences"] == [{"offset": 2, "before": 0x63, "after": 0x58}]


def test_split_symbol():
    assert split_symbol("strcpy+0x20") == ("strcpy", 0x20)
    assert split_symbol("kmalloc") == ("kmalloc", 0)
    assert split_symbol(None) == (None, 0)


@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_real_kernel_lines_units_inlines_and_idle(arch):
    elf = needs_real(arch)
    code = code_info(elf)
    kmalloc = elf.address_of("kmalloc")
    assert code.line_at(kmalloc).startswith("kheap.c:")
    assert code.unit_of(kmalloc) == code.unit_of(elf.address_of("kfree")) is not None
    assert code.unit_of(elf.address_of("strcpy")) != code.unit_of(kmalloc)
    counted = elf.symbol("tutorial_alloc_counted")
    inlined = {code.inlined_at(a) for a in range(counted.address, counted.address + counted.size, 4)}
    assert "tutorial_kmalloc" in inlined
    idle = elf.symbol("kernel_idle")
    halted = [a for a in range(idle.address + 4, idle.address + idle.size + 4, 4)
              if idle_instruction_before(elf, a) is not None]
    assert len(halted) == 1 and idle_instruction_before(elf, halted[0]) == halted[0] - 4
    assert idle_instruction_before(elf, kmalloc + 4) is None
    line = code.line_at(elf.address_of("scenario_overflow") + 8)
    file, number = line.split(":")
    assert code.address_of_line(file, int(number)) is not None


@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_unwinder_follows_the_saved_return_address(arch):
    """A store in memset called from kheap_init: the return address is where memset's own call
    frame information says (saved on the stack by its prologue, or still in the link register
    of a leaf); the unwind names kheap_init, then ends where the copy of the stack ends."""
    elf = needs_real(arch)
    code = code_info(elf)
    memset = elf.symbol("memset")
    pc = memset.address + memset.size - 8
    for a in range(memset.address, memset.address + memset.size, 4):
        row = code._row(a)
        if row and code._return_register(a) in row:
            pc = a                      # after the prologue saved the return address
            break
    row = code._row(pc)
    assert row is not None
    ra_reg = code._return_register(pc)
    size = elf.pointer_size
    sp, fp = 0x10000, 0x10040
    ret = elf.address_of("kheap_init") + 0x20
    stack = bytearray(0x100)
    lr = 0
    if ra_reg in row:
        base_value = {13: sp, 31: sp, 11: fp, 29: fp}[row["cfa"].reg]
        at = base_value + row["cfa"].offset + row[ra_reg].arg - sp
        stack[at:at + size] = ret.to_bytes(size, elf.byteorder)
    else:
        lr = ret

    def read(address, n):
        if sp <= address and address + n <= sp + len(stack):
            return bytes(stack[address - sp:address - sp + n])
        raise MemoryFault(address, n, "outside")

    frames, why = code.unwind(arch, pc, {"sp": sp, "fp": fp, "lr": lr}, read)
    assert split_symbol(frames[0].function)[0] == "memset"
    assert split_symbol(frames[1].function)[0] == "kheap_init" and frames[1].pc == ret
    assert why, why


def test_writers_of_a_synthetic_kernel_name_functions_and_the_allocator():
    k, _ = busy_kernel(4, "<")
    prog = k.program()
    writers = Writers(prog)
    rec = Recorder(SimpleNamespace(), 10)
    rec.record(k.symbols["kmalloc"] + 8, {"sp": 0}, b"\x01\x00\x00\x00")
    rec.record(k.symbols["uart_puts"] + 4, {"sp": 0}, b"\x02\x00\x00\x00")
    first, second = (writers.describe(h) for h in rec.hits)
    assert first["function"] == "kmalloc+0x8" and first["allocator"] is True
    assert second["function"] == "uart_puts+0x4" and second["allocator"] is False
    assert second["value"] == "02000000"


# -- the report ------------------------------------------------------------------------------------
def _run_of(k, hits, ended="until", before=b"\x02\x00\x00\x00", after=b"\x02\x00\x00\x00"):
    prog = k.program()
    plan = plan_blame(prog, k.segments()[1][0])
    rec = Recorder(plan, 100)
    for pc, value in hits:
        rec.record(pc, {"sp": 0}, value)
    return prog, BlameRun(plan, before, after, rec.hits, ended, k.symbols["kfree"], k.symbols["kfree"],
                          k.symbols["kfree"], 100, {"watchpoints": 1, "breakpoints": 1}, "str r3, [r2]",
                          0.25, "test", ["a face note"])


def test_report_names_the_last_writer_and_lists_the_earlier_writes():
    k, _ = busy_kernel(4, "<")
    prog, run = _run_of(k, [(k.symbols["kmalloc"] + 8, b"\x01\x00\x00\x00"),
                            (k.symbols["uart_puts"] + 4, b"\x02\x00\x00\x00")])
    report = reports.blame_report(prog, run)
    json.loads(reports.to_json_text(report))
    assert report["verdict"] == "found" and report["deterministic"] is True
    assert report["last_writer"]["function"] == "uart_puts+0x4" and report["last_writer"]["of"] == 2
    assert report["last_writer"]["instruction"] == "str r3, [r2]"
    assert [w["function"] for w in report["writes"]] == ["kmalloc+0x8"]
    assert report["stop"]["same_place"] and report["removed"] == {"watchpoints": 1, "breakpoints": 1}
    text = reports.render_text(report)
    for words in ("FOUND", "last write: 2 of 2", "uart_puts+0x4", "str r3, [r2]", "earlier writes (1)",
                  "allocator", "equal those read before", "stopped where it was",
                  "1 watchpoint, 1 breakpoint", "a face note"):
        assert words in text, (words, text)


def test_report_says_when_the_rerun_differs_or_did_not_finish():
    k, _ = busy_kernel(4, "<")
    prog, run = _run_of(k, [(k.symbols["kmalloc"] + 8, b"\x01\x00\x00\x00")], after=b"\x09\x00\x00\x00")
    report = reports.blame_report(prog, run)
    assert report["verdict"] == "not-deterministic" and report["differences"][0]["offset"] == 0
    assert "NOT deterministic" in reports.render_text(report)
    prog, run = _run_of(k, [(k.symbols["kmalloc"] + 8, b"\x01\x00\x00\x00")], ended="max-hits-until")
    report = reports.blame_report(prog, run)
    assert report["verdict"] == "incomplete" and report["last_writer"] is None
    assert "--max-hits" in reports.render_text(report)
    prog, run = _run_of(k, [], ended="until")
    assert reports.blame_report(prog, run)["verdict"] == "no-writes"


def test_text_lists_at_most_40_earlier_writes_and_says_how_many_more():
    k, _ = busy_kernel(4, "<")
    prog, run = _run_of(k, [(k.symbols["kmalloc"] + 8, bytes([i % 256, 0, 0, 0])) for i in range(100)])
    text = reports.render_text(reports.blame_report(prog, run))
    assert "earlier writes (99)" in text and "59 more not shown" in text


# -- the run's sequence, with a scripted target ----------------------------------------------------
class ScriptedTarget(BlameTarget):
    """Plays a run: ``writes`` is [(pc, value)] reported to on_hit in order, then the stop point."""

    face = "script"

    def __init__(self, k, writes, fail_at=None, interrupt=False, answer=True, until_pc=None):
        self.k, self.writes, self.fail_at, self.interrupt, self.answer = k, writes, fail_at, interrupt, answer
        self.calls = []
        self.pc = until_pc or k.symbols["kfree"]
        self.set = {"watchpoints": 0, "breakpoints": 0}

    def check_can_blame(self):
        self.calls.append("check")

    def stop_location(self):
        return self.pc, 1

    def read(self, address, size):
        return self.k.read(address, size)

    def confirm(self, question):
        self.calls.append("confirm")
        return self.answer

    def reset(self):
        self.calls.append("reset")
        if self.fail_at == "reset":
            raise CommandError("the stub went away")

    def watch(self, address, size):
        self.calls.append("watch")
        self.set["watchpoints"] += 1

    def unwatch(self):
        self.calls.append("unwatch")
        removed, self.set["watchpoints"] = self.set["watchpoints"], 0
        return removed

    def break_at(self, address):
        self.calls.append("break")
        self.set["breakpoints"] += 1

    def run(self, on_hit):
        self.calls.append("run")
        if self.interrupt:
            raise KeyboardInterrupt
        if self.fail_at == "run":
            raise CommandError("connection lost")
        for pc, value in self.writes if on_hit else []:
            if not on_hit(pc, {"sp": 0x100, "lr": 0, "fp": 0}, value, 1):
                self.writes = []
                return "max-hits"
        return "until"

    def cleanup(self):
        self.calls.append("cleanup")
        removed, self.set = dict(self.set), {"watchpoints": 0, "breakpoints": 0}
        return removed


class ScriptSession(Session):
    face = "script"

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.invalidated = 0

    def program(self):
        return self.k.program()

    def evaluate(self, expression):
        return int(expression, 0)

    def invalidate(self, *_):
        self.invalidated += 1


def args(**kw):
    base = dict(address=None, size=0, until=None, max_hits=100, yes=False, json=False)
    base.update(kw)
    return SimpleNamespace(**base)


def corrupt_kernel():
    k, _ = busy_kernel(4, "<")
    seg = k.segments()[3][0]
    k.set_seg(seg, is_allocated=5)
    return k, seg


def test_run_sequence_and_report():
    k, seg = corrupt_kernel()
    f_addr, _ = field_range(k, seg, "is_allocated")
    writes = [(k.symbols["kmalloc"] + 8, b"\x01\x00\x00\x00"), (k.symbols["uart_puts"], b"\x05\x00\x00\x00")]
    target = ScriptedTarget(k, writes)
    session = ScriptSession(k)
    report, failed = run_blame(session, target, args())
    assert target.calls == ["check", "confirm", "reset", "watch", "break", "run", "cleanup"]
    assert not failed and report["verdict"] == "found" and report["watch"]["address"] == f_addr
    assert report["last_writer"]["function"] == "uart_puts" and report["removed"]["watchpoints"] == 1
    assert session.invalidated >= 1


def test_max_hits_stops_watching_and_runs_on_to_the_stop_point():
    k, _ = corrupt_kernel()
    writes = [(k.symbols["kmalloc"] + 4 * i, bytes([i, 0, 0, 0])) for i in range(10)]
    target = ScriptedTarget(k, writes)
    report, failed = run_blame(ScriptSession(k), target, args(max_hits=3, yes=True))
    assert target.calls == ["check", "reset", "watch", "break", "run", "unwatch", "run", "cleanup"]
    assert failed and report["ended"] == "max-hits-until" and report["hits"] == 3
    assert report["verdict"] == "incomplete"


def test_a_refusal_runs_nothing():
    k, _ = corrupt_kernel()
    target = ScriptedTarget(k, [], answer=False)
    with pytest.raises(CommandError, match="not run"):
        run_blame(ScriptSession(k), target, args())
    assert target.calls == ["check", "confirm"]
    clean, _ = busy_kernel(4, "<")
    target = ScriptedTarget(clean, [])
    with pytest.raises(CommandError):
        run_blame(ScriptSession(clean), target, args(yes=True))
    assert target.calls == ["check"]


def test_errors_and_ctrl_c_remove_everything_and_say_what_happened():
    k, _ = corrupt_kernel()
    target = ScriptedTarget(k, [], fail_at="run")
    with pytest.raises(CommandError) as error:
        run_blame(ScriptSession(k), target, args(yes=True))
    assert "connection lost" in str(error.value) and "restarted" in str(error.value)
    assert "removed" in str(error.value) and target.calls[-1] == "cleanup"
    assert target.set == {"watchpoints": 0, "breakpoints": 0}

    target = ScriptedTarget(k, [], fail_at="reset")
    with pytest.raises(CommandError, match="was not restarted"):
        run_blame(ScriptSession(k), target, args(yes=True))
    assert target.calls[-1] == "cleanup"

    target = ScriptedTarget(k, [], interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        run_blame(ScriptSession(k), target, args(yes=True))
    assert target.calls[-1] == "cleanup" and target.set == {"watchpoints": 0, "breakpoints": 0}


def test_until_takes_symbols_and_a_clean_heap_is_one_line():
    k, _ = corrupt_kernel()
    target = ScriptedTarget(k, [(k.symbols["kmalloc"], b"\x05\x00\x00\x00")])
    report, _ = run_blame(ScriptSession(k), target, args(until="kfree", yes=True))
    assert report["until"]["address"] == k.symbols["kfree"]
    clean, _ = busy_kernel(4, "<")
    with pytest.raises(CommandError, match="checks clean"):
        run_blame(ScriptSession(clean), ScriptedTarget(clean, []), args(yes=True))


# -- the command table and the CLI -----------------------------------------------------------------
def test_blame_is_in_every_face():
    cmd = commands.command_named("blame")
    assert cmd.faces == frozenset({"gdb", "lldb", "cli"})
    text = commands.long_help(cmd)
    for option in ("--size", "--until", "--max-hits", "--yes", "--json"):
        assert option in text


@pytest.fixture
def synthetic_elf(tmp_path, monkeypatch):
    k, _ = busy_kernel(4, "<")
    k.set_seg(k.segments()[2][0], is_allocated=3)
    elf = tmp_path / "synthetic.elf"
    elf.write_bytes(b"")
    info = k.elf_info()
    real = symbols.load_elf_info

    def loader(path):
        return info if os.path.abspath(os.fspath(path)) == str(elf.resolve()) else real(path)

    monkeypatch.setattr(symbols, "load_elf_info", loader)
    monkeypatch.setattr(session_module, "load_elf_info", loader)
    return elf, k


def test_cli_blame_on_a_dump_or_a_stub_without_monitor_commands_is_one_line(capsys, synthetic_elf, tmp_path):
    elf, k = synthetic_elf
    dump = tmp_path / "x.kdump"
    write_kheap_dump(dump, [(k.image_base, bytes(k.mem))], [{"pc": k.symbols["kfree"], "sp": 0x7000}],
                     {"arch": "arm"})
    status = cli.main(["blame", "--core", str(dump), "--elf", str(elf)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "needs a live QEMU target it can reset" in err and "dump" in err
    with FakeGdbStub(StubConfig(image=bytes(k.mem), base=k.image_base, arch="arm",
                                registers={"pc": k.symbols["kfree"]})) as stub:
        status = cli.main(["blame", "--remote", stub.address, "--elf", str(elf), "--timeout", "2"])
        sent = list(stub.received)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "needs a live QEMU target it can reset" in err
    assert not any(p[:1] in (b"Z", b"c", b"s") for p in sent), sent


def test_run_control_gate():
    for packet in (b"qRcmd,73797374656d5f7265736574", b"qRcmd,696e666f20737461747573", b"Z2,3d5030,10",
                   b"z2,3d5030,4", b"Z0,80a0,4", b"z0,80a0,4", b"c", b"s", b"vCont;s:p1.1", b"m1000,4"):
        check_run_control(packet)
    for packet in (b"M1000,4:00000000", b"X1000,1:a", b"G00", b"P1=0", b"qRcmd,71756974",
                   b"qRcmd," + b"gdbserver".hex().encode(), b"Z4,1000,4", b"k", b"vKill;1"):
        with pytest.raises(WriteForbidden):
            check_run_control(packet)
    for packet in (b"Z2,3d5030,10", b"c", b"s", b"qRcmd,73797374656d5f7265736574"):
        with pytest.raises(WriteForbidden):
            check_read_only(packet)


def test_a_read_only_connection_refuses_run_control(synthetic_elf):
    _, k = synthetic_elf
    with FakeGdbStub(StubConfig(image=bytes(k.mem), base=k.image_base, arch="arm")) as stub:
        target = RemoteTarget.from_hostport(stub.address, timeout=2)
        try:
            with pytest.raises(WriteForbidden):
                target.insert_point(2, 0x1000, 4)
            with pytest.raises(WriteForbidden):
                target.resume()
            target.allow_run_control()
            assert target.insert_point(2, 0x1000, 4) is False      # the fake stub has none
        finally:
            target.close()
