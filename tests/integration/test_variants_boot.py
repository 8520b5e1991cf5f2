"""The targets of issue 12, without kheap: every kernel variant boots on both arches and
reaches its checkpoints, every Go layout and scenario stops at main.kheapCheckpoint under
qemu-user, each ELF says what the ground truth (variants.py) says, and gdb-multiarch's ``x/``
reads the list head and walks the list exactly as the target's own dump describes it.

QEMU always runs on free ports and is always killed (the pools stop everything at the end of
the module, the launchers kill their process group even if pytest is killed). Needs the cross
compilers and qemu-system-arm for the kernels, go and qemu-aarch64 (Debian: golang-go,
qemu-user) for the Go target, gdb-multiarch for the walks, lldb for the lldb checks; each test
skips with the reason when one is missing.
"""
from __future__ import annotations

import fcntl
import re
import socket
import subprocess
import time

import pytest
from elftools.elf.elffile import ELFFile

import variants as V
from debuggers import lldb_argv
from qemu.launcher import (CHECKPOINT_FUNCTION, GO_SCENARIOS, MACHINES, SCENARIO_TAGS,
                           find_tool)

pytestmark = pytest.mark.qemu

KERNEL_VARIANTS = tuple(v for v in V.KERNEL_VARIANTS if v != "default")
ARCHES = ("arm", "aarch64")
GDB_WALK_SCENARIOS = ("clean", "stress", "overflow", "backlink", "cycle", "wild")
UNASSIGNED_ADDRESS = 0xDEAD0000


# -- builds ----------------------------------------------------------------------------------------

