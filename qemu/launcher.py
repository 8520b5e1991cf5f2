"""Boot the kheap test kernel in QEMU: one scenario, gdbstub on 127.0.0.1, serial to a file.

Stdlib only, importable as ``qemu.launcher`` from the repository root, and runnable as
``python3 -m qemu.launcher`` (what ``qemu/run.sh`` does). It builds nothing: if the ELF is
missing it says to run ``make -C kernel``.

The scenario is chosen at launch without rebuilding: QEMU's generic loader writes the word
``SCENARIO_MAGIC | id`` at physical address ``SCENARIO_WORD_ADDR`` at reset, and the kernel
reads it before doing anything else (see qemu/README.md and kernel/include/kernel.h).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = REPO_ROOT / "kernel"

# Must match kernel/src/scenario_table.c (the id is the index) and kernel/include/kernel.h.
SCENARIOS = (
    "clean", "stress", "overflow", "backlink", "cycle", "wild", "double-free", "uaf",
    "leak", "pages", "tutorial-bug", "crash",
)
SCENARIO_WORD_ADDR = 0x1000
SCENARIO_MAGIC = 0x4B480000
# Set in the scenario word: the kernel stops before it builds the page array and the heap
# (kernel/include/kernel.h): one empty checkpoint tagged "preinit", then KHEAP-READY.
SCENARIO_FLAG_PREINIT = 0x8000

# Build-time variants of the kernel (kernel/include/variant.h, docs/variants.md); "default" is
# kernel/build/<arch>/kernel.elf, every other one kernel/build/<variant>/<arch>/kernel.elf.
VARIANTS = ("default", "bitfield", "tutorial", "tutorial-g3", "reordered", "canary", "renamed")

# Tags each scenario checkpoints with, in order.
SCENARIO_TAGS = {name: (name,) for name in SCENARIOS}
SCENARIO_TAGS["leak"] = ("leak-1", "leak-2")

# What QEMU needs for each build.
MACHINES = {
    "arm": ("qemu-system-arm", "raspi2b"),
    "aarch64": ("qemu-system-aarch64", "raspi3b"),
}

# Whole lines only: the serial log is read while QEMU writes it, and a test that found
# "KHEAP-READY scenario=overflo" would see a line cut in two.
READY_PATTERN = r"KHEAP-READY scenario=\S+\r?\n"
PANIC_PATTERN = r"KHEAP-PANIC reason=\S+[^\n]*\n"


class LauncherError(RuntimeError):
    """QEMU could not be started, exited early, or did not print what was awaited."""


@dataclass
class Checkpoint:
    """One ``KHEAP-CHECKPOINT`` dump: the kernel's own view of its heap at kheap_checkpoint."""
    tag: str
    segments: list = field(default_factory=list)   # [(addr, size, state)], state 'used'/'free'/'bad(N)'
    stats: dict = field(default_factory=dict)      # heap_stats fields -> int
    stop: tuple | None = None                      # (reason, addr) if the walk stopped early
    count: int | None = None                       # segments= from the END line


_SEG_RE = re.compile(r"^KHEAP-SEG addr=(0x[0-9a-f]+) size=(\d+) state=(\S+)$")
_STOP_RE = re.compile(r"^KHEAP-SEG-STOP reason=(\S+) addr=(0x[0-9a-f]+)$")


