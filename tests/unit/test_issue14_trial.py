"""Issue 14, proof: what a new user's trial of every command in every face found (branch
i14-trial). One test per defect; each failed before its fix."""

from types import SimpleNamespace

from gdbext.core.reports import reach as reach_reports

from unit.test_cli import one_line, raw_image, run, synthetic  # noqa: F401 - the fixture


def test_scan_notes_agree_in_number():
    """``kheap leaks --scan`` on the overflow scenario said "1 segments with a corrupt header
    were neither scanned nor judged"; a walk stopped after one segment "only the 1 segments"."""
    prog = SimpleNamespace(fmt=lambda a: f"0x{a:08x}", heap_end=0x2000)
    walk = SimpleNamespace(complete=False,
                           stop_json=lambda: {"reason": "outside-heap", "address": 0x65722065,
                                              "detail": "next points outside the heap"})
    ix = SimpleNamespace(walk=walk, blocks=[object()], bad=[object()], readable_end=0x2000)
    roots = SimpleNamespace(notes=[], missing=[])
    notes = reach_reports._scan_notes(prog, ix, roots)
    assert notes[0].endswith("only the 1 segment before it was scanned and judged"), notes
    assert notes[1] == "1 segment with a corrupt header was neither scanned nor judged", notes


def test_options_that_go_together_or_exclude_each_other(capsys, synthetic, tmp_path):
    """``pages --page 1 --address 0`` showed page 0 (the --page was dropped silently);
    ``map --full`` without ``--html`` printed the text map as if --full meant something there
    (its help says "with --html"), as ``walk --context`` without ``--around`` did before."""
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    status, _, err = run(capsys, "pages", "--page", "1", "--address", "0", *target)
    assert status == 2 and "not allowed with argument --page" in one_line(err), err
    status, _, err = run(capsys, "map", "--full", *target)
    assert status == 2 and "--full goes with --html" in one_line(err), err
    status, out, _ = run(capsys, "map", "--html", str(tmp_path / "m.html"), "--full", *target)
    assert status == 0 and "wrote" in out


def test_a_cli_override_typed_in_a_debugger_names_the_setting():
    """``kheap check --heap-start 0x3d5000`` in gdb (or lldb) said "unrecognized arguments:
    --heap-start 0x3d5000": the CLI's spelling; there it is a setting, and the error says so in
    the face's spelling."""
    from gdbext.frontends import commands
    from gdbext.frontends.session import Session
    from gdbext.frontends.cmdline import UsageError

    class Gdb(Session):
        face = "gdb"

    class Lldb(Session):
        face = "lldb"

        def setting_spelling(self, name, value=None):
            return f"kheap set {name}" + ("" if value is None else f" {value}")

    cases = [(Gdb(), ["--heap-start", "0x3d5000"], "kheap check: --heap-start is a setting in gdb: "
              "set kheap heap-start 0x3d5000"),
             (Gdb(), ["--debug"], "kheap check: --debug is a setting in gdb: set kheap debug on"),
             (Gdb(), ["--full", "--block-size=64k"], "kheap check: --block-size is a setting in gdb: "
              "set kheap block-size 64k"),
             (Lldb(), ["--heap-size"], "kheap check: --heap-size is a setting in lldb: "
              "kheap set heap-size VALUE")]
    for session, argv, message in cases:
        try:
            commands.run(session, "check", argv)
        except UsageError as error:
            assert str(error) == message
        else:
            raise AssertionError(f"{argv} was accepted")


def test_blame_size_zero_is_a_usage_error(capsys, synthetic, tmp_path):
    """``kheap blame ADDR --size 0 -y`` watched the whole header (16 bytes) as if no --size had
    been given, and said FOUND; zero bytes cannot be watched: a usage error, as map --cells 0."""
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    status, _, err = run(capsys, "blame", "0x1000", "--size", "0", "-y",
                         "--raw", str(path), "--base", hex(base), "--elf", str(elf))
    assert status == 2 and "argument --size: must be at least 1, not 0" in one_line(err), err


def test_timeout_must_be_more_than_zero(capsys):
    """``kheap check --timeout 0 --remote HOST:PORT`` said "cannot connect to HOST:PORT:
    Operation now in progress" (a live stub was listening); a wait of 0 or less is a usage error."""
    for value in ("0", "-1", "nan"):
        status, _, err = run(capsys, "check", "--timeout", value, "--remote", "127.0.0.1:1", "--elf", "x")
        assert status == 2 and "argument --timeout: must be more than 0 seconds" in one_line(err), err
    status, _, err = run(capsys, "check", "--timeout", "abc", "--remote", "127.0.0.1:1", "--elf", "x")
    assert status == 2 and "not a number of seconds: 'abc'" in one_line(err), err


