"""Issue 14, the reports' items: diff by payload with --limit and refusal of another heap (item
8), whose bytes a culprit shows and one culprit line per header (item 9), one name for the stop
in every face (item 14), and the conventions: ``kheap show``, ``find`` outside the heap,
``walk --around``'s marked row, file:line in history and leaks, aligned registers, "likely
double free". All on synthetic kernels through the core or the command table; the real
kernel's are in tests/integration/test_issue14_reports.py.
"""

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import gdbext.core.symbols as symbols
import gdbext.frontends.session as session_module
from gdbext.core import reports as R
from gdbext.core.check import check
from gdbext.core.findings import classify_bytes
from gdbext.core.memory import RangesReader
from gdbext.core.program import Program
from gdbext.core.snapshot import Snapshot, SnapshotMismatch, diff_snapshots, take_snapshot
from gdbext.core.symbols import Section, SHF_ALLOC, SHF_WRITE
from gdbext.core.triage import fault_origin
from gdbext.core.watch import Operation
from gdbext.frontends import cli, commands

from heapbuilder import prog_session, SyntheticKernel, busy_kernel

REPO = Path(__file__).resolve().parents[2]
REAL_ELF = {arch: REPO / "kernel" / "build" / arch / "kernel.elf" for arch in ("arm", "aarch64")}


def ProgSession(k, elf=None):
    return prog_session(k, elf, face='cli')


def run(session, line):
    argv = line.split()
    return commands.execute_to_text(session, argv[0], argv[1:])


def overflowed(pointer_size=4, text=b"e reading; retry calibration " + b"x" * 64):
    """Three used blocks; the first overflows its payload over the second's header."""
    k = SyntheticKernel(pointer_size, "<")
    ptrs = [k.kmalloc(40) for _ in range(3)]
    k.write(ptrs[0], text)
    return k, ptrs


# -- item 8: diff ---------------------------------------------------------------------------------
def test_diff_lists_payloads_as_kmalloc_returned_them_and_their_headers():
    k, _ = busy_kernel(4, "<")
    before = take_snapshot(k.program(), tag="a")
    leaked = [k.kmalloc(40) for _ in range(3)]
    after = take_snapshot(k.program(), tag="b")
    report = R.diff_report(diff_snapshots(before, after), 4)
    assert sorted(b["payload"] for b in report["new"]) == sorted(leaked)
    assert all(b["header"] == b["payload"] - k.hdr for b in report["new"])
    text = R.render_text(report)
    assert "payload" in text and "header" in text
    for p in leaked:
        assert f"0x{p:08x}" in text
    # A snapshot file keeps the payloads, and files of the earlier format are still read.
    again = Snapshot.from_json(json.loads(R.to_json_text(R.snapshot_report(after))))
    assert again == after
    old = R.snapshot_report(before)
    old["segments"] = [s[:3] for s in old["segments"]]
    del old["arch"], old["image"]
    assert Snapshot.from_json(old).segments == before.segments


def test_diff_limit_shows_n_blocks_per_list_and_counts_the_rest():
    k = SyntheticKernel(4, "<", heap_size=256 * 1024)
    before = take_snapshot(k.program())
    for _ in range(60):
        k.kmalloc(24)
    diff = diff_snapshots(before, take_snapshot(k.program()))
    report = R.diff_report(diff, 4, limit=5)
    assert len(report["new"]) == 5 and report["counts"]["new"] == 60 and report["not_shown"]["new"] == 55
    assert "... 55 more not shown" in R.render_text(report)
    default = R.diff_report(diff, 4)
    assert len(default["new"]) == R.DIFF_LIMIT and default["not_shown"]["new"] == 60 - R.DIFF_LIMIT
    assert len(R.diff_report(diff, 4, limit=0)["new"]) == 60


