"""kheap inside the real lldb 14, attached to the real kernel in QEMU, both builds.

The JSON lldb prints is compared field by field with what gdb prints on the same VM at the
same moment (not with a copied expectation), so the two faces cannot drift apart.

lldb 14 loses its handshake when it connects to a *running* QEMU (QEMU's unsolicited stop
reply answers lldb's QStartNoAckMode), so every test pauses the VM through QMP first; users
get the same effect from ``kheap connect`` or by starting QEMU halted (see README).
"""

import os
import re
import shutil
import subprocess

import pytest

from debuggers import LLDB, REPO, lldb_argv, run_gdb, run_lldb
from expectations import ARCHES, CORRUPTION_CODES, HEALTHY, assert_expected_findings
from gdbext.core.text import plural

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


# -- issue 14 ----------------------------------------------------------------------------------

def _verdicts(text):
    return [line for line in text.splitlines() if line.startswith("kheap: heap ")]


@pytest.mark.parametrize("arch", ARCHES)
def test_auto_check_is_one_stop_hook_and_every_stop_still_stops(start_vm, arch):
    """Issue 14 #2: 'on' twice (or 'kheap set auto-check on') keeps one stop hook, 'off'
    removes it, and the user's breakpoint stops at every hit: kmalloc(24), (64), (64)."""
    vm = start_vm(arch, "overflow", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port, [
        "kheap auto-check on", "kheap auto-check on", "target stop-hook list",           # 0-2
        "breakpoint set -n kmalloc", "process continue", "process continue",              # 3-5
        "kheap set auto-check on", "target stop-hook list", "process continue",           # 6-8
        "kheap auto-check off", "target stop-hook list", "kheap show auto-check",         # 9-11
        "breakpoint set -n kheap_checkpoint", "process continue",                         # 12-13
    ], connect=False, pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",))
    assert len(run.steps) == 14, run.stdout[-2000:] + run.stderr[-2000:]
    for step in run.steps:
        assert not step.error and "Traceback" not in step.output, step
    assert run.output(2).count("AutoCheckHook") == 1 and run.output(7).count("AutoCheckHook") == 1
    sizes = [re.search(r"kmalloc\(bytes=(\d+)\)", run.output(i)) for i in (4, 5, 8)]
    assert [int(m.group(1)) if m else None for m in sizes] == [24, 64, 64], \
        [run.output(i)[-300:] for i in (4, 5, 8)]
    # The stop hook prints on lldb's own output: one verdict per stop while on, none after off.
    assert _verdicts(run.stdout) == [f"kheap: heap OK (0 errors, 0 warnings, {plural(n, 'segment')})"
                                     for n in (1, 2, 3)], run.stdout[-3000:]
    assert "AutoCheckHook" not in run.output(10) and "is off" in run.output(11)
    assert "kheap_checkpoint" in run.output(13)


def test_hints_name_lldbs_own_commands(vm_pool):
    """Issue 14 #10: lldb's hints name lldb's spelling: 'kheap connect HOST:PORT' (plain
    gdb-remote fails on a running QEMU) and 'kheap set debug on' (lldb has no 'set kheap')."""
    vm = vm_pool.get("aarch64", "clean")
    alone = run_lldb(vm.elf, 0, ["kheap check", "kheap walk --json"], connect=False, post=())
    for step, name in zip(alone.steps, ("check", "walk")):
        assert step.error.strip() == \
            f"error: kheap {name}: no live target: connect first (kheap connect HOST:PORT)", step
    # A bug in kheap's own code (planted here: heap_stats is gone) is one line naming the
    # setting as lldb spells it; with that setting on, the traceback follows.
    plant = "script import gdbext.frontends.commands as c; c.heap_stats = None"
    run = run_lldb(vm.elf, vm.gdb_port, [plant, "kheap stats", "kheap set debug on", "kheap stats"],
                   connect=False, pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",))
    first = run.steps[1].error.strip()
    assert first.startswith("error: kheap stats: internal error: TypeError") and \
        first.endswith("(kheap set debug on for details)") and first.count("\n") == 0, first
    assert "Traceback" in run.steps[3].error and "set kheap debug" not in run.steps[3].error


def _fake_python(root):
    """A python3 that is not the system's, first on PATH: a venv-like directory (pyvenv.cfg,
    as pyenv's and conda's interpreters or an activated venv give) whose python3 prints garbage.
    lldb's embedded Python takes its prefix from it and loses the system's dist-packages."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python3"
    python.write_text("#!/bin/sh\necho 'garbage from a python3 that is not the system one'\nexit 3\n")
    python.chmod(0o755)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")


def test_launcher_loads_kheap_whatever_python3_is_first_on_path(vm_pool, tmp_path, monkeypatch):
    """Issue 14 #18: with another python3 first on PATH plain lldb fails before kheap loads;
    kheap-lldb (install.sh links it as .venv/bin/kheap-lldb) loads kheap and checks the heap."""
    launcher = REPO / ".venv" / "bin" / "kheap-lldb"
    assert launcher.resolve() == LLDB.resolve(), "run ./install.sh: it links .venv/bin/kheap-lldb"
    env = _fake_python(tmp_path / "fakepy")
    plain = subprocess.run([shutil.which("lldb", path="/usr/bin:/bin") or "lldb", "--batch",
                            "--no-lldbinit", "-o",
                            f"command script import {REPO / 'gdbext' / 'lldbinit.py'}"],
                           env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "kheap loaded" not in plain.stdout, "the fake python3 no longer breaks plain lldb: " \
        "this test would prove nothing"
    vm = vm_pool.get("aarch64", "overflow")
    proc = subprocess.run([str(launcher), "--batch", "--no-lldbinit", "-o", f"target create {vm.elf}",
                           "-o", f"kheap connect 127.0.0.1:{vm.gdb_port}", "-o", "kheap check",
                           "-o", "process detach"],
                          env=dict(env, PYTHONHOME=str(tmp_path / "fakepy"),   # and these
                                   PYTHONPATH=str(tmp_path / "fakepy")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert "kheap loaded" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "kheap check: CORRUPT" in proc.stdout and "HEAP-FLAG" in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    # The test harness starts lldb the same way: the caller's PATH does not matter to it either.
    monkeypatch.setenv("PATH", env["PATH"])
    run = run_lldb(vm.elf, vm.gdb_port, ["kheap check --verdict"], connect=False,
                   pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",))
    assert run.output(0).startswith("kheap: heap CORRUPT"), run.stdout[-2000:]


@pytest.mark.parametrize("arch", ARCHES)
def test_triage_leaks_and_refs_say_what_gdb_says(vm_pool, arch):
    """Issue 14 (conventions): lldb's triage, leaks --scan and refs --dangling equal gdb's on
    the crash scenario, where the stop is in a function inlined into another (kernel_idle into
    kernel_panic): one pc for the physical frame in both, and the same register roots.
    (gdb names a frame's file as DWARF spells it, src/panic.c; lldb and the core, panic.c.)"""
    commands = ["kheap triage --json", "kheap leaks --scan --json", "kheap refs --dangling --json"]
    vm = vm_pool.get(arch, "crash")
    gdb_run = run_gdb(vm.elf, vm.gdb_port, commands)
    vm.qmp("stop")
    try:
        lldb_run = run_lldb(vm.elf, vm.gdb_port, commands)
    finally:
        vm.qmp("cont")
    for index, command in enumerate(commands):
        from_gdb, from_lldb = gdb_run.json(index), lldb_run.json(index)
        for frame in from_gdb.get("stop", {}).get("frames", []):
            frame["source"] = os.path.basename(frame["source"])
        assert from_lldb == from_gdb, command
    frames = lldb_run.json(0)["stop"]["frames"]
    assert [f["function"] for f in frames[:2]] == ["kernel_idle", "kernel_panic"]
    assert frames[0]["pc"] == frames[1]["pc"]


@pytest.mark.parametrize("arch", ARCHES)
def test_find_and_walk_around_leave_the_segment_in_dollar_variables(vm_pool, arch):
    """Issue 14 (conventions): as gdb's $_ and $__ after kheap find / walk --around / refs / show, lldb
    has the persistent variables $_ (the header, typed: p *$_) and $__ (the payload); a pointer
    to a header gets the header's summary (not "<heap_segment_t: 8 bytes, need 24>")."""
    vm = vm_pool.get(arch, "uaf")
    segments = vm.checkpoints()[-1].segments
    (first, first_size, _), (second, second_size, second_state) = segments[0], segments[1]
    vm.qmp("stop")
    run = run_lldb(vm.elf, vm.gdb_port, [
        f"kheap find {second + 1:#x} --json", "p $_", "p *$_", "p $__",             # 0-3
        f"kheap walk --around {first + 1:#x} --context 1", "p $_", "p $__",             # 4-6
        f"kheap refs {second:#x}", "p $_", "p $_->prev->prev",                          # 7-9
        "target variable heap_segment_list_head", f"kheap show {first + 1:#x}", "p $_"])  # 10-12
    for step in run.steps:
        assert not step.error and "Traceback" not in step.output, step
    width = 16 if arch == "aarch64" else 8

    def pointer(name, address, state, size):
        return f"{name} = 0x{address:0{width}x} heap_segment_t {{{state}, size={size}"

    match = run.json(0)["match"]["segment"]
    assert match["address"] == second
    assert pointer("(heap_segment_t *) $_", second, second_state, second_size) in run.output(1)
    assert run.output(2).startswith(f"(heap_segment_t) $0 = heap_segment_t {{{second_state}, "
                                    f"size={second_size}")
    assert run.output(3).strip() == f"(void *) $__ = 0x{match['payload']:0{width}x}"
    assert pointer("$_", first, "used", first_size) in run.output(5)
    assert run.output(6).strip() == f"(void *) $__ = 0x{first + match['payload'] - second:0{width}x}"
    assert pointer("$_", second, second_state, second_size) in run.output(8)
    assert run.output(9).strip().endswith("= NULL")                   # first's prev: no summary
    assert pointer("heap_segment_list_head", first, "used", first_size) in run.output(10)
    assert pointer("$_", first, "used", first_size) in run.output(12)                # kheap show
