"""Issue 14 through the real gdb-multiarch (and lldb 14 where the item is shared): `show kheap`,
$kheap_segment's arguments, one list of 'color' values, 'watch off' after a failed 'watch on',
TAB completion from the command table, $_ / $__ after a command that names a segment, and
the pretty printer registered under the name 'kheap'."""

import re
import shutil

import pytest

from debuggers import run_gdb, run_lldb
from expectations import ARCHES
from gdbext.frontends import commands
from gdbext.frontends.session import COLOR_VALUES, SETTINGS

pytestmark = [pytest.mark.qemu, pytest.mark.gdb]

SETTING_NAMES = [name for name, *_ in SETTINGS]


def one_line_error(step):
    text = (step.output + step.error).strip()
    assert text and "\n" not in text and "Traceback" not in text and "TypeError" not in text, step
    return text


@pytest.mark.parametrize("arch", ARCHES)
def test_show_kheap_lists_every_setting_with_its_value(kernel_build, arch):
    run = run_gdb(kernel_build[arch], 0,
                  ["show kheap", "show kheap color", "set kheap block-size 8192", "show kheap",
                   "show kheap nosuch", "set kheap"],
                  connect=False, post=())
    lines = run.output(0).splitlines()
    assert [re.match(r"kheap (\S+) is ", line).group(1) for line in lines] == SETTING_NAMES, lines
    assert "kheap color is auto" in lines and "kheap auto-check is off" in lines
    assert run.output(1).strip() == "kheap color is auto"
    assert "kheap block-size is 8192" in run.output(3).splitlines()
    assert "nosuch" in one_line_error(run.steps[4])
    assert "auto-check" in one_line_error(run.steps[5])


def _lldb():
    return shutil.which("lldb") is not None


@pytest.mark.parametrize("arch", ARCHES)
def test_color_takes_the_same_values_in_every_face(kernel_build, arch):
    run = run_gdb(kernel_build[arch], 0,
                  ["set kheap color always", "show kheap color", "set kheap color blue",
                   "set kheap color never", "show kheap color"], connect=False, post=())
    assert run.steps[0].error == "" and "kheap color is always" in run.output(1)
    error = one_line_error(run.steps[2])
    assert "kheap color" in error and all(v in error for v in COLOR_VALUES), error
    assert "kheap color is never" in run.output(4)
    if not _lldb():
        return
    run = run_lldb(kernel_build[arch], 0, ["kheap set color always", "kheap set color blue",
                                           "kheap show color"], connect=False, post=())
    assert run.steps[0].error == ""
    assert all(v in run.steps[1].error for v in COLOR_VALUES), run.steps[1]
    assert "kheap color is on" in run.output(2)