def test_watch_history_and_leaks_text_agree_in_number():
    """``kheap watch``/``history``/``leaks`` (gdb, lldb) said "1 operations recorded", "1 live
    blocks", "1 breakpoints removed", "1 blocks", and "0 live blocks ... by caller (payload
    addresses, ...):" with nothing after the colon."""
    from gdbext.core import reports
    from gdbext.core.reports import history

    counters = {"operations": 1, "calls": 1, "allocations": 1, "frees": 0, "failed": 0,
                "bytes_requested": 8, "bytes_allocated": 32, "bytes_freed": 0, "current_usage": 32,
                "peak_usage": 32}
    status = {"active": True, "counters": counters, "history_size": 1, "history_limit": 10,
              "live": 1, "full_every": 0}
    text = reports.render_text(history.watch_report("status", status))
    assert "1 operation (1 call)" in text and "1 live block," in text, text
    text = reports.render_text(history.watch_report("off", {"removed": 1, "counters": counters}))
    assert "off: 1 breakpoint removed (1 operation recorded)" in text, text
    text = reports.render_text(history.watch_report(
        "on", {"breakpoints": 2, "return_sites": {"kfree": [0x100]}}))
    assert "kfree (1 entry, 1 return)" in text, text
    text = reports.render_text(history.history_report(4, None, [], 1, counters))
    assert text.startswith("1 operation recorded"), text
    text = reports.render_text(history.leaks_report(4, 0, []))
    assert text.strip() == "0 live blocks (0 bytes) allocated since operation #0 and not freed", text
    group = {"caller": "main", "count": 1, "bytes": 32, "blocks": [0x1000]}
    text = reports.render_text(history.leaks_report(4, 0, [group]))
    assert text.startswith("1 live block (32 bytes)") and " 1 block " in text, text


def test_watch_page_stop_history_and_blame_progress_agree_in_number():
    """The same rule where a count of 1 is common: a watch page of 1 operation, a watch stop
    on a block with a history of 1 operation, blame's progress after 1 write."""
    from gdbext.core import blame, reports
    from gdbext.core.reports import history

    report = history.watch_report("status", {})
    report["html"] = {"path": "ops.html", "bytes": 10, "operations": 1}
    assert "(10 bytes, 1 operation)" in reports.render_text(report)
    op = {"kind": "kfree", "pointer": 0x1010, "caller": "main", "caller_pc": 0x8000,
          "parent": None, "index": 1, "effect": None}
    stop = {"report": "watch-stop", "schema_version": 1, "pointer_size": 4, "reason": "bad-pointer",
            "findings": [], "address": 0x1010, "history": [op]}
    assert "history of 0x00001010 (1 operation):" in reports.render_text(stop)
    times = iter([0.0, 5.0])
    seen = []
    recorder = blame.Recorder(None, progress=seen.append, clock=lambda: next(times))
    recorder.record(0x8000, {}, b"\0")
    assert seen == ["kheap blame: 1 write so far, 5.0 s"], seen


def test_refs_of_an_address_in_no_segment_is_an_error(capsys, synthetic, tmp_path):
    """``kheap refs 0`` printed "NULL is in no segment the walk reached" and exited 0, where
    ``kheap show 0`` (the same question: which segment?) is an error, exit 2."""
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf), "--stacks", "none"]
    status, out, err = run(capsys, "refs", "0", *target)
    assert status == 2 and out == "" and one_line(err) == "kheap refs: 0x00000000 is in no segment the walk reached", (out, err)
    status, out, err = run(capsys, "refs", hex(k.segments()[0][0]), *target)
    assert status == 0 and "point" in out, (out, err)


def test_diff_of_a_binary_file_says_what_a_snapshot_is(capsys, tmp_path):
    """``kheap diff before.json crash.kdump`` said "crash.kdump is not a kheap snapshot: not
    JSON ('utf-8' codec can't decode byte 0x94 in position 56: invalid start byte)"."""
    dump = tmp_path / "crash.kdump"
    dump.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(range(128, 256)))
    status, _, err = run(capsys, "diff", str(dump), str(dump))
    message = one_line(err)
    assert status == 2 and "codec" not in message and "byte 0x" not in message, message
    assert message == (f"kheap diff: {dump} is not a kheap snapshot: a binary file, not the JSON "
                       "that 'kheap snapshot NAME -o FILE' writes"), message


def test_an_address_has_the_targets_width(capsys, synthetic, tmp_path):
    """``kheap find -1`` on a 32-bit kernel said "0xffffffffffffffff is unmapped" (gdb's face
    too: it masked to 64 bits), and ``find 0x1ffffffffffffffff`` (65 bits) was taken as is."""
    elf, k = synthetic(pointer_size=4)
    path, base = raw_image(tmp_path, k)
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    status, out, err = run(capsys, "find", "-1", *target)
    assert status == 0 and out.startswith("0xffffffff ") and "0xffffffffffffffff" not in out, (out, err)
    status, out, err = run(capsys, "find", "0x1ffffffffffffffff", *target)
    assert status == 2 and "too large for an address" in one_line(err), (out, err)
    first = k.segments()[0][0]
    status, out, _ = run(capsys, "find", hex(first + (1 << 32)), *target)   # wraps as C's cast
    assert status == 0 and f"is in the used segment at 0x{first:08x}" in out, out


def test_unit_tests_import_neighbours_whose_names_the_integration_suite_shares_by_package():
    """tests/unit/test_cli.py and tests/integration/test_cli.py are both 'test_cli' on the path:
    a plain ``from test_cli import`` gets whichever the run imported first (CI broke on it)."""
    import re
    from pathlib import Path
    unit = Path(__file__).resolve().parent
    shared = {p.stem for p in (unit.parent / "integration").glob("test_*.py")} & {p.stem for p in unit.glob("test_*.py")}
    bad = [f"{p.name}: {m.group(0).strip()}" for p in unit.glob("*.py")
           for m in re.finditer(r"^\s*(?:from|import) (\w+)", p.read_text(), re.M) if m.group(1) in shared]
    assert not bad, bad