def test_diff_of_64_bit_snapshots_prints_64_bit_addresses():
    k, _ = busy_kernel(8, "<")
    before = take_snapshot(k.program())
    p = k.kmalloc(40)
    text = R.render_text(R.diff_report(diff_snapshots(before, take_snapshot(k.program())), 8))
    assert f"0x{p:016x}" in text


def test_diff_of_another_heap_is_refused():
    small, _ = busy_kernel(4, "<")
    wide, _ = busy_kernel(8, "<")
    a, b = take_snapshot(small.program()), take_snapshot(wide.program())
    assert a.arch == "arm" and b.arch == "aarch64" and a.image and a.image != b.image
    with pytest.raises(SnapshotMismatch, match="architecture arm vs aarch64"):
        diff_snapshots(a, b)
    # The same heap of another kernel build: refused too.
    other = SyntheticKernel(4, "<")
    elf = other.elf_info()
    elf.sections.append(Section(".text", other.image_base, 4, b"\x00\x01\x02\x03", SHF_ALLOC))
    with pytest.raises(SnapshotMismatch, match="another kernel build"):
        diff_snapshots(take_snapshot(other.program()), take_snapshot(other.program(elf=elf)))


@pytest.fixture
def cli_kernels(tmp_path, monkeypatch):
    """``make(pointer_size)`` -> (ELF placeholder path, SyntheticKernel, raw image path)."""
    made = {}
    real_loader = symbols.load_elf_info

    def loader(path):
        return made.get(os.path.abspath(os.fspath(path))) or real_loader(path)

    monkeypatch.setattr(symbols, "load_elf_info", loader)
    monkeypatch.setattr(session_module, "load_elf_info", loader)

    def make(pointer_size):
        k, _ = busy_kernel(pointer_size, "<")
        elf = tmp_path / f"k{pointer_size}.elf"
        elf.write_bytes(b"")
        made[str(elf.resolve())] = k.elf_info()
        raw = tmp_path / f"k{pointer_size}.raw"
        raw.write_bytes(bytes(k.mem))
        return elf, k, ["--raw", str(raw), "--base", hex(k.image_base), "--elf", str(elf)]

    return make


def test_cli_diff_of_snapshots_of_two_architectures_is_one_line_and_exit_2(cli_kernels, tmp_path, capsys):
    _, _, arm = cli_kernels(4)
    _, _, a64 = cli_kernels(8)
    assert cli.main(["snapshot", "a", "-o", str(tmp_path / "a.json"), *arm]) == 0
    assert cli.main(["snapshot", "b", "-o", str(tmp_path / "b.json"), *a64]) == 0
    capsys.readouterr()
    status = cli.main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "not snapshots of the same heap" in err and "arm vs aarch64" in err


# -- item 9: the culprit line ---------------------------------------------------------------------
@pytest.mark.parametrize("pointer_size", [4, 8])
def test_culprit_says_whose_bytes_and_is_printed_once_per_header(pointer_size):
    k, ptrs = overflowed(pointer_size)
    victim = ptrs[1] - k.hdr
    prog = k.program()
    report = R.check_report(prog, check(prog))
    culprits = [f["culprit"] for f in report["findings"] if f.get("culprit")]
    assert len(culprits) >= 3 and all(c == culprits[0] for c in culprits)
    c = culprits[0]
    assert c["address"] == ptrs[0] - k.hdr and c["bytes_at"] == victim and c["bytes_of"] == "header"
    text = R.render_text(report)
    assert text.count("culprit") == 1, text
    assert f"culprit of all {len(culprits)}:" in text
    width = 2 * pointer_size
    assert f"header at 0x{victim:0{width}x} holds: ascii" in text
    assert "bytes there" not in text


