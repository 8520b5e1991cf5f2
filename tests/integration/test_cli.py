"""The kheap CLI as a real subprocess against the real kernel in QEMU, both builds.

For clean, stress and every corruption scenario, three ways of reading the same moment must
give the findings the gdb face gives (codes, addresses, culprits; not text): live over the
GDB remote protocol (``--remote``), a QEMU ``dump-guest-memory`` core, and a ``kheap dump``
file. The two files are checked by one process in many-dumps mode, so each scenario costs one
gdb run and three CLI processes. VMs come from the shared pool and are only read.

The QEMU cores cover physical memory [0, 16 MiB): the kernel image, the page array and the
heap of both builds (a full 1 GiB core per scenario would cost seconds and gigabytes; one test
below uses a full core).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from debuggers import REPO, run_gdb
from expectations import ARCHES, CORRUPTION_CODES, HEALTHY, assert_expected_findings

pytestmark = [pytest.mark.qemu]

KHEAP = REPO / ".venv" / "bin" / "kheap"
SCENARIOS = HEALTHY + tuple(sorted(CORRUPTION_CODES))
CORE_BYTES = 16 * 1024 * 1024


def kheap(*argv, timeout=120):
    exe = [str(KHEAP)] if KHEAP.exists() else ["python3", "-m", "gdbext"]
    return subprocess.run(exe + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


def essence(report):
    """What must agree between faces: the verdict, the walk and every finding's data."""
    findings = sorted((f["code"], f["severity"], f.get("address"), json.dumps(f.get("values"), sort_keys=True),
                       (f.get("culprit") or {}).get("address"), (f.get("culprit") or {}).get("reason"))
                      for f in report["findings"])
    return {"verdict": report["verdict"], "errors": report["errors"], "warnings": report["warnings"],
            "segments": report["segments"], "stop": report.get("stop"), "findings": findings}


def qemu_core(vm, path, length=CORE_BYTES):
    args = {"paging": False, "protocol": f"file:{path}"}
    if length:
        args.update(begin=0, length=length)
    vm.qmp("dump-guest-memory", **args)
    return path


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_live_core_and_kheap_dump_agree_with_gdb(vm_pool, tmp_path, arch, scenario):
    vm = vm_pool.get(arch, scenario)
    gdb = run_gdb(vm.elf, vm.gdb_port, ["kheap check --json"]).json(0)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]

    live = kheap("check", "--json", *remote)
    assert live.returncode == (0 if scenario in HEALTHY else 1), live.stderr
    assert live.stderr == ""
    live_report = json.loads(live.stdout)
    assert essence(live_report) == essence(gdb)
    if scenario in HEALTHY:
        assert live_report["verdict"] == "ok"
    else:
        assert_expected_findings(scenario, live_report)

    core = qemu_core(vm, tmp_path / f"{scenario}.core")
    saved = tmp_path / f"{scenario}.kdump"
    dumped = kheap("dump", "-o", saved, *remote)
    assert dumped.returncode == 0 and "wrote" in dumped.stdout, dumped.stderr

    # Both files in one process (many-dumps mode); the kheap dump finds its ELF by itself.
    many = kheap("check", "--json", "--core", core, "--core", saved, "--elf", vm.elf)
    assert many.returncode == live.returncode, many.stdout[-2000:] + many.stderr
    reports = json.loads(many.stdout)["dumps"]
    assert [d["path"] for d in reports] == [str(core), str(saved)]
    for entry in reports:
        assert entry["error"] is None, entry
        assert essence(entry["report"]) == essence(gdb), entry["path"]
    os.unlink(core)


@pytest.mark.parametrize("arch", ARCHES)
def test_crash_triage_live_and_from_a_dump(vm_pool, tmp_path, arch):
    vm = vm_pool.get(arch, "crash")
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    live = kheap("triage", "--json", *remote)
    assert live.returncode == 1, live.stderr
    triage = json.loads(live.stdout)
    assert triage["panic"]["reason"] != 0 and triage["fault_origin"]["kind"] == "link"
    assert triage["stop"]["function"].split("+")[0] in ("kernel_panic", "kernel_idle")
    assert "pc" in triage["stop"]["registers"]
    saved = tmp_path / "crash.kdump"
    assert kheap("dump", "-o", saved, *remote).returncode == 0
    offline = kheap("triage", "--json", "--core", saved)
    assert offline.returncode == 1, offline.stderr
    again = json.loads(offline.stdout)
    for key in ("verdict", "fault_address", "fault_origin", "panic"):
        assert again[key] == triage[key], key
    assert again["stop"]["pc"] == triage["stop"]["pc"]
    text = kheap("triage", "--core", saved)
    assert "no backtrace" in text.stdout and "kernel_panic:" in text.stdout


