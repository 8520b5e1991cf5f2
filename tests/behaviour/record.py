"""Record the ``--json`` output of kheap's read-only commands, for every scenario on both builds.

This pins today's behaviour before kheap's core is refactored: ``expected/<arch>/<scenario>.json``
holds what each command line printed (parsed JSON), its exit code and its stderr, and
tests/integration/test_behaviour.py re-runs the same command lines against a freshly booted
kernel and requires identical results. A difference after a refactor is either a regression or
a named fix (then re-record and say so in the commit).

Usage (from the repository root)::

    .venv/bin/python -m tests.behaviour.record                      # everything (24 VMs, ~1 min idle)
    .venv/bin/python -m tests.behaviour.record --arch arm --scenario uaf
    .venv/bin/python tests/behaviour/record.py --out /tmp/again    # elsewhere, e.g. to diff
    .venv/bin/python -m tests.behaviour.record --subprocess        # real `kheap` processes

Each (arch, scenario) gets its own QEMU (``qemu.launcher.KernelVM`` on a free port, stopped
in every case), awaited until settled exactly as the test pool does (``wait_until_settled``:
KHEAP-READY, KHEAP-PANIC for ``crash``). The commands run through the CLI in-process
(``gdbext.frontends.cli.main(argv)`` with stdout/stderr captured; ``--subprocess`` runs the
``kheap`` console script instead, which gives the same file), each as
``kheap CMD ARGS --json --remote 127.0.0.1:PORT --elf /abs/kernel.elf``.

Command lines, in the order they run (later ones use addresses from the walk's output):

- ``walk``; ``walk --used --min-size 64 --limit 3``; ``walk --free``;
  ``walk --around P --context 1`` (P = the middle segment's payload)
- ``check``; ``check --full``; ``stats``
- ``find A`` for: the first segment's payload, the middle segment's payload + 8 (an interior
  address), the last segment's header, the heap's end (the first address outside the heap),
  and, when check has findings, the first finding's address (duplicates run once). "First",
  "middle" (index count // 2) and "last" are positions in the walk's segment list.
- ``pages``; ``pages --no-free-list``; ``pages --page H`` (H = the page holding the heap
  start); ``pages --address P`` (P = the first payload); ``pages --page N`` (N = num_pages,
  one past the last page: a usage error). ``--page``/``--address`` on a valid page fail today
  with ``internal error: AttributeError`` (exit 2): that is what is recorded.
- ``map``; ``map --cells 64``
- ``triage``; ``triage --full``

File format: one JSON object per (arch, scenario), keys sorted, indent 1::

    {"kheap walk --json --remote HOST:PORT --elf kernel/build/arm/kernel.elf":
        {"exit": 0, "output": {...the parsed JSON...}, "stderr": ""}, ...}

``output`` is null when stdout was empty; if stdout were not JSON it would be stored as
``{"unparsed_stdout": text}``. ``expected/kernels.json`` holds, per build, a digest of the
kernel image the fixture was recorded with (``kernel_image_digest``): every address in the
fixture depends on the kernel and its cross compiler, so when the test fails it says whether
the kernel itself differs (then rebuild with the same toolchain, or re-record on purpose).

Normalisations (only what differs from one boot or checkout to the next; applied to every
string in the parsed output, to stderr and to the command line used as the key):

1. The ELF's absolute path becomes repo-relative (``/…/kheap/kernel/build/arm/kernel.elf`` →
   ``kernel/build/arm/kernel.elf``): any occurrence of the repository root followed by ``/``
   is removed.
2. The gdbstub address ``127.0.0.1:PORT`` (a free port chosen per boot) becomes ``HOST:PORT``.

Today both occur only in the command lines (the keys): no recorded output or stderr contains
the ELF path or the port.

Nothing else is normalised: today's JSON output has no timestamps, durations or random
values, and the kernel scenarios are deterministic (same heap, same registers in ``triage``),
which the test checks by comparing a fresh boot against the stored file.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from qemu.launcher import SCENARIOS, KernelVM, elf_path  # noqa: E402

ARCHES = ("arm", "aarch64")
EXPECTED_DIR = Path(__file__).resolve().parent / "expected"
PAGE_SIZE = 4096
SETTLE_TIMEOUT = 60


def expected_path(arch: str, scenario: str, root: Path = EXPECTED_DIR) -> Path:
    return Path(root) / arch / f"{scenario}.json"


def kernels_path(root: Path = EXPECTED_DIR) -> Path:
    """{arch: kernel_image_digest} of the kernels the fixture was recorded with."""
    return Path(root) / "kernels.json"


def kernel_image_digest(elf) -> str:
    """SHA-256 of what the kernel ELF loads (every SHF_ALLOC section's name, address, size and
    bytes; .bss by its place and size only). Unlike the file's hash it does not change with the
    checkout's path (DWARF holds absolute paths): it changes when the kernel or its toolchain
    does, which changes every address in the fixture."""
    import hashlib

    from elftools.elf.elffile import ELFFile

    digest = hashlib.sha256()
    with open(elf, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if not section["sh_flags"] & 0x2:            # SHF_ALLOC
                continue
            digest.update(f"{section.name} {section['sh_addr']:#x} {section['sh_size']}\n".encode())
            if section["sh_type"] != "SHT_NOBITS":
                digest.update(section.data())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Running one command line
# ---------------------------------------------------------------------------------------------
class Runner:
    """Runs ``kheap ARGV --json --remote 127.0.0.1:PORT --elf ELF`` and normalises the result."""

    def __init__(self, port: int, elf: Path, subprocess_mode: bool = False):
        self.host_port = f"127.0.0.1:{port}"
        self.elf = Path(elf).resolve()
        self.subprocess_mode = subprocess_mode

    def key(self, argv) -> str:
        """The normalised command line: the fixture's key for this command."""
        return self.normalise(" ".join(["kheap", *argv, *self._tail()]))

    def _tail(self):
        return ["--json", "--remote", self.host_port, "--elf", str(self.elf)]

    def run(self, argv) -> dict:
        full = [*argv, *self._tail()]
        if self.subprocess_mode:
            status, out, err = _run_subprocess(full)
        else:
            status, out, err = _run_in_process(full)
        entry = {"exit": status, "output": None, "stderr": self.normalise(err)}
        if out.strip():
            try:
                entry["output"] = self.normalise(json.loads(out))
            except ValueError:
                entry["output"] = {"unparsed_stdout": self.normalise(out)}
        return entry

    def normalise(self, value):
        if isinstance(value, str):
            return value.replace(str(REPO_ROOT) + "/", "").replace(self.host_port, "HOST:PORT")
        if isinstance(value, list):
            return [self.normalise(v) for v in value]
        if isinstance(value, dict):
            return {self.normalise(k): self.normalise(v) for k, v in value.items()}
        return value


