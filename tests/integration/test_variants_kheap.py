"""kheap on the kernels it had never seen (issue 12): every C kernel variant on both arches and
the Go (Mazarin) target in both layouts, read with nothing but the ELF (no override).

For every target and scenario the real CLI (``kheap ... --remote HOST:PORT --elf ELF --json``,
in-process) must:

- ``check``: 0 errors and 0 warnings on a healthy heap (``--full`` on ``clean`` for the targets
  whose page conventions differ: every page too), the scenario's codes
  (tests/integration/expectations.py) on a corrupt one;
- ``walk``: the target's own checkpoint dump, segment by segment, and on ``clean``,
  ``overflow`` (and ``stress`` for a few targets) gdb-multiarch's independent ``x/`` walk
  (``variants.gdb_walk``, with the ground truth's offsets);
- ``find`` every pointer the allocator returned (the healthy dumps' used segments): payload
  offset 0 of that segment (a few through the CLI, all of them through the core on one link);
- ``info``: where each fact came from and the names matched (``main.heapSegment``...);
- ``stats``, ``map`` (and ``pages`` where the conventions differ): answer (no usage or internal
  error);
- before the heap is set up: "the heap is not initialised yet", exit 2.

gdb-multiarch runs ``kheap check``/``walk``/``info`` on every target (and the page-convention
setting on the tutorial). Targets are booted once per (target, scenario) and kept for the
module's tests (a few at a time: they boot in 0.1-0.6 s); QEMU is always stopped.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import OrderedDict

import pytest

import variants as V
from debuggers import run_gdb
from qemu.launcher import MACHINES, find_tool

pytestmark = pytest.mark.qemu

TARGETS = [t for t in V.all_targets() if t.variant != "default"]
CASES = [(t.name, s) for t in TARGETS for s in t.scenarios]
GDB_WALKS = ("clean", "overflow")
GDB_STRESS_WALKS = ("bitfield/arm", "mazarin-v2")
CLI_FINDS = 4                # pointers found through the CLI per healthy scenario (all through the core)
# Targets whose page conventions differ from the contract: their whole page array is checked
# (check --full, pages) on clean; the others' kernel and heap pages are (check).
PAGE_VARIANTS = ("tutorial", "tutorial-g3", "mazarin-v1", "mazarin-v2")


# -- targets -------------------------------------------------------------------------------------

def _need(tool, why):
    if find_tool(tool) is None:
        pytest.skip(f"{tool} not installed ({why})")


class Pool:
    """Booted targets by (target, scenario, mode), the last few kept for the next tests."""

    KEEP = 3

    def __init__(self):
        self._running = OrderedDict()

    def get(self, t, scenario, **kwargs):
        key = (t.name, scenario, tuple(sorted(kwargs.items())))
        target = self._running.pop(key, None)
        if target is not None and not target.is_running():
            target.stop()
            target = None
        if target is None:
            if t.kind == "kernel":
                _need(MACHINES[t.arch][0], "apt-get install qemu-system-arm")
            else:
                _need("qemu-aarch64", "apt-get install qemu-user")
            if not t.elf.is_file():
                pytest.skip(f"{t.elf} not built (make -C kernel variants; make -C userland/mazarin)")
            target = V.launch(t, scenario, **kwargs)
            try:
                target.start()
                target.wait_until_settled(90)
            except BaseException:
                target.stop()
                raise
        self._running[key] = target
        while len(self._running) > self.KEEP:
            _, old = self._running.popitem(last=False)
            old.stop()
        return target

    def close(self):
        for target in self._running.values():
            target.stop()
        self._running.clear()


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    yield p
    p.close()


def kheap(t, port, *args, json_output=True):
    """``kheap ARGS [--json] --remote 127.0.0.1:PORT --elf ELF`` in-process: (status, output, stderr)."""
    from gdbext.frontends.cli import main
    argv = [*args] + (["--json"] if json_output else []) + ["--remote", f"127.0.0.1:{port}", "--elf", str(t.elf)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    text, errors = out.getvalue(), err.getvalue()
    assert "Traceback" not in text + errors and "internal error" not in errors, (args, errors)
    if not json_output:
        return status, text, errors
    return status, (json.loads(text) if text.strip() else None), errors


def as_dump(segments):
    return [(s["address"], s["size"], s["state"] if s["state"] != "bad" else f"bad({s['is_allocated']})")
            for s in segments]


def last_checkpoint(target):
    checkpoints = target.checkpoints()
    assert checkpoints, "the target printed no checkpoint"
    return checkpoints[-1]


# -- every target, every scenario: check, walk, find, and the other commands ----------------------

@pytest.mark.parametrize("name,scenario", CASES)
def test_kheap_reads_the_target_from_its_elf_alone(pool, name, scenario):
    t = V.target(name)
    target = pool.get(t, scenario)
    port = target.gdb_port
    cp = last_checkpoint(target)

    full = scenario == "clean" and t.variant in PAGE_VARIANTS
    status, report, err = kheap(t, port, "check", *(["--full"] if full else []))
    assert report is not None, err
    codes = [f["code"] for f in report["findings"]]
    if scenario in t.expected:
        wanted, needs_culprit = t.expected[scenario]
        hits = [f for f in report["findings"] if f["code"] in wanted]
        assert hits, f"{name} {scenario}: expected one of {sorted(wanted)}, got {codes}"
        assert status == 1 and report["verdict"] == "corrupt"
        if needs_culprit:
            assert any(f.get("culprit") for f in hits), hits
    else:
        assert (status, report["errors"], report["warnings"], codes) == (0, 0, 0, []), \
            [f["message"] for f in report["findings"]]

    status, walk, err = kheap(t, port, "walk")
    assert status == 0, err
    dump = as_dump(walk["segments"])
    assert dump[:len(cp.segments)] == cp.segments
    if cp.stop is None:
        assert dump == cp.segments and walk["complete"]
    assert all(s["payload"] == s["address"] + t.payload_offset for s in walk["segments"])
    if t.variant == "canary" and scenario in V.HEALTHY:
        assert {s["extra"]["magic"] for s in walk["segments"]} == {V.CANARY_MAGIC}

    if scenario in V.HEALTHY:
        pointers = [a + t.payload_offset for a, _, state in cp.segments if state == "used"]
        assert pointers
        picks = sorted(set(pointers[:3] + pointers[len(pointers) // 2:len(pointers) // 2 + 1] + pointers[-2:]))
        for ptr in picks[:CLI_FINDS]:
            status, found, err = kheap(t, port, "find", hex(ptr))
            assert status == 0, err
            m = found["match"]
            assert (m["where"], m["payload_offset"], m["segment"]["address"]) == \
                ("payload", 0, ptr - t.payload_offset), found
        _find_all_through_the_core(t, port, pointers)

    if scenario == "clean":
        for command in (["stats"], ["map"]) + ((["pages"],) if t.variant in PAGE_VARIANTS else ()):
            status, out, err = kheap(t, port, *command)
            assert status in (0, 1) and out is not None, (command, err)
        status, text, err = kheap(t, port, "walk", json_output=False)
        assert status == 0 and ("magic" in text.splitlines()[1] if t.variant == "canary" else True), text[:500]


def _find_all_through_the_core(t, port, pointers):
    """Every pointer the allocator returned, found by the core over one link (the CLI opens a
    connection per command: a few are enough there)."""
    from gdbext.core.program import Program
    from gdbext.targets.rsp import RemoteTarget
    with RemoteTarget.from_hostport(f"127.0.0.1:{port}") as link:
        prog = Program.open(t.elf, link)
        prog.memory.prefetch_ranges([(prog.heap_start, prog.heap_size)])
        allocator = prog.allocator
        for ptr in pointers:
            m = allocator.find(prog, ptr)
            assert m is not None and (m.where, m.payload_offset, m.segment.address) == \
                ("payload", 0, ptr - t.payload_offset), (hex(ptr), m)


# -- gdb-multiarch: its own x/ walk, and kheap inside it ---------------------------------------------

@pytest.mark.gdb
@pytest.mark.parametrize("name,scenario",
                         [(t.name, s) for t in TARGETS for s in GDB_WALKS]
                         + [(n, "stress") for n in GDB_STRESS_WALKS])
def test_walk_equals_gdbs_x_walk(pool, name, scenario):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.target(name)
    target = pool.get(t, scenario)
    status, walk, err = kheap(t, target.gdb_port, "walk")
    assert status == 0, err
    x = V.gdb_walk(t, target.gdb_port, walk["heap"]["start"])
    assert x.error is None, x.error
    assert x.head == walk["list_head"]
    assert as_dump(walk["segments"])[:len(x.segments)] == x.as_dump()
    mine = {s["address"]: s for s in walk["segments"]}
    for s in x.segments:
        m = mine[s["address"]]
        assert (m["next"], m["prev"], m["is_allocated"], m["size"]) == \
            (s["next"], s["prev"], s["allocated"], s["size"])
        for role in set(s) - {"address", "next", "prev", "allocated", "size"}:
            assert m["extra"][t.fields[role].name] == s[role]
    if x.stop is None:
        assert len(walk["segments"]) == len(x.segments)


@pytest.mark.gdb
@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_kheap_in_gdb(pool, name):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.target(name)
    target = pool.get(t, "overflow")
    commands = ["kheap check --json", "kheap walk --json", "kheap info --json"]
    if t.variant == "tutorial" and t.arch == "arm":
        commands += ["set kheap page-convention identity", "kheap check --full --json",
                     "set kheap page-convention auto", "show kheap page-convention"]
    run = run_gdb(t.elf, target.gdb_port, commands, timeout=180)
    assert len(run.steps) == len(commands), run.stderr[-2000:]
    report = run.json(0)
    wanted, _ = t.expected["overflow"]
    assert {f["code"] for f in report["findings"]} & wanted, report["findings"]
    status, cli, _ = kheap(t, target.gdb_port, "check")
    assert [(f["code"], f["address"]) for f in report["findings"]] == \
        [(f["code"], f["address"]) for f in cli["findings"]]
    assert as_dump(run.json(1)["segments"]) == as_dump(kheap(t, target.gdb_port, "walk")[1]["segments"])
    assert run.json(2)["facts"]["list_head"]["name"] == t.symbols["list_head"].name
    if len(commands) > 3:
        full = run.json(4)
        assert {f["code"] for f in full["findings"]} >= {"PAGE-FLAGS"}, full["findings"]
        assert "auto" in run.output(6)


# -- info: where each fact came from -------------------------------------------------------------------

def _expected_heap_size_source(t):
    if t.kind == "go":
        return "DWARF constant", "main.KERNEL_HEAP_SIZE"
    if t.variant == "tutorial":
        return "inferred", None
    if t.variant == "tutorial-g3":
        return ".debug_macro", "KERNEL_HEAP_SIZE"
    return "symbol", t.symbols["heap_size"].name


@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_info_says_where_each_fact_came_from(pool, name):
    t = V.target(name)
    target = pool.get(t, "clean")
    status, info, err = kheap(t, target.gdb_port, "info")
    assert status == 0, err
    facts = info["facts"]
    assert info["heap"]["size"] == t.heap_size and info["heap"]["header_size"] == t.header_size
    for role in ("list_head", "num_pages", "page_array"):
        assert facts[role]["source"] == "symbol" and facts[role]["name"] == t.symbols[role].name, role
        if t.symbols[role].linkage == "local":
            assert facts[role]["detail"] == "static (local)"
    source, matched = _expected_heap_size_source(t)
    assert facts["heap_size"]["value"] == t.heap_size and facts["heap_size"]["source"] == source
    assert facts["heap_size"].get("name") == matched
    seg = facts["segment_type"]
    assert (seg["source"], seg["name"], seg["value"]) == ("DWARF type", t.header_type, t.header_size)
    roles = {"next": "next", "prev": "prev", "allocated": "is_allocated", "size": "segment_size"}
    assert {roles[r]: f.name for r, f in t.fields.items() if r in roles} == seg["fields"]
    assert sorted(seg["extra_fields"]) == sorted(f.name for r, f in t.fields.items() if r not in roles)
    assert seg["bitfields"] == (t.variant == "bitfield")
    assert facts["payload_offset"]["value"] == t.payload_offset
    if t.kind == "go":
        assert facts["payload_offset"]["source"] == "DWARF constant"
        assert facts["payload_offset"]["name"] == "main.payloadOffset"
        assert facts["page_convention"]["heap_pages"] == "no-heap-bit"
        assert facts["free_pages"]["shape"].startswith("head pointer only")
    else:
        assert facts["payload_offset"]["source"] == "sizeof"
        assert facts["page_convention"]["heap_pages"] == "heap-bit"
    assert facts["page_type"]["name"] == t.page_type and facts["page_type"]["value"] == t.page_size
    status, text, _ = kheap(t, target.gdb_port, "info", json_output=False)
    assert "where each fact came from" in text and t.header_type in text


# -- before the heap is set up -------------------------------------------------------------------------

@pytest.mark.parametrize("name", [t.name for t in TARGETS])
def test_before_heap_init_says_not_initialised(pool, name):
    t = V.target(name)
    target = pool.get(t, "clean", preinit=True)
    for command in ("check", "walk", "find"):
        args = [command] + (["0x1000"] if command == "find" else [])
        status, out, err = kheap(t, target.gdb_port, *args)
        assert status == 2 and "the heap is not initialised yet" in err, (command, err)
        assert f"{t.symbols['list_head'].name} = NULL" in err and f"{t.symbols['num_pages'].name} = 0" in err
        assert "no symbol" not in err and "cannot locate" not in err


# -- lldb: kheap inside it, on variants whose header differs -----------------------------------------

LLDB_VARIANTS = ("bitfield/aarch64", "renamed/arm")


@pytest.mark.lldb
@pytest.mark.parametrize("name", LLDB_VARIANTS)
def test_kheap_in_lldb(pool, name):
    """lldb reads a bit-field header (bitfield) and renamed types and globals (renamed) as the CLI
    does: check, walk and info equal; the type summaries and $_ use the kernel's own type."""
    _need("lldb", "apt-get install lldb python3-lldb")
    from debuggers import run_lldb
    t = V.target(name)
    target = pool.get(t, "overflow")
    head = t.symbols["list_head"].name
    commands = ["kheap check --json", "kheap walk --json", "kheap info --json",
                f"target variable {head}", f"kheap find {target.checkpoints()[-1].segments[0][0] + 1:#x}",
                "p *$_"]
    target.qmp("stop")                  # lldb 14 cannot attach to a running QEMU (README)
    try:
        run = run_lldb(t.elf, target.gdb_port, commands, timeout=180)
    finally:
        target.qmp("cont")
    assert len(run.steps) == len(commands), run.stdout[-2000:] + run.stderr[-2000:]
    for step in run.steps:
        assert not step.error and "Traceback" not in step.output, step
    for index, command in enumerate(("check", "walk", "info")):
        status, cli, _ = kheap(t, target.gdb_port, command)
        assert run.json(index) == cli, command
    first = run.json(1)["segments"][0]
    assert f"({t.header_type} *) {head} = " in run.output(3)
    assert f"{t.header_type} {{used, size={first['size']}, payload=0x{first['payload']:0{2 * t.pointer_size}x}" \
        in run.output(3)
    assert run.output(5).startswith(f"({t.header_type}) $0 = {t.header_type} {{used, size={first['size']}")