def test_full_core_walk_stats_and_raw_images(vm_pool, tmp_path):
    vm = vm_pool.get("arm", "clean")
    truth = vm.checkpoints()[-1]
    core = qemu_core(vm, tmp_path / "full.core", length=None)
    walk = kheap("walk", "--json", "--core", core, "--elf", vm.elf)
    assert walk.returncode == 0, walk.stderr
    assert [(s["address"], s["size"], s["state"]) for s in json.loads(walk.stdout)["segments"]] == \
        [tuple(s) for s in truth.segments]
    stats = json.loads(kheap("stats", "--json", "--core", core, "--elf", vm.elf).stdout)
    assert stats["used"]["bytes"] == truth.stats["current_usage"]
    os.unlink(core)

    heap_end = truth.segments[-1][0] + truth.segments[-1][1]
    raw = tmp_path / "ram.raw"
    raw.write_bytes(vm.read_phys(0, heap_end))
    good = kheap("check", "-q", "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert good.returncode == 0 and "heap OK" in good.stdout, good.stderr
    wrong = kheap("check", "--raw", raw, "--base", "0x1000", "--elf", vm.elf)
    assert "wrong --base" in assert_one_line_error(wrong)


def test_bad_input_is_one_line_and_exit_2(vm_pool, tmp_path):
    vm = vm_pool.get("arm", "clean")
    other = REPO / "kernel" / "build" / "aarch64" / "kernel.elf"
    remote = f"127.0.0.1:{vm.gdb_port}"
    core = qemu_core(vm, tmp_path / "arm.core")

    truncated = tmp_path / "truncated.core"
    with open(core, "rb") as f:
        truncated.write_bytes(f.read(os.path.getsize(core) // 2))
    assert "truncated" in assert_one_line_error(kheap("check", "--core", truncated, "--elf", vm.elf))

    assert "is an arm core but" in assert_one_line_error(kheap("check", "--core", core, "--elf", other))
    assert "is an arm target but" in assert_one_line_error(kheap("check", "--remote", remote, "--elf", other))

    # Same architecture, another build: the end of .text no longer matches the target's memory.
    from gdbext.core.symbols import load_elf_info
    from elftools.elf.elffile import ELFFile

    rebuilt = tmp_path / "rebuilt.elf"
    data = bytearray(Path(vm.elf).read_bytes())
    with open(vm.elf, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        end = text["sh_offset"] + text["sh_size"]
    data[end - 16:end] = bytes(b ^ 0xFF for b in data[end - 16:end])
    rebuilt.write_bytes(bytes(data))
    assert load_elf_info(rebuilt).arch == "arm"
    assert "does not match" in assert_one_line_error(kheap("check", "--remote", remote, "--elf", rebuilt))
    assert "does not match" in assert_one_line_error(kheap("check", "--core", core, "--elf", rebuilt))

    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "cannot connect" in assert_one_line_error(kheap("check", "--remote", f"127.0.0.1:{port}",
                                                           "--elf", vm.elf))
    os.unlink(core)
    # The VM is still there and healthy for the next test.
    assert kheap("check", "-qq", "--remote", remote, "--elf", vm.elf).returncode == 0


def test_garbage_stub_reply_is_one_line_and_exit_2():
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from fake_gdbstub import FakeGdbStub, StubConfig

    elf = REPO / "kernel" / "build" / "arm" / "kernel.elf"
    with FakeGdbStub(StubConfig(image=bytes(4096), base=0x8000, garbage_every=1)) as stub:
        proc = kheap("check", "--remote", stub.address, "--elf", elf, "--timeout", "1")
    assert assert_one_line_error(proc).startswith("kheap check: ")


def test_demo_boots_inspects_and_shuts_down(kernel_build):
    proc = kheap("demo", "--arch", "arm", timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("$ kheap walk", "$ kheap check", "$ kheap stats"):
        assert heading in out, out
    assert "heap OK" in out or "OK - 0 errors" in out
    assert "QEMU has been shut down" in out and "Traceback" not in proc.stderr