def test_binary_culprit_bytes_are_spaced_and_bounded():
    k, ptrs = overflowed(4, bytes(range(0x80, 0x80 + 48)) + b"\x00\x00\xad\xde" * 8)
    prog = k.program()
    kind, detail = classify_bytes(prog, bytes(range(0x80, 0xC0)))
    assert kind == "binary" and detail.startswith("80 81 82 83 84") and detail.endswith(" ...")
    assert len(detail.split()) == 33                # 32 bytes and the ellipsis
    text = R.render_text(R.check_report(prog, check(prog)))
    assert "holds: binary 00 00 ad de 00 00 ad de" in text, text


def test_triage_names_the_header_field_the_kernel_read_not_its_offset():
    k = SyntheticKernel(4, "<")
    ptrs = [k.kmalloc(40) for _ in range(4)]
    victim = ptrs[1] - k.hdr
    k.set_seg(victim, next=0xDEAD0000)
    prog = k.program()
    flag = prog.layouts.segment.fields["is_allocated"].offset
    origin = fault_origin(prog, check(prog), 0xDEAD0000 + flag)
    assert origin["links"][0]["reads"] == "is_allocated"
    report = R.triage_report(prog, {"pc": None, "frames": [], "registers": {}})
    report["fault_origin"] = origin
    text = R.triage_text(report)
    assert f"read is_allocated (offset {flag})" in text and "field offset" not in text, text


# -- item 14: one name for the stop ---------------------------------------------------------------
def test_the_stop_is_named_from_pc_whatever_the_face_called_it():
    k = SyntheticKernel(4, "<")
    prog = k.program()
    pc = k.symbols["kmalloc"] + 8
    names = set()
    for face_name in ("kernel_idle", "kmalloc+0x8", "??", None):
        stop = {"pc": pc, "function": face_name, "frames": [], "registers": {"pc": pc}, "thread": 1}
        names.add(R.triage_report(prog, stop)["stop"]["function"])
    assert names == {"kmalloc+0x8"}


@pytest.mark.skipif(not REAL_ELF["arm"].exists(), reason="kernel not built")
def test_the_crash_kernels_idle_loop_is_named_inlined_in_kernel_panic():
    elf = symbols.load_elf_info(REAL_ELF["arm"])
    prog = Program(elf, RangesReader([]))
    panic = elf.symbol("kernel_panic")
    from gdbext.core.debuginfo import code_info
    info = code_info(elf)
    inlined = [a for a in range(panic.address, panic.address + panic.size, 4)
               if info.inlined_at(a) == "kernel_idle"]
    assert inlined, "kernel_idle is not inlined into kernel_panic in this build"
    stop = R.triage.stop_named(prog, {"pc": inlined[-1], "function": "kernel_idle", "frames": []})
    assert stop["function"].startswith("kernel_panic+0x") and stop["inlined"] == "kernel_idle"
    assert stop["source"].startswith("panic.c:")


def test_registers_are_in_aligned_columns():
    regs = {f"r{i}": i * 0x1111 for i in range(13)}
    regs.update(sp=0x14610, lr=0x91A0, pc=0x91A4, cpsr=0x600001D7, r11=0x1461C)
    lines = R.triage.register_lines(dict(reversed(list(regs.items()))), 4)
    assert lines[0].split()[:2] == ["r0", "0x00000000"]
    starts = {tuple(m.start() for m in re.finditer(r"0x", line)) for line in lines[:-1]}
    assert len(starts) == 1, lines                 # every full row has its values in the same columns
    order = [w for line in lines for w in line.split()[::2]]
    assert order[-4:] == ["sp", "lr", "pc", "cpsr"] and order[:3] == ["r0", "r1", "r2"]
    wide = R.triage.register_lines({"x0": 1, "x30": 2, "sp": 3, "pc": 4}, 8)
    assert wide[0] == "   x0 0x0000000000000001   x30 0x0000000000000002    sp 0x0000000000000003"


