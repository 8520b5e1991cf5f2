"""kheap's ``--json`` output must not change: every scenario on both builds, compared with the
fixture recorded before the core's refactor (tests/behaviour/expected/<arch>/<scenario>.json).

Each test runs the same command lines as tests/behaviour/record.py (walk, check, stats, find,
pages, map, triage and a few of their options; see that module's docstring), in-process,
against the session pool's VM for its scenario (read-only), with the same normalisations, and
requires every result (parsed JSON, exit code, stderr) to equal the stored one. On failure it
names every command line that differs and shows a diff of the first, in the order they ran.

The fixture stays as recorded before the refactor. An intended change is a *named fix* in
:data:`NAMED_FIXES`: the command lines it covers, why, and what the new output must be; such a
line may differ from the fixture only in the way its fix says.
"""
import difflib
import json

import pytest

from qemu.launcher import SCENARIOS
from tests.behaviour.record import (ARCHES, expected_path, kernel_image_digest, kernels_path,
                                    record_vm)

pytestmark = [pytest.mark.qemu]

DIFF_LINES = 80          # lines of the first difference shown


def _page_report(command, old, new):
    """``pages --page N`` / ``--address A`` crashed ('PageRange' object has no attribute
    'pages', issue 14 item 1); now they answer with that page."""
    words = command.split()
    opt = "--page" if "--page" in words else "--address"
    value = int(words[words.index(opt) + 1], 0)
    index = value if opt == "--page" else value // 4096
    out = new.get("output") or {}
    return (old.get("exit") == 2 and "no attribute 'pages'" in (old.get("stderr") or "")
            and new.get("exit") == 0 and out.get("report") == "page" and out["page"]["index"] == index)


def _around_corrupt_size(command, old, new):
    """``walk --around`` took ``max(size, header)`` as a segment's extent, so a corrupt size of
    2 GiB claimed every address after its header; it now asks the allocator's extent (a
    corrupt size covers only its header), as ``find`` and ``map`` always did."""
    words = command.split()
    target = int(words[words.index("--around") + 1], 0)
    segments = ((old.get("output") or {}).get("segments")) or []
    hit = [s for s in segments if s["address"] <= target < s["address"] + s["size"]]
    return (old.get("exit") == 0 and new.get("exit") == 2 and "in no segment" in (new.get("stderr") or "")
            and any(s["state"] == "bad" and target >= s["address"] + (old["output"]["header_size"]) for s in hit))


def _regions_bounded(command, old, new):
    """The map's region table ran to 1,681 rows on stress (issue 16): it keeps at most 40 now
    (corrupt and uncovered first, then the largest, in address order) and counts the rest."""
    o, n = old.get("output"), new.get("output")
    if not o or not n or old.get("exit") != new.get("exit"):
        return False
    rows, kept = o["regions"], n.get("regions", [])
    same = {k: v for k, v in o.items() if k != "regions"} == \
        {k: v for k, v in n.items() if k not in ("regions", "regions_total", "regions_not_shown")}
    return (same and n.get("regions_total") == len(rows) and len(kept) == min(40, len(rows))
            and n.get("regions_not_shown") == len(rows) - len(kept) and all(r in rows for r in kept))


def _blame_suggestion(command, old, new):
    """check and triage suggest the ``kheap blame`` command of their first error finding (issue
    13): a new ``blame`` key in the check report (``triage``: in its ``check``), null when
    there is no error, and nothing else changes."""
    o, n = old.get("output"), new.get("output")
    if not o or not n or old.get("exit") != new.get("exit") or old.get("stderr") != new.get("stderr"):
        return False
    check_new = n.get("check") if command.startswith("kheap triage") else n
    if not isinstance(check_new, dict) or "blame" not in check_new:
        return False
    suggestion = check_new["blame"]
    if suggestion is None:
        ok = check_new.get("errors", 0) == 0
    else:
        ok = (check_new.get("errors", 0) > 0 and suggestion["command"].startswith("kheap blame 0x")
              and f"--size {suggestion['size']}" in suggestion["command"])
    stripped = {k: v for k, v in check_new.items() if k != "blame"}
    if command.startswith("kheap triage"):
        stripped = dict(n, check=stripped)
    return ok and stripped == o


