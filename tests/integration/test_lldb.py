"""kheap inside the real lldb 14, attached to the real kernel in QEMU, both builds.

The JSON lldb prints is compared field by field with what gdb prints on the same VM at the
same moment (not with a copied expectation), so the two faces cannot drift apart.

lldb 14 loses its handshake when it connects to a *running* QEMU (QEMU's unsolicited stop
reply answers lldb's QStartNoAckMode), so every test pauses the VM through QMP first; users
get the same effect from ``kheap connect`` or by starting QEMU halted (see README).
"""

import subprocess

import pytest

from debuggers import lldb_argv, run_gdb, run_lldb
from expectations import ARCHES, CORRUPTION_CODES, HEALTHY, assert_expected_findings

pytestmark = [pytest.mark.qemu, pytest.mark.lldb]


def _lldb_has_python():
    proc = subprocess.run(lldb_argv("--batch", "--no-lldbinit", "-o", "script print(1 + 1)",
                                    load=False),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return "2" in proc.stdout.splitlines()[-1:] or "\n2\n" in proc.stdout


@pytest.fixture(scope="session", autouse=True)
def _require_lldb():
    if not _lldb_has_python():
        pytest.skip("lldb with a working Python module is not installed (run install.sh)")


COMMANDS = ["kheap walk --json", "kheap check --json"]
_pairs = {}


def faces(vm_pool, arch, scenario):
    """(vm, gdb Run, lldb Run) for one scenario, computed once per session."""
    key = (arch, scenario)
    if key not in _pairs:
        vm = vm_pool.get(arch, scenario)
        gdb_run = run_gdb(vm.elf, vm.gdb_port, COMMANDS)
        vm.qmp("stop")
        lldb_run = run_lldb(vm.elf, vm.gdb_port, COMMANDS)
        assert len(lldb_run.steps) == len(COMMANDS), lldb_run.stdout + lldb_run.stderr
        _pairs[key] = (vm, gdb_run, lldb_run)
    return _pairs[key]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", HEALTHY + tuple(sorted(CORRUPTION_CODES)))
def test_lldb_json_equals_gdb_json(vm_pool, arch, scenario):
    vm, gdb_run, lldb_run = faces(vm_pool, arch, scenario)
    for index, name in enumerate(("walk", "check")):
        from_gdb, from_lldb = gdb_run.json(index), lldb_run.json(index)
        assert from_lldb.keys() == from_gdb.keys(), name
        for field in from_gdb:
            assert from_lldb[field] == from_gdb[field], (name, field)
    check = lldb_run.json(1)
    if scenario in CORRUPTION_CODES:
        assert_expected_findings(scenario, check)
    else:
        assert check["verdict"] == "ok"
        truth = vm.checkpoints()[-1].segments
        assert [(s["address"], s["size"], s["state"]) for s in lldb_run.json(0)["segments"]] == \
            [tuple(t) for t in truth]


@pytest.mark.parametrize("arch", ARCHES)
def test_summaries_help_settings_and_errors(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    truth = vm.checkpoints()[-1].segments
    vm.qmp("stop")
    run = run_lldb(vm.elf, vm.gdb_port,
                   ["target variable *heap_segment_list_head", "help kheap", "help kheap walk",
                    "kheap set heap-size nonsense", "kheap show block-size", "kheap walk --limit x",
                    "kheap nosuch", "kheap find 0x10", "kheap walk --around heap_segment_list_head --context 1"])
    summary = run.output(0)
    assert f"heap_segment_t {{used, size={truth[0][1]}" in summary, summary
    assert "walk" in run.output(1) and "triage" in run.output(1)
    assert "example: kheap walk" in run.output(2)
    for index in (3, 5):
        assert run.steps[index].error.count("\n") <= 1 and "kheap" in run.steps[index].error
    assert "4096" in run.output(4)
    assert "not in any heap segment" in run.output(7)
    around = run.output(8)
    assert around.count("used") + around.count("free") >= 2
    for step in run.steps:
        assert "Traceback" not in step.output + step.error


@pytest.mark.parametrize("arch", ARCHES)
def test_auto_check_verdict_at_a_breakpoint(start_vm, arch):
    vm = start_vm(arch, "backlink", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port,
                   ["kheap auto-check on", "breakpoint set -n kheap_checkpoint", "process continue"],
                   post=("process detach",), timeout=120)
    seen = run.stdout + "".join(s.output for s in run.steps)
    assert "kheap: heap CORRUPT" in seen, seen[-3000:]


@pytest.mark.parametrize("arch", ARCHES)
def test_heap_unchanged_and_connect_retries(vm_pool, arch):
    vm = vm_pool.get(arch, "overflow")
    start = vm.checkpoints()[-1].segments[0][0]
    before = vm.read_phys(start, 1024 * 1024)
    # The VM is running: plain gdb-remote would lose its handshake; kheap connect must not.
    run = run_lldb(vm.elf, vm.gdb_port,
                   ["process status", "kheap info", "kheap walk",
                    "kheap check", "kheap stats", "kheap map", "kheap pages", "kheap snapshot s",
                    "kheap diff s", "kheap triage", f"kheap find {start + 20:#x}"],
                   connect=False, pre=("kheap connect 127.0.0.1:%d" % vm.gdb_port,))
    assert "stopped" in run.output(0), run.stdout[-2000:]
    for step in run.steps[1:]:
        assert step.output and "Traceback" not in step.output + step.error, step
    assert vm.read_phys(start, 1024 * 1024) == before


@pytest.mark.parametrize("arch", ARCHES)
def test_dead_target_is_a_one_line_error_and_lldb_still_answers(start_vm, arch):
    vm = start_vm(arch, "clean")
    vm.qmp("stop")
    pid = vm.proc.pid
    run = run_lldb(vm.elf, vm.gdb_port,
                   ["kheap check --json",
                    f"script import os, signal, time; os.kill({pid}, signal.SIGKILL); time.sleep(0.5)",
                    "kheap check", "kheap walk", "expr 6 * 7"], post=())
    assert run.json(0)["verdict"] == "ok"
    for step in run.steps[2:4]:
        text = step.error.strip()
        assert text.count("\n") == 0 and "the target is gone" in text and "Traceback" not in text, step
    assert "42" in run.output(4)