# -- kheap show -----------------------------------------------------------------------------------
def test_show_a_segment_by_header_payload_or_interior_address():
    k, ptrs = overflowed(4)
    session = ProgSession(k)
    head = ptrs[0] - k.hdr
    texts = [run(session, f"show {a:#x}") for a in (head, ptrs[0], ptrs[0] + 17)]
    assert all(t.status == 1 for t in texts), texts[0].text          # an error touches it
    for t in texts:
        assert f"segment at 0x{head:08x}: used, size 64" in t.text
    text = texts[2].text
    for name in ("next", "prev", "is_allocated", "segment_size"):
        assert re.search(rf"^  {name}\s+\d+\s+\d+\s+\S", text, re.M), text
    assert "payload offset 17" in text
    assert re.search(r"65 20 72 65 61 64 69 6e  67 3b 20 72 65 74 72 79  \|e reading; retry\|", text), text
    assert f"next  0x{ptrs[1] - k.hdr:08x}  bad" in text
    assert "HEAP-FLAG" in text and "culprit of all" in text
    data = json.loads(run(session, f"show {ptrs[0]:#x} --json --bytes 16").text)
    assert data["report"] == "show" and data["segment"]["address"] == head
    assert [f["name"] for f in data["fields"]] == ["next", "prev", "is_allocated", "segment_size"]
    assert data["payload"]["shown"] == 16 and bytes.fromhex(data["payload"]["hex"]) == b"e reading; retry"
    assert {f["relation"] for f in data["findings"]} == {"culprit"}
    assert data["neighbours"]["next"]["segment"]["address"] == ptrs[1] - k.hdr


def test_show_of_a_healthy_segment_escapes_its_bytes_and_bounds_the_dump():
    k = SyntheticKernel(8, "<")
    a = k.kmalloc(200)
    k.write(a, b"\x1b[31mred\x00" + b"A" * 190)
    out = run(ProgSession(k), f"show {a:#x} --bytes 20")
    assert out.status == 0 and "\x1b" not in out.text
    assert "|.[31mred.AAAAAAA|" in out.text and "|AAAA|" in out.text
    assert "first 20 of 208 bytes" in out.text and "findings touching it: none" in out.text
    assert re.search(r"^  prev  none \(NULL\)", out.text, re.M)


def test_show_of_an_address_in_no_segment_is_one_line_and_exit_2():
    k = SyntheticKernel(4, "<")
    out = run(ProgSession(k), f"show {k.symbols['kmalloc'] + 0x10:#x}")
    assert out.is_error and out.status == 2 and "\n" not in out.text.strip()
    assert "kmalloc+0x10" in out.text and "no segment to show" in out.text


def test_show_is_in_every_face():
    assert all("show" in {c.name for c in commands.commands_for(face)} for face in ("gdb", "lldb", "cli"))


# -- find outside the heap ------------------------------------------------------------------------
def kernel_with_sections():
    k = SyntheticKernel(4, "<")
    ib = k.image_base
    k.symbols.update(boot_stack_top=ib + 0x3800)
    elf = k.elf_info()
    elf.sections += [Section(".text", ib, 0x1000, bytes(0x1000), SHF_ALLOC | 0x4),
                     Section(".bss", ib + 0x3000, 0x1000, None, SHF_ALLOC | SHF_WRITE)]
    return k, elf


@pytest.mark.parametrize("offset, words", [
    (0x210, ["is in .text: kmalloc+0x10", "(not in any heap segment)"]),
    (0x3700, ["is in the stack boot_stack", "256 bytes below its top"]),
])
def test_find_outside_the_heap_says_what_the_address_is(offset, words):
    k, elf = kernel_with_sections()
    out = run(ProgSession(k, elf), f"find {k.image_base + offset:#x}")
    assert out.status == 0
    for w in words:
        assert w in out.text, out.text


