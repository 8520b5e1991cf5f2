"""Shared fixtures: the kernel build, a session pool of booted kernels, and a VM factory.

- ``kernel_build``: runs ``make -C kernel`` once per session (serialised across xdist workers
  with a file lock); skips with a clear reason when a cross compiler is missing.
- ``vm_pool``: ``vm_pool.get(arch, scenario)`` returns a KernelVM that has reached
  KHEAP-READY (KHEAP-PANIC for ``crash``). Each VM is booted on first use and shared by every
  test of the session, so tests must only read from it (attach, read, detach; never write).
  Under pytest-xdist each worker has its own pool.
- ``start_vm``: ``start_vm(arch, scenario, halt=False)`` for a test that needs its own VM
  (for example halted at the first instruction); stopped when the test ends.
"""
import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from qemu.launcher import MACHINES, SCENARIOS, KernelVM, elf_path  # noqa: E402

ARCHES = ("arm", "aarch64")
CROSS_COMPILERS = {"arm": "arm-none-eabi-gcc", "aarch64": "aarch64-linux-gnu-gcc"}


@pytest.fixture(scope="session")
def kernel_build():
    """Builds both kernels once; returns {arch: Path of kernel.elf}."""
    missing = [cc for cc in CROSS_COMPILERS.values() if shutil.which(cc) is None]
    if missing or shutil.which("make") is None:
        pytest.skip(f"cannot build the kernel: {', '.join(missing or ['make'])} not installed "
                    "(install.sh installs gcc-arm-none-eabi and gcc-aarch64-linux-gnu)")
    lock_path = REPO_ROOT / "kernel" / "build" / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # xdist workers must not build concurrently
        result = subprocess.run(["make", "-C", str(REPO_ROOT / "kernel")],
                                capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"make -C kernel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {arch: elf_path(arch) for arch in ARCHES}


def _require_qemu(arch):
    binary = MACHINES[arch][0]
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed")


class VMPool:
    """Booted kernels, one per (arch, scenario), started on first use, reused, stopped at the
    end of the session."""

    def __init__(self):
        self._vms = {}

    def get(self, arch, scenario, timeout=60):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        _require_qemu(arch)
        vm = self._vms.get((arch, scenario))
        if vm is not None and not vm.is_running():
            vm.stop()                               # died (or was stopped by a test): reboot
            vm = None
        if vm is None:
            vm = KernelVM(arch=arch, scenario=scenario)
            self._vms[(arch, scenario)] = vm
            vm.start()
            vm.wait_until_settled(timeout)
        return vm

    def close(self):
        for vm in self._vms.values():
            vm.stop()
        self._vms.clear()


@pytest.fixture(scope="session")
def vm_pool(kernel_build):
    pool = VMPool()
    yield pool
    pool.close()


@pytest.fixture
def start_vm(kernel_build):
    """Factory for a test's own VM: ``start_vm(arch, scenario, halt=False, settle=None)``.

    A running VM is waited on until KHEAP-READY (or KHEAP-PANIC for crash) unless
    ``settle=False``; a halted one is returned at once."""
    started = []

    def start(arch, scenario="clean", halt=False, settle=None, timeout=60):
        _require_qemu(arch)
        vm = KernelVM(arch=arch, scenario=scenario, halt=halt)
        started.append(vm)
        vm.start()
        if settle if settle is not None else not halt:
            vm.wait_until_settled(timeout)
        return vm

    yield start
    for vm in started:
        vm.stop()
