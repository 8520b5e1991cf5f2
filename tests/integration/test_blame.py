"""``kheap blame`` on the real kernel in QEMU, both builds, through gdb, the CLI and lldb.

Each scenario gets a VM of its own (blame resets the machine: never a shared pool VM). One
test per (arch, scenario) runs blame in gdb, then the CLI, then lldb on the same VM, and
checks each time: the last writer is the store the scenario's bug makes (its function and
source line), the re-run was deterministic (the bytes at the stop point equal those read
before), the target is stopped where it was, the heap's bytes are the same before and after,
and nothing of kheap's is left in the target (QEMU answers E22 to removing it again).
"""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from debuggers import REPO, lldb_argv, run_gdb, run_lldb
from expectations import ARCHES
from gdbext.targets.rsp import RemoteTarget

pytestmark = [pytest.mark.qemu]

KHEAP = REPO / ".venv" / "bin" / "kheap"
HEAP_BYTES = 1024 * 1024
SOURCES = REPO / "kernel" / "src"


def line_of(file, text):
    """The line number of ``text`` in kernel/src/``file``."""
    for number, line in enumerate((SOURCES / file).read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {file}")


# scenario -> (the function the store is written in, the frame naming the culprit, its
# file and the lines it may be on). overflow's store is in strcpy, called by
# scenario_overflow at the strcpy line; the others store in the scenario itself. uaf's two
# late stores may be merged into one instruction (aarch64: stp), on either line.
EXPECT = {
    "overflow": ("strcpy", "scenario_overflow", "scenarios_corrupt.c",
                 {line_of("scenarios_corrupt.c", "strcpy(line, message)")}),
    "uaf": ("scenario_uaf", "scenario_uaf", "scenarios_corrupt.c",
            {line_of("scenarios_corrupt.c", "session->state = 3"),
             line_of("scenarios_corrupt.c", "session->refcount = 0")}),
    "wild": ("scenario_wild", "scenario_wild", "scenarios_corrupt.c",
             {line_of("scenarios_corrupt.c", "->next = &app_list_sentinel")}),
    "backlink": ("scenario_backlink", "scenario_backlink", "scenarios_corrupt.c",
                 {line_of("scenarios_corrupt.c", "->prev = app_link_of(backlink_blocks[0])")}),
    "tutorial-bug": ("tutorial_kmalloc", "tutorial_kmalloc", "scenario_tutorial.c",
                     {line_of("scenario_tutorial.c", "best->next->prev = best;")}),
}


def kheap(*argv, timeout=120):
    return subprocess.run([str(KHEAP)] + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def name_of(entry):
    """The function a writer or frame is written in (an inlined one, else its symbol's)."""
    return entry.get("inlined") or (entry.get("function") or "").split("+")[0]


def assert_blame(report, scenario):
    writer, culprit, file, lines = EXPECT[scenario]
    assert report["verdict"] == "found", json.dumps(report, indent=1)[:3000]
    assert report["ended"] == "until" and report["deterministic"] is True
    assert report["last_write_is_final"] is True
    assert report["after"] == report["before"]
    last = report["last_writer"]
    assert name_of(last) == writer, last
    assert last["allocator"] is False
    assert last["of"] == report["hits"] and last["number"] == report["hits"]
    assert last["value"] == report["after"]
    frames = last["backtrace"]
    assert name_of(frames[0]) == writer and frames[-1]["function"].startswith("kernel_main")
    assert last["backtrace_end"] == "kernel entry"
    # The culprit's frame, at the right source line.
    frame = last if writer == culprit else (last["caller"] or {})
    assert name_of(frame) == culprit, (frame, last)
    where_file, where_line = frame["source"].split(":")
    assert where_file == file and int(where_line) in lines, (frame["source"], lines)
    assert last["instruction"] and re.match(r"(str|stp|stur)", last["instruction"]), last["instruction"]
    # The legitimate writes before it are the allocator's (poison, split) and come first.
    assert report["writes"] and report["writes"][0]["allocator"] is True
    assert report["stop"]["same_place"], report["stop"]
    assert report["removed"] == {"watchpoints": 1, "breakpoints": 1}


def nothing_left(vm, report):
    """QEMU still holds no watchpoint or breakpoint of kheap's: removing them again fails."""
    watch = report["watch"]
    with RemoteTarget("127.0.0.1", vm.gdb_port, detach=None) as t:
        t.allow_run_control()
        assert not t.remove_point(2, watch["address"], watch["size"])
        assert not t.remove_point(0, report["until"]["address"], 4)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", sorted(EXPECT))
def test_blame_names_the_store_in_gdb_cli_and_lldb(start_vm, arch, scenario):
    vm = start_vm(arch, scenario)
    heap = vm.checkpoints()[-1].segments[0][0]
    before = vm.read_phys(heap, HEAP_BYTES)

    started = time.monotonic()
    run = run_gdb(vm.elf, vm.gdb_port, ["print/x $pc", "kheap blame --json", "print/x $pc",
                                        "maint info breakpoints", "kheap blame"])
    gdb_seconds = time.monotonic() - started
    report = run.json(1)
    assert_blame(report, scenario)
    assert report["face"] == "gdb"
    pc_before = int(run.output(0).split("=")[1], 16)
    pc_after = int(run.output(2).split("=")[1], 16)
    assert pc_after in (pc_before, pc_before - 4), (hex(pc_before), hex(pc_after))
    assert "No breakpoints or watchpoints" in run.output(3), run.output(3)
    text = run.output(4)
    assert "last write:" in text and "Traceback" not in text + run.stderr
    assert vm.read_phys(heap, HEAP_BYTES) == before
    nothing_left(vm, report)

    started = time.monotonic()
    proc = kheap("blame", "--json", "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf)
    cli_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert_blame(cli, scenario)
    assert cli["face"] == "cli"
    assert cli["last_writer"]["pc"] == report["last_writer"]["pc"]
    assert cli["last_writer"]["backtrace"] == report["last_writer"]["backtrace"]
    # The CLI sees every store; gdb those that change the bytes: never more than the CLI.
    assert cli["hits"] >= report["hits"]
    assert vm.read_phys(heap, HEAP_BYTES) == before
    nothing_left(vm, cli)

    # kheap connect: lldb 14's own gdb-remote fails on a running QEMU (README).
    run = run_lldb(vm.elf, vm.gdb_port, ["kheap blame --json", "watchpoint list", "breakpoint list"],
                   pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",), connect=False)
    lldb = run.json(0)
    assert_blame(lldb, scenario)
    assert lldb["face"] == "lldb" and lldb["last_writer"]["pc"] == report["last_writer"]["pc"]
    assert lldb["hits"] == cli["hits"]
    assert "No watchpoints" in run.output(1) and "No breakpoints" in run.output(2)
    assert vm.read_phys(heap, HEAP_BYTES) == before
    nothing_left(vm, lldb)
    assert gdb_seconds < 10 and cli_seconds < 5, (gdb_seconds, cli_seconds)


@pytest.mark.parametrize("arch", ARCHES)
def test_check_and_triage_suggest_the_blame_command_that_finds_it(start_vm, arch):
    vm = start_vm(arch, "overflow")
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    check = kheap("check", "--json", *remote)
    suggestion = json.loads(check.stdout)["blame"]["command"]
    assert suggestion.startswith("kheap blame 0x") and "--size" in suggestion
    assert suggestion in kheap("check", *remote).stdout
    assert suggestion in kheap("triage", *remote).stdout
    proc = kheap(*suggestion.split()[1:], "--json", *remote)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["watch"]["origin"] == "address"
    assert name_of(report["last_writer"]) == "strcpy"
    assert name_of(report["last_writer"]["caller"]) == "scenario_overflow"


@pytest.mark.parametrize("arch", ARCHES)
def test_a_hot_word_stops_at_max_hits_and_the_target_still_ends_where_it_was(start_vm, arch):
    vm = start_vm(arch, "stress")
    heap = vm.checkpoints()[-1].segments[0][0]
    before = vm.read_phys(heap, HEAP_BYTES)
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap blame &heap_stats --size 4 --max-hits 200 --json"])
    report = run.json(0)
    assert report["ended"] == "max-hits-until" and report["hits"] == 200
    assert report["verdict"] == "incomplete" and report["last_writer"] is None
    assert report["stop"]["same_place"] and report["deterministic"] is True
    assert report["removed"] == {"watchpoints": 1, "breakpoints": 1}
    assert all(w["allocator"] for w in report["writes"][5:])       # kmalloc's counting
    proc = kheap("blame", "&heap_stats", "--size", "4", "--max-hits", "300", "--json",
                 "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf)
    cli = json.loads(proc.stdout)
    assert proc.returncode == 1 and cli["ended"] == "max-hits-until" and cli["hits"] == 300
    assert vm.read_phys(heap, HEAP_BYTES) == before
    nothing_left(vm, cli)


@pytest.mark.parametrize("arch", ARCHES)
def test_ctrl_c_stops_cleanly_and_removes_everything(start_vm, arch):
    vm = start_vm(arch, "stress")
    proc = subprocess.Popen([str(KHEAP), "blame", "&heap_stats", "--size", "4", "--max-hits", "0",
                             "--json", "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", str(vm.elf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, out[-500:], err)
    report = json.loads(out)
    assert report["ended"] == "interrupted" and report["hits"] > 0
    assert report["removed"] == {"watchpoints": 1, "breakpoints": 1}
    assert not report["stop"]["same_place"]
    # It was running when kheap came, so kheap let it run on: stress finishes untouched.
    deadline = time.monotonic() + 60
    while vm.serial_text().count("KHEAP-READY") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vm.serial_text().count("KHEAP-READY") == 2          # the first boot and the re-run
    nothing_left(vm, report)


def test_blame_needs_a_live_qemu_it_can_reset(start_vm, tmp_path):
    vm = start_vm("arm", "overflow")
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    dump = tmp_path / "overflow.kdump"
    assert kheap("dump", "-o", dump, *remote).returncode == 0
    proc = kheap("blame", "--core", dump)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "needs a live QEMU target it can reset" in proc.stderr


def test_blame_refuses_qemu_user(tmp_path_factory):
    from qemu_user import QemuUser, build_program, missing

    why = missing()
    if why:
        pytest.skip(why)
    elf = build_program(tmp_path_factory.mktemp("blame-qemu-user"))
    with QemuUser(elf) as user:
        proc = kheap("blame", "0x1000", "--remote", f"127.0.0.1:{user.port}", "--elf", elf,
                     "--timeout", "3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "needs a live QEMU target it can reset" in proc.stderr


# -- a person at the terminal --------------------------------------------------------------------
class Terminal:
    """A program on a pseudo-terminal of its own (its controlling terminal: Ctrl-C is SIGINT)."""

    def __init__(self, argv):
        import fcntl
        import os
        import pty
        import termios

        self.os = os
        self.master, slave = pty.openpty()

        def controlling():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([str(a) for a in argv], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=REPO, preexec_fn=controlling)
        os.close(slave)
        self.seen = ""

    def expect(self, text, timeout=60):
        import select

        deadline = time.monotonic() + timeout
        while text not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen:\n{self.seen[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = self.os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data and self.proc.poll() is not None:
                    raise AssertionError(f"{text!r} not seen, program ended:\n{self.seen[-3000:]}")
                self.seen += data.decode(errors="replace")
        return self.seen

    def send(self, text):
        self.os.write(self.master, text.encode())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.os.close(self.master)


def boots(vm):
    return vm.serial_text().count("KHEAP-BOOT")


def test_the_cli_asks_a_person_first(start_vm):
    vm = start_vm("arm", "uaf")
    argv = [KHEAP, "blame", "--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf, "--color", "never"]
    term = Terminal(argv)
    try:
        term.expect("Restart the kernel? [y/N]")
        term.send("n\n")
        term.expect("not run: the kernel was left as it was")
        assert term.proc.wait(timeout=30) == 2
    finally:
        term.close()
    assert boots(vm) == 1
    term = Terminal(argv)
    try:
        term.expect("Restart the kernel? [y/N]")
        term.send("y\n")
        text = term.expect("removed what kheap set")
        assert "scenario_uaf" in text and term.proc.wait(timeout=30) == 0
    finally:
        term.close()
    assert boots(vm) == 2


def test_gdb_asks_a_person_first(start_vm):
    vm = start_vm("arm", "wild")
    term = Terminal(["gdb-multiarch", "-nx", "-q", "-iex", "set pagination off", "-iex", "set style enabled off",
                     "-ex", f"source {REPO / 'gdbext' / 'gdbinit.py'}", "-ex", f"file {vm.elf}",
                     "-ex", f"target remote 127.0.0.1:{vm.gdb_port}"])
    try:
        term.expect("(gdb) ")
        term.send("kheap blame\n")
        term.expect("Restart the kernel? (y or n)")
        term.send("n\n")
        term.expect("not run")
        assert boots(vm) == 1
        term.send("kheap blame\n")
        term.expect("Restart the kernel? (y or n)", timeout=30)
        term.send("y\n")
        text = term.expect("removed what kheap set")
        assert "scenario_wild" in text
        term.send("detach\n")
        term.expect("detached")
        term.send("quit\n")
        term.proc.wait(timeout=30)
    finally:
        term.close()
    assert boots(vm) == 2


def test_lldb_stops_on_ctrl_c_and_removes_everything(start_vm):
    vm = start_vm("arm", "stress")
    term = Terminal(lldb_argv("--no-lldbinit", "-o", f"target create {vm.elf}",
                              "-o", f"kheap connect 127.0.0.1:{vm.gdb_port}"))
    try:
        term.expect("Process 1 stopped")
        term.send("kheap blame &heap_stats --size 4 --max-hits 0 -y\n")
        term.expect("writes so far", timeout=60)
        term.send("\x03")
        text = term.expect("removed what kheap set", timeout=60)
        assert "interrupted" in text
        term.send("watchpoint list\n")
        term.expect("No watchpoints currently set")
        term.send("breakpoint list\n")
        term.expect("No breakpoints currently set")
        term.send("process detach\n")
        term.expect("detached")
    finally:
        term.close()


@pytest.mark.parametrize("arch", ARCHES)
def test_gdb_takes_expressions_and_a_stop_point(start_vm, arch):
    vm = start_vm(arch, "overflow")
    run = run_gdb(vm.elf, vm.gdb_port, [
        "kheap blame heap_segment_list_head->next --until kheap_checkpoint --json",
        "print $pc", "kheap blame $pc --size 4 --until checkpoint.c:1 --json"])
    report = run.json(0)
    # The list head's next is the clobbered header: all of it, and strcpy's store is the last.
    assert report["watch"]["origin"] == "address" and report["watch"]["size"] == (16 if arch == "arm" else 32)
    assert report["watch"]["what"].startswith("the header of the segment at")
    assert name_of(report["last_writer"]) == "strcpy" and report["deterministic"]
    assert report["until"]["function"] == "kheap_checkpoint"
    assert "kheap_checkpoint" in run.output(1)
    said = run.output(2) + run.steps[2].error                   # checkpoint.c:1 has no code
    assert "--until checkpoint.c:1" in said and "cannot evaluate" in said and said.count("\n") == 1