def test_find_in_the_page_array_and_unmapped():
    k, elf = kernel_with_sections()
    session = ProgSession(k, elf)
    page = k.layouts.page
    entry = k.end + 5 * page.size + page.nextpage.offset
    out = run(session, f"find {entry:#x}")
    assert f"page_t #5 at 0x{k.end + 5 * page.size:08x}, offset {page.nextpage.offset} (nextpage)" in out.text
    data = json.loads(run(session, f"find {entry:#x} --json").text)
    assert data["where"] == {"kind": "page-array", "page": 5, "offset": page.nextpage.offset,
                             "field": "nextpage", "entry": k.end + 5 * page.size, "describes": 5 * 4096}
    far = 0x7FFF0000
    out = run(session, f"find {far:#x}")
    assert "is unmapped" in out.text
    assert json.loads(run(session, f"find {far:#x} --json").text)["where"]["kind"] == "unmapped"


# -- walk --around, history, leaks ----------------------------------------------------------------
def test_walk_around_marks_the_target_row():
    k, ptrs = busy_kernel(4, "<")
    session = ProgSession(k)
    target = ptrs[3] + 5
    out = run(session, f"walk --around {target:#x} --context 1")
    marked = [line for line in out.text.splitlines() if line.lstrip().startswith("->")]
    assert len(marked) == 1 and f"0x{ptrs[3] - k.hdr:08x}" in marked[0], out.text
    data = json.loads(run(session, f"walk --around {target:#x} --context 1 --json").text)
    assert data["target"] == ptrs[3] - k.hdr
    assert "->" not in run(session, "walk").text


@pytest.mark.skipif(not REAL_ELF["arm"].exists(), reason="kernel not built")
def test_history_and_leaks_show_each_callers_file_and_line():
    elf = symbols.load_elf_info(REAL_ELF["arm"])
    prog = Program(elf, RangesReader([]))
    call = elf.address_of("scenario_leak")
    from gdbext.core.debuginfo import code_info
    ret = next(a for a in range(call + 4, call + 400, 4) if code_info(elf).line_at(a - 1))
    op = Operation(0, "kmalloc", 1, 0x1000, ret, elf.symbolize(ret), size=40, result=0x3D5010,
                   returned=True, effect="alloc", new_segment_size=64)
    where = code_info(elf).line_at(ret - 1)
    report = R.history_report(4, None, [op], 1, {}, prog=prog)
    assert report["operations"][0]["caller_source"] == where
    assert f"at {where}" in R.render_text(report)
    watch = SimpleNamespace(history=[op], live={0x3D5010: op})
    groups = [{"caller": "scenario_leak", "count": 1, "bytes": 64, "requested": 40, "blocks": [0x3D5010]}]
    R.leak_sources(prog, watch, groups)
    assert groups[0]["sources"] == [where]
    text = R.render_text(R.leaks_report(4, 0, groups))
    assert f"at {where}" in text and "0x003d5010" in text


# -- double free ----------------------------------------------------------------------------------
def test_check_says_likely_double_free_when_the_counters_disagree_that_way():
    k = SyntheticKernel(4, "<")
    left, request, right = k.kmalloc(40), k.kmalloc(40), k.kmalloc(40)
    k.kfree(request)
    k.kfree(request)                                  # the bug
    prog = k.program()
    report = R.check_report(prog, check(prog))
    stats = [f for f in report["findings"] if f["code"] == "HEAP-STATS"]
    assert stats and all("likely double free" in f["culprit"]["reason"] for f in stats)
    assert stats[0]["culprit"]["address"] == request - k.hdr
    text = R.render_text(report)
    assert text.count("likely double free") == 1, text


def test_counters_off_the_other_way_are_not_called_a_double_free():
    k = SyntheticKernel(4, "<")
    k.kmalloc(40)
    k.stats["allocations"] += 1                       # counted an allocation that never happened
    k.stats["current_usage"] += 64
    k.stats["bytes_allocated"] += 64
    k._write_stats()
    prog = k.program()
    findings = [f for f in check(prog).findings if f.code == "HEAP-STATS"]
    assert findings and all(f.culprit is None for f in findings)
