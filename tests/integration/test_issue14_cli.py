"""Issue 14, the CLI's items against the real kernel in QEMU, through the real ``kheap``
process (and gdb and lldb where an item says "in every face"): a cut image or core is never
OK (3), a stripped ELF with --heap-start walks (5), sizes (6), what ADDR means (7), snapshot
needs a file (13), run.sh's port (15), and the smaller ones (16). VMs come from the shared
pool and are only read.
"""

import json
import os
import shutil
import signal
import subprocess

import pytest

from debuggers import REPO, run_gdb, run_lldb
from test_cli import assert_one_line_error, kheap, qemu_core

pytestmark = [pytest.mark.qemu]

STRIP = {"arm": "arm-none-eabi-strip", "aarch64": "aarch64-linux-gnu-strip"}


def remote_of(vm):
    return ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]


def heap_of(vm):
    """(heap start, heap end, address of the last segment) at the last checkpoint."""
    segments = vm.checkpoints()[-1].segments
    last = segments[-1]
    return segments[0][0], last[0] + last[1], last[0]


# -- item 3 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ("arm", "aarch64"))
def test_a_cut_image_or_core_is_incomplete_never_ok(vm_pool, tmp_path, arch):
    vm = vm_pool.get(arch, "clean")
    _, end, last = heap_of(vm)
    cut = end - 0x800                                   # inside the last (free) segment
    assert cut > last + 64
    raw = tmp_path / "cut.raw"
    raw.write_bytes(vm.read_phys(0, cut))
    proc = kheap("check", "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("kheap check: INCOMPLETE - 0 errors, 0 warnings"), proc.stdout
    assert "2048 bytes of the heap could not be read" in proc.stdout, proc.stdout
    quiet = kheap("check", "-q", "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert quiet.returncode == 2 and quiet.stdout.startswith("kheap: heap INCOMPLETE"), quiet.stdout
    # A QEMU core that stops inside the heap, checked alone and among others.
    core = qemu_core(vm, tmp_path / "cut.core", length=cut)
    whole = qemu_core(vm, tmp_path / "whole.core")
    proc = kheap("check", "--json", "--core", core, "--elf", vm.elf)
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["verdict"] == "incomplete", proc.stdout[-2000:]
    assert report["unread"] == [{"start": cut, "end": end, "bytes": end - cut}]
    many = kheap("check", "--core", core, "--core", whole, "--elf", vm.elf)
    assert many.returncode == 2 and "cut.core: INCOMPLETE" in many.stdout and "whole.core: OK" in many.stdout
    os.unlink(core)
    os.unlink(whole)


# -- item 5 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ("arm", "aarch64"))
def test_stripped_elf_with_heap_start_checks_and_hints_name_each_face(vm_pool, tmp_path, arch):
    if shutil.which(STRIP[arch]) is None:
        pytest.skip(f"{STRIP[arch]} not installed")
    vm = vm_pool.get(arch, "clean")
    start, end, _ = heap_of(vm)
    stripped = tmp_path / "stripped.elf"
    subprocess.run([STRIP[arch], "--strip-all", "-o", str(stripped), str(vm.elf)], check=True)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", stripped]
    line = assert_one_line_error(kheap("check", *remote))
    assert line.endswith(": give --heap-start ADDR (and --heap-size BYTES)") and "give heap_start" not in line, line
    proc = kheap("check", "--json", "--heap-start", hex(start), "--heap-size", "1M", *remote)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "ok" and report["segments"] == len(vm.checkpoints()[-1].segments)
    assert any("the walk starts at the heap start" in n for n in report["notes"]), report["notes"]
    gdb = run_gdb(stripped, vm.gdb_port, ["kheap check", f"set kheap heap-start {start:#x}",
                                          "set kheap heap-size 1M", "kheap check --json"])
    assert "give set kheap heap-start ADDR (and set kheap heap-size BYTES)" in \
        gdb.output(0) + gdb.steps[0].error + gdb.stderr, gdb.steps[0]
    assert gdb.json(3)["verdict"] == "ok"


# -- items 6 and 7: sizes, and what ADDR means, in every face -----------------------------------------
@pytest.mark.parametrize("arch", ("arm", "aarch64"))
def test_find_and_sizes_mean_the_same_in_every_face(vm_pool, arch):
    vm = vm_pool.get(arch, "uaf")
    start, _, _ = heap_of(vm)
    expressions = ["kmalloc", "panic_info", "heap_segment_list_head", "&heap_segment_list_head",
                   f"{start:#x}+0x44", "heap_segment_list_head+1", "uaf_blocks"]
    commands = [f"kheap find --json {e}" for e in expressions]
    cli = []
    for e in expressions:
        proc = kheap("find", "--json", e, *remote_of(vm))
        assert proc.returncode == 0, (e, proc.stderr)
        cli.append(json.loads(proc.stdout)["address"])
    gdb = run_gdb(vm.elf, vm.gdb_port, commands + ["set kheap heap-size 1M", "kheap info --json"])
    vm.qmp("stop")
    lldb = run_lldb(vm.elf, vm.gdb_port, commands + ["kheap set heap-size 1M", "kheap info --json"])
    for i, e in enumerate(expressions):
        assert gdb.json(i)["address"] == cli[i], (e, gdb.steps[i])
        assert lldb.json(i)["address"] == cli[i], (e, lldb.steps[i])
    assert cli[2] == start and cli[4] == start + 0x44 and cli[5] > start       # ptr+1: the next header (C)
    assert cli[1] != cli[2] and cli[3] != cli[2]                                 # a struct, &ptr: addresses
    assert gdb.json(len(expressions) + 1)["heap"]["size"] == 1 << 20
    assert lldb.json(len(expressions) + 1)["heap"]["size"] == 1 << 20
    proc = kheap("info", "--json", "--heap-size", "1M", *remote_of(vm))
    assert proc.returncode == 0 and json.loads(proc.stdout)["heap"]["size"] == 1 << 20
    assert "power of two" in assert_one_line_error(kheap("check", "--block-size", "1000", *remote_of(vm)))


# -- items 13 and 16 ------------------------------------------------------------------------------
def test_cli_usage_errors_and_words(vm_pool, tmp_path):
    vm = vm_pool.get("arm", "stress")
    remote = remote_of(vm)
    assert "give -o FILE" in assert_one_line_error(kheap("snapshot", "a", *remote))
    assert "at least 1" in assert_one_line_error(kheap("map", "--cells", "0", *remote))
    assert "--context goes with --around" in assert_one_line_error(kheap("walk", "--context", "3", *remote))
    proc = kheap("map", "--json", *remote)
    report = json.loads(proc.stdout)
    words = " ".join(report["legend"].values())
    assert all(r["state"] in words for r in report["regions"]) and report["regions_not_shown"] > 0
    text = kheap("map", *remote).stdout
    assert f"... {report['regions_not_shown']} more regions not shown (--limit 0 shows all)" in text
    assert len(kheap("map", "--limit", "0", *remote).stdout.splitlines()) > len(text.splitlines())
    bitfield = REPO / "kernel" / "build" / "bitfield" / "arm" / "kernel.elf"
    if bitfield.is_file():
        info = kheap("info", "--elf", bitfield).stdout
        assert "1..31 (31 bits)" in info and "65+31" not in info, info


def test_run_sh_refuses_a_port_out_of_range():
    proc = subprocess.Popen([str(REPO / "qemu" / "run.sh"), "--arch", "arm", "--gdb-port", "210412"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)             # it booted QEMU: the bug
        proc.communicate()
        pytest.fail("qemu/run.sh --gdb-port 210412 booted QEMU")
    assert proc.returncode == 2 and "port 210412 is out of range (1-65535)" in err, (out, err)


def test_readme_examples_are_what_the_kernel_prints(vm_pool):
    """The README's pretty-printer line is what gdb prints on the bundled arm kernel (clean)."""
    vm = vm_pool.get("arm", "clean")
    printed = run_gdb(vm.elf, vm.gdb_port, ["print *heap_segment_list_head"]).output(0).strip()
    readme = (REPO / "README.md").read_text()
    assert printed.startswith("$1 = heap_segment_t {") and printed in readme, printed