def _undo_culprit_and_stop(command, new):
    """``new`` without issue 14's report changes (items 9, 14, the double-free hint), or None if
    it has one that is not as those fixes say: a culprit names whose bytes it classified
    (``bytes_at``/``bytes_of``: the finding's header, its prev word, the poisoned payload) and
    spaces its hex; HEAP-STATS gets a "likely double free" culprit; triage's stop gets
    ``inlined``/``source`` (its ``function`` is the ELF symbol in every face) and a link's
    ``reads`` names the header field at the fault's offset."""
    import copy

    n = copy.deepcopy(new)
    out = n.get("output")
    if not isinstance(out, dict):
        return n
    triage = command.startswith("kheap triage")
    check = out.get("check") if triage else out
    for f in (check or {}).get("findings", []):
        c = f.get("culprit")
        if not c:
            continue
        if f["code"] == "HEAP-STATS":
            if not c["reason"].startswith("likely double free"):
                return None
            f["culprit"] = None
            continue
        if "bytes_at" in c:
            at, of, v = c.pop("bytes_at"), c.pop("bytes_of"), f.get("values") or {}
            header = v.get("address", v.get("from"))
            if not ((of == "header" and at == header) or (of == "payload" and at == f["address"])
                    or (of == "prev" and header is not None and header < at < header + 32)):
                return None
        if c.get("classification") == "binary":
            c["detail"] = c["detail"].removesuffix(" ...").replace(" ", "")
    if triage:
        stop = out.get("stop") or {}
        if stop.get("pc") is not None:
            if not ({"inlined", "source"} <= stop.keys()):
                return None
            stop.pop("inlined"), stop.pop("source")
        for link in (out.get("fault_origin") or {}).get("links", []):
            if not link.pop("reads", None):
                return None
    return n


def _culprit_and_stop(command, old, new):
    """Issue 14 items 9 and 14 and the double-free hint (see :func:`_undo_culprit_and_stop`),
    on top of the blame suggestion (issue 13)."""
    undone = _undo_culprit_and_stop(command, new)
    return undone is not None and undone != new and (undone == old or _blame_suggestion(command, old, undone))


def _find_says_what_it_is(command, old, new):
    """``find`` of an address outside the heap says what it is (issue 14: pwndbg's xinfo): a
    new ``where`` key, and nothing else changes."""
    n = dict(new.get("output") or {})
    where = n.pop("where", None)
    return (where is not None and where.get("kind") in ("stack", "page-array", "section", "image", "unmapped", "memory")
            and dict(new, output=n) == old)


def _around_marks_row(command, old, new):
    """``walk --around`` names the segment it marks (issue 14): a new ``target`` key, the
    header of the listed segment holding the address, and nothing else changes."""
    n = dict(new.get("output") or {})
    target = n.pop("target", None)
    words = command.split()
    around = int(words[words.index("--around") + 1], 0)
    held = [s for s in n.get("segments", []) if s["address"] <= around < s["address"] + s["size"]]
    return target is not None and [s["address"] for s in held] == [target] and dict(new, output=n) == old


OLD_MAP_LEGEND = {"#": "used", ".": "free", "+": "used and free", "!": "corrupt", " ": "not on the list"}


def _map_legend_words(command, old, new):
    """The map's legend says its cells in the region table's words (issue 14 item 16: the table
    said "bad" and "uncovered", the legend "corrupt" and "not on the list"); nothing else
    changes, beyond the region table's bound (:func:`_regions_bounded`)."""
    from gdbext.core.reports import MAP_LEGEND

    o, n = old.get("output"), new.get("output")
    if not o or not n or o.get("legend") != OLD_MAP_LEGEND or n.get("legend") != MAP_LEGEND:
        return False
    if not all(r["state"] in " ".join(MAP_LEGEND.values()) for r in n.get("regions", [])):
        return False
    restored = dict(new, output=dict(n, legend=o["legend"]))
    return restored == old or _regions_bounded(command, old, restored)


# Each: (what the command line starts with, the check that the difference is that fix).
NAMED_FIXES = (
    ("kheap check ", _blame_suggestion),
    ("kheap triage ", _blame_suggestion),
    ("kheap check ", _culprit_and_stop),
    ("kheap triage ", _culprit_and_stop),
    ("kheap find ", _find_says_what_it_is),
    ("kheap walk --around ", _around_marks_row),
    ("kheap pages --page ", _page_report),
    ("kheap pages --address ", _page_report),
    ("kheap walk --around ", _around_corrupt_size),
    ("kheap map ", _regions_bounded),
    ("kheap map ", _map_legend_words),
)


