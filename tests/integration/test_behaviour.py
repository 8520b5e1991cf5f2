"""kheap's ``--json`` output must not change: every scenario on both builds, compared with the
fixture recorded before the core's refactor (tests/behaviour/expected/<arch>/<scenario>.json).

Each test runs the same command lines as tests/behaviour/record.py (walk, check, stats, find,
pages, map, triage and a few of their options; see that module's docstring), in-process,
against the session pool's VM for its scenario (read-only), with the same normalisations, and
requires every result (parsed JSON, exit code, stderr) to equal the stored one. On failure it
names every command line that differs and shows a diff of the first, in the order they ran.

An intended change (a named fix) is re-recorded with
``.venv/bin/python -m tests.behaviour.record --arch A --scenario S`` and committed with its
reason.
"""
import difflib
import json

import pytest

from qemu.launcher import SCENARIOS
from tests.behaviour.record import (ARCHES, expected_path, kernel_image_digest, kernels_path,
                                    record_vm)

pytestmark = [pytest.mark.qemu]

DIFF_LINES = 80          # lines of the first difference shown


def _lines(entry):
    return json.dumps(entry, sort_keys=True, indent=1).splitlines()


def describe_differences(expected: dict, actual: dict) -> str:
    """'' if equal; otherwise which command lines differ and a diff of the first one."""
    order = list(actual) + [k for k in expected if k not in actual]     # run order first
    differing = [k for k in order if expected.get(k) != actual.get(k)]
    if not differing:
        return ""
    lines = [f"{len(differing)} of {len(order)} command lines differ from the fixture:"]
    lines += [f"  {'(missing) ' if k not in actual else '(new) ' if k not in expected else ''}{k}"
              for k in differing]
    first = differing[0]
    lines.append(f"\nfirst difference: {first}  (- fixture, + now)")
    if first not in expected:
        lines.append("  not in the fixture (a new command line: did an address from walk change?)")
    elif first not in actual:
        lines.append("  in the fixture but not run now (did an address from walk change?)")
    else:
        diff = list(difflib.unified_diff(_lines(expected[first]), _lines(actual[first]),
                                         "fixture", "now", n=3, lineterm=""))
        lines += diff[:DIFF_LINES]
        if len(diff) > DIFF_LINES:
            lines.append(f"... {len(diff) - DIFF_LINES} more diff lines")
    return "\n".join(lines)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("arch", ARCHES)
def test_json_output_is_unchanged(vm_pool, arch, scenario):
    path = expected_path(arch, scenario)
    assert path.is_file(), f"no fixture {path}: run .venv/bin/python -m tests.behaviour.record"
    expected = json.loads(path.read_text())
    vm = vm_pool.get(arch, scenario)
    actual = record_vm(vm)
    # Round-trip through JSON so the comparison sees exactly what a file would hold.
    actual = json.loads(json.dumps(actual))
    problems = describe_differences(expected, actual)
    if problems:
        pytest.fail(f"{arch}/{scenario}: {kernel_note(arch, vm.elf)}{problems}", pytrace=False)


def kernel_note(arch, elf):
    """A warning when the kernel under test is not the one the fixture was recorded with."""
    digests = kernels_path()
    recorded = json.loads(digests.read_text()).get(arch) if digests.is_file() else None
    if recorded is None or recorded == kernel_image_digest(elf):
        return ""
    return (f"THE KERNEL DIFFERS from the one recorded ({elf} loads other bytes: another kernel "
            "source or cross compiler), so addresses may differ for that reason alone.\n")
