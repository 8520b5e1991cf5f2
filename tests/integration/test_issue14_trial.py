"""Issue 14, proof: what a new user's trial of every command in every face found (branch
i14-trial), through the real gdb-multiarch, lldb and CLI. Each test failed before its fix."""

import shutil

import pytest

from debuggers import run_gdb, run_lldb
from expectations import ARCHES

pytestmark = [pytest.mark.qemu, pytest.mark.gdb]


@pytest.mark.parametrize("arch", ARCHES)
def test_kheap_help_in_gdb_lists_the_subcommands(kernel_build, arch):
    """``kheap --help`` works in the CLI; in gdb it said "unknown command '--help'"."""
    run = run_gdb(kernel_build[arch], 0, ["kheap --help", "kheap -h", "kheap"], connect=False, post=())
    for step in run.steps:
        assert step.error == "" and "unknown command" not in step.output, step
        assert "Subcommands" in step.output and "kheap walk" in step.output, step


@pytest.mark.parametrize("arch", ARCHES)
def test_cli_override_in_a_debugger_names_the_faces_setting(kernel_build, arch):
    """The CLI's ``--heap-start`` typed in gdb / lldb: one line naming that face's setting."""
    run = run_gdb(kernel_build[arch], 0, ["kheap check --heap-start 0x3d5000", "kheap walk --debug"],
                  connect=False, post=())
    assert run.steps[0].output.strip() + run.steps[0].error.strip() == \
        "kheap check: --heap-start is a setting in gdb: set kheap heap-start 0x3d5000"
    assert "set kheap debug on" in run.steps[1].output + run.steps[1].error
    if shutil.which("lldb") is None:
        return
    run = run_lldb(kernel_build[arch], 0, ["kheap check --heap-start 0x3d5000"], connect=False, post=())
    assert run.steps[0].error.strip() == \
        "error: kheap check: --heap-start is a setting in lldb: kheap set heap-start 0x3d5000"
