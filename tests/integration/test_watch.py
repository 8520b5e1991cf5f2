"""kheap watch in the real gdb-multiarch against the real kernel in QEMU, both builds.

Each test boots its own VM halted at the first instruction, so the watch is on before the
kernel's first allocator call; it then runs the scenario under the watch.
"""

import pytest

from debuggers import run_gdb
from expectations import ARCHES, CORRUPTION_CODES, assert_expected_findings

pytestmark = [pytest.mark.qemu, pytest.mark.gdb]

STATS = ("allocations", "frees", "failed", "bytes_requested", "bytes_allocated", "bytes_freed",
         "current_usage", "peak_usage")


def no_traceback(run):
    for step in run.steps:
        assert "Traceback" not in step.output + step.error, step
        assert "internal error" not in step.output + step.error, step
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_double_free_stops_at_the_second_kfree(start_vm, arch):
    vm = start_vm(arch, "double-free", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "continue", "kheap watch status --json",
                                         "bt 2", "kheap history --json", "kheap watch off --json"])
    no_traceback(run)
    said = run.output(1)
    assert "HEAP-DOUBLE-FREE" in said and "first freed by" in said, said
    stop = run.json(2)["last_stop"]
    assert stop["reason"] == "bad-pointer"
    assert [f["code"] for f in stop["findings"]] == ["HEAP-DOUBLE-FREE"]
    op, first = stop["operation"], stop["first_free"]
    assert op["kind"] == "kfree" and first["kind"] == "kfree" and first["pointer"] == op["pointer"]
    assert first["caller"].startswith("scenario_double_free+") and first["caller_pc"] != op["caller_pc"]
    assert first["caller"] in said                       # the report names the first free's caller
    assert stop["allocated_by"]["kind"] == "kmalloc"
    assert "kfree" in run.output(3).splitlines()[0]      # stopped at the second kfree's entry
    history = run.json(4)["operations"]
    assert [o["kind"] for o in history].count("kfree") == 2
    assert run.json(5)["breakpoints"] == 0


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", ["overflow", "uaf"])
def test_corruption_outside_the_allocator_stops_at_the_checkpoint(start_vm, arch, scenario):
    vm = start_vm(arch, scenario, halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "continue", "kheap watch status --json",
                                         "bt 1"])
    no_traceback(run)
    stop = run.json(2)["last_stop"]
    assert stop is not None, run.output(1)
    # strcpy and the late callback write outside any allocator call: no operation before the
    # checkpoint leaves a corrupt heap, and the checkpoint's full check finds it.
    assert stop["reason"] == "checkpoint", stop
    assert_expected_findings(scenario, {"findings": stop["findings"], "verdict": "corrupt"})
    assert "kheap_checkpoint" in run.output(3)
    status = run.json(2)
    assert status["counters"]["unmatched_returns"] == 0 and not status["pending"]
    if scenario == "uaf":
        kinds = [o["kind"] for o in stop["history"]]
        assert kinds == ["kcalloc", "kfree"], kinds           # who allocated, who freed the block


@pytest.mark.parametrize("arch", ARCHES)
def test_continuing_past_the_double_free_stops_again_at_the_checkpoint(start_vm, arch):
    """The user may continue after the stop: the kernel frees the block again (the return is
    still matched), and the checkpoint's full check reports the counters that broke."""
    vm = start_vm(arch, "double-free", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "continue", "continue",
                                         "kheap watch status --json"])
    no_traceback(run)
    status = run.json(3)
    assert status["stops"] == 2
    assert status["last_stop"]["reason"] in ("checkpoint", "corrupt-after")
    assert "HEAP-STATS" in {f["code"] for f in status["last_stop"]["findings"]}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", ["clean", "stress"])
def test_healthy_runs_count_exactly_what_heap_stats_counts(start_vm, arch, scenario):
    vm = start_vm(arch, scenario, halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "break kheap_checkpoint", "continue",
                                         "kheap watch status --json", "kheap stats --json"],
                  timeout=600)
    no_traceback(run)
    status = run.json(3)
    assert status["last_stop"] is None and status["stops"] == 0, status["last_stop"]
    vm.wait_for("KHEAP-READY", timeout=60)
    truth = vm.checkpoints()[-1].stats
    counters = status["counters"]
    assert {k: counters[k] for k in STATS} == {k: truth[k] for k in STATS}
    assert counters["unmatched_returns"] == 0 and counters["abandoned_calls"] == 0
    assert status["live"] == sum(1 for _, _, state in vm.checkpoints()[-1].segments if state == "used")
    if scenario == "stress":
        assert counters["operations"] > 10000


@pytest.mark.parametrize("arch", ARCHES)
def test_leaks_grouped_by_caller(start_vm, arch):
    vm = start_vm(arch, "leak", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, [
        "kheap watch on", "break kheap_checkpoint", "continue",     # leak-1
        "kheap leaks --json", "kheap leaks --mark", "continue",      # leak-2
        "kheap leaks --json", "kheap leaks", "kheap history --limit 3"])
    no_traceback(run)
    first = {g["caller"]: g for g in run.json(3)["groups"]}
    assert first["leak_handle_request"]["count"] == 3
    assert first["scenario_leak"]["count"] == 4               # leak_sessions[0..3]
    since_mark = run.json(6)
    groups = since_mark["groups"]
    assert [g["caller"] for g in groups] == ["leak_handle_request", "scenario_leak"]
    assert groups[0]["count"] == 57 and groups[1]["count"] == 4
    assert groups[0]["bytes"] > groups[1]["bytes"]
    assert "leak_handle_request" in run.output(7) and "57 blocks" in run.output(7)
    assert len(run.output(8).strip().splitlines()) == 4


def test_watch_needs_gdb_and_a_recorded_history(start_vm):
    vm = start_vm("arm", "clean", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap history", "kheap leaks", "kheap watch",
                                         "kheap watch on", "kheap watch status", "kheap watch off",
                                         "kheap watch status"])
    no_traceback(run)
    assert "kheap watch on" in run.steps[0].output + run.steps[0].error
    assert "never turned on" in run.output(2)
    assert "breakpoints" in run.output(3)
    assert "kheap watch: on" in run.output(4)
    assert "breakpoints removed" in run.output(5)
    assert "kheap watch: off" in run.output(6)