def _run_in_process(argv):
    from gdbext.frontends.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def _run_subprocess(argv):
    import subprocess

    exe = REPO_ROOT / ".venv" / "bin" / "kheap"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gdbext"]
    proc = subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------
# The command lines of one scenario
# ---------------------------------------------------------------------------------------------
def _output(entry):
    out = entry["output"]
    return out if isinstance(out, dict) and "unparsed_stdout" not in out else {}


def find_addresses(walk: dict, check: dict) -> list:
    """The ``find`` targets, from the scenario's own walk and check output (see the docstring)."""
    segments = walk.get("segments") or []
    wanted = []
    if segments:
        first, middle, last = segments[0], segments[len(segments) // 2], segments[-1]
        wanted += [first["payload"], middle["payload"] + 8, last["address"]]
    heap = walk.get("heap") or {}
    if heap.get("end") is not None:
        wanted.append(heap["end"])
    findings = check.get("findings") or []
    if findings and findings[0].get("address") is not None:
        wanted.append(findings[0]["address"])
    return list(dict.fromkeys(wanted))             # each address once, first-seen order


def record_vm(vm, subprocess_mode: bool = False) -> dict:
    """Runs every command line against a settled VM (read-only); returns {key: entry} in run
    order. Used by record() below and by tests/integration/test_behaviour.py."""
    runner = Runner(vm.gdb_port, vm.elf, subprocess_mode)
    results = {}

    def run(*argv):
        argv = [str(a) for a in argv]
        entry = runner.run(argv)
        results[runner.key(argv)] = entry
        return entry

    walk = _output(run("walk"))
    run("walk", "--used", "--min-size", "64", "--limit", "3")
    run("walk", "--free")
    segments = walk.get("segments") or []
    if segments:
        run("walk", "--around", hex(segments[len(segments) // 2]["payload"]), "--context", "1")
    check = _output(run("check"))
    run("check", "--full")
    run("stats")
    for address in find_addresses(walk, check):
        run("find", hex(address))
    pages = _output(run("pages"))
    run("pages", "--no-free-list")
    heap = walk.get("heap") or {}
    if heap.get("start") is not None:
        run("pages", "--page", heap["start"] // PAGE_SIZE)
    if segments:
        run("pages", "--address", hex(segments[0]["payload"]))
    if pages.get("num_pages") is not None:
        run("pages", "--page", pages["num_pages"])
    run("map")
    run("map", "--cells", "64")
    run("triage")
    run("triage", "--full")
    return results


def boot(arch: str, scenario: str) -> KernelVM:
    """A settled VM, as the test pool makes them (the caller stops it)."""
    vm = KernelVM(arch=arch, scenario=scenario)
    try:
        vm.start()
        vm.wait_until_settled(SETTLE_TIMEOUT)
    except BaseException:
        vm.stop()
        raise
    return vm


def record(arch: str, scenario: str, subprocess_mode: bool = False) -> dict:
    vm = boot(arch, scenario)
    try:
        return record_vm(vm, subprocess_mode)
    finally:
        vm.stop()


def to_text(results: dict) -> str:
    return json.dumps(results, sort_keys=True, indent=1) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.behaviour.record",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHES, action="append",
                        help="only this build (repeatable; default: both)")
    parser.add_argument("--scenario", choices=SCENARIOS, action="append",
                        help="only this scenario (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=EXPECTED_DIR,
                        help="where to write <arch>/<scenario>.json (default: the fixture)")
    parser.add_argument("--subprocess", action="store_true",
                        help="run the kheap console script instead of cli.main in-process")
    args = parser.parse_args(argv)
    total = 0
    for arch in args.arch or ARCHES:
        digests = kernels_path(args.out)
        known = json.loads(digests.read_text()) if digests.is_file() else {}
        known[arch] = kernel_image_digest(elf_path(arch))
        digests.parent.mkdir(parents=True, exist_ok=True)
        digests.write_text(json.dumps(known, sort_keys=True, indent=1) + "\n")
        for scenario in args.scenario or SCENARIOS:
            started = time.monotonic()
            results = record(arch, scenario, args.subprocess)
            path = expected_path(arch, scenario, args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = to_text(results)
            path.write_text(text)
            total += len(text)
            print(f"{arch}/{scenario}: {len(results)} command lines, {len(text)} bytes, "
                  f"{time.monotonic() - started:.1f}s -> {path}", flush=True)
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
