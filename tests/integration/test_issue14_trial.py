"""Issue 14, proof: what a new user's trial of every command in every face found (branch
i14-trial), through the real gdb-multiarch, lldb and CLI. Each test failed before its fix."""

import pytest

from debuggers import run_gdb
from expectations import ARCHES

pytestmark = [pytest.mark.qemu, pytest.mark.gdb]


@pytest.mark.parametrize("arch", ARCHES)
def test_kheap_help_in_gdb_lists_the_subcommands(kernel_build, arch):
    """``kheap --help`` works in the CLI; in gdb it said "unknown command '--help'"."""
    run = run_gdb(kernel_build[arch], 0, ["kheap --help", "kheap -h", "kheap"], connect=False, post=())
    for step in run.steps:
        assert step.error == "" and "unknown command" not in step.output, step
        assert "Subcommands" in step.output and "kheap walk" in step.output, step