def parse_checkpoints(text: str) -> list:
    """Parses every complete checkpoint dump in serial output."""
    found, current = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("KHEAP-CHECKPOINT BEGIN tag="):
            current = Checkpoint(tag=line.split("tag=", 1)[1])
        elif current is None:
            continue
        elif m := _SEG_RE.match(line):
            current.segments.append((int(m.group(1), 16), int(m.group(2)), m.group(3)))
        elif m := _STOP_RE.match(line):
            current.stop = (m.group(1), int(m.group(2), 16))
        elif line.startswith("KHEAP-STATS "):
            current.stats = {k: int(v) for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
        elif line.startswith("KHEAP-CHECKPOINT END "):
            fields = dict(kv.split("=", 1) for kv in line.split()[2:])
            current.count = int(fields.get("segments", "-1"))
            found.append(current)
            current = None
    return found


def elf_path(arch: str, variant: str = "default") -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "default":
        return KERNEL_DIR / "build" / arch / "kernel.elf"
    return KERNEL_DIR / "build" / variant / arch / "kernel.elf"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (QEMU may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, QEMU gets SIGTERM if this process dies even
    by SIGKILL (atexit cannot run then), so no orphaned VM outlives a killed test run."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)                # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_live_vms: "weakref.WeakSet[KernelVM]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for vm in list(_live_vms):
        vm.stop()


class KernelVM:
    """One QEMU running the kernel. Use as a context manager; ``stop()`` is idempotent."""

    def __init__(self, arch: str = "arm", scenario: str = "clean", halt: bool = False,
                 gdb_port: int | None = None, serial_path: str | os.PathLike | None = None,
                 elf: str | os.PathLike | None = None, extra_args=(), variant: str = "default",
                 preinit: bool = False):
        if arch not in MACHINES:
            raise ValueError(f"arch must be one of {sorted(MACHINES)}, not {arch!r}")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.arch = arch
        self.scenario = scenario
        self.halt = halt
        self.variant = variant
        self.preinit = preinit                       # stop before the heap exists (see above)
        self.elf = Path(elf) if elf else elf_path(arch, variant)
        self.gdb_port: int | None = None if gdb_port is None else valid_port(gdb_port)
        self._fixed_port = gdb_port is not None
        self._extra_args = list(extra_args)
        self._tmpdir: str | None = None
        self._own_serial = serial_path is None
        self.serial_path: Path | None = Path(serial_path) if serial_path else None
        self.qmp_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._qmp_sock: socket.socket | None = None
        self._qmp_buf = b""
        self._stderr_file = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "KernelVM":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command_line(self) -> list:
        binary, machine = MACHINES[self.arch]
        word = SCENARIO_MAGIC | SCENARIOS.index(self.scenario)
        if self.preinit:
            word |= SCENARIO_FLAG_PREINIT
        args = [
            binary, "-M", machine, "-kernel", str(self.elf),
            "-display", "none", "-monitor", "none",
            "-serial", f"file:{self.serial_path}",
            "-gdb", f"tcp:127.0.0.1:{self.gdb_port}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-device", f"loader,addr={SCENARIO_WORD_ADDR:#x},data={word:#x},data-len=4",
        ]
        if self.halt:
            args.append("-S")
        return args + self._extra_args

    def start(self) -> "KernelVM":
        if self.proc is not None:
            return self
        if not self.elf.is_file():
            make = "make -C kernel" + (f" VARIANT={self.variant}" if self.variant != "default" else "")
            raise LauncherError(f"{self.elf} does not exist: run `{make}` first")
        binary = MACHINES[self.arch][0]
        if shutil.which(binary) is None:
            raise LauncherError(f"{binary} is not installed (apt-get install qemu-system-arm)")
        self._tmpdir = tempfile.mkdtemp(prefix=f"kheap-{self.variant}-{self.arch}-{self.scenario}-")
        if self._own_serial:
            self.serial_path = Path(self._tmpdir) / "serial.log"
        self.qmp_path = Path(self._tmpdir) / "qmp.sock"
        _live_vms.add(self)
        try:
            for attempt in range(5):
                if not self._fixed_port:
                    self.gdb_port = free_port()
                if self.serial_path.exists():
                    self.serial_path.unlink()
                self._close_stderr()
                self._stderr_file = open(Path(self._tmpdir) / "qemu.stderr", "wb")
                self.proc = subprocess.Popen(
                    self.command_line(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=self._stderr_file,
                    start_new_session=True,          # Ctrl-C in a terminal reaches us, not QEMU
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
                if self._wait_started():
                    return self
                err = self.stderr_text()
                self.proc = None
                if self._fixed_port or "Address already in use" not in err:
                    raise LauncherError(f"QEMU failed to start: {err.strip()}")
            raise LauncherError("QEMU could not bind a gdb port after 5 attempts")
        except BaseException:
            self.stop()
            raise

    def _wait_started(self, timeout: float = 10.0) -> bool:
        """True once QEMU is up (its QMP socket exists); False if it exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.qmp_path.exists():
                return True
            time.sleep(0.01)
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kills QEMU (terminate, then kill) and removes the temporary files. Idempotent."""
        if self._qmp_sock is not None:
            try:
                self._qmp_sock.close()
            except OSError:
                pass
            self._qmp_sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=3)
            self.proc = None
        self._close_stderr()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        _live_vms.discard(self)

    def _close_stderr(self) -> None:
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- serial ----------------------------------------------------------------------------
    def serial_text(self) -> str:
        """Everything the kernel printed so far."""
        try:
            return self.serial_path.read_text(errors="replace")
        except (FileNotFoundError, AttributeError):
            return ""

    def stderr_text(self) -> str:
        try:
            return (Path(self._tmpdir) / "qemu.stderr").read_text(errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """Waits until ``pattern`` (a regex) appears in the serial output; returns the text.

        Raises LauncherError with the tail of the serial log if QEMU exits or time runs out.
        A KHEAP-PANIC that is not what was awaited also ends the wait early."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()
            if regex.search(text):
                return text
            if "PANIC" not in pattern and re.search(PANIC_PATTERN, text):
                self._fail(f"kernel panicked while waiting for {pattern!r}", text)
            if not self.is_running():
                self._fail(f"QEMU exited while waiting for {pattern!r}", text)
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout:.0f}s waiting for {pattern!r}", text)
            time.sleep(0.02)

    def wait_until_settled(self, timeout: float = 30.0) -> str:
        """Waits for the scenario's end: KHEAP-READY, or KHEAP-PANIC for ``crash``."""
        pattern = PANIC_PATTERN if self.scenario == "crash" and not self.preinit else READY_PATTERN
        return self.wait_for(pattern, timeout)

    def _fail(self, why: str, text: str) -> None:
        tail = "\n".join(text.splitlines()[-15:])
        stderr = self.stderr_text().strip()
        raise LauncherError(
            f"{self._label()}: {why}\n--- serial tail ---\n{tail}"
            + (f"\n--- qemu stderr ---\n{stderr}" if stderr else ""))

    def _label(self) -> str:
        variant = "" if self.variant == "default" else f"{self.variant}/"
        return f"{variant}{self.arch}/{self.scenario}" + (" (preinit)" if self.preinit else "")

    def checkpoints(self) -> list:
        """Parsed checkpoint dumps printed so far (see parse_checkpoints)."""
        return parse_checkpoints(self.serial_text())

    # -- QMP -------------------------------------------------------------------------------
    def qmp(self, command: str, **arguments):
        """Runs one QMP command and returns its ``return`` value (raises on ``error``).

        Arguments are passed as given; for names with dashes use ``**{"node-name": ...}``."""
        if self._qmp_sock is None:
            self._qmp_connect()
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        return self._qmp_call(message)

    def read_phys(self, address: int, size: int) -> bytes:
        """Reads guest physical memory through QMP ``pmemsave`` (no debugger needed)."""
        out = Path(self._tmpdir) / f"pmem-{address:x}-{size:x}.bin"
        self.qmp("pmemsave", val=address, size=size, filename=str(out))
        try:
            return out.read_bytes()
        finally:
            out.unlink(missing_ok=True)

    def _qmp_connect(self) -> None:
        if not self.is_running():
            raise LauncherError("QEMU is not running")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)                         # dump-guest-memory of 1 GiB takes a while
        sock.connect(str(self.qmp_path))
        self._qmp_sock = sock
        self._qmp_read()                             # greeting
        self._qmp_call({"execute": "qmp_capabilities"})

    def _qmp_read(self) -> dict:
        while True:
            while b"\n" not in self._qmp_buf:
                chunk = self._qmp_sock.recv(65536)
                if not chunk:
                    raise LauncherError("QMP connection closed by QEMU")
                self._qmp_buf += chunk
            line, self._qmp_buf = self._qmp_buf.split(b"\n", 1)
            if line.strip():
                return json.loads(line)

    def _qmp_call(self, message: dict):
        self._qmp_sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._qmp_read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise LauncherError(f"QMP {message['execute']}: {reply['error'].get('desc')}")
            return reply.get("return")

    def __repr__(self) -> str:
        variant = "" if self.variant == "default" else f"variant={self.variant!r}, "
        return (f"KernelVM({variant}arch={self.arch!r}, scenario={self.scenario!r}, "
                f"gdb_port={self.gdb_port}, running={self.is_running()})")


# -- the Go target: userland/mazarin under qemu-user ------------------------------------------

USERLAND_DIR = REPO_ROOT / "userland" / "mazarin"
GO_LAYOUTS = ("v1", "v2")
# Must match userland/mazarin/scenarios.go.
GO_SCENARIOS = ("clean", "stress", "overflow", "backlink", "cycle", "wild", "uaf", "pages", "crash")
QEMU_USER = "qemu-aarch64"
CHECKPOINT_FUNCTION = "main.kheapCheckpoint"
# Keeps the Go runtime from stopping the target on its own: no SIGURG preemption signals
# (qemu-user reports every signal to the debugger first), no garbage collector (the heap's
# pointers live outside Go's heap), one P.
GO_TARGET_ENV = {"GODEBUG": "asyncpreemptoff=1", "GOGC": "off", "GOMAXPROCS": "1"}
AARCH64_PC_REGNUM = 32       # x0-x30, sp, pc in QEMU's aarch64 register description


def find_tool(name: str) -> str | None:
    """A program from PATH, else from the system directories (a test runner's PATH may be
    minimal)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")


def go_elf_path(layout: str = "v1") -> Path:
    if layout not in GO_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(GO_LAYOUTS)}")
    return USERLAND_DIR / "build" / layout / "mazarin.elf"


def elf_symbol(path, name: str) -> int | None:
    """The value of a .symtab symbol in a little-endian ELF64 file (stdlib only)."""
    import struct
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LauncherError(f"{path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    wanted = name.encode()
    for sh_name, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2:                                 # SHT_SYMTAB
            continue
        str_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 24):
            st_name, _, _, _, st_value, _ = struct.unpack_from("<IBBHQQ", data, pos)
            start = str_offset + st_name
            if data[start:start + len(wanted) + 1] == wanted + b"\0":
                return st_value
    return None


def _die_with_parent_kill() -> None:
    """Like _die_with_parent, with SIGKILL: qemu-user hands SIGTERM to the guest, and with the
    debugger attached the guest then only stops and reports it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _tcp_listening(port: int) -> bool:
    """True once something listens on TCP ``port`` (any address), from /proc/net/tcp{,6}:
    qemu-user's stub must not be probed by connecting (it takes one connection only)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


_live_targets: "weakref.WeakSet[GoTarget]" = weakref.WeakSet()


@atexit.register
def _stop_targets_at_exit() -> None:
    for target in list(_live_targets):
        target.stop()


class GoTarget:
    """userland/mazarin (the Go port of the tutorial heap) under qemu-aarch64's gdbstub.

    Modes (qemu/README.md, "The Go target"):

    - default: the launcher is the stub's one debugger. It continues the program to
      ``main.kheapCheckpoint`` (after the checkpoint's dump is on stdout), removes its
      breakpoint and serves the stopped target on ``gdb_port`` (127.0.0.1) to any number of
      clients in turn (``RspProxy``): gdb, lldb and ``kheap --remote`` all find it stopped at
      the checkpoint. ``crash`` goes on past the checkpoint to the SIGSEGV in ``kmalloc``.
    - ``halt=True``: the same, but left at the program's first instruction (nothing of the
      Go runtime or the heap exists yet).
    - ``preinit=True``: the program stops at an empty checkpoint before it builds the page
      array and the heap (list head nil, numPages 0).
    - ``direct=True``: no proxy: ``gdb_port`` is qemu-user's own stub (``-g PORT``, which
      listens on every interface). The first client that connects finds the program at its
      first instruction; once it detaches the program runs to its end and idles, and the stub
      accepts nobody again.

    ``stop()`` (or leaving the ``with`` block) kills qemu-user and removes the temporary files.
    """

    arch = "aarch64"

    def __init__(self, layout: str = "v1", scenario: str = "clean", halt: bool = False,
                 preinit: bool = False, direct: bool = False, gdb_port: int | None = None,
                 stdout_path: str | os.PathLike | None = None,
                 elf: str | os.PathLike | None = None, timeout: float = 60.0, extra_args=()):
        if scenario not in GO_SCENARIOS:
            raise ValueError(f"unknown Go scenario {scenario!r}; known: {', '.join(GO_SCENARIOS)}")
        if direct and (halt or preinit):
            raise ValueError("direct=True leaves the program at its first instruction already")
        self.layout = layout
        self.variant = f"mazarin-{layout}"
        self.scenario = scenario
        self.halt = halt
        self.preinit = preinit
        self.direct = direct
        self.elf = Path(elf) if elf else go_elf_path(layout)
        self.gdb_port: int | None = None if gdb_port is None else valid_port(gdb_port)
        self._fixed_port = gdb_port is not None
        self.timeout = timeout
        self._extra_args = list(extra_args)
        self._own_stdout = stdout_path is None
        self.stdout_path: Path | None = Path(stdout_path) if stdout_path else None
        self._tmpdir: str | None = None
        self._stderr_file = None
        self.proc: subprocess.Popen | None = None
        self.stub_path: Path | None = None
        self._upstream: socket.socket | None = None
        self.proxy = None
        self.stop_reply: str | None = None        # the stub's stop reply where we left it
        self.stopped_at: str | None = None        # "entry", "checkpoint" or "signal"
        self.pc: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "GoTarget":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command_line(self, stub: str) -> list:
        args = [find_tool(QEMU_USER) or QEMU_USER, "-g", stub, str(self.elf), self.scenario]
        if self.preinit:
            args.append("--preinit")
        return args + self._extra_args

    def _environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_")}
        env.update(GO_TARGET_ENV)
        return env

    def start(self) -> "GoTarget":
        if self.proc is not None:
            return self
        if not self.elf.is_file():
            raise LauncherError(f"{self.elf} does not exist: run `make -C userland/mazarin` first")
        if find_tool(QEMU_USER) is None:
            raise LauncherError(f"{QEMU_USER} is not installed (apt-get install qemu-user)")
        self._tmpdir = tempfile.mkdtemp(prefix=f"kheap-{self.variant}-{self.scenario}-")
        if self._own_stdout:
            self.stdout_path = Path(self._tmpdir) / "stdout.log"
        _live_targets.add(self)
        try:
            if self.direct:
                self._start_direct()
            else:
                self._start_proxied()
            return self
        except BaseException:
            self.stop()
            raise

    def _spawn(self, stub: str) -> None:
        self._close_stderr()
        self._stderr_file = open(Path(self._tmpdir) / "qemu.stderr", "wb")
        with open(self.stdout_path, "wb") as stdout:
            self.proc = subprocess.Popen(
                self.command_line(stub), stdin=subprocess.DEVNULL, stdout=stdout,
                stderr=self._stderr_file, env=self._environment(), start_new_session=True,
                preexec_fn=_die_with_parent_kill if sys.platform.startswith("linux") else None)

    def _start_direct(self) -> None:
        for attempt in range(5):
            if not self._fixed_port:
                self.gdb_port = free_port()
            self._spawn(str(self.gdb_port))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _tcp_listening(self.gdb_port):
                    self.stopped_at = "entry"
                    return
                time.sleep(0.01)
            err = self.stderr_text()
            self._kill()
            if self._fixed_port or attempt == 4:
                raise LauncherError(f"qemu-user did not open its gdbstub: {err.strip()}")

    def _start_proxied(self) -> None:
        from qemu.rsp_proxy import RspProxy, StubClient, StubError, stop_thread
        self.stub_path = Path(self._tmpdir) / "gdbstub.sock"
        self._spawn(str(self.stub_path))
        deadline = time.monotonic() + 10
        while True:
            # The socket file appears at bind(), a moment before listen(): retry until then.
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._fail("qemu-user did not open its gdbstub socket")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.stub_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                time.sleep(0.01)
        self._upstream = sock
        stub = StubClient(sock)
        try:
            stub.command("qSupported:swbreak+;hwbreak+;vContSupported+")
            self.stop_reply = stub.command("?")                 # at the first instruction
            self.stopped_at = "entry"
            if not self.halt:
                self._run_to_checkpoint(stub, stop_thread)
        except StubError as error:
            self._fail(str(error))
        self.proxy = RspProxy(sock, port=self.gdb_port or 0, pending=stub.buf).start()
        self.gdb_port = self.proxy.port

    def _run_to_checkpoint(self, stub, stop_thread) -> None:
        address = elf_symbol(self.elf, CHECKPOINT_FUNCTION)
        if address is None:
            self._fail(f"{self.elf} has no symbol {CHECKPOINT_FUNCTION}")
        breakpoint = f"{address:x},4"
        if stub.command(f"Z0,{breakpoint}") != "OK":
            self._fail("qemu-user refused a breakpoint")
        deadline = time.monotonic() + self.timeout
        resume = "c"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"did not reach {CHECKPOINT_FUNCTION} within {self.timeout:.0f}s")
            reply = stub.command(resume, timeout=left)
            if reply[:1] in ("W", "X"):
                self._fail(f"the program ended ({reply}) before its checkpoint")
            if reply[:1] != "T" and reply[:1] != "S":
                self._fail(f"unexpected stop reply {reply!r}")
            signal_number = int(reply[1:3], 16)
            thread = stop_thread(reply)
            if thread:
                stub.command(f"Hg{thread}")
            # qemu-user 7.2 answers 'p' only to clients that read its target description.
            registers = bytes.fromhex(stub.command("g"))
            pc = int.from_bytes(registers[AARCH64_PC_REGNUM * 8:AARCH64_PC_REGNUM * 8 + 8], "little")
            self.stop_reply, self.pc = reply, pc
            if signal_number == 5 and pc == address:
                if self.scenario == "crash" and not self.preinit:
                    stub.command(f"z0,{breakpoint}")     # go on to the fault
                    resume = "c"
                    continue
                self.stopped_at = "checkpoint"
                break
            if self.scenario == "crash" and signal_number == 11:  # SIGSEGV in kmalloc
                self.stopped_at = "signal"
                break
            # Any other signal belongs to the program (the Go runtime): deliver it.
            resume = f"C{signal_number:02x}"
        stub.command(f"z0,{breakpoint}")

    def stop(self) -> None:
        """Kills qemu-user (SIGKILL: it would hand SIGTERM to the guest), stops the proxy and
        removes the temporary files. Idempotent."""
        self._kill()
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self._upstream is not None:
            try:
                self._upstream.close()
            except OSError:
                pass
            self._upstream = None
        self._close_stderr()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        _live_targets.discard(self)

    def _kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.proc = None

    def _close_stderr(self) -> None:
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def is_running(self) -> bool:
        """True while qemu-user runs (the program is stopped at its checkpoint or entry)."""
        return self.proc is not None and self.proc.poll() is None

    # -- output ----------------------------------------------------------------------------
    def serial_text(self) -> str:
        """Everything the program printed on stdout (its serial line)."""
        try:
            return self.stdout_path.read_text(errors="replace")
        except (FileNotFoundError, AttributeError):
            return ""

    stdout_text = serial_text

    def stderr_text(self) -> str:
        try:
            return (Path(self._tmpdir) / "qemu.stderr").read_text(errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """Waits until ``pattern`` appears on stdout (a stopped program prints nothing more)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()
            if regex.search(text):
                return text
            if not self.is_running():
                self._fail(f"qemu-user exited while waiting for {pattern!r}", text)
            if time.monotonic() > deadline:
                self._fail(f"timed out after {timeout:.0f}s waiting for {pattern!r}", text)
            time.sleep(0.02)

    def wait_until_settled(self, timeout: float = 30.0) -> str:
        """start() returns settled (stopped where the mode says); this returns stdout."""
        if not self.is_running():
            self._fail("qemu-user is not running", self.serial_text())
        return self.serial_text()

    def checkpoints(self) -> list:
        return parse_checkpoints(self.serial_text())

    def _fail(self, why: str, text: str | None = None) -> None:
        text = self.serial_text() if text is None else text
        tail = "\n".join(text.splitlines()[-15:])
        stderr = self.stderr_text().strip()
        raise LauncherError(
            f"{self.variant}/{self.scenario}: {why}\n--- stdout tail ---\n{tail}"
            + (f"\n--- qemu-user stderr (last lines) ---\n" + "\n".join(stderr.splitlines()[-15:])
               if stderr else ""))

    def __repr__(self) -> str:
        return (f"GoTarget(layout={self.layout!r}, scenario={self.scenario!r}, "
                f"gdb_port={self.gdb_port}, stopped_at={self.stopped_at!r}, "
                f"running={self.is_running()})")


def valid_port(port) -> int:
    """A TCP port, 1-65535, or ValueError: QEMU would take 210412 modulo 65536 and listen on
    13804 without a word."""
    try:
        number = int(str(port), 10)
    except ValueError:
        raise ValueError(f"not a port number: {port!r} (1-65535)") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is out of range (1-65535)")
    return number


def tcp_port(text: str) -> int:
    """:func:`valid_port` as an argparse type: a bad ``--gdb-port`` is a usage error."""
    try:
        return valid_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="qemu/run.sh",
        description="Boot the kheap test kernel in QEMU (or run the Go target under "
                    "qemu-aarch64), in the foreground.")
    parser.add_argument("--arch", choices=sorted(MACHINES), default="arm")
    parser.add_argument("--variant", choices=VARIANTS, default="default",
                        help="a build-time variant of the kernel (docs/variants.md)")
    parser.add_argument("--go", choices=GO_LAYOUTS, metavar="LAYOUT", default=None,
                        help="run the Go target (userland/mazarin) with this heap layout "
                             "(v1, v2) under qemu-aarch64 instead of booting a kernel")
    parser.add_argument("--scenario", choices=sorted(set(SCENARIOS) | set(GO_SCENARIOS)),
                        default="clean")
    parser.add_argument("--gdb-port", type=tcp_port, default=None, metavar="PORT",
                        help="gdbstub port on 127.0.0.1 (default: a free one, printed)")
    parser.add_argument("--halt", action="store_true",
                        help="freeze the CPU at the first instruction until gdb continues")
    parser.add_argument("--preinit", action="store_true",
                        help="stop before the page array and the heap are set up")
    parser.add_argument("--direct", action="store_true",
                        help="--go: no proxy; the port is qemu-user's own stub and its first "
                             "client finds the program at its first instruction")
    parser.add_argument("--serial", default=None,
                        help="write the kernel's serial output (the Go target's stdout) to "
                             "this file (default: terminal)")
    args = parser.parse_args(argv)

    if args.go:
        if args.scenario not in GO_SCENARIOS:
            parser.error(f"the Go target has no scenario {args.scenario!r} "
                         f"(it has {', '.join(GO_SCENARIOS)})")
        vm = GoTarget(layout=args.go, scenario=args.scenario, halt=args.halt,
                      preinit=args.preinit, direct=args.direct, gdb_port=args.gdb_port,
                      stdout_path=args.serial)
        label = f"mazarin-{args.go}/{args.scenario}"
    else:
        if args.scenario not in SCENARIOS:
            parser.error(f"the kernel has no scenario {args.scenario!r}")
        if args.direct:
            parser.error("--direct is for --go")
        vm = KernelVM(arch=args.arch, scenario=args.scenario, halt=args.halt,
                      gdb_port=args.gdb_port, serial_path=args.serial, variant=args.variant,
                      preinit=args.preinit)
        label = ("" if args.variant == "default" else f"{args.variant}/") + f"{args.arch}/{args.scenario}"
    stopping = []
    # A background job starts with SIGINT ignored; Ctrl-C must always stop us cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGHUP, lambda *_: stopping.append(1))
    try:
        vm.start()
        print(f"kheap: {label} running, elf {vm.elf}", flush=True)
        if args.go and args.direct:
            where = (", qemu-user's own stub (every interface): its first client finds the "
                     "program at its first instruction")
        elif args.go:
            where = f", stopped {'at its first instruction' if args.halt else 'in ' + CHECKPOINT_FUNCTION}" \
                + (" (SIGSEGV)" if vm.stopped_at == "signal" else "") \
                + "; serves one client at a time"
        else:
            where = ", halted at the first instruction" if args.halt else ""
        print(f"kheap: gdb port {vm.gdb_port} (target remote 127.0.0.1:{vm.gdb_port}){where}",
              flush=True)
        if args.serial:
            print(f"kheap: {'stdout' if args.go else 'serial output'} in {args.serial}", flush=True)
        print(f"kheap: Ctrl-C stops {'qemu-aarch64' if args.go else 'QEMU'}", flush=True)
        shown = 0
        while vm.is_running() and not stopping:
            if not args.serial:
                text = vm.serial_text()
                if len(text) > shown:
                    sys.stdout.write(text[shown:])
                    sys.stdout.flush()
                    shown = len(text)
            time.sleep(0.1)
        if not vm.is_running() and not stopping:
            print(f"kheap: QEMU exited: {vm.stderr_text().strip()[-2000:]}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    except LauncherError as error:
        print(f"kheap: {error}", file=sys.stderr)
        return 1
    finally:
        vm.stop()
    print("kheap: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
