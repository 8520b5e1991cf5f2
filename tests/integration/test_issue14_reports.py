"""Issue 14, the reports' items, against the real kernel in QEMU through the real faces: the CLI
as a subprocess, gdb-multiarch and lldb (tests/unit/test_issue14_reports.py has the synthetic
side). VMs come from the shared pool and are only read, except where a test boots its own.
"""

import json
import re
import shutil
import subprocess

import pytest

from debuggers import REPO, run_gdb, run_lldb
from expectations import ARCHES

pytestmark = [pytest.mark.qemu]

KHEAP = REPO / ".venv" / "bin" / "kheap"


def kheap(*argv, timeout=120):
    exe = [str(KHEAP)] if KHEAP.exists() else ["python3", "-m", "gdbext"]
    return subprocess.run(exe + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def remote(vm):
    return ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


def no_traceback(run):
    for step in run.steps:
        assert "Traceback" not in step.output + step.error and "internal error" not in step.output + step.error, step
    assert "Traceback" not in run.stdout + run.stderr


# -- item 8: diff -----------------------------------------------------------------------------------
def test_diff_of_snapshots_of_the_two_builds_is_refused(vm_pool, tmp_path):
    files = {}
    for arch in ARCHES:
        vm = vm_pool.get(arch, "clean")
        files[arch] = tmp_path / f"{arch}.json"
        made = kheap("snapshot", arch, "-o", files[arch], *remote(vm))
        assert made.returncode == 0, made.stderr
    line = one_line_error(kheap("diff", files["arm"], files["aarch64"]))
    assert "not snapshots of the same heap" in line and "architecture arm vs aarch64" in line, line


@pytest.mark.parametrize("arch", ARCHES)
def test_diff_lists_payloads_with_a_limit(vm_pool, tmp_path, arch):
    """A snapshot of the stress heap without its first 20 used blocks, diffed with the heap now:
    those 20 are new; listed by payload (the walk's payload) and header, 3 of them with --limit 3."""
    vm = vm_pool.get(arch, "stress")
    snap = json.loads(kheap("snapshot", "s", "--json", *remote(vm)).stdout)
    used = [s for s in snap["segments"] if s[2] == "used"][:20]
    snap["segments"] = [s for s in snap["segments"] if s not in used]
    before = tmp_path / "before.json"
    before.write_text(json.dumps(snap))
    out = kheap("diff", before, "--limit", "3", "--json", *remote(vm))
    assert out.returncode == 0, out.stderr
    diff = json.loads(out.stdout)
    assert diff["counts"]["new"] == 20 and len(diff["new"]) == 3 and diff["not_shown"]["new"] == 17
    walk = {s["address"]: s["payload"] for s in json.loads(kheap("walk", "--json", *remote(vm)).stdout)["segments"]}
    assert all(b["payload"] == walk[b["header"]] != b["header"] for b in diff["new"])
    text = kheap("diff", before, "--limit", "3", *remote(vm)).stdout
    width = 8 if arch == "arm" else 16
    assert f"0x{diff['new'][0]['payload']:0{width}x}" in text and "... 17 more not shown" in text, text


# -- item 9: the culprit line ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_overflow_culprit_is_printed_once_and_says_whose_bytes(vm_pool, arch):
    vm = vm_pool.get(arch, "overflow")
    report = json.loads(kheap("check", "--json", *remote(vm)).stdout)
    victim = report["findings"][0]["address"]
    text = kheap("check", *remote(vm)).stdout
    assert text.count("culprit") == 1, text
    width = 8 if arch == "arm" else 16
    assert f"header at 0x{victim:0{width}x} holds: ascii \"" in text, text


def test_crash_culprit_and_triage_name_the_clobbered_header_and_its_field(vm_pool):
    vm = vm_pool.get("arm", "crash")
    triage = json.loads(kheap("triage", "--json", *remote(vm)).stdout)
    link = triage["fault_origin"]["links"][0]
    culprit = triage["check"]["findings"][0]["culprit"]
    assert culprit["bytes_at"] == link["segment"] != culprit["address"]
    text = kheap("triage", *remote(vm)).stdout
    assert f"header at 0x{link['segment']:08x} holds: binary 00 00 ad de" in text, text
    assert f"read {link['reads']} (offset {link['offset']})" in text and "field offset" not in text
    assert link["reads"] == "is_allocated"
    # Registers in aligned columns: every full row puts its values at the same columns.
    rows = text.split("registers:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(rows) >= 4 and rows[0].split()[:2] == ["r0", "0x0000000a"], rows
    assert len({tuple(m.start() for m in re.finditer("0x", r)) for r in rows[:-1]}) == 1, rows


# -- item 14: the three faces name the stop alike ---------------------------------------------------
def _lldb_works():
    if shutil.which("lldb") is None:
        return False
    proc = subprocess.run(["lldb", "--batch", "--no-lldbinit", "-o", "script print(1 + 1)"],
                          capture_output=True, text=True, timeout=60)
    return "\n2\n" in proc.stdout or proc.stdout.rstrip().endswith("2")


@pytest.mark.parametrize("arch", ARCHES)
def test_triage_names_the_stop_the_same_in_the_cli_gdb_and_lldb(vm_pool, arch):
    if not _lldb_works():
        pytest.skip("lldb with a working Python module is not installed")
    vm = vm_pool.get(arch, "crash")
    cli = json.loads(kheap("triage", "--json", *remote(vm)).stdout)["stop"]
    gdb = run_gdb(vm.elf, vm.gdb_port, ["kheap triage --json", "kheap triage"])
    no_traceback(gdb)
    vm.qmp("stop")                     # lldb 14 cannot connect to a running QEMU (see test_lldb)
    lldb = run_lldb(vm.elf, vm.gdb_port, ["kheap triage --json", "kheap triage"])
    no_traceback(lldb)
    stops = {"cli": cli, "gdb": gdb.json(0)["stop"], "lldb": lldb.json(0)["stop"]}
    named = {face: (s["pc"], s["function"], s.get("inlined"), s.get("source")) for face, s in stops.items()}
    assert len(set(named.values())) == 1, named
    pc, function, inlined, source = named["cli"]
    assert function.startswith("kernel_panic+0x") and inlined == "kernel_idle" and source.startswith("panic.c:")
    said = f"in kernel_idle (inlined in {function}) at {source}"
    for text in (kheap("triage", *remote(vm)).stdout, gdb.output(1), lldb.output(1)):
        assert said in text, text


# -- kheap show -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_show_in_the_cli(vm_pool, arch):
    vm = vm_pool.get(arch, "overflow")
    walk = json.loads(kheap("walk", "--json", *remote(vm)).stdout)
    first = walk["segments"][0]
    out = kheap("show", hex(first["payload"] + 5), "--bytes", "32", *remote(vm))
    assert out.returncode == 1, out.stderr                  # it overflowed into its neighbour
    text = out.stdout
    assert "payload offset 5" in text and "sensor 3 reported an out-of-range reading; retrying"[:16] in text
    for name in ("next", "prev", "is_allocated", "segment_size"):
        assert re.search(rf"^  {name} ", text, re.M), text
    assert "|sensor 3 reporte|" in text and "first 32 of" in text
    assert "culprit" in text and "HEAP-" in text
    data = json.loads(kheap("show", hex(first["address"]), "--json", *remote(vm)).stdout)
    assert data["segment"] == first and data["payload"]["shown"] == min(64, data["payload"]["size"])
    assert {f["relation"] for f in data["findings"]} == {"culprit"}
    line = one_line_error(kheap("show", "kmalloc+0x10", *remote(vm)))
    assert "is in .text: kmalloc+0x10" in line and "no segment to show" in line


@pytest.mark.parametrize("arch", ARCHES)
def test_show_in_gdb(vm_pool, arch):
    vm = vm_pool.get(arch, "uaf")
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap show uaf_blocks[1]", "kheap show uaf_blocks[1] --json --bytes 8",
                                         "kheap show heap_segment_list_head", "kheap show &panic_info"])
    no_traceback(run)
    text = run.output(0)
    assert "segment at" in text and ": free," in text and "HEAP-POISON" in text, text
    assert "|" in text and "payload offset 0" in text
    data = run.json(1)
    assert data["segment"]["state"] == "free" and data["payload"]["shown"] == 8
    assert [f["code"] for f in data["findings"]] == ["HEAP-POISON"]
    assert "findings touching it: none" in run.output(2), run.output(2)
    said = (run.steps[3].output + run.steps[3].error).strip()         # gdb prints the one error line
    assert said.startswith("kheap show: ") and "is in .bss: panic_info" in said and "\n" not in said, said


