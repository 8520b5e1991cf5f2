"""The command line's own reports (core/reports/runs.py): dump, demo and check of many dumps,
each rendered as text through the renderer registry and as JSON through the one writer."""

import json
import os

import pytest

from gdbext import SCHEMA_VERSION
from gdbext.core import reports as R
from gdbext.core.check import check
from gdbext.core.seglist import walk_heap
from gdbext.core.stats import heap_stats

from heapbuilder import busy_kernel


def assert_is_a_report(report, name):
    assert report["schema_version"] == SCHEMA_VERSION and report["report"] == name
    assert json.loads(R.to_json_text(report)) == report
    plain = R.render_text(report)
    assert plain.endswith("\n") and "\x1b" not in plain and "no text form" not in plain
    return plain


def check_reports(pointer_size=4):
    """(a healthy heap's check report, a corrupt one's)."""
    k, _ = busy_kernel(pointer_size, "<")
    healthy = R.check_report(k.program(), check(k.program()))
    segs = k.segments()
    k.set_seg(segs[2][0], prev=segs[0][0])                      # HEAP-BACKLINK
    return healthy, R.check_report(k.program(), check(k.program()))


# -- kheap dump ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pointer_size", [4, 8])
def test_dump_report_text_and_json(pointer_size):
    ranges = [{"start": 0, "size": 64, "what": ["ELF check"]},
              {"start": 0x8000, "size": 16384, "what": ["heap_stats", "kernel image (globals, .text, .rodata, .bss)"]}]
    report = R.dump_report("/tmp/crash.kdump", 3 * 1048576, ranges, 2, 1, "arm", "ab" * 32, pointer_size)
    text = assert_is_a_report(report, "dump")
    width = pointer_size * 2
    assert report["pointer_size"] == pointer_size and report["ranges"] == ranges and report["cpus"] == 2
    assert text.splitlines() == [
        "kheap dump: wrote /tmp/crash.kdump (3.0 MiB, registers of 2 CPUs)",
        f"  0x{0:0{width}x}        64 bytes  ELF check",               # address 0 is an address, not NULL
        f"  0x{0x8000:0{width}x}     16384 bytes  heap_stats, kernel image (globals, .text, .rodata, .bss)",
        "read it back with: kheap check --core /tmp/crash.kdump",
    ]
    one = R.dump_report("/tmp/x", 10, [], 1, 0, "arm", "", 4)
    assert "registers of 1 CPU)" in R.render_text(one)


def test_dump_report_escapes_what_came_from_outside():
    report = R.dump_report("/tmp/\x1b[31mred.kdump", 1, [], 1, 0, "arm", "", 4)
    text = R.render_text(report, color=True)
    assert "\x1b[31mred" not in text and "\\x1b[31mred" in text


# -- kheap demo ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["clean", "crash"])
def test_demo_report_renders_each_step_as_typed_then_its_report(scenario):
    k, _ = busy_kernel(4, "<")
    prog = k.program()
    walk = walk_heap(prog)
    steps = [("walk", ["--limit", "25"], R.walk_report(prog, walk)),
             ("check", [], R.check_report(prog, check(prog))),
             ("stats", [], R.stats_report(prog, heap_stats(prog, walk)))]
    elf = os.path.abspath(os.path.join("kernel", "build", "arm", "kernel.elf"))
    report = R.demo_report("arm", scenario, elf, steps)
    text = assert_is_a_report(report, "demo")
    assert report["steps"] == [{"command": "walk", "argv": ["--limit", "25"]}, {"command": "check", "argv": []},
                               {"command": "stats", "argv": []}]
    assert set(report["reports"]) == {"walk", "check", "stats"}
    assert text.startswith(f"kheap demo: the arm kernel, scenario '{scenario}', inspected live")
    rel = os.path.join("kernel", "build", "arm", "kernel.elf")
    for name, argv, sub in steps:
        heading = " ".join(["$ kheap", name] + argv + ["--remote", "HOST:PORT", "--elf", rel])
        assert heading + "\n" + R.render_text(sub) in text
    assert ("no backtrace without a debugger" in text) == (scenario == "crash")
    assert text.rstrip("\n").endswith("docs/kernel-interface.md.")
    assert "\x1b[" in R.render_text(report, color=True)


# -- kheap check of many dumps ------------------------------------------------------------------
def test_check_many_report_one_verdict_line_per_dump():
    healthy, corrupt = check_reports()
    results = [("a.kdump", "ok", healthy, None), ("b.kdump", "corrupt", corrupt, None),
               ("c.kdump", "error", None, "c.kdump is truncated")]
    report = R.check_many_report(results, exit_status=2)
    text = assert_is_a_report(report, "check-many")
    assert report["summary"] == {"ok": 1, "corrupt": 1, "incomplete": 0, "error": 1} and report["exit_status"] == 2
    assert [d["status"] for d in report["dumps"]] == ["ok", "corrupt", "error"]
    assert report["dumps"][1]["report"] is corrupt and report["dumps"][1]["errors"] == corrupt["errors"]
    assert report["dumps"][2]["verdict"] is None and report["dumps"][2]["error"] == "c.kdump is truncated"
    lines = text.splitlines()
    assert lines[0] == "a.kdump: OK (0 errors, 0 warnings)"
    assert lines[1].startswith("b.kdump: CORRUPT (") and "HEAP-BACKLINK" in lines[1]
    assert lines[2] == "c.kdump: UNREADABLE c.kdump is truncated"
    assert [R.dump_verdict_line(d) for d in report["dumps"]] == lines
    coloured = R.render_text(report, color=True)
    assert "\x1b[" in coloured and "b.kdump: CORRUPT" in coloured


def test_check_many_report_refuses_an_unknown_status():
    with pytest.raises(ValueError):
        R.check_many_report([("a", "fine", None, None)], 0)

