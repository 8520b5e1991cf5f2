"""``kheap leaks --scan`` and ``kheap refs`` against the real kernel in QEMU, both builds, in
gdb, lldb, the CLI live and offline (a ``kheap dump``, a QEMU core, a raw image).

The expectations are the kernel's own, exact:

- ``leak``: at checkpoint leak-1 the 3 replies ``leak_handle_request`` lost, at leak-2 those
  and 57 more; never a block ``leak_sessions`` holds;
- ``clean``: nothing; ``stress``: exactly the blocks it forgets on purpose, which it keeps,
  complemented (so they are no pointers), in ``stress_lost``;
- ``uaf``: the freed session is still pointed at by ``uaf_blocks[1]``.
"""

import json
import os
import re

import pytest

from debuggers import run_gdb, run_lldb
from expectations import ARCHES
from test_cli import kheap, qemu_core
from test_lldb import _require_lldb  # noqa: F401 - the session-wide skip without lldb

from gdbext.core.symbols import load_elf_info

pytestmark = [pytest.mark.qemu]

REPLY = re.compile(r"^[A-Z]eply to request")


def read_words(vm, name, count, size=None):
    elf = load_elf_info(vm.elf)
    size = size or elf.pointer_size
    raw = vm.read_phys(elf.address_of(name), count * size)
    return [int.from_bytes(raw[i * size:(i + 1) * size], "little") for i in range(count)]


def stress_lost(vm):
    """The payloads stress forgot on purpose (kernel/src/scenarios_healthy.c)."""
    p = load_elf_info(vm.elf).pointer_size
    n = read_words(vm, "stress_lost_count", 1, 4)[0]
    return sorted(((1 << (8 * p)) - 1) ^ v for v in read_words(vm, "stress_lost", n))


def lost_payloads(report):
    assert report["report"] == "leak-scan", report
    return sorted(b["payload"] for g in report["groups"] for b in g["blocks"])


def lost_segments(report):
    return sorted(b["address"] for g in report["groups"] for b in g["blocks"])


def expected_leak(vm, checkpoint, sessions, report):
    """Used segments at the checkpoint, less the ones leak_sessions holds (their payloads)."""
    used = [a for a, _, state in checkpoint.segments if state == "used"]
    header = next(b["payload"] - b["address"] for g in report["groups"] for b in g["blocks"])
    held = {p - header for p in sessions}
    assert held <= set(used)
    return sorted(set(used) - held)


def assert_leak_report(vm, report, checkpoint, sessions, count):
    assert report["count"] == count, report["groups"]
    assert lost_segments(report) == expected_leak(vm, checkpoint, sessions, report)
    for g in report["groups"]:
        assert g["text"] is not None and REPLY.match(g["text"]), g
    assert report["walk"]["complete"] and report["scanned"]["unread"] == []


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
def test_leak_scan_at_both_checkpoints_in_gdb_with_callers(start_vm, arch):
    vm = start_vm(arch, "leak", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, [
        "kheap watch on", "break kheap_checkpoint", "continue",
        "kheap leaks --scan --json", "continue",                       # leak-1
        "kheap leaks --scan --json", "kheap leaks --scan", "kheap watch off"])  # leak-2
    for step in run.steps:
        assert "Traceback" not in step.output + step.error, step
    vm.wait_for("KHEAP-READY", timeout=60)
    first, second = vm.checkpoints()
    sessions = read_words(vm, "leak_sessions", 8)
    one, two = run.json(3), run.json(5)
    assert_leak_report(vm, one, first, sessions[:4], 3)
    assert_leak_report(vm, two, second, sessions, 60)
    assert set(lost_segments(one)) < set(lost_segments(two))
    # kheap watch recorded who allocated each lost block.
    for report, count in ((one, 3), (two, 60)):
        callers = {}
        for g in report["groups"]:
            for name, n in g["callers"].items():
                callers[name] = callers.get(name, 0) + n
        assert callers == {"leak_handle_request": count}
    text = run.output(6)
    assert "60 allocated segments" in text and "allocated by" in text and "leak_handle_request" in text
    assert "live from sp" in text