def _locked_make(directory, *args, env=None):
    lock_path = directory / "build" / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # xdist workers must not build concurrently
        return subprocess.run([find_tool("make") or "make", "-s", "-C", str(directory), *args],
                              capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def variant_builds():
    missing = [cc for cc in ("arm-none-eabi-gcc", "aarch64-linux-gnu-gcc", "make")
               if find_tool(cc) is None]
    if missing:
        pytest.skip(f"cannot build the kernel variants: {', '.join(missing)} not installed "
                    "(install.sh installs them)")
    result = _locked_make(V.REPO / "kernel", "variants")
    if result.returncode != 0:
        pytest.fail(f"make -C kernel variants failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def go_build():
    go = find_tool("go")
    if go is None:
        pytest.skip("go is not installed (apt-get install golang-go; install.sh does)")
    if find_tool("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 is not installed (apt-get install qemu-user; install.sh does)")
    result = _locked_make(V.REPO / "userland" / "mazarin", f"GO={go}")
    if result.returncode != 0:
        pytest.fail(f"make -C userland/mazarin failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _need(tool, why):
    if find_tool(tool) is None:
        pytest.skip(f"{tool} not installed ({why})")


# -- pools: one launched target per (target, scenario, mode), shared by the module's tests -----------

class Pool:
    def __init__(self):
        self._running = {}

    def get(self, t: V.Target, scenario: str, **kwargs):
        key = (t.name, scenario, tuple(sorted(kwargs.items())))
        target = self._running.get(key)
        if target is not None and not target.is_running():
            target.stop()
            target = None
        if target is None:
            if t.kind == "kernel":
                _need(MACHINES[t.arch][0], "apt-get install qemu-system-arm")
            target = V.launch(t, scenario, **kwargs)
            self._running[key] = target
            target.start()
            target.wait_until_settled(90)
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


def heap_layout(text):
    m = re.search(r"KHEAP-LAYOUT end=(0x[0-9a-f]+) num_pages=(\d+) heap_start=(0x[0-9a-f]+) "
                  r"heap_size=(\d+) poison=(\S+)", text)
    assert m, text[:2000]
    return {"end": int(m.group(1), 16), "num_pages": int(m.group(2)),
            "heap_start": int(m.group(3), 16), "heap_size": int(m.group(4)), "poison": m.group(5)}


def symbols(elf):
    with open(elf, "rb") as f:
        return {s.name: (s["st_value"], s["st_info"]["bind"])
                for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name}


def gdb_words(t, port, address, count):
    """count pointer-sized words at address, read with gdb's x/."""
    letter = "w" if t.pointer_size == 4 else "g"
    text = V.gdb_read(t, port, [f"x/{count}x{letter} {address}"])
    words = []
    for line in text.splitlines():
        if re.match(r"^0x[0-9a-f]+( <[^>]*>)?:", line):
            words += [int(w, 16) for w in line.split(":", 1)[1].split()]
    assert len(words) == count, text
    return words


def gdb_u32(t, port, address):
    text = V.gdb_read(t, port, [f"x/1xw {address}"])
    m = re.search(r"^0x[0-9a-f]+( <[^>]*>)?:\s+(0x[0-9a-f]+)", text, re.M)
    assert m, text
    return int(m.group(2), 16)


# -- the ELFs say what the ground truth says ----------------------------------------------------------

def _dwarf_struct(elf, name):
    """(byte_size, {member: (offset, bit_offset, bit_size)}) of the first complete struct named."""
    with open(elf, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_byte_size" not in die.attributes:
                    continue
                n = die.attributes.get("DW_AT_name")
                if n is None or n.value.decode() != name:
                    continue
                members = {}
                for m in die.iter_children():
                    a = m.attributes
                    members[a["DW_AT_name"].value.decode()] = (
                        a["DW_AT_data_member_location"].value if "DW_AT_data_member_location" in a else None,
                        a["DW_AT_data_bit_offset"].value if "DW_AT_data_bit_offset" in a else None,
                        a["DW_AT_bit_size"].value if "DW_AT_bit_size" in a else None)
                return die.attributes["DW_AT_byte_size"].value, members
    return None, {}


def _dwarf_names(elf, tag):
    out = {}
    with open(elf, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag == tag and "DW_AT_name" in die.attributes:
                    out.setdefault(die.attributes["DW_AT_name"].value.decode(errors="replace"), die.attributes)
    return out


@pytest.mark.parametrize("name", [t.name for t in V.all_targets()])
def test_elf_matches_the_ground_truth(name, request):
    t = V.target(name)
    request.getfixturevalue("go_build" if t.kind == "go" else "variant_builds")
    struct_name = t.header_type[:-2] if t.header_type.endswith("_t") else t.header_type
    size, members = _dwarf_struct(t.elf, struct_name)
    assert size == t.header_size, (struct_name, size)
    for role, f in t.fields.items():
        offset, bit_offset, bit_size = members[f.name]
        if f.bit_size is None:
            assert (offset, bit_size) == (f.offset, None), (role, members[f.name])
        else:
            assert (bit_offset, bit_size) == (f.bit_offset, f.bit_size), (role, members[f.name])
    page_name = t.page_type[:-2] if t.page_type.endswith("_t") else t.page_type
    page_size, page_members = _dwarf_struct(t.elf, "page" if t.kind == "kernel" else page_name)
    assert page_size == t.page_size
    for role, f in t.page_fields.items():
        assert page_members[f.name][0] == f.offset, (role, page_members)

    syms = symbols(t.elf)
    for role, sym in t.symbols.items():
        if sym is None:
            continue
        assert sym.name in syms, f"{t.name}: no symbol {sym.name} ({role})"
        bind = syms[sym.name][1]
        assert bind == ("STB_LOCAL" if sym.linkage == "local" else "STB_GLOBAL"), (sym, bind)
    assert t.checkpoint_function in syms

    constants = _dwarf_names(t.elf, "DW_TAG_constant")
    enumerators = _dwarf_names(t.elf, "DW_TAG_enumerator")
    with open(t.elf, "rb") as f:
        elf = ELFFile(f)
        sections = {s.name: s for s in elf.iter_sections()}
        debug_str = sections[".debug_str"].data() if ".debug_str" in sections else b""
        has_macro = ".debug_macro" in sections
        compressed = [s.name for s in elf.iter_sections()
                      if s.name.startswith(".debug_") and s["sh_flags"] & 0x800]
    if t.kind == "go":
        assert constants["main.KERNEL_HEAP_SIZE"]["DW_AT_const_value"].value == t.heap_size
        assert compressed, "Go 1.19 compresses its .debug sections (SHF_COMPRESSED)"
    elif t.variant == "tutorial":
        assert "KERNEL_HEAP_SIZE" not in enumerators and not has_macro
        assert b"KERNEL_HEAP_SIZE" not in debug_str            # in no symbol, no DWARF at all
    elif t.variant == "tutorial-g3":
        assert "KERNEL_HEAP_SIZE" not in enumerators and has_macro
        assert b"KERNEL_HEAP_SIZE (1024 * 1024)" in debug_str  # DW_MACRO_define_strp's string
    else:
        assert enumerators["KERNEL_HEAP_SIZE"]["DW_AT_const_value"].value == t.heap_size


# -- the kernel variants boot ------------------------------------------------------------------------

def _check_dump(t, scenario, vm, text):
    heap = heap_layout(text)
    assert heap["heap_size"] == V.KERNEL_HEAP_SIZE
    header, syms = t.header_size, symbols(t.elf)
    for checkpoint in vm.checkpoints():
        segments = checkpoint.segments
        assert checkpoint.count == len(segments)
        assert segments and segments[0][0] == heap["heap_start"]
        if scenario in ("overflow", "cycle", "wild", "crash"):
            reason, address = checkpoint.stop
            expected = {"overflow": "outside-heap", "cycle": "backwards", "wild": "outside-heap",
                        "crash": "outside-heap"}[scenario]
            assert reason == expected, checkpoint.stop
            if scenario == "cycle":
                assert address == heap["heap_start"]
            if scenario == "wild":
                assert address == syms[t.symbols["wild_target"].name][0]
            if scenario == "crash":
                assert address == UNASSIGNED_ADDRESS
            continue
        assert checkpoint.stop is None
        assert sum(size for _, size, _ in segments) == V.KERNEL_HEAP_SIZE
        for (addr, size, state), (next_addr, _, _) in zip(segments, segments[1:]):
            assert next_addr == addr + size
        for addr, size, state in segments:
            assert addr % 16 == 0 and size % 16 == 0 and size >= header
            assert state in ("used", "free")


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
@pytest.mark.parametrize("scenario", V.C_SCENARIOS)
def test_kernel_variant_reaches_its_checkpoints(variant_builds, pool, variant, arch, scenario):
    t = V.kernel_target(variant, arch)
    vm = pool.get(t, scenario)
    text = vm.serial_text()
    assert f"KHEAP-BOOT arch={arch} scenario={scenario} " in text
    assert f" variant={variant}\n" in text
    assert [c.tag for c in vm.checkpoints()] == list(SCENARIO_TAGS[scenario])
    if scenario == "crash":
        m = re.search(r"KHEAP-PANIC reason=data-abort fault_address=(0x[0-9a-f]+)", text)
        assert m, text[-1000:]
        assert UNASSIGNED_ADDRESS <= int(m.group(1), 16) < UNASSIGNED_ADDRESS + t.header_size
    else:
        assert f"KHEAP-READY scenario={scenario}" in text and "KHEAP-PANIC" not in text
    _check_dump(t, scenario, vm, text)


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
@pytest.mark.parametrize("scenario", GDB_WALK_SCENARIOS)
def test_gdb_walks_the_kernel_variant_like_its_dump(variant_builds, pool, variant, arch, scenario):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.kernel_target(variant, arch)
    vm = pool.get(t, scenario)
    heap = heap_layout(vm.serial_text())
    (checkpoint,) = vm.checkpoints()
    walk = V.gdb_walk(t, vm.gdb_port, heap["heap_start"])
    assert walk.error is None, walk.error
    assert walk.head == heap["heap_start"]
    assert walk.as_dump() == checkpoint.segments
    assert walk.stop == checkpoint.stop
    if scenario == "backlink":
        addrs = [s["address"] for s in walk.segments]
        assert walk.segments[2]["prev"] == addrs[0]
        assert [s["prev"] for i, s in enumerate(walk.segments) if i != 2] == [0] + addrs[:1] + addrs[2:-1]
    if variant == "canary" and scenario in ("clean", "stress", "backlink"):
        assert {s["magic"] for s in walk.segments} == {V.CANARY_MAGIC}
    if scenario == "overflow":
        victim = walk.segments[1]                          # its header is ASCII
        raw = b"".join(victim[r].to_bytes(t.fields[r].size, "little") for r in ("next", "prev"))
        assert all(0x20 <= b < 0x7F for b in raw), raw


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("variant", V.KERNEL_VARIANTS)
def test_kernel_variant_before_init(variant_builds, pool, variant, arch):
    """preinit: the list head is NULL and the page count 0, read with x/ (statics too)."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.kernel_target(variant, arch)
    vm = pool.get(t, "clean", preinit=True)
    text = vm.serial_text()
    assert "KHEAP-LAYOUT" not in text and "KHEAP-READY scenario=preinit" in text
    assert [(c.tag, c.count) for c in vm.checkpoints()] == [("preinit", 0)]
    head = gdb_words(t, vm.gdb_port, V.symbol_address(t, "list_head"), 1)[0]
    pages = gdb_u32(t, vm.gdb_port, V.symbol_address(t, "num_pages"))
    assert (head, pages) == (V.PREINIT_STATE["list_head"], V.PREINIT_STATE["num_pages"])


@pytest.mark.gdb
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("variant", ("default", "tutorial", "tutorial-g3"))
def test_page_conventions(variant_builds, pool, variant, arch):
    """vaddr_mapped on a kernel page, a heap page and a free page, read with x/."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.kernel_target(variant, arch)
    vm = pool.get(t, "clean")
    heap = heap_layout(vm.serial_text())
    array = gdb_words(t, vm.gdb_port, V.symbol_address(t, "page_array"), 1)[0]
    assert array == heap["end"]
    words = t.page_size // t.pointer_size

    def entry(index):
        raw = b"".join(w.to_bytes(t.pointer_size, "little")
                       for w in gdb_words(t, vm.gdb_port, array + index * t.page_size, words))
        return {role: f.decode(raw) for role, f in t.page_fields.items()}

    kernel_page = entry(1)
    heap_page = entry(heap["heap_start"] // 4096)
    free_index = (heap["heap_start"] + heap["heap_size"]) // 4096 + 8
    free_page = entry(free_index)
    assert kernel_page["vaddr"] == 4096 and kernel_page["flags"] & 0b111 == 0b011
    assert heap_page["vaddr"] == heap["heap_start"] and heap_page["flags"] & 0b111 == 0b101
    assert free_page["flags"] & 0b111 == 0
    assert free_page["vaddr"] == (0 if variant != "default" else free_index * 4096)


# -- the Go target -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", V.GO_LAYOUTS)
@pytest.mark.parametrize("scenario", GO_SCENARIOS)
def test_go_target_stops_at_its_checkpoint(go_build, pool, layout, scenario):
    t = V.go_target(layout)
    target = pool.get(t, scenario)
    syms = symbols(t.elf)
    text = target.serial_text()
    assert f"KHEAP-BOOT arch=aarch64 scenario={scenario} target=mazarin layout={layout} " in text
    assert "KHEAP-READY" not in text                      # stopped inside the checkpoint
    if scenario == "crash":
        assert target.stopped_at == "signal" and target.stop_reply.startswith("T0b")
        assert syms["main.takeSegment"][0] <= target.pc < syms["main.kmalloc"][0] + 0x1000
    else:
        assert target.stopped_at == "checkpoint" and target.stop_reply.startswith("T05")
        assert target.pc == syms[CHECKPOINT_FUNCTION][0]
    assert [c.tag for c in target.checkpoints()] == [scenario]
    _check_dump(t, scenario, target, text)


@pytest.mark.gdb
@pytest.mark.parametrize("layout", V.GO_LAYOUTS)
@pytest.mark.parametrize("scenario", ("clean", "stress", "overflow", "backlink", "cycle", "wild", "uaf"))
def test_gdb_walks_the_go_target_like_its_dump(go_build, pool, layout, scenario):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.go_target(layout)
    target = pool.get(t, scenario)
    heap = heap_layout(target.serial_text())
    (checkpoint,) = target.checkpoints()
    walk = V.gdb_walk(t, target.gdb_port, heap["heap_start"])
    assert walk.error is None, walk.error
    assert walk.head == heap["heap_start"]
    assert walk.as_dump() == checkpoint.segments
    assert walk.stop == checkpoint.stop
    if scenario == "uaf":                                 # refcount=0, state=3 over the poison
        victim = walk.segments[1]
        assert victim["allocated"] == 0
        words = gdb_words(t, target.gdb_port, victim["address"] + t.payload_offset, 2)
        payload = b"".join(w.to_bytes(8, "little") for w in words)
        assert payload[4:12] == (0).to_bytes(4, "little") + (3).to_bytes(4, "little")


@pytest.mark.gdb
def test_go_v2_back_pointers_and_reserved_flag(go_build, pool):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.go_target("v2")
    target = pool.get(t, "clean")
    heap = heap_layout(target.serial_text())
    walk = V.gdb_walk(t, target.gdb_port, heap["heap_start"])
    used = [s for s in walk.segments if s["allocated"] == 1]
    for seg in used:
        assert (seg["address"] + t.payload_offset) % 16 == 0
        (back,) = gdb_words(t, target.gdb_port, seg["address"] + t.payload_offset - 8, 1)
        assert back == seg["address"]
    assert [s["reserved"] for s in walk.segments].count(1) == 1


def test_go_checkpoint_has_a_page_of_its_own(go_build):
    """QEMU 7.2 runs a page holding a breakpoint one instruction at a time: no allocator code
    may share main.kheapCheckpoint's page (stress would take 20 times longer)."""
    for t in V.go_targets():
        syms = symbols(t.elf)
        page = syms[CHECKPOINT_FUNCTION][0] // 4096
        hot = ("main.takeSegment", "main.kmalloc", "main.kcalloc", "main.kfree", "main.krealloc",
               "main.fill", "main.poisonFree", "main.poisonHeader", "main.scenarioStress",
               "main.randNext")
        assert all(syms[name][0] // 4096 != page for name in hot), t.name


@pytest.mark.gdb
@pytest.mark.parametrize("layout", V.GO_LAYOUTS)
def test_go_target_before_init(go_build, pool, layout):
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.go_target(layout)
    target = pool.get(t, "clean", preinit=True)
    assert target.stopped_at == "checkpoint"
    assert [(c.tag, c.count) for c in target.checkpoints()] == [("preinit", 0)]
    head = gdb_words(t, target.gdb_port, V.symbol_address(t, "list_head"), 1)[0]
    pages = gdb_u32(t, target.gdb_port, V.symbol_address(t, "num_pages"))
    assert (head, pages) == (0, 0)


@pytest.mark.gdb
def test_the_proxy_serves_clients_in_turn_and_keeps_the_target_stopped(go_build, pool):
    """gdb, a client that detaches, one that kills, gdb again: the target stays at the
    checkpoint (qemu-user itself would run or die after the first one leaves)."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    from qemu.rsp_proxy import StubClient
    t = V.go_target("v1")
    target = pool.get(t, "clean")
    where = V.gdb_read(t, target.gdb_port, ["bt 1"])
    assert "main.kheapCheckpoint" in where, where
    for last in ("D", "k", "vKill;1"):
        sock = socket.create_connection(("127.0.0.1", target.gdb_port), timeout=10)
        client = StubClient(sock)
        assert client.command("?").startswith("T05")
        if last == "k":
            sock.sendall(b"$k#6b")
        else:
            assert client.command(last) == "OK"
        sock.close()
    assert "main.kheapCheckpoint" in V.gdb_read(t, target.gdb_port, ["bt 1"])
    assert "KHEAP-READY" not in target.serial_text()
    assert target.is_running() and target.proxy.sessions >= 5


@pytest.mark.gdb
def test_direct_stub_first_client_finds_the_program_at_its_entry(go_build):
    """direct=True: qemu-user's own stub. The program waits for the first client at its first
    instruction (nothing initialised), runs to its end once that one detaches, and the stub
    never answers anyone again."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    from qemu.launcher import GoTarget
    t = V.go_target("v2")
    with GoTarget(layout="v2", scenario="clean", direct=True) as target:
        time.sleep(0.3)
        assert target.serial_text() == ""                  # waits before its first instruction
        head, = gdb_words(t, target.gdb_port, V.symbol_address(t, "list_head"), 1)
        assert head == 0                                   # gdb detached: the program runs on
        text = target.wait_for("KHEAP-READY scenario=clean", timeout=30)
        assert "KHEAP-CHECKPOINT END tag=clean" in text
        sock = socket.create_connection(("127.0.0.1", target.gdb_port), timeout=5)
        sock.sendall(b"$?#3f")
        sock.settimeout(1.5)
        try:
            reply = sock.recv(100)
        except socket.timeout:
            reply = b""
        sock.close()
        assert reply == b"", reply                         # accepted by the kernel, never served


@pytest.mark.gdb
def test_kheap_rsp_client_reads_through_the_proxy(go_build, pool):
    """kheap's own read-only RSP client (what ``kheap --remote`` uses) gets the same bytes
    through the proxy as gdb's x/."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    rsp = pytest.importorskip("gdbext.targets.rsp")
    t = V.go_target("v1")
    target = pool.get(t, "stress")
    heap = heap_layout(target.serial_text())
    with rsp.RemoteTarget("127.0.0.1", target.gdb_port) as remote:
        data = remote.read(heap["heap_start"], 4096)
    words = gdb_words(t, target.gdb_port, heap["heap_start"], 512)
    assert data == b"".join(w.to_bytes(8, "little") for w in words)


# -- lldb -------------------------------------------------------------------------------------------------

def _lldb_read(elf, port, address, size):
    argv = lldb_argv("--batch", "--no-lldbinit", "-o", f"target create {elf}",
                     "-o", f"gdb-remote 127.0.0.1:{port}",
                     "-o", f"memory read --size {size} --format x --count 1 {address:#x}",
                     "-o", "process detach", load=False)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL).stdout
    m = re.search(rf"^0x0*{address:x}: (0x[0-9a-f]+)", out, re.M)
    assert m, out[-2000:]
    return int(m.group(1), 16)


@pytest.mark.lldb
@pytest.mark.parametrize("name", ["mazarin-v1", "mazarin-v2", "bitfield/aarch64", "tutorial/arm"])
def test_lldb_reads_the_list_head(name, request, pool):
    _need("lldb", "apt-get install lldb python3-lldb")
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.target(name)
    request.getfixturevalue("go_build" if t.kind == "go" else "variant_builds")
    target = pool.get(t, "clean")
    address = V.symbol_address(t, "list_head")
    if t.kind == "kernel":
        target.qmp("stop")              # lldb 14 cannot attach to a running QEMU (README)
    try:
        head = _lldb_read(t.elf, target.gdb_port, address, t.pointer_size)
    finally:
        if t.kind == "kernel":
            target.qmp("cont")
    assert head == heap_layout(target.serial_text())["heap_start"]


@pytest.mark.gdb
@pytest.mark.parametrize("layout", V.GO_LAYOUTS)
def test_go_target_dumps_with_gcore(go_build, pool, layout, tmp_path):
    """A dump of the Go target for offline tests: gdb's gcore through the proxy holds the heap
    at its virtual addresses (the target stays stopped for the next client)."""
    _need(V.GDB, "apt-get install gdb-multiarch")
    t = V.go_target(layout)
    target = pool.get(t, "overflow")
    heap = heap_layout(target.serial_text())
    core = V.gdb_gcore(t, target.gdb_port, tmp_path / "mazarin.core")
    words = gdb_words(t, target.gdb_port, heap["heap_start"], 16)
    assert V.core_read(core, heap["heap_start"], 128) == b"".join(w.to_bytes(8, "little") for w in words)
    head = V.core_read(core, V.symbol_address(t, "list_head"), 8)
    assert int.from_bytes(head, "little") == heap["heap_start"]
    assert target.is_running() and "KHEAP-READY" not in target.serial_text()
