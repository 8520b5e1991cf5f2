"""gdb-multiarch attaches to each build halted at its first instruction, stops at
kheap_checkpoint, and reads __end, heap_segment_list_head and heap_stats through DWARF; the
values must agree with the UART dump the kernel prints from that same call."""
import re
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.gdb]

GDB = "gdb-multiarch"


def gdb_batch(elf, port, commands, timeout=60):
    argv = [GDB, "--batch", "-nx", "-iex", "set pagination off", "-iex", "set confirm off",
            "-ex", f"file {elf}", "-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        argv += ["-ex", command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return result.stdout + result.stderr


def parse_struct(text):
    """'{allocations = 9, frees = 3, ...}' -> {'allocations': 9, ...}"""
    return {k: int(v, 0) for k, v in re.findall(r"(\w+) = (0x[0-9a-f]+|\d+)", text)}


@pytest.mark.skipif(shutil.which(GDB) is None, reason=f"{GDB} not installed")
@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_gdb_stops_at_checkpoint_and_reads_the_heap(start_vm, arch):
    vm = start_vm(arch, "clean", halt=True)
    out = gdb_batch(vm.elf, vm.gdb_port, [
        "break kheap_checkpoint",
        "continue",
        'printf "KH-TAG %s\\n", tag',
        'printf "KH-END 0x%lx\\n", (unsigned long)&__end',
        'printf "KH-HEAD 0x%lx\\n", (unsigned long)heap_segment_list_head',
        'printf "KH-HEAPSTART 0x%lx\\n", (unsigned long)kernel_heap_start',
        'printf "KH-HEAPSIZE %lu\\n", (unsigned long)kernel_heap_size',
        'printf "KH-ENUM %d\\n", (int)KERNEL_HEAP_SIZE',
        'printf "KH-HDR %d\\n", (int)sizeof(heap_segment_t)',
        "print/d heap_stats",
        "detach",
    ])
    values = dict(re.findall(r"^KH-(\w+) (\S+)$", out, re.M))
    assert "Breakpoint 1, kheap_checkpoint" in out, out
    assert values.get("TAG") == "clean", out

    text = vm.wait_for("KHEAP-READY", timeout=30)     # detach resumed the kernel
    (checkpoint,) = vm.checkpoints()
    end = int(re.search(r"KHEAP-LAYOUT end=(0x[0-9a-f]+)", text).group(1), 16)
    assert int(values["END"], 16) == end
    assert int(values["HEAD"], 16) == checkpoint.segments[0][0]
    assert int(values["HEAPSTART"], 16) == checkpoint.segments[0][0]
    assert int(values["HEAPSIZE"]) == int(values["ENUM"]) == 1024 * 1024
    assert int(values["HDR"]) == (32 if arch == "aarch64" else 16)
    stats_line = re.search(r"^\$\d+ = (\{.*\})$", out, re.M)
    assert stats_line, out
    assert parse_struct(stats_line.group(1)) == checkpoint.stats


# An instruction that is permanently undefined: UDF on ARMv7 (A32), UDF #0 on AArch64.
UNDEFINED_INSTRUCTION = {"arm": 0xE7F000F0, "aarch64": 0x00000000}


@pytest.mark.skipif(shutil.which(GDB) is None, reason=f"{GDB} not installed")
@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_undefined_instruction_reaches_kernel_panic(start_vm, arch):
    """The vectors route an undefined instruction (planted by gdb at kheap_checkpoint's
    entry) to kernel_panic, like the crash scenario routes a data abort."""
    vm = start_vm(arch, "clean", halt=True)
    out = gdb_batch(vm.elf, vm.gdb_port, [
        f"set var *(unsigned int *)kheap_checkpoint = {UNDEFINED_INSTRUCTION[arch]:#x}",
        "break kernel_panic",
        "continue",
        'printf "KH-REASON %d\\n", (int)reason',
        "detach",
    ])
    assert "Breakpoint 1, kernel_panic" in out, out
    assert "KH-REASON 3" in out, out                   # PANIC_UNDEFINED
    text = vm.wait_for(r"KHEAP-PANIC reason=undefined-instruction fault_address=0x[0-9a-f]+",
                       timeout=30)
    address = int(text.split("KHEAP-PANIC")[1].split("fault_address=")[1].split()[0], 16)
    assert address == int(subprocess.run(
        [GDB, "--batch", "-nx", "-ex", f"file {vm.elf}", "-ex",
         'printf "%lu\\n", (unsigned long)kheap_checkpoint'],
        capture_output=True, text=True).stdout.split()[-1])