@pytest.mark.lldb
@pytest.mark.parametrize("arch", ARCHES)
def test_leak_scan_at_both_checkpoints_in_lldb(start_vm, arch):
    vm = start_vm(arch, "leak", halt=True)
    run = run_lldb(vm.elf, vm.gdb_port, [
        "breakpoint set -n kheap_checkpoint", "process continue", "kheap leaks --scan --json",
        "process continue", "kheap leaks --scan --json"])
    for step in run.steps:
        assert "Traceback" not in step.output + step.error, step
    vm.wait_for("KHEAP-READY", timeout=60)
    first, second = vm.checkpoints()
    sessions = read_words(vm, "leak_sessions", 8)
    assert_leak_report(vm, run.json(2), first, sessions[:4], 3)
    assert_leak_report(vm, run.json(4), second, sessions, 60)


def _faces(vm_pool, tmp_path, arch, scenario):
    """leaks --scan and refs --dangling of one settled VM: gdb, CLI live, a kheap dump, a QEMU
    core, and lldb (last: it needs the VM paused)."""
    vm = vm_pool.get(arch, scenario)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    out = {}
    gdb = run_gdb(vm.elf, vm.gdb_port, ["kheap leaks --scan --json", "kheap refs --dangling --json"])
    out["gdb"] = (gdb.json(0), gdb.json(1))
    live = kheap("leaks", "--scan", "--json", *remote)
    assert live.returncode in (0, 1) and live.stderr == "", live.stderr
    out["cli"] = (json.loads(live.stdout), json.loads(kheap("refs", "--dangling", "--json", *remote).stdout))
    saved = tmp_path / f"{scenario}.kdump"
    assert kheap("dump", "-o", saved, *remote).returncode == 0
    out["kdump"] = (json.loads(kheap("leaks", "--scan", "--json", "--core", saved).stdout),
                    json.loads(kheap("refs", "--dangling", "--json", "--core", saved).stdout))
    core = qemu_core(vm, tmp_path / f"{scenario}.core")
    out["qemu-core"] = (json.loads(kheap("leaks", "--scan", "--json", "--core", core, "--elf", vm.elf).stdout),
                        json.loads(kheap("refs", "--dangling", "--json", "--core", core, "--elf", vm.elf).stdout))
    os.unlink(core)
    vm.qmp("stop")
    lldb = run_lldb(vm.elf, vm.gdb_port, ["kheap leaks --scan --json", "kheap refs --dangling --json"])
    out["lldb"] = (lldb.json(0), lldb.json(1))
    return vm, out


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", ("clean", "stress"))
def test_healthy_heaps_lose_exactly_what_the_kernel_forgot_in_every_face(vm_pool, tmp_path, arch, scenario):
    vm, faces = _faces(vm_pool, tmp_path, arch, scenario)
    expected = stress_lost(vm) if scenario == "stress" else []
    if scenario == "stress":
        assert len(expected) >= 8
    for face, (scan, dangling) in faces.items():
        assert lost_payloads(scan) == expected, face
        assert scan["walk"]["complete"] and not scan["roots"]["ranges"][0]["missing"], face
        live_stacks = [s for s in scan["roots"]["stacks"] if s["state"] == "live"]
        assert [s["name"] for s in live_stacks] == ["boot_stack"], (face, scan["roots"]["stacks"])
        assert dangling["count"] == 0, (face, dangling["segments"])
    # Every face saw the same roots and the same heap.
    reference = faces["gdb"][0]
    for face, (scan, _) in faces.items():
        assert scan["scanned"] == reference["scanned"], face
        assert scan["roots"]["stacks"] == reference["roots"]["stacks"], face


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
def test_uaf_refs_name_the_global_still_pointing_at_the_freed_session(vm_pool, tmp_path, arch):
    vm = vm_pool.get(arch, "uaf")
    freed = read_words(vm, "uaf_blocks", 3)[1]
    p = load_elf_info(vm.elf).pointer_size
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap refs uaf_blocks[1] --json", "kheap refs --dangling --json",
                                        "kheap refs uaf_blocks[1]", "kheap refs --dangling"])
    refs, dangling = run.json(0), run.json(1)
    assert refs["found"] and refs["segment"]["state"] == "free" and refs["segment"]["payload"] == freed
    assert [(h["kind"], h["symbol"], h["slot"] is not None) for h in refs["holders"]] == \
        [("global", f"uaf_blocks+{p:#x}", True)]
    assert [s["payload"] for s in dangling["segments"]] == [freed]
    assert [h["symbol"] for h in dangling["segments"][0]["holders"]] == [f"uaf_blocks+{p:#x}"]
    assert "dangling pointers" in run.output(2) and f"uaf_blocks+{p:#x}" in run.output(3)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    cli = kheap("refs", "--dangling", "--json", *remote)
    assert cli.returncode == 1 and json.loads(cli.stdout)["segments"] == dangling["segments"]
    cli = kheap("refs", hex(freed + 4), "--json", *remote)          # an interior address
    assert cli.returncode == 0 and json.loads(cli.stdout)["holders"] == refs["holders"]
    saved = tmp_path / "uaf.kdump"
    assert kheap("dump", "-o", saved, *remote).returncode == 0
    offline = kheap("refs", hex(freed), "--json", "--core", saved)
    assert json.loads(offline.stdout)["holders"] == refs["holders"]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_corrupt_heap_is_scanned_as_far_as_it_reads(vm_pool, arch):
    for scenario in ("overflow", "cycle", "wild", "backlink", "tutorial-bug", "crash"):
        vm = vm_pool.get(arch, scenario)
        remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
        proc = kheap("leaks", "--scan", "--json", *remote, timeout=60)
        assert proc.returncode in (0, 1) and proc.stderr == "", (scenario, proc.stderr)
        report = json.loads(proc.stdout)
        if not report["walk"]["complete"]:
            assert any("the walk stopped" in n for n in report["notes"]), (scenario, report["notes"])
        proc = kheap("refs", "--dangling", *remote, timeout=60)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, (scenario, proc.stderr)