@pytest.mark.parametrize("arch", ARCHES)
def test_kheap_segment_with_a_wrong_argument_count_is_one_gdb_error(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    truth = vm.checkpoints()[-1].segments
    run = run_gdb(vm.elf, vm.gdb_port,
                  ["print $kheap_segment()", "print $kheap_segment(1, 2)",
                   f"print/x (unsigned long)$kheap_segment({truth[1][0] + 40})",
                   "print $kheap_segment(*heap_segment_list_head)", "print 1 + 1"])
    for step in run.steps[:2]:
        assert "takes one argument" in one_line_error(step)
    assert f"{truth[1][0]:#x}" in run.output(2)
    assert f"{truth[0][0]:#x}" in run.output(3), run.steps[3]      # a struct: its address
    assert "$" in run.output(4) and "= 2" in run.output(4)


def _completions(step):
    return step.output.splitlines()


@pytest.mark.parametrize("arch", ARCHES)
def test_tab_completion_comes_from_the_command_table(kernel_build, arch):
    walk_options = sorted(s for a in commands.build_parser(commands.command_named("walk"))._actions
                          for s in a.option_strings if s.startswith("--"))
    # gdb.execute strips a trailing space, so 'kheap <TAB>' is asked on gdb's command line.
    run = run_gdb(kernel_build[arch], 0,
                  ["complete kheap walk --f", "complete kheap walk --", "complete kheap wat",
                   "complete kheap w", "complete kheap watch o", "complete kheap find kmal",
                   "complete kheap walk --around kmal", "complete kheap walk --limit 1",
                   "complete kheap walk --free --", "complete kheap blame --until kmal"],
                  connect=False, post=(), pre=["complete kheap "])
    assert _completions(run.steps[0]) == ["kheap walk --free"]
    # Options only: no symbols after '--' (there were 124 before).
    assert _completions(run.steps[1]) == [f"kheap walk {o}" for o in walk_options]
    assert _completions(run.steps[2]) == ["kheap watch"]
    assert _completions(run.steps[3]) == ["kheap walk", "kheap watch"]
    subcommands = [f"kheap {c.name}" for c in commands.commands_for("gdb")]
    assert [line for line in run.stdout.splitlines() if line.startswith("kheap ") and ":" not in line] \
        == sorted(subcommands)
    assert _completions(run.steps[4]) == ["kheap watch off", "kheap watch on"]
    # Symbols where an address or expression goes, and a location where a location goes.
    assert "kheap find kmalloc" in _completions(run.steps[5])
    assert "kheap walk --around kmalloc" in _completions(run.steps[6])
    assert _completions(run.steps[7]) == []
    assert "kheap walk --free --used" not in _completions(run.steps[8])
    assert "kheap walk --free --limit" in _completions(run.steps[8])
    assert "kheap blame --until kmalloc" in _completions(run.steps[9])


@pytest.mark.parametrize("arch", ARCHES)
def test_find_and_walk_around_leave_the_segment_in_dollar_underscore(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    truth = vm.checkpoints()[-1].segments
    header = truth[2][0]
    run = run_gdb(vm.elf, vm.gdb_port,
                  [f"kheap find {header + 40:#x} --json", "print $_", "print $__", "print *$_",
                   f"kheap walk --around {truth[4][0] + 20:#x} --context 1",
                   "print/x (unsigned long)$_", "print/x (unsigned long)$__",
                   "kheap find 0x10", "print/x (unsigned long)$_",
                   f"kheap show {truth[3][0] + 40:#x} --bytes 16", "print/x (unsigned long)$_"])
    found = run.json(0)["match"]["segment"]
    assert found["address"] == header
    assert re.search(rf"\(\w+ \*\) {header:#x}\b", run.output(1)), run.steps[1]
    assert f"(void *) {found['payload']:#x}" in run.output(2), run.steps[2]
    assert "{used, size=%d" % truth[2][1] in run.output(3), run.steps[3]   # the pretty printer
    assert f"= {truth[4][0]:#x}" in run.output(5)
    assert f"= {truth[4][0] + found['payload'] - header:#x}" in run.output(6)
    # A command that names no segment leaves them as they were (as 'info line' of no line does).
    assert f"= {truth[4][0]:#x}" in run.output(8)
    assert f"= {truth[3][0]:#x}" in run.output(10), run.steps[10]          # kheap show names one too


@pytest.mark.parametrize("arch", ARCHES)
def test_the_pretty_printer_has_a_name(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    page = vm.checkpoints()[-1].segments[0][0] // 4096
    run = run_gdb(vm.elf, vm.gdb_port,
                  ["info pretty-printer", "disable pretty-printer global kheap",
                   "print *heap_segment_list_head", "enable pretty-printer global kheap",
                   "disable pretty-printer global kheap;page", f"print all_pages_array[{page}]",
                   "print *heap_segment_list_head"])
    listing = run.output(0)
    assert re.search(r"^  kheap$", listing, re.M) and re.search(r"^    heap_segment$", listing, re.M) \
        and re.search(r"^    page$", listing, re.M), listing
    assert "1 of 1 printers disabled" in run.output(1) or "disabled" in run.output(1)
    assert "{used, size=" not in run.output(2) and "=" in run.output(2), run.steps[2]
    assert "flags=" not in run.output(5), run.steps[5]                  # page printer off
    assert "{used, size=" in run.output(6), run.steps[6]                 # segment printer on


@pytest.mark.parametrize("arch", ARCHES)
def test_watch_off_after_a_failed_watch_on_says_nothing_was_set(kernel_build, arch):
    run = run_gdb(kernel_build[arch], 0, ["kheap watch on", "kheap watch off"], connect=False, post=())
    one_line_error(run.steps[0])
    text = run.output(1) + run.steps[1].error
    assert "nothing to remove" in text and "breakpoints removed" not in text, text
    if not _lldb():
        return
    run = run_lldb(kernel_build[arch], 0, ["kheap watch on", "kheap watch off"], connect=False, post=())
    text = run.output(1) + run.steps[1].error
    assert "nothing to remove" in text and "breakpoints removed" not in text, run.steps
