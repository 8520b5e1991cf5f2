"""kheap watch in the real lldb 14 against the real kernel in QEMU, both builds.

The same core (gdbext/core/watch.py) as in gdb, fed by lldb breakpoints with script callbacks
(gdbext/frontends/lldb_watch.py). Each test boots its own VM halted at the first instruction
(lldb 14 connects cleanly only to a paused QEMU), turns the watch on and runs the scenario.

``stress`` is left to gdb: an lldb breakpoint hit costs ~4 ms (gdb's stop/resume is cheaper),
so its 47,600 hits take over 3 minutes (README, bench/bench_watch.py).
"""

import pytest

from debuggers import run_lldb
from expectations import ARCHES
from test_lldb import _require_lldb  # noqa: F401 - the session-wide skip without lldb
from test_watch import STATS, no_traceback

pytestmark = [pytest.mark.qemu, pytest.mark.lldb]


@pytest.mark.parametrize("arch", ARCHES)
def test_double_free_stops_at_the_second_kfree(start_vm, arch):
    vm = start_vm(arch, "double-free", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port, ["kheap watch on", "process continue",
                                          "kheap watch status --json", "bt 2",
                                          "kheap history --json", "kheap watch off --json",
                                          "breakpoint list"])
    no_traceback(run)
    stop = run.json(2)["last_stop"]
    assert stop["reason"] == "bad-pointer"
    assert [f["code"] for f in stop["findings"]] == ["HEAP-DOUBLE-FREE"]
    op, first = stop["operation"], stop["first_free"]
    assert op["kind"] == "kfree" and first["kind"] == "kfree" and first["pointer"] == op["pointer"]
    assert first["caller"].startswith("scenario_double_free+") and first["caller_pc"] != op["caller_pc"]
    assert stop["allocated_by"]["kind"] == "kmalloc"
    # The callback prints the report on lldb's own output, as a stop reason would be.
    assert "HEAP-DOUBLE-FREE" in run.stdout and f"first freed by: #{first['index']}" in run.stdout
    assert first["caller"] in run.stdout
    assert "kfree" in run.output(3).splitlines()[1]             # stopped at the second kfree
    assert [o["kind"] for o in run.json(4)["operations"]].count("kfree") == 2
    assert run.json(5)["breakpoints"] == 0
    assert "kheap-watch" not in run.output(6)                  # watch off removed every breakpoint


@pytest.mark.parametrize("arch", ARCHES)
def test_clean_counts_exactly_what_heap_stats_counts(start_vm, arch):
    vm = start_vm(arch, "clean", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port, ["kheap watch on", "breakpoint set -n kheap_checkpoint",
                                          "process continue", "kheap watch status --json"])
    no_traceback(run)
    status = run.json(3)
    assert status["last_stop"] is None and status["stops"] == 0, status["last_stop"]
    assert status["internal_errors"] == 0
    vm.wait_for("KHEAP-READY", timeout=60)
    truth = vm.checkpoints()[-1].stats
    counters = status["counters"]
    assert {k: counters[k] for k in STATS} == {k: truth[k] for k in STATS}
    assert counters["unmatched_returns"] == 0 and counters["abandoned_calls"] == 0
    assert status["live"] == sum(1 for _, _, state in vm.checkpoints()[-1].segments if state == "used")


@pytest.mark.parametrize("arch", ARCHES)
def test_leaks_grouped_by_caller(start_vm, arch):
    vm = start_vm(arch, "leak", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port, [
        "kheap watch on", "breakpoint set -n kheap_checkpoint", "process continue",   # leak-1
        "kheap leaks --json", "kheap leaks --mark", "process continue",                 # leak-2
        "kheap leaks --json", "kheap leaks"])
    no_traceback(run)
    first = {g["caller"]: g for g in run.json(3)["groups"]}
    assert first["leak_handle_request"]["count"] == 3
    assert first["scenario_leak"]["count"] == 4
    groups = run.json(6)["groups"]
    assert [g["caller"] for g in groups] == ["leak_handle_request", "scenario_leak"]
    assert groups[0]["count"] == 57 and groups[1]["count"] == 4
    assert "leak_handle_request" in run.output(7) and "57 blocks" in run.output(7)