def test_raw_images_scan_stacks_whole_and_the_cli_needs_scan(vm_pool, tmp_path):
    vm = vm_pool.get("arm", "stress")
    truth = vm.checkpoints()[-1].segments
    heap_end = truth[-1][0] + truth[-1][1]
    raw = tmp_path / "ram.raw"
    raw.write_bytes(vm.read_phys(0, heap_end))
    proc = kheap("leaks", "--scan", "--json", "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert {s["state"] for s in report["roots"]["stacks"]} == {"whole"}
    assert any("scanned whole" in n for n in report["notes"])
    assert set(lost_payloads(report)) <= set(stress_lost(vm))
    proc = kheap("leaks", "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--scan" in proc.stderr


@pytest.mark.gdb
@pytest.mark.lldb
@pytest.mark.parametrize("arch", ARCHES)
def test_refs_name_the_frame_of_a_stack_slot(start_vm, arch):
    """Stopped in memcpy under krealloc in ``clean``: krealloc saved scenario_clean's registers,
    one of them the first block (``name``), in its frame."""
    header = 16 if arch == "arm" else 32
    command = f'kheap refs "(char *)heap_segment_list_head + {header}" --json'
    vm = start_vm(arch, "clean", halt=True)
    gdb = run_gdb(vm.elf, vm.gdb_port, ["break memcpy", "continue", command])
    vm.stop()
    vm = start_vm(arch, "clean", halt=True)
    lldb = run_lldb(vm.elf, vm.gdb_port, ["breakpoint set -n memcpy", "process continue", command])
    for run in (gdb, lldb):
        refs = run.json(2)
        stack = [h for h in refs["holders"] if h["kind"] == "stack"]
        assert stack, refs["holders"]
        assert {h["frame"]["function"].split("(")[0] for h in stack} == {"krealloc"}, stack
        assert all(h["stack"] == "boot_stack" and h["value"] == refs["segment"]["payload"] for h in stack)
