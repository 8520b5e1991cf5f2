"""Issue 14, the CLI's items (3, 5, 6, 7, 10, 13, 15, 16) without QEMU: synthetic heaps as raw
images, kheap dumps and through the fake gdbstub, and the real kernel ELF's DWARF where an
item is about types. tests/integration/test_issue14_cli.py runs the user-facing ones against
the real kernel in QEMU through the real CLI, gdb and lldb.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import gdbext.core.symbols as symbols
from gdbext.core import reports
from gdbext.core.check import check
from gdbext.core.memory import BlockCache, RangesReader
from gdbext.core.program import Overrides, Program, ProgramError
from gdbext.core.symbols import load_elf_info, make_elf_info
from gdbext.core.text import parse_size, plural
from gdbext.frontends import commands
from gdbext.frontends.cli_options import parse_global_options
from gdbext.frontends.cli_session import CliSession
from gdbext.frontends.session import CommandError, Session, load_snapshot_file
from gdbext.targets import write_kheap_dump

from fake_gdbstub import FakeGdbStub, StubConfig
from heapbuilder import busy_kernel
from unit.test_cli import kheap_dump, one_line, raw_image, run, synthetic  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
REAL_ELF = REPO / "kernel" / "build" / "arm" / "kernel.elf"
needs_kernel = pytest.mark.skipif(not REAL_ELF.is_file(), reason="kernel not built (make -C kernel)")


def target_of(path, base, elf):
    return ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]


def last_free(k):
    """The last segment (free in busy_kernel: the rest of the heap)."""
    address, size, state = k.segments()[-1]
    assert state == 0 and address + size == k.heap_end
    return address


# -- item 3: heap bytes that cannot be read are never silently OK ------------------------------------
def test_unread_heap_tail_is_incomplete_not_ok():
    """The last pages of the heap unreadable (inside the last free segment): no header is
    missing, so the walk is complete, but the check must not say OK."""
    k, _ = busy_kernel(4)
    cut = k.heap_end - 0x2000
    assert cut > last_free(k)
    result = check(k.program(holes=((cut, k.heap_end),), block_size=4096))
    assert result.verdict == "incomplete" and result.errors == []
    assert result.unread == [(cut, k.heap_end)]
    assert any("8192 bytes of the heap could not be read" in n for n in result.notes), result.notes
    # All of it readable: OK, no unread ranges, no note.
    healthy = check(k.program(block_size=4096))
    assert healthy.verdict == "ok" and healthy.unread == []


def test_unread_ranges_start_exactly_and_never_claim_unread_bytes_as_read():
    """Each range starts at the first byte that faulted; it may run on to the end of the probe
    piece the fault was in (the cache's granularity), never stop short of what is unreadable."""
    k, _ = busy_kernel(4)
    holes = ((k.heap_end - 0x3000, k.heap_end - 0x2800), (k.heap_end - 0x1000, k.heap_end))
    cache = BlockCache(k.reader(holes), block_size=4096)
    assert cache.unreadable_ranges(k.heap_start, k.heap_size) == [(holes[0][0], k.heap_end - 0x2000), holes[1]]
    assert cache.unreadable_ranges(k.heap_start, 0x100) == []
    assert cache.unreadable_ranges(k.heap_end - 0x1000, 0x10) == [(k.heap_end - 0x1000, k.heap_end - 0xFF0)]


def test_corruption_in_what_was_read_is_still_corrupt():
    k, _ = busy_kernel(4)
    segs = k.segments()
    k.set_seg(segs[2][0], prev=segs[0][0])                     # HEAP-BACKLINK
    result = check(k.program(holes=((k.heap_end - 0x1000, k.heap_end),), block_size=4096))
    assert result.verdict == "corrupt" and "HEAP-BACKLINK" in {f.code for f in result.findings}
    assert result.unread


def test_a_walk_stopped_by_unreadable_memory_is_incomplete():
    """HEAP-UNREADABLE (the walk's next header cannot be read) is listed, but it says memory
    could not be read, not that the heap is wrong: the verdict is INCOMPLETE (exit 2)."""
    k, _ = busy_kernel(4)
    header = last_free(k)
    page = header & ~0xFFF
    result = check(k.program(holes=((page, k.heap_end),), block_size=4096))
    assert [f.code for f in result.errors] == ["HEAP-UNREADABLE"]
    assert result.verdict == "incomplete"


def test_cli_cut_raw_image_exits_2_with_a_note(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    cut = k.heap_end - 0x1800                                   # inside the last free segment
    assert cut > last_free(k)
    path = tmp_path / "cut.raw"
    path.write_bytes(bytes(k.mem[:cut - k.image_base]))
    target = target_of(path, k.image_base, elf)
    status, out, err = run(capsys, "check", *target)
    assert status == 2 and err == ""
    assert out.startswith("kheap check: INCOMPLETE - 0 errors, 0 warnings")
    assert f"6144 bytes of the heap could not be read (0x{cut:08x}..0x{k.heap_end:08x})" in out
    status, out, _ = run(capsys, "check", "--json", *target)
    report = json.loads(out)
    assert status == 2 and report["verdict"] == "incomplete"
    assert report["unread"] == [{"start": cut, "end": k.heap_end, "bytes": 0x1800}]
    status, out, _ = run(capsys, "check", "-q", *target)
    assert status == 2 and out.startswith("kheap: heap INCOMPLETE (0 errors") and "could not be read" in out
    # The other reports say it too.
    status, out, _ = run(capsys, "stats", *target)
    assert status == 0 and "could not be read" in out


def test_cli_cut_kheap_dump_exits_2_and_many_dumps_say_incomplete(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    cut = k.heap_end - 0x1000
    path = tmp_path / "cut.kdump"
    regs = {"pc": k.symbols["kmalloc"] + 8, "sp": 0x7000}
    write_kheap_dump(path, [(k.image_base, bytes(k.mem[:cut - k.image_base]))], [regs], {"arch": "arm"})
    whole = kheap_dump(tmp_path, k, "whole.kdump")
    status, out, _ = run(capsys, "check", "--json", "--core", str(path), "--elf", str(elf))
    assert status == 2 and json.loads(out)["verdict"] == "incomplete"
    status, out, _ = run(capsys, "check", "--json", "--core", str(path), "--core", str(whole), "--elf", str(elf))
    many = json.loads(out)
    assert status == 2 and [d["status"] for d in many["dumps"]] == ["incomplete", "ok"]
    status, out, _ = run(capsys, "check", "--core", str(path), "--core", str(whole), "--elf", str(elf))
    assert "cut.kdump: INCOMPLETE (0 errors, 0 warnings)" in out


def test_cli_stub_answering_e14_for_the_last_pages(capsys, synthetic):
    elf, k = synthetic()
    hole = (k.heap_end - 0x2000, k.heap_end)
    with FakeGdbStub(StubConfig(image=bytes(k.mem), base=k.image_base, arch="arm", unmapped=[hole])) as stub:
        status, out, err = run(capsys, "check", "--json", "--remote", stub.address, "--elf", str(elf))
    assert status == 2, (err, out[:2000])
    report = json.loads(out)
    assert report["verdict"] == "incomplete" and report["unread"][0]["start"] == hole[0]


# -- item 5: a stripped ELF with the heap start given ---------------------------------------------
def stripped(k):
    """The synthetic kernel's ELF with no symbols (and no DWARF)."""
    return make_elf_info(k.p, k.endian, {}, image=(k.image_base, k.end))


def test_stripped_elf_with_a_heap_start_walks_from_it():
    k, _ = busy_kernel(4)
    prog = Program(stripped(k), k.reader(), Overrides(heap_start=k.heap_start, heap_size=k.heap_size))
    result = check(prog)
    assert result.verdict == "ok", [f.message for f in result.findings]
    assert len(result.walk) == len(k.segments())
    assert prog.bounds.list_head == k.heap_start and prog.bounds.sources["list_head"] == "heap start"
    assert any("the walk starts at the heap start" in n for n in prog.notes)


def test_stripped_elf_without_a_heap_start_names_each_faces_option(capsys, monkeypatch, synthetic, tmp_path):
    import gdbext.frontends.session as session_module

    _, k = synthetic()
    elf = tmp_path / "stripped.elf"
    elf.write_bytes(b"")
    made, loader = stripped(k), symbols.load_elf_info           # the synthetic fixture's loader

    def stripped_loader(path):
        return made if Path(path).resolve() == elf.resolve() else loader(path)

    monkeypatch.setattr(symbols, "load_elf_info", stripped_loader)
    monkeypatch.setattr(session_module, "load_elf_info", stripped_loader)
    path, base = raw_image(tmp_path, k)
    status, out, err = run(capsys, "check", *target_of(path, base, elf))
    line = one_line(err)
    assert status == 2 and out == ""
    assert line.endswith(": give --heap-start ADDR (and --heap-size BYTES)") and "give heap_start" not in line
    status, out, err = run(capsys, "check", "--json", "--heap-start", hex(k.heap_start), "--heap-size", "64k",
                           *target_of(path, base, elf))
    assert status == 0, err
    report = json.loads(out)
    assert report["verdict"] == "ok" and not report["findings"]
    assert any("the walk starts at the heap start" in n for n in report["notes"])
    status, out, _ = run(capsys, "info", *target_of(path, base, elf))
    assert "give --heap-start ADDR" in out


class GdbLikeSession(Session):
    """A face that keeps the base spelling (gdb's parameters) over synthetic memory."""

    face = "gdb"

    def __init__(self, elf, reader):
        super().__init__()
        self._elf, self._reader = elf, reader

    def elf_path(self):
        return "<synthetic>"

    def reader(self):
        return self._reader

    def program(self):
        if self._program is None:
            self._program = Program(self._elf, BlockCache(self._reader, 4096), overrides=self.overrides())
        return self._program

    def evaluate(self, expression):
        return int(expression, 0)


def test_gdb_spelling_of_the_same_hint():
    k, _ = busy_kernel(4)
    session = GdbLikeSession(stripped(k), k.reader())
    out = commands.execute_to_text(session, "check", [])
    assert out.is_error and out.status == 2
    assert out.text.endswith(": give set kheap heap-start ADDR (and set kheap heap-size BYTES)"), out.text
    assert isinstance(ProgramError("x", needs=("heap-start",)).needs, tuple)


# -- item 6: one size parser, in every face ------------------------------------------------------
@pytest.mark.parametrize("text, value", [("4096", 4096), ("0x1000", 4096), ("4k", 4096), ("4K", 4096),
                                         ("1M", 1 << 20), ("1MiB", 1 << 20), ("0x10k", 0x4000), ("2G", 2 << 30)])
def test_size_forms(text, value):
    assert parse_size(text) == value


def test_sizes_in_the_cli_and_in_the_debuggers_settings(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    target = target_of(path, base, elf)
    for text, value in (("1M", 1 << 20), ("4k", 4096), ("0x1000", 4096)):
        status, out, err = run(capsys, "info", "--json", "--heap-size", text, *target)
        assert status == 0, err
        assert json.loads(out)["heap"]["size"] == value
    status, _, err = run(capsys, "check", "--block-size", "1000", *target)
    assert status == 2 and one_line(err) == ("kheap check: --block-size: 1000 is not a power of two between 256 "
                                             "and 16M (e.g. 4k, 64k)")
    assert run(capsys, "check", "-qq", "--block-size", "64k", *target)[0] == 0
    status, _, err = run(capsys, "check", "--heap-size", "lots", *target)
    assert status == 2 and "--heap-size: not a number: 'lots' (e.g. 4096, 0x1000, 4k, 1M)" in one_line(err)
    assert "internal error" not in err
    # gdb's and lldb's 'set kheap heap-size 1M' go through the same session settings.
    session = Session()
    session.apply_setting("heap-size", "1M")
    session.apply_setting("block-size", "64k")
    assert session.current_settings()["heap-size"] == 1 << 20 and session.current_settings()["block-size"] == 65536
    with pytest.raises(CommandError, match="^set kheap block-size: 1000 is not a power of two"):
        session.apply_setting("block-size", "1000")
    # The stacks setting's TOP:SIZE too.
    from gdbext.core.reach import parse_stack_spec

    region, = parse_stack_spec(k.elf_info(), "0x8000:4k")
    assert (region.low, region.top) == (0x7000, 0x8000)


# -- item 7: what ADDR means ---------------------------------------------------------------------
@needs_kernel
def test_cli_expressions_mean_what_a_debugger_means(tmp_path):
    """The real ELF's DWARF over a memory image of its own sections: a pointer global is its
    value, an array/function/struct its address, &x its address, C pointer arithmetic."""
    elf = load_elf_info(REAL_ELF)
    image = bytearray(elf.image_end)
    for sec in elf.sections:
        if sec.data is not None:
            image[sec.address:sec.address + sec.size] = sec.data
    head = elf.address_of("heap_segment_list_head")
    image[head:head + 4] = (0x3D5000).to_bytes(4, "little")
    raw = tmp_path / "image.raw"
    raw.write_bytes(bytes(image))
    session = CliSession(parse_global_options(["--raw", str(raw), "--base", "0", "--elf", str(REAL_ELF)])[0])
    try:
        ev = session.evaluate
        assert ev("0x3d5000+0x44") == 0x3D5044
        assert ev("0x3d5000 - 0x10 + 4") == 0x3D4FF4
        assert ev("kmalloc") == elf.address_of("kmalloc")
        assert ev("kmalloc+0x10") == elf.address_of("kmalloc") + 0x10
        assert ev("heap_segment_list_head") == 0x3D5000                          # a pointer: its value
        assert ev("heap_segment_list_head + 1") == 0x3D5000 + 16                 # C: one heap_segment_t on
        assert ev("&heap_segment_list_head") == head                             # &: its address
        assert ev("panic_info") == elf.address_of("panic_info")                  # a struct: its address
        assert ev("uaf_blocks") == elf.address_of("uaf_blocks")                  # an array: its address
        assert ev("(uaf_blocks + 1) - 1") == elf.address_of("uaf_blocks")                # C: elements
        assert ev("(uaf_blocks + 1) - uaf_blocks") == 1
        assert ev("num_pages") == 0                                               # an integer: its value
        assert ev("boot_stack_top-16") == elf.address_of("boot_stack_top") - 16   # a label: its address
        for bad, words in (("a*b", "the CLI takes numbers, symbols"), ("no_such", "no symbol"),
                           ("kmalloc + kfree", "cannot be added"), ("$r0", "no register")):
            with pytest.raises(CommandError, match=words):
                ev(bad)
    finally:
        session.close()


def test_find_help_documents_the_meaning():
    text = commands.long_help(commands.command_named("find"))
    assert "its value" in " ".join(text.split()) and "0x3d5000+0x44" in text


# -- item 10: the hint names the face's own spelling ------------------------------------------------
def test_internal_error_hint_names_the_faces_option(monkeypatch, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)

    def broken(session, args):
        raise RuntimeError("boom")

    monkeypatch.setattr(commands, "_COMMANDS", dict(commands._COMMANDS, stats=replace(
        commands.command_named("stats"), handler=broken)))
    cli = CliSession(parse_global_options(target_of(path, base, elf))[0])
    try:
        out = commands.execute_to_text(cli, "stats", [])
    finally:
        cli.close()
    assert out.is_error and out.text.endswith("internal error: RuntimeError: boom (--debug for details)")
    gdb_like = commands.execute_to_text(GdbLikeSession(k.elf_info(), k.reader()), "stats", [])
    assert gdb_like.text.endswith("(set kheap debug on for details)")


# -- item 13: a CLI snapshot needs a file ----------------------------------------------------------
def test_cli_snapshot_without_a_file_is_a_usage_error(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    status, out, err = run(capsys, "snapshot", "a", *target_of(path, base, elf))
    assert status == 2 and out == "" and "give -o FILE" in one_line(err)
    assert run(capsys, "snapshot", "a", "-o", str(tmp_path / "a.json"), *target_of(path, base, elf))[0] == 0


def test_not_a_snapshot_says_why_once(tmp_path):
    bad = tmp_path / "bad.json"
    for content, why in (("{}", "no schema_version field"), ("[]", "a JSON list, not an object"),
                         ('{"schema_version": 1, "report": "check"}', "it is a kheap check report"),
                         ('{"schema_version": 1}', "no 'segments' field"), ("nope", "not JSON")):
        bad.write_text(content)
        with pytest.raises(CommandError) as raised:
            load_snapshot_file(str(bad))
        message = str(raised.value)
        assert message.startswith(f"{bad} is not a kheap snapshot: {why}"), message
        assert message.count("not a kheap snapshot") == 1, message


# -- item 15: qemu/run.sh's port -----------------------------------------------------------------
@pytest.mark.parametrize("port, words", [("210412", "port 210412 is out of range (1-65535)"),
                                         ("0", "out of range"), ("abc", "not a port number")])
def test_run_sh_refuses_a_port_out_of_range(monkeypatch, capsys, port, words):
    import qemu.launcher as launcher

    vm_class, booted = launcher.KernelVM, []
    monkeypatch.setattr(launcher, "KernelVM", lambda **kw: booted.append(kw) or pytest.fail("QEMU booted"))
    with pytest.raises(SystemExit) as exited:
        launcher.main(["--gdb-port", port])
    assert exited.value.code == 2 and not booted
    assert words in capsys.readouterr().err
    with pytest.raises(ValueError, match="out of range"):
        vm_class(arch="arm", scenario="clean", gdb_port=70000)


# -- item 16 -----------------------------------------------------------------------------------
def test_smaller_usage_errors(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    target = target_of(path, base, elf)
    status, _, err = run(capsys, "map", "--cells", "0", *target)
    assert status == 2 and "--cells" in one_line(err) and "at least 1" in err
    status, _, err = run(capsys, "walk", "--context", "3", *target)
    assert status == 2 and "--context goes with --around" in one_line(err)
    status, out, _ = run(capsys, "walk", "--limit", "0", *target)
    assert status == 0 and "more not shown" not in out
    status, out, _ = run(capsys, "map", "--limit", "2", *target)
    assert status == 0 and "more regions not shown (--limit 0 shows all)" in out


def test_map_legend_uses_the_region_tables_words(capsys, synthetic, tmp_path):
    elf, k = synthetic(corrupt=True)
    path, base = raw_image(tmp_path, k)
    status, out, _ = run(capsys, "map", "--json", *target_of(path, base, elf))
    report = json.loads(out)
    states = {r["state"] for r in report["regions"]}
    legend_words = " ".join(report["legend"].values())
    assert states <= {"used", "free", "bad", "uncovered"}
    for state in states | {"bad", "uncovered"}:
        assert state in legend_words, (state, legend_words)


def test_one_plural_rule_in_the_reports(capsys, synthetic, tmp_path):
    assert plural(1, "error") == "1 error" and plural(2, "error") == "2 errors" and plural(0, "segment") == "0 segments"
    elf, k = synthetic(corrupt=True)
    path, base = raw_image(tmp_path, k)
    target = target_of(path, base, elf)
    status, out, _ = run(capsys, "check", *target)
    assert status == 1 and " - 1 error, 0 warnings;" in out
    status, out, _ = run(capsys, "check", "-q", *target)
    assert out.startswith("kheap: heap CORRUPT (1 error, 0 warnings, 9 segments)")
    report = {"verdict": "ok", "errors": 0, "warnings": 0, "segments": 1, "findings": []}
    assert reports.verdict_line(report) == "kheap: heap OK (0 errors, 0 warnings, 1 segment)"


def test_walk_order_is_list_order_in_help_and_readme():
    help_text = " ".join(commands.long_help(commands.command_named("walk")).split())
    assert "list order" in help_text and "address order" not in help_text
    readme = (REPO / "README.md").read_text()
    assert "the segment table in list order" in readme


def test_readme_says_where_the_kheap_command_is_and_shows_real_addresses():
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/kheap" in readme and "PATH" in readme
    # The bundled kernel's heap starts at 0x003d5000 on arm (its examples are from real runs).
    assert "0x003d4" not in readme and "payload=0x003d5010, next=0x003d5030" in readme


def test_info_prints_bit_fields_readably():
    field = lambda name, offset, size, dbo=None, bits=None: dict(  # noqa: E731
        {"name": name, "offset": offset, "size": size, "type": "uint32_t"},
        **({"data_bit_offset": dbo, "bit_size": bits} if bits else {}))
    layout = {"name": "heap_segment_t", "size": 12, "source": "dwarf",
              "fields": [field("next", 0, 4), field("is_allocated", 8, 1, 64, 1), field("segment_size", 8, 4, 65, 31)]}
    report = {"report": "info", "elf": {"path": "k.elf", "arch": "arm", "class": 32, "endian": "little",
                                        "has_dwarf": True, "layouts": {"segment": layout}}, "heap": {}, "notes": []}
    text = reports.render_text(report, False)
    assert "0 (1 bit)" in text and "1..31 (31 bits)" in text and "32+1" not in text and "65+31" not in text
    assert "bits counted from the byte at the offset" in text