def named_fix(command, old, new):
    """The named fix that explains this command line's difference, or None."""
    for prefix, check in NAMED_FIXES:
        if command.startswith(prefix) and old is not None and new is not None and check(command, old, new):
            return check.__name__
    return None


def _lines(entry):
    return json.dumps(entry, sort_keys=True, indent=1).splitlines()


def describe_differences(expected: dict, actual: dict) -> str:
    """'' if equal; otherwise which command lines differ and a diff of the first one."""
    order = list(actual) + [k for k in expected if k not in actual]     # run order first
    differing = [k for k in order if expected.get(k) != actual.get(k)
                 and not named_fix(k, expected.get(k), actual.get(k))]
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


def test_a_named_fix_accepts_only_its_own_difference():
    """The named fixes must not excuse anything else: another exit code or report fails."""
    command = "kheap pages --page 981 --json --remote HOST:PORT --elf kernel/build/arm/kernel.elf"
    old = {"exit": 2, "output": None,
           "stderr": "kheap pages: internal error: AttributeError: 'PageRange' object has no attribute 'pages'\n"}
    good = {"exit": 0, "output": {"report": "page", "page": {"index": 981}}, "stderr": ""}
    assert named_fix(command, old, good)
    assert not named_fix(command, old, dict(good, exit=1))
    assert not named_fix(command, old, {"exit": 0, "output": {"report": "page", "page": {"index": 980}}})
    assert not named_fix(command.replace("pages --page 981", "walk"), old, good)


def test_issue14_report_fixes_accept_only_their_difference():
    """The culprit/stop, find and walk --around fixes (issue 14) excuse only their own change."""
    import copy

    tail = " --json --remote HOST:PORT --elf kernel/build/arm/kernel.elf"
    finding = {"code": "HEAP-BOUNDS", "severity": "error", "address": 0xDEAD0000, "message": "m",
               "values": {"from": 0x3D5040, "next": 0xDEAD0000},
               "culprit": {"address": 0x3D5000, "reason": "overflow", "classification": "binary",
                           "detail": "0000adde00503d00"}}
    old = {"exit": 1, "stderr": "", "output": {"report": "check", "errors": 1, "findings": [finding], "blame": None}}
    new = copy.deepcopy(old)
    new["output"]["findings"][0]["culprit"].update(detail="00 00 ad de 00 50 3d 00", bytes_at=0x3D5040,
                                                   bytes_of="header")
    assert named_fix("kheap check" + tail, old, new) == "_culprit_and_stop"
    wrong = copy.deepcopy(new)
    wrong["output"]["findings"][0]["culprit"]["bytes_at"] = 0x3D5000          # the culprit's own address
    assert not named_fix("kheap check" + tail, old, wrong)
    wrong = copy.deepcopy(new)
    wrong["output"]["findings"][0]["message"] = "other"
    assert not named_fix("kheap check" + tail, old, wrong)
    old_find = {"exit": 0, "stderr": "", "output": {"report": "find", "found": False, "reason": "outside the heap"}}
    new_find = copy.deepcopy(old_find)
    new_find["output"]["where"] = {"kind": "memory", "readable": True}
    assert named_fix("kheap find 0x4d5000" + tail, old_find, new_find) == "_find_says_what_it_is"
    new_find["output"]["reason"] = "elsewhere"
    assert not named_fix("kheap find 0x4d5000" + tail, old_find, new_find)


def test_the_map_legend_fix_accepts_only_the_new_words():
    from gdbext.core.reports import MAP_LEGEND

    command = "kheap map --json --remote HOST:PORT --elf kernel/build/arm/kernel.elf"
    regions = [{"start": 0, "end": 16, "bytes": 16, "state": "bad", "segments": 1}]
    old = {"exit": 0, "stderr": "", "output": {"legend": OLD_MAP_LEGEND, "regions": regions, "cells": "!"}}
    new = {"exit": 0, "stderr": "", "output": {"legend": dict(MAP_LEGEND), "regions": regions, "cells": "!"}}
    assert named_fix(command, old, new) == "_map_legend_words"
    assert not named_fix(command, old, dict(new, output=dict(new["output"], cells="#")))
    assert not named_fix(command, old, dict(new, output=dict(new["output"], legend={"#": "x"})))