# -- find outside the heap ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_find_outside_the_heap_says_what_it_is(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    out = kheap("find", "kmalloc+0x10", *remote(vm))
    assert out.returncode == 0 and "is in .text: kmalloc+0x10" in out.stdout, out.stdout
    info = json.loads(kheap("info", "--json", *remote(vm)).stdout)
    array = info["heap"]["page_array"]
    size = info["elf"]["layouts"]["page"]["size"]
    data = json.loads(kheap("find", hex(array + 3 * size + 4), "--json", *remote(vm)).stdout)
    assert data["where"]["kind"] == "page-array" and data["where"]["page"] == 3 and data["where"]["offset"] == 4
    assert "is in the page array: page_t #3" in kheap("find", hex(array + 3 * size), *remote(vm)).stdout
    stack = json.loads(kheap("find", "boot_stack_top-16", "--json", *remote(vm)).stdout)
    assert stack["where"]["kind"] == "stack" and stack["where"]["stack"] == "boot_stack", stack
    assert stack["where"]["below_top"] == 16


# -- walk --around, double free ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_walk_around_marks_the_row_and_double_free_is_named(vm_pool, arch):
    vm = vm_pool.get(arch, "clean")
    segments = json.loads(kheap("walk", "--json", *remote(vm)).stdout)["segments"]
    middle = segments[len(segments) // 2]
    text = kheap("walk", "--around", hex(middle["payload"] + 3), "--context", "1", *remote(vm)).stdout
    marked = [line for line in text.splitlines() if line.lstrip().startswith("->")]
    width = 8 if arch == "arm" else 16
    assert len(marked) == 1 and f"0x{middle['address']:0{width}x}" in marked[0], text
    vm = vm_pool.get(arch, "double-free")
    out = kheap("check", *remote(vm))
    assert out.returncode == 1 and out.stdout.count("likely double free") == 1, out.stdout
    data = json.loads(kheap("check", "--json", *remote(vm)).stdout)
    hinted = [f for f in data["findings"] if f["code"] == "HEAP-STATS"]
    assert hinted and all("likely double free" in f["culprit"]["reason"] for f in hinted)


# -- history and leaks: file:line ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_history_and_leaks_show_the_callers_file_and_line(start_vm, arch):
    vm = start_vm(arch, "leak", halt=True)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "break kheap_checkpoint", "continue",
                                         "kheap history --limit 5 --json", "kheap history --limit 5",
                                         "kheap leaks --json", "kheap leaks", "kheap watch off"])
    no_traceback(run)
    ops = run.json(3)["operations"]
    assert ops and all(re.fullmatch(r"[\w-]+\.c:\d+", o["caller_source"] or "") for o in ops), ops
    assert f"at {ops[-1]['caller_source']}" in run.output(4)
    groups = run.json(5)["groups"]
    assert groups and all(g["sources"] and all(re.fullmatch(r"[\w-]+\.c:\d+", s) for s in g["sources"])
                          for g in groups), groups
    assert f"at {groups[0]['sources'][0]}" in run.output(6)


