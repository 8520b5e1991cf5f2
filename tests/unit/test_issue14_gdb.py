"""Issue 14, the debugger faces' side without a debugger: completion read from the command
table, the segment a command names (gdb's $_ / $__), 'color' values, 'watch off' after a
failed 'watch on'. The same items through the real gdb and lldb: tests/integration/
test_issue14_gdb.py."""

import pytest

from gdbext.frontends import commands, completion
from gdbext.frontends.cli_options import global_parser
from gdbext.frontends.session import COLOR_VALUES, CommandError, Session
from gdbext.frontends.watch_controller import WatchControllerBase

from heapbuilder import prog_session, busy_kernel
from .test_reach import FakeSession, Kernel, core


def complete(name, text):
    return completion.complete(commands.command_named(name), text)


# -- completion ----------------------------------------------------------------------------------
def test_an_option_completes_from_the_argparse_spec():
    found = complete("walk", "--f")
    assert found.kind == completion.WORDS and found.words == ("--free",)
    # gdb breaks words at '-': it replaces 'f', so it must be handed 'free'.
    assert found.relative_to("f") == ["free"]
    assert found.relative_to("--f") == ["--free"]
    assert found.relative_to(None) == ["--free"]


def test_dashes_offer_the_commands_options_not_symbols():
    found = complete("walk", "--")
    assert found.kind == completion.WORDS
    assert {"--free", "--used", "--min-size", "--around", "--context", "--limit", "--json",
            "--help"} == set(found.words)
    # Given options and those they exclude are not offered again.
    assert set(complete("walk", "--free --").words).isdisjoint({"--free", "--used"})
    after = complete("walk", "--free --limit 3 ").words
    assert "--around" in after and "--limit" not in after and "--used" not in after


def test_values_complete_their_choices_and_nothing_else():
    assert complete("watch", "o").words == ("on", "off")
    assert complete("watch", "").words == ("on", "off", "status")
    assert complete("watch", "on --f").words == ("--full-every",)
    limit = complete("walk", "--limit ")
    assert limit.kind == completion.NONE          # a count: no symbols
    assert complete("snapshot", "").kind == completion.NONE      # a name of the user's


def test_symbols_only_where_an_address_or_expression_goes():
    assert complete("walk", "--around ").kind == completion.EXPRESSION
    assert complete("walk", "--around heap_seg").kind == completion.EXPRESSION
    assert complete("find", "").kind == completion.EXPRESSION
    assert complete("find", "kmal").kind == completion.EXPRESSION
    assert complete("refs", "--partial ").kind == completion.EXPRESSION
    assert complete("blame", "--until ").kind == completion.LOCATION
    # After the one address, the options again.
    assert "--json" in complete("find", "0x1000 ").words


def test_every_command_completes_its_own_options():
    for cmd in commands.commands_for("gdb") + commands.commands_for("cli"):
        found = completion.complete(cmd, "--")
        assert found.kind == completion.WORDS and "--help" in found.words, cmd.name
        spec = commands.build_parser(cmd)
        assert set(found.words) == {s for a in spec._actions for s in a.option_strings
                                    if s.startswith("--")}, cmd.name


def test_files_complete_from_the_file_system(tmp_path, monkeypatch):
    (tmp_path / "heap.html").write_text("")
    (tmp_path / "heaps").mkdir()
    (tmp_path / ".hidden").write_text("")
    found = complete("map", f"--html {tmp_path}/he")
    assert found.kind == completion.WORDS
    assert found.words == (f"{tmp_path}/heap.html", f"{tmp_path}/heaps/")
    # gdb breaks words at '/': it replaces 'he'.
    assert found.relative_to("he") == ["heap.html", "heaps/"]
    monkeypatch.chdir(tmp_path)
    assert complete("snapshot", "a -o ").words == ("heap.html", "heaps/")
    assert complete("snapshot", "a -o .").words == (".hidden",)
    assert complete("map", '--html "heap').words == ("heap.html", "heaps/")   # an open quote
    assert complete("map", "--html /no/such/dir/x").words == ()


def test_quotes_and_abbreviations():
    assert complete("walk", "--arou ").kind == completion.EXPRESSION     # argparse abbreviation
    assert complete("walk", "-- --f").kind == completion.NONE            # after --, no options


# -- the segment a command names (gdb: $_ and $__) -------------------------------------------------
def ProgSession(k, elf=None):
    return prog_session(k, elf, face='gdb')


def test_find_and_walk_around_name_the_segment_header_and_payload():
    k, live = busy_kernel()
    session = ProgSession(k)
    target = live[2]
    header = max(a for a, _, _ in k.segments() if a < target)
    for name, argv in (("find", [hex(target + 3)]), ("find", [hex(target), "--json"]),
                       ("walk", ["--around", hex(target), "--context", "1"])):
        out = commands.execute_to_text(session, name, argv)
        assert not out.is_error, out.text
        assert out.named == commands.NamedSegment(header, target), (name, argv, out.named)
    # Commands that name no one segment leave it None.
    assert commands.execute_to_text(session, "walk", []).named is None
    assert commands.execute_to_text(session, "find", ["0x10"]).named is None
    assert commands.execute_to_text(session, "check", []).named is None


def test_refs_names_the_segment_it_lists_pointers_into():
    kern = Kernel(heap_size=32 * 1024)
    a = kern.k.kmalloc(40)
    kern.set_root(0, a)
    session = FakeSession(kern.program(), [core(kern.boot_top)])
    out = commands.execute_to_text(session, "refs", [hex(a + 4)])
    assert out.named is not None and out.named.payload == a and out.named.header < a


# -- one list of colour values ----------------------------------------------------------------------
def test_color_takes_the_same_values_in_every_face_and_says_which():
    session = Session()
    for value in COLOR_VALUES:
        session.apply_setting("color", value)
    session.apply_setting("color", "always")
    assert session.current_settings()["color"] == "on"
    with pytest.raises(CommandError) as error:
        session.apply_setting("color", "blue")
    assert all(v in str(error.value) for v in COLOR_VALUES), error.value
    # The CLI's --color takes that same list (not a copy of it).
    action = next(a for a in global_parser()._actions if "--color" in a.option_strings)
    assert action.choices is COLOR_VALUES
    doc = next(doc for name, _, doc, _ in commands.SETTINGS if name == "color")
    assert all(v in doc for v in COLOR_VALUES), doc


# -- kheap watch off after a failed kheap watch on --------------------------------------------------
class _NoTarget(WatchControllerBase):
    def _reader(self):
        raise CommandError("no live target: connect first")


class _WatchSession(Session):
    face = "gdb"

    def __init__(self):
        super().__init__()
        self._watch = _NoTarget(self)

    def watch_controller(self):
        return self._watch


def test_watch_off_after_a_failed_watch_on_says_nothing_was_set():
    session = _WatchSession()
    assert commands.execute_to_text(session, "watch", ["on"]).is_error
    out = commands.execute_to_text(session, "watch", ["off"])
    assert not out.is_error and "removed" not in out.text.replace("nothing to remove", ""), out.text
    assert "nothing to remove" in out.text, out.text
    assert out.data["removed"] == 0
