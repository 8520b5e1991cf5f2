"""The kheap CLI without QEMU: argument parsing, exit codes, one-line errors, many dumps.

Targets are synthetic: the reference allocator's memory as a raw image or a kheap dump, or
served by the fake gdbstub. Its ElfInfo has no file, so ``load_elf_info`` is pointed at it for
a placeholder path (fork-started pool workers inherit the patch). The real kernel ELFs from
kernel/build are used where they are built (architecture and build mismatch).
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import gdbext
import gdbext.core.symbols as symbols
import gdbext.frontends.session as session_module
from gdbext.core import reports
from gdbext.frontends import cli
from gdbext.frontends.cli_options import parse_global_options
from gdbext.frontends.cli_session import CliSession, elf_probe
from gdbext.targets import write_kheap_dump

from fake_gdbstub import FakeGdbStub, StubConfig
from heapbuilder import busy_kernel

REPO = Path(__file__).resolve().parents[2]
REAL_ELF = {arch: REPO / "kernel" / "build" / arch / "kernel.elf" for arch in ("arm", "aarch64")}


def run(capsys, *argv):
    """(status, stdout, stderr) of one CLI invocation in this process."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err):
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A factory: ``synthetic(corrupt=False, pointer_size=4)`` -> (elf placeholder, kernel)."""
    made = {}
    real_loader = symbols.load_elf_info

    def loader(path):
        key = os.path.abspath(os.fspath(path))
        if key in made:
            return made[key]
        return real_loader(path)

    monkeypatch.setattr(symbols, "load_elf_info", loader)
    monkeypatch.setattr(session_module, "load_elf_info", loader)

    def make(corrupt=False, pointer_size=4, name=None):
        k, live = busy_kernel(pointer_size, "<")
        if corrupt:
            segs = k.segments()
            k.set_seg(segs[2][0], prev=segs[0][0])           # HEAP-BACKLINK
        elf = tmp_path / (name or f"synthetic-{pointer_size}-{int(corrupt)}.elf")
        elf.write_bytes(b"")
        made[str(elf.resolve())] = k.elf_info()
        return elf, k

    return make


def raw_image(tmp_path, k, name="mem.raw"):
    path = tmp_path / name
    path.write_bytes(bytes(k.mem))
    return path, k.image_base


def kheap_dump(tmp_path, k, name, arch="arm"):
    path = tmp_path / name
    regs = {"pc": k.symbols["kmalloc"] + 8, "sp": 0x7000}
    write_kheap_dump(path, [(k.image_base, bytes(k.mem))], [regs], {"arch": arch})
    return path


# -- parsing and usage errors -------------------------------------------------------------------
def test_no_command_is_a_usage_error(capsys):
    status, out, err = run(capsys)
    assert status == 2 and out == ""
    assert "no command given" in one_line(err)


def test_help_lists_every_command_and_the_target_options(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for name in ("walk", "check", "stats", "triage", "dump", "demo", "snapshot", "diff"):
        assert f"  {name} " in out
    assert "--remote HOST:PORT" in out and "exit codes" in out
    status, out, _ = run(capsys, "check", "--help")
    assert status == 0 and "--full" in out and "--core FILE" in out and "--json" in out
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out == f"kheap {gdbext.__version__}\n"


@pytest.mark.parametrize("argv, words", [
    (["nosuch"], "unknown command"),
    (["--bogus", "check"], "unknown option"),
    (["check", "--limit", "3", "--raw", "x", "--base", "0"], "unrecognized arguments"),
    (["walk", "--limit", "x"], "not a number"),
    (["check", "--remote", "1:1", "--core", "x"], "one target"),
    (["check", "--base", "0x1000"], "--base goes with --raw"),
    (["walk", "--core", "a", "--core", "b"], "only 'check' takes many dumps"),
    (["check"], "no target"),
    (["check", "--raw", "x"], "--raw needs --base"),
    (["check", "--core", "/no/such/file.core", "--elf", "/no/such.elf"], "cannot open"),
    (["check", "--remote", "nonsense", "--elf", __file__], "bad remote address"),
    (["check", "--heap-size", "lots", "--core", "x"], "not a number"),
    (["check", "--block-size", "1000", "--core", "x"], "power of two"),
])
def test_usage_and_file_errors_are_one_line_and_exit_2(capsys, argv, words):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert words in one_line(err)


def test_options_may_come_before_or_after_the_command(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    before = run(capsys, "--json", "--raw", str(path), "--base", hex(base), "--elf", str(elf), "check")
    after = run(capsys, "check", "--raw", str(path), "--elf", str(elf), "--base", hex(base), "--json")
    assert before[0] == after[0] == 0
    assert json.loads(before[1]) == json.loads(after[1])


# -- exit codes and output on synthetic heaps ------------------------------------------------
@pytest.mark.parametrize("pointer_size", [4, 8])
def test_exit_codes_healthy_0_corrupt_1(capsys, synthetic, tmp_path, pointer_size):
    for corrupt, expected in ((False, 0), (True, 1)):
        elf, k = synthetic(corrupt, pointer_size)
        path, base = raw_image(tmp_path, k)
        target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
        status, out, err = run(capsys, "check", "--json", *target)
        assert status == expected and err == ""
        report = json.loads(out)
        assert report["schema_version"] == 1 and report["report"] == "check"
        assert report["verdict"] == ("corrupt" if corrupt else "ok")
        if corrupt:
            assert "HEAP-BACKLINK" in {f["code"] for f in report["findings"]}
        status, out, _ = run(capsys, "check", "-q", *target)
        assert status == expected and out.startswith("kheap: heap ") and out.count("\n") == 1
        status, out, _ = run(capsys, "check", "-qq", *target)
        assert status == expected and out == ""
        status, out, _ = run(capsys, "walk", "--limit", "2", *target)
        assert status == 0 and "7 more not shown" in out


def test_text_colour_follows_the_option(capsys, synthetic, tmp_path):
    elf, k = synthetic(corrupt=True)
    path, base = raw_image(tmp_path, k)
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    assert "\x1b[" in run(capsys, "check", "--color", "always", *target)[1]
    assert "\x1b[" not in run(capsys, "check", "--color", "never", *target)[1]
    assert "\x1b[" not in run(capsys, "check", *target)[1]       # auto, and not a terminal


def test_overrides_reach_the_program(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    status, out, _ = run(capsys, "info", "--json", "--heap-size", "0x2000", *target)
    assert status == 0
    info = json.loads(out)
    assert info["heap"]["size"] == 0x2000 and info["heap"]["sources"]["heap_size"] == "override"


def test_find_evaluates_numbers_symbols_offsets_and_registers(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    segs = k.segments()
    dump = kheap_dump(tmp_path, k, "k.kdump")
    target = ["--core", str(dump), "--elf", str(elf)]
    status, out, _ = run(capsys, "find", f"{segs[1][0] + 20:#x}", "--json", *target)
    assert status == 0 and json.loads(out)["match"]["segment"]["address"] == segs[1][0]
    session = CliSession(parse_global_options(target)[0])
    info = symbols.load_elf_info(elf)                            # kmalloc is a function, as in a real ELF
    info.symbols["kmalloc"] = replace(info.symbols["kmalloc"], kind="func")
    try:
        assert session.evaluate("kmalloc") == k.symbols["kmalloc"]
        assert session.evaluate("kmalloc+0x10") == k.symbols["kmalloc"] + 16
        assert session.evaluate("&heap_stats - 4") == k.symbols["heap_stats"] - 4
        assert session.evaluate("$pc") == k.symbols["kmalloc"] + 8
        stop = session.stop_place()
        assert stop.function == "kmalloc+0x8" and stop.frames == []
    finally:
        session.close()
    for bad, words in (("no_such_symbol", "no symbol"), ("$r99", "no register"), ("a*b", "the CLI takes")):
        status, _, err = run(capsys, "find", bad, *target)
        assert status == 2 and words in one_line(err)


def test_snapshot_file_and_diff_of_two_files(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k, "before.raw")
    target = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    assert run(capsys, "snapshot", "before", "-o", str(tmp_path / "a.json"), *target)[0] == 0
    for n in (40, 40, 200):
        k.kmalloc(n)
    path2, _ = raw_image(tmp_path, k, "after.raw")
    status, out, _ = run(capsys, "snapshot", "after", "--json", "--raw", str(path2), "--base", hex(base),
                         "--elf", str(elf))
    (tmp_path / "b.json").write_text(out)                      # --json output is a snapshot file too
    status, out, _ = run(capsys, "diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json")
    assert status == 0
    diff = json.loads(out)
    assert diff["live"]["count_growth"] == 3 and diff["tags"] == {"before": "before", "after": "after"}
    status, _, err = run(capsys, "diff", str(tmp_path / "nothing.json"), str(tmp_path / "b.json"))
    assert status == 2 and "no such file" in one_line(err)
    (tmp_path / "bad.json").write_text("{}")
    status, _, err = run(capsys, "diff", str(tmp_path / "bad.json"), str(tmp_path / "b.json"))
    assert status == 2 and "not a kheap snapshot" in one_line(err)


def test_triage_of_a_kheap_dump_names_the_stop_place(capsys, synthetic, tmp_path):
    elf, k = synthetic(corrupt=True)
    dump = kheap_dump(tmp_path, k, "c.kdump")
    status, out, _ = run(capsys, "triage", "--core", str(dump), "--elf", str(elf))
    assert status == 1
    assert "stopped at" in out and "kmalloc+0x8" in out and "no backtrace" in out
    status, out, _ = run(capsys, "triage", "-q", "--core", str(dump), "--elf", str(elf))
    assert status == 1 and out == "kheap triage: CORRUPT\n"


@pytest.fixture
def no_report_parsed_back(monkeypatch):
    """Fail if anything parses a printed report back (json.load goes through json.loads)."""
    real = json.loads

    def loads(text, *args, **kwargs):
        value = real(text, *args, **kwargs)
        if isinstance(value, dict) and ("schema_version" in value or "report" in value):
            raise AssertionError("a printed report was parsed back: use the report dict")
        return value

    monkeypatch.setattr(json, "loads", loads)


@pytest.mark.parametrize("corrupt", [False, True])
def test_quiet_lines_come_from_the_report_not_from_its_json(capsys, synthetic, tmp_path, no_report_parsed_back,
                                                           corrupt):
    elf, k = synthetic(corrupt)
    dump = kheap_dump(tmp_path, k, "q.kdump")
    target = ["--core", str(dump), "--elf", str(elf)]
    verdict = "CORRUPT" if corrupt else "OK"
    for argv in (["check", "-q"], ["-q", "--json", "check"]):
        status, out, err = run(capsys, *argv, *target)
        assert (status, err) == (int(corrupt), "")
        assert out.startswith(f"kheap: heap {verdict} (") and out.count("\n") == 1
    expected = (1, "kheap triage: CORRUPT\n") if corrupt else (0, "kheap triage: OK\n")
    assert run(capsys, "triage", "-q", *target)[:2] == expected
    assert run(capsys, "walk", "-q", *target)[1] == ""                  # no verdict: nothing
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("a.kdump", "b.kdump"):
        kheap_dump(folder, k, name)
    status, out, err = run(capsys, "check", "--core", str(folder), "--elf", str(elf))
    assert (status, err) == (int(corrupt), "") and out.count(f": {verdict} (") == 2
    status, out, _ = run(capsys, "check", "-q", "--core", str(folder), "--elf", str(elf))
    assert out.count("\n") == (2 if corrupt else 0)


def test_many_dumps_json_is_the_one_writers(capsys, synthetic, tmp_path):
    elf, k = synthetic(corrupt=True)
    folder = tmp_path / "dumps"
    folder.mkdir()
    kheap_dump(folder, k, "a.kdump")
    status, out, _ = run(capsys, "check", "--json", "--core", str(folder), "--core", str(folder / "a.kdump"),
                         "--elf", str(elf))
    report = json.loads(out)
    assert status == 1 and out == reports.to_json_text(report) + "\n"
    assert report["report"] == "check-many" and report["exit_status"] == 1
    assert report["dumps"][0]["report"] == report["dumps"][1]["report"]
    single = json.loads(run(capsys, "check", "--json", "--core", str(folder / "a.kdump"), "--elf", str(elf))[1])
    assert report["dumps"][0]["report"] == single


def test_dump_saves_the_kernel_variables(capsys, synthetic, tmp_path):
    elf, k = synthetic()
    path, base = raw_image(tmp_path, k)
    out_file = tmp_path / "saved.kdump"
    status, out, _ = run(capsys, "dump", "--json", "-o", str(out_file), "--raw", str(path), "--base", hex(base),
                         "--elf", str(elf))
    report = json.loads(out)
    assert status == 0 and out == reports.to_json_text(report) + "\n"
    assert report["report"] == "dump" and report["path"] == str(out_file) and report["cpus"] == 1
    saved = {what for r in report["ranges"] for what in r["what"]}
    known = set(symbols.KERNEL_VARIABLES)
    assert {name for name in known if name in k.symbols} <= saved
    assert saved - known <= {"kernel image (globals, .text, .rodata, .bss)", "ELF check", "page array", "heap"}
    status, out, _ = run(capsys, "dump", "-o", str(out_file), "--raw", str(path), "--base", hex(base),
                         "--elf", str(elf))
    assert out.startswith(f"kheap dump: wrote {out_file} (") and f"kheap check --core {out_file}" in out


def test_dump_round_trip_gives_the_same_findings(capsys, synthetic, tmp_path):
    elf, k = synthetic(corrupt=True)
    path, base = raw_image(tmp_path, k)
    live = ["--raw", str(path), "--base", hex(base), "--elf", str(elf)]
    out_file = tmp_path / "saved.kdump"
    status, out, err = run(capsys, "dump", "-o", str(out_file), *live)
    assert status == 0 and "wrote" in out, err
    expected = json.loads(run(capsys, "check", "--json", *live)[1])
    status, out, _ = run(capsys, "check", "--json", "--core", str(out_file))   # ELF from the dump
    assert status == 1 and json.loads(out)["findings"] == expected["findings"]
    status, _, err = run(capsys, "dump", *live)
    assert status == 2 and "-o" in one_line(err)


# -- many dumps ---------------------------------------------------------------------------------
def test_many_dumps_one_verdict_line_each(capsys, synthetic, tmp_path):
    elf, good = synthetic()
    _, bad = synthetic(corrupt=True)
    folder = tmp_path / "dumps"
    folder.mkdir()
    kheap_dump(folder, good, "a-good.kdump")
    kheap_dump(folder, bad, "b-bad.kdump")
    (folder / "notes.txt").write_text("not a dump")                  # skipped in a directory
    status, out, err = run(capsys, "check", "--core", str(folder), "--elf", str(elf))
    lines = out.splitlines()
    assert status == 1 and err == ""
    assert lines[0] == f"{folder / 'a-good.kdump'}: OK (0 errors, 0 warnings)"
    assert lines[1].startswith(f"{folder / 'b-bad.kdump'}: CORRUPT (") and "HEAP-BACKLINK" in lines[1]
    trunc = folder / "c-trunc.kdump"
    trunc.write_bytes((folder / "a-good.kdump").read_bytes()[:300])
    status, out, _ = run(capsys, "check", "--core", str(folder / "a-good.kdump"),
                         "--core", str(folder / "b-bad.kdump"), "--core", str(trunc), "--elf", str(elf))
    assert status == 2
    assert out.splitlines()[2].startswith(f"{trunc}: UNREADABLE ") and "truncated" in out
    status, out, _ = run(capsys, "check", "--json", "--core", str(folder), "--elf", str(elf))
    data = json.loads(out)
    assert status == 2 and data["report"] == "check-many"
    assert [d["status"] for d in data["dumps"]] == ["ok", "corrupt", "error"]
    assert data["dumps"][1]["report"]["findings"] and data["summary"] == {"ok": 1, "corrupt": 1, "incomplete": 0, "error": 1}
    status, out, _ = run(capsys, "check", "-q", "--core", str(folder), "--elf", str(elf))
    assert status == 2 and len(out.splitlines()) == 2                # -q: only the bad ones
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(capsys, "check", "--core", str(empty), "--elf", str(elf))
    assert status == 2 and "no dumps found" in one_line(err)


# -- remote targets (fake stub) -----------------------------------------------------------------
def test_remote_check_through_the_fake_stub(capsys, synthetic):
    elf, k = synthetic()
    with FakeGdbStub(StubConfig(image=bytes(k.mem), base=k.image_base, arch="arm")) as stub:
        status, out, err = run(capsys, "check", "--json", "--remote", stub.address, "--elf", str(elf))
        assert status == 0, (err, out[:3000])
        assert json.loads(out)["verdict"] == "ok"
        assert not any(p[:1] in (b"M", b"X", b"G", b"P", b"Z") for p in stub.received)


@pytest.mark.parametrize("knobs, words", [
    ({"garbage_every": 1}, ""),
    ({"silent": True}, "no reply"),
    ({"close_after": 3}, ""),
])
def test_broken_stubs_are_one_line_and_exit_2(capsys, synthetic, knobs, words):
    elf, k = synthetic()
    with FakeGdbStub(StubConfig(image=bytes(k.mem), base=k.image_base, **knobs)) as stub:
        status, out, err = run(capsys, "check", "--remote", stub.address, "--elf", str(elf),
                               "--timeout", "0.5")
    assert status == 2 and out == ""
    line = one_line(err)
    assert line.startswith("kheap check: ") and words in line


def test_nothing_listening_is_one_line(capsys, synthetic):
    import socket

    elf, _ = synthetic()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, _, err = run(capsys, "check", "--remote", f"127.0.0.1:{port}", "--elf", str(elf))
    assert status == 2 and "cannot connect" in one_line(err)


# -- real ELFs: the wrong kernel for the target ----------------------------------------------
needs_kernels = pytest.mark.skipif(not all(p.is_file() for p in REAL_ELF.values()),
                                   reason="kernel not built (make -C kernel)")


@needs_kernels
def test_core_of_the_other_architecture(capsys, synthetic, tmp_path):
    _, k = synthetic(pointer_size=8)
    dump = kheap_dump(tmp_path, k, "a64.kdump", arch="aarch64")
    status, _, err = run(capsys, "check", "--core", str(dump), "--elf", str(REAL_ELF["arm"]))
    assert status == 2 and "is an aarch64 core but" in one_line(err)


@needs_kernels
def test_elf_that_does_not_match_the_memory(capsys, tmp_path):
    from gdbext.core.symbols import load_elf_info

    elf = load_elf_info(REAL_ELF["arm"])
    probe = elf_probe(elf)
    assert probe and all(len(data) >= 64 for _, data in probe)
    image = tmp_path / "wrong.raw"
    image.write_bytes(bytes(elf.image_end - 0x8000))                  # zeros where code should be
    status, _, err = run(capsys, "check", "--raw", str(image), "--base", "0x8000", "--elf", str(REAL_ELF["arm"]))
    assert status == 2 and "does not match" in one_line(err) and "wrong --base" in err
    dump = tmp_path / "other.kdump"
    write_kheap_dump(dump, [(0x8000, b"\0" * 16)], [{}], {"arch": "arm", "elf_sha256": "00" * 32})
    status, _, err = run(capsys, "check", "--core", str(dump), "--elf", str(REAL_ELF["arm"]))
    assert status == 2 and "another kernel ELF" in one_line(err)


@needs_kernels
def test_missing_elf_is_asked_for(capsys, tmp_path):
    dump = tmp_path / "x.kdump"
    write_kheap_dump(dump, [(0x8000, b"\0" * 16)], [{}], {"arch": "arm"})
    status, _, err = run(capsys, "check", "--core", str(dump))
    assert status == 2 and "--elf" in one_line(err)


# -- main's last line of defence --------------------------------------------------------------
def test_interrupt_broken_pipe_and_bugs(capsys, monkeypatch):
    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_cli", interrupted)
    assert run(capsys, "check") == (130, "", "")

    def broken(*a):
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)
    monkeypatch.setattr(cli, "run_cli", broken)
    assert run(capsys, "walk") == (0, "", "")

    def bug(*a):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "run_cli", bug)
    status, _, err = run(capsys, "walk")
    assert status == 2 and "internal error: ZeroDivisionError" in one_line(err)


def test_python_dash_m_gdbext_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "gdbext", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "kheap" in proc.stdout and proc.stderr == ""
    proc = subprocess.run([sys.executable, "-m", "gdbext", "walk"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


@needs_kernels
@pytest.mark.parametrize("arch", ["arm", "aarch64"])
def test_info_without_a_target_shows_what_the_elf_says(capsys, arch):
    status, out, err = run(capsys, "info", "--elf", str(REAL_ELF[arch]), "--json")
    assert status == 0 and err == ""
    report = json.loads(out)
    assert report["elf"]["pointer_size"] == (4 if arch == "arm" else 8)
    assert report["elf"]["layouts"]["segment"]["source"] == "dwarf"
    assert report["heap"]["error"].startswith("needs target memory: no target")
    status, out, err = run(capsys, "info", "--elf", str(REAL_ELF[arch]))
    assert status == 0 and "DWARF yes" in out and "needs target memory" in out