def test_show_in_lldb_shares_the_word_with_the_settings(vm_pool):
    """lldb's ``kheap show [NAME]`` shows settings (gdb's ``show kheap``); with an address it is
    the segment view."""
    if not _lldb_works():
        pytest.skip("lldb with a working Python module is not installed")
    vm = vm_pool.get("arm", "overflow")
    vm.qmp("stop")                     # lldb 14 cannot connect to a running QEMU (see test_lldb)
    run = run_lldb(vm.elf, vm.gdb_port, ["kheap show heap_segment_list_head", "kheap show block-size",
                                         "kheap show", "kheap show 0x10"])
    no_traceback(run)
    assert "segment at 0x" in run.output(0) and "culprit" in run.output(0), run.output(0)
    assert run.output(1).strip() == "kheap block-size is 4096"
    assert "kheap auto-check is off" in run.output(2)
    assert "no segment to show" in run.steps[3].error and run.steps[3].error.count("\n") <= 1


@pytest.mark.parametrize("name", ["renamed/arm", "bitfield/aarch64"])
def test_show_names_the_fields_as_the_kernel_does(name):
    """``kheap show`` lists the header by the kernel's own field names (the renamed variant's
    in_use/block_size) and shows bit-fields as such, read through the allocator seam."""
    import variants as V

    t = V.target(name)
    if not t.elf.is_file():
        pytest.skip(f"{t.elf} not built")
    with V.launch(t, "clean") as vm:
        vm.wait_until_settled(60)
        first = json.loads(kheap("walk", "--json", "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", t.elf).stdout)
        seg = first["segments"][0]
        out = kheap("show", hex(seg["payload"]), "--json", "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", t.elf)
    assert out.returncode == 0, out.stderr
    fields = {f["role"]: f for f in json.loads(out.stdout)["fields"] if f["role"]}
    assert fields["is_allocated"]["value"] == 1 and fields["segment_size"]["value"] == seg["size"]
    if name.startswith("renamed"):
        assert fields["is_allocated"]["name"] == "in_use" and fields["segment_size"]["name"] == "block_size"
    else:
        assert "bits" in fields["is_allocated"] and "bits" in fields["segment_size"]
