"""qemu-user's gdbstub as a target: a static aarch64 Linux program run by ``qemu-aarch64 -g PORT``.

The program is a loop and a 1 MiB initialised array (``kheap_pattern``) of known pseudo-random
bytes. qemu-user stops a program at its entry point until a debugger connects, and kheap never
resumes it, so the array holds what the loader put there: the pattern, which makes any chunk
read from the wrong place (or a reply taken for another's) show at once.

Used by tests/integration/test_rsp_stubs.py and bench/bench_cli.py. Stdlib and pyelftools only.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

QEMU_USER = "qemu-aarch64"
GCC = "aarch64-linux-gnu-gcc"
PATTERN_SIZE = 1 << 20
SYMBOL = "kheap_pattern"


def pattern() -> bytes:
    return random.Random(0x6B68656170).randbytes(PATTERN_SIZE)


def missing() -> Optional[str]:
    """Why qemu-user targets cannot be made here, or None."""
    for tool, package in ((QEMU_USER, "qemu-user"), (GCC, "gcc-aarch64-linux-gnu")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (install.sh installs {package})"
    return None


def build_program(workdir: Path) -> Path:
    """The program's ELF in ``workdir`` (no libc needed: ``-nostdlib``, the loop is ``_start``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pattern.bin").write_bytes(pattern())
    src = workdir / "prog.S"
    src.write_text(".global _start\n.text\n_start:\n    mov x1, #1\n1:  add x1, x1, #1\n    b 1b\n"
                   ".data\n.balign 16\n.global kheap_pattern\nkheap_pattern:\n"
                   "    .incbin \"pattern.bin\"\n")
    elf = workdir / "prog.elf"
    subprocess.run([GCC, "-nostdlib", "-static", "-g", "-o", str(elf), str(src)],
                   check=True, capture_output=True, cwd=workdir)
    return elf


def symbols(elf: Path):
    """(address of ``kheap_pattern``, entry point)."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        e = ELFFile(f)
        sym = e.get_section_by_name(".symtab").get_symbol_by_name(SYMBOL)[0]
        return sym["st_value"], e.header["e_entry"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """From /proc/net/tcp*, not by connecting: qemu-user serves the first connection only."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class QemuUser:
    """``qemu-aarch64 -g PORT elf``, waiting for its debugger; ``kill()`` always (fixtures do)."""

    def __init__(self, elf: Path) -> None:
        self.elf = elf
        self.port = free_port()
        self.proc = subprocess.Popen([QEMU_USER, "-g", str(self.port), str(elf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[:300]
                raise RuntimeError(f"{QEMU_USER} exited: {err}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{QEMU_USER} did not open port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stderr.close()

    def __enter__(self) -> "QemuUser":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
