"""The one command table: an argparse spec and a handler per command, used by every face.

gdb registers each entry as ``kheap NAME``, lldb as ``kheap NAME`` under a command container,
and the CLI as a subcommand, so options, help, text and JSON are the same everywhere. Handlers
return an Outcome (JSON-ready data plus a text renderer); ``execute_to_text`` is the single
place that turns any failure into one line, so no face can leak a traceback.
"""

import functools
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from gdbext.core import reach, reports
from gdbext.core.check import check
from gdbext.core.layout import PAGE_SIZE
from gdbext.core.memory import MemoryFault, RangesReader
from gdbext.core.pages import for_each_page, page_summary, read_pages, validate_pages, walk_free_list
from gdbext.core.program import Program, ProgramError
from gdbext.core.reports.reach import DEFAULT_GROUPS, DEFAULT_PREFIX
from gdbext.core.snapshot import SnapshotMismatch, diff_snapshots, take_snapshot
from gdbext.core.stats import heap_stats
from gdbext.core.symbols import load_elf_info
from gdbext.core.watch import DEFAULT_FULL_EVERY, DEFAULT_HISTORY
from gdbext.core.whereis import where_text
from gdbext.core.blame import DEFAULT_MAX_HITS
from gdbext.frontends import describe
from gdbext.frontends.html_data import write_heap_page, write_watch_page
from gdbext.frontends.cmdline import HelpShown, SafeArgumentParser, UsageError, address, count, positive
from gdbext.frontends.session import ADDRESS_SETTINGS, SETTINGS, CommandError, Session  # noqa: F401 - faces import SETTINGS here

PREFIX_SUMMARY = "Inspect and validate the kernel heap (heap_segment_t list and page_t array)."


@dataclass(frozen=True)
class NamedSegment:
    """The one segment a command named (``find``, ``walk --around``, ``refs ADDR``): its
    header and its payload. Faces that can keep it do (gdb: ``$_`` and ``$__``, as ``x`` and
    ``info line`` leave the address they looked at; lldb: persistent variables of those names),
    so the next command can use it."""

    header: int
    payload: int


@dataclass
class Outcome:
    """What a handler produced: ``data`` is the JSON report, ``render`` makes the text."""

    data: dict
    render: Callable[[bool], str]
    failed: bool = False            # findings of error severity (CLI exit code 1)
    named: Optional[NamedSegment] = None    # the segment the command named, if exactly one
    incomplete: bool = False        # a missing fact (heap bytes that could not be read): exit 2


@dataclass
class Text:
    """What a face prints for one command."""

    text: str
    is_error: bool = False
    status: int = 0                 # 0 healthy, 1 error findings, 2 usage/target error
    data: Optional[dict] = None     # the report the text was made from (None on error or help)
    named: Optional[NamedSegment] = None    # the segment the command named (Outcome.named)


@dataclass(frozen=True)
class Command:
    """One kheap command, declared beside its code (name, syntax by argparse, an example)."""

    name: str
    summary: str
    example: str
    configure: Callable
    handler: Callable
    faces: frozenset = field(default_factory=lambda: frozenset({"gdb", "lldb", "cli"}))
    json_option: bool = True


_COMMANDS = {}


def command(name, summary, example, faces=("gdb", "lldb", "cli"), json_option=True):
    """Decorator: declare ``handler(session, args) -> Outcome`` with its argparse set-up
    (the function's ``configure`` attribute, added by ``@<handler>.options``)."""

    def wrap(handler):
        _COMMANDS[name] = Command(name, summary, example, getattr(handler, "configure", lambda p: None),
                                  handler, frozenset(faces), json_option)
        return handler

    return wrap


def options(configure):
    """Decorator for a handler's argparse set-up; put it below ``@command``."""

    def attach(handler):
        handler.configure = configure
        return handler

    return attach


def commands_for(face):
    return [c for c in _COMMANDS.values() if face in c.faces]


def command_named(name):
    return _COMMANDS[name]


def build_parser(cmd, prog=None):
    """The argparse parser of one command; the CLI nests these under its own parser."""
    parser = SafeArgumentParser(prog=prog or f"kheap {cmd.name}", description=cmd.summary,
                                epilog=f"example: {cmd.example}", add_help=True)
    configure_parser(cmd, parser)
    return parser


@functools.lru_cache(maxsize=None)
def _parser(cmd):
    """Built once per command and process (parsing never changes a parser): a debugger runs
    the same few commands all session long, and each build costs about half a millisecond."""
    return build_parser(cmd)


def configure_parser(cmd, parser):
    cmd.configure(parser)
    if cmd.json_option:
        parser.add_argument("--json", action="store_true",
                            help=f"print one JSON object (schema_version {reports.SCHEMA_VERSION}), the same in every face")


def long_help(cmd):
    return build_parser(cmd).format_help()


def prefix_help(face):
    """``help kheap``: the face's subcommands, one line each, with an example."""
    lines = [PREFIX_SUMMARY, "", "Subcommands (each takes --help and --json):"]
    for cmd in commands_for(face):
        lines.append(f"  {cmd.name:<10} {cmd.summary}")
        lines.append(f"  {'':<10}   e.g. {cmd.example}")
    lines += ["", "Settings: 'show kheap' / 'set kheap NAME VALUE' (gdb), "
              "'kheap show' / 'kheap set NAME VALUE' (lldb)."]
    return "\n".join(lines)


def run(session, name, argv):
    """Parse and run one command; exceptions propagate (``execute_to_text`` catches them)."""
    cmd = _COMMANDS.get(name)
    face = getattr(session, "face", None)
    if cmd is None or (face in ("gdb", "lldb", "cli") and face not in cmd.faces):
        known = ", ".join(c.name for c in _COMMANDS.values()
                          if face not in ("gdb", "lldb", "cli") or face in c.faces)
        raise UsageError(f"kheap: unknown command {name!r} (one of: {known})")
    _setting_given_as_option(session, cmd, argv)
    args = _parser(cmd).parse_args(argv)
    return cmd, args, cmd.handler(session, args)


_SETTING_NAMES = frozenset(name for name, *_ in SETTINGS)


def _setting_given_as_option(session, cmd, argv):
    """In a debugger, the CLI's global options (``--heap-start 0x3d5000``, ``--debug``) are
    settings: a user who types the CLI's spelling there is told the face's (``set kheap
    heap-start 0x3d5000`` in gdb, ``kheap set heap-start 0x3d5000`` in lldb), not "unrecognized
    arguments". Options the command itself has are left to its parser."""
    face = getattr(session, "face", None)
    if face not in ("gdb", "lldb"):
        return
    own = _parser(cmd)._option_string_actions
    for index, token in enumerate(argv):
        if token == "--":
            return
        option, equals, value = token.partition("=")
        name = option[2:]
        if not option.startswith("--") or name not in _SETTING_NAMES or option in own:
            continue
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            value = "on" if name in ("debug", "auto-check") else \
                following if following and not following.startswith("-") else "VALUE"
        raise UsageError(f"kheap {cmd.name}: {option} is a setting in {face}: "
                         f"{session.setting_spelling(name, value)}")


def outcome_to_text(session, args, outcome):
    status = 1 if outcome.failed else 2 if outcome.incomplete else 0
    if getattr(args, "json", False):
        return Text(reports.to_json_text(outcome.data), status=status, data=outcome.data,
                    named=outcome.named)
    return Text(outcome.render(session.color_wanted()), status=status, data=outcome.data,
                named=outcome.named)


def execute_to_text(session, name, argv):
    """Run a command and return what to print; never raises (the debugger must survive)."""
    try:
        _, args, outcome = run(session, name, argv)
        return outcome_to_text(session, args, outcome)
    except HelpShown as shown:
        return Text(shown.text)
    except (UsageError, CommandError) as error:
        text = _one_line(error)
        if not text.startswith("kheap"):
            text = f"kheap {name}: {text}"
        return Text(text, is_error=True, status=2)
    except MemoryFault as fault:
        return Text(f"kheap {name}: {_one_line(fault)}", is_error=True, status=2)
    except Exception as error:  # noqa: BLE001 - the last line of defence for the session
        return Text(describe_unexpected(session, name, error), is_error=True, status=2)


def describe_unexpected(session, name, error):
    """Known failure kinds get their message; true bugs get one line (traceback on debug)."""
    if isinstance(error, ProgramError):
        return f"kheap {name}: {_one_line(error)}{needs_hint(session, error)}"
    if type(error).__name__ in ("TargetError", "ElfError", "LayoutError"):
        return f"kheap {name}: {_one_line(error)}"
    line = f"kheap {name}: internal error: {type(error).__name__}: {_one_line(error)}"
    if getattr(session, "debug", False):
        return line + "\n" + traceback.format_exc()
    return line + f" ({_spelling(session, 'debug', 'on')} for details)"


def _spelling(session, name, value=None):
    """The face's spelling of a setting (:meth:`Session.setting_spelling`; gdb's for objects
    that are not sessions)."""
    spell = getattr(session, "setting_spelling", None) or functools.partial(Session.setting_spelling, None)
    return spell(name, value)


def needs_hint(session, error):
    """What a ProgramError asks the user to give, in the face's own spelling (``: give
    --heap-start ADDR (and --heap-size BYTES)`` in the CLI, ``set kheap heap-start ADDR`` in gdb)."""
    needs = getattr(error, "needs", ())
    if not needs:
        return ""
    first, *rest = (_spelling(session, name, "ADDR" if name in ADDRESS_SETTINGS else "BYTES")
                    for name in needs)
    return f": give {first}" + "".join(f" (and {r})" for r in rest)


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# Pretty printers / type summaries and $kheap_segment share these two helpers ------------------
def struct_describer(tag) -> Optional[Callable]:
    """A function (session, address, raw_bytes) -> str for a struct tag kheap knows, or None."""
    return describe.describer_for(tag)


def segment_header_for(session, address):
    """The header address of the segment holding ``address``, or None."""
    prog = session.program()
    match = prog.allocator.find(prog, address)
    return match.segment.address if match else None


# ---------------------------------------------------------------------------------------------
# The commands. Each handler reads through session.program() and returns an Outcome whose data
# is the core's JSON report; text is always rendered from that same dict.
# ---------------------------------------------------------------------------------------------
def _outcome(report, failed=False, named=None):
    return Outcome(report, lambda color: reports.render_text(report, color), failed, named)


# What an ADDR argument means, in every face (session.ADDRESS_OF_KINDS says which objects decay).
ADDR_HELP = ("an address or an expression, taken as gdb's 'x ADDR' takes it: its value, so a pointer or "
             "integer variable stands for the value it holds and an array, function, struct or union for its "
             "address (&obj is always the address); gdb and lldb take any C expression ($r0, ptr+1, &obj), "
             "the CLI numbers, symbols, &symbol, $registers, + and - (0x3d5000+0x44, kmalloc+0x10)")


def _address_arg(session, text, prog=None):
    """ADDR arguments accept numbers everywhere and expressions where a debugger is there.

    With ``prog``, the value is an address of the target's width, as C converts an integer to
    a pointer (``-1`` is 0xffffffff on a 32-bit kernel, not 0xffffffffffffffff); a number that
    does not fit 64 bits is refused, as gdb refuses it ("Numeric constant too large")."""
    try:
        value = address(text)
    except Exception:  # noqa: BLE001 - not a plain number: let the face evaluate it
        value = session.evaluate(text)
    if value >= 1 << 64:
        raise CommandError(f"cannot evaluate {text!r}: the number is too large for an address")
    if prog is not None:
        value &= (1 << (8 * prog.pointer_size)) - 1
    return value


def _info_options(parser):
    pass


@command("info", "What kheap found: ELF, arch, heap bounds, list head, where each layout came from.",
         "kheap info")
@options(_info_options)
def _info(session, args):
    try:
        prog = session.program()
    except CommandError as error:
        # No target (yet): the ELF alone still tells the arch, symbols and every layout, which
        # is what one wants to see before connecting, or to check a stripped build.
        prog = Program(load_elf_info(session.elf_path()), RangesReader([]),
                       overrides=session.overrides())
        report = reports.info_report(prog)
        report["heap"] = {"error": f"needs target memory: {error}"}
        report["target"] = None
        return _outcome(report)
    report = reports.info_report(prog)
    heap = report.get("heap") or {}
    if heap.get("needs"):
        heap["error"] += needs_hint(session, ProgramError("", needs=heap["needs"]))
    return _outcome(report)


def _walk_options(parser):
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--free", action="store_true", help="only free segments")
    state.add_argument("--used", action="store_true", help="only allocated segments")
    parser.add_argument("--min-size", type=count, default=0, metavar="BYTES",
                        help="only segments of at least BYTES (header included; 4096, 0x1000, 4k, 1M)")
    parser.add_argument("--around", metavar="ADDR",
                        help="only the segment holding ADDR and --context segments either side")
    parser.add_argument("--context", type=count, default=None, metavar="N",
                        help=f"with --around: segments shown either side (default {WALK_CONTEXT})")
    parser.add_argument("--limit", type=count, default=None, metavar="N",
                        help="show at most N segments (0: all); the rest is counted, never silently dropped")


WALK_CONTEXT = 3


@command("walk", "The segment list in list order (following next from the list head): address, size, "
         "state, links, payload.", "kheap walk --free --min-size 4k --limit 20")
@options(_walk_options)
def _walk(session, args):
    if args.context is not None and args.around is None:
        raise UsageError("kheap walk: --context goes with --around ADDR (the segments either side of it)")
    context = WALK_CONTEXT if args.context is None else args.context
    limit = args.limit or None                        # 0: all, as history and map take it
    prog = session.program()
    walk = prog.allocator.walk(prog)
    report = reports.walk_report(prog, walk)
    segments = report["segments"]
    around = None if args.around is None else _address_arg(session, args.around, prog)
    named = None
    if around is not None:
        target = around
        blocks = prog.allocator.blocks(walk, prog.heap_end)
        index = next((i for i, b in enumerate(blocks) if b.address <= target < b.address + b.extent), None)
        if index is None:
            raise CommandError(f"kheap walk: {prog.fmt(target)} is in no segment on the list")
        named = NamedSegment(segments[index]["address"], segments[index]["payload"])
        segments = segments[max(0, index - context):index + context + 1]
        report["target"] = blocks[index].address        # the row the text marks with ->
    if args.free or args.used:
        wanted = "free" if args.free else "used"
        segments = [s for s in segments if s["state"] == wanted]
    if args.min_size:
        segments = [s for s in segments if s["size"] >= args.min_size]
    matched = len(segments)
    if limit is not None:
        segments = segments[:limit]
    report["segments"] = segments
    report["filter"] = {"state": "free" if args.free else "used" if args.used else None,
                        "min_size": args.min_size or None, "around": around, "limit": limit}
    report["matched"] = matched
    report["not_shown"] = matched - len(segments)
    report["truncated"] = report["not_shown"] > 0
    return _outcome(report, named=named)


def _check_options(parser):
    parser.add_argument("--full", action="store_true",
                        help="also read the whole page array and walk the free-page list (slower)")
    parser.add_argument("--verdict", action="store_true",
                        help="print only the one-line verdict (what auto-check prints)")


@command("check", "Validate links, bounds, sizes, alignment, cycles, coverage, poison, counters, pages.",
         "kheap check --full")
@options(_check_options)
def _check(session, args):
    prog = session.program()
    result = check(prog, full=args.full)
    report = reports.check_report(prog, result)
    failed, incomplete = result.verdict == "corrupt", result.verdict == "incomplete"
    if args.verdict and not args.json:
        return Outcome(report, lambda color: reports.verdict_line(report), failed, incomplete=incomplete)
    return Outcome(report, lambda color: reports.render_text(report, color), failed, incomplete=incomplete)


@command("stats", "Used/free bytes and counts, largest free, fragmentation, size histogram, "
         "kernel heap_stats side by side.", "kheap stats")
def _stats(session, args):
    prog = session.program()
    return _outcome(reports.stats_report(prog, heap_stats(prog)))


def _find_options(parser):
    parser.add_argument("address", metavar="ADDR", help=ADDR_HELP)


@command("find", "Which segment holds an address (header, payload or interior), offset, state, "
         "neighbours.", "kheap find $r0")
@options(_find_options)
def _find(session, args):
    prog = session.program()
    target = _address_arg(session, args.address, prog)
    match = prog.allocator.find(prog, target)
    report = reports.find_report(prog, target, match)
    named = NamedSegment(match.segment.address, match.segment.payload) if match else None
    return _outcome(report, named=named)


def _show_options(parser):
    parser.add_argument("address", metavar="ADDR",
                        help="a header, a payload pointer (as kmalloc returned it) or any address inside a "
                             "segment; in a debugger any expression ($r0, ptr)")
    parser.add_argument("--bytes", type=count, default=reports.SHOW_BYTES, metavar="N",
                        help=f"payload bytes in the hexdump (default {reports.SHOW_BYTES}; 0: none)")


@command("show", "One segment in full: header fields by name, a hexdump of its payload, its "
         "neighbours on the list, every finding touching it.", "kheap show $r0 --bytes 128")
@options(_show_options)
def _show(session, args):
    prog = session.program()
    target = _address_arg(session, args.address, prog)
    match = prog.allocator.find(prog, target)
    if match is None:
        where = reports.find_report(prog, target, None)
        what = (where_text(where["where"], prog.pointer_size) if where.get("where")
                else "is inside the heap but in no segment on the list")
        raise CommandError(f"kheap show: {prog.fmt(target)} {what}; no segment to show")
    report = reports.show_report(prog, target, match, check(prog, pages=False), args.bytes)
    return _outcome(report, report["errors"] > 0,
                    named=NamedSegment(match.segment.address, match.segment.payload))


def _pages_options(parser):
    one = parser.add_mutually_exclusive_group()
    one.add_argument("--page", type=count, metavar="N", help="show page_t number N")
    one.add_argument("--address", metavar="ADDR", help="show the page_t of the page holding ADDR")
    parser.add_argument("--no-free-list", action="store_true",
                        help="count pages by kind without walking the free list")


@command("pages", "The page_t array: pages by kind, the free-page list, one page with --page N.",
         "kheap pages --page 980")
@options(_pages_options)
def _pages(session, args):
    prog = session.program()
    if args.page is not None or args.address is not None:
        index = args.page
        if args.address is not None:
            index = _address_arg(session, args.address, prog) // PAGE_SIZE
        num = prog.bounds.num_pages
        if num is not None and index >= num:
            raise CommandError(f"kheap pages: page {index} is past the last page ({num - 1})")
        page = next(for_each_page(prog, index, 1), None)
        if page is None:
            raise CommandError(f"kheap pages: page {index} is unreadable")
        return _outcome(reports.page_report(prog, page))
    if args.no_free_list:
        summary = page_summary(prog, walk_list=False)
        findings = validate_pages(prog)
    else:
        # One decode of the array and one walk of the list, shared by the summary and the check.
        pages, free_list = read_pages(prog), walk_free_list(prog)
        summary = page_summary(prog, pages=pages, free_list=free_list)
        findings = validate_pages(prog, full=True, pages=pages, free_list=free_list)
    report = reports.pages_report(prog, summary, findings)
    return _outcome(report, any(f.severity == "error" for f in findings))


def _map_options(parser):
    parser.add_argument("--cells", type=positive, default=1024, metavar="N",
                        help="cells in the block map of the whole heap (at least 1; default 1024)")
    parser.add_argument("--limit", "--regions", dest="regions", type=count, default=40, metavar="N",
                        help="rows of the region table (default 40, bad and uncovered first; 0: all); "
                             "the rest is counted")
    parser.add_argument("--html", metavar="FILE",
                        help="instead, write a picture of the heap and the page array to FILE: one "
                             "self-contained HTML page (no network) to open in any browser")
    parser.add_argument("--full", action="store_true",
                        help="with --html: the findings of 'check --full' (whole page array and free list)")


@command("map", "A block map of the whole heap (used, free, corrupt) and one row per region; "
         "--html FILE draws it as a page.", "kheap map --html heap.html")
@options(_map_options)
def _map(session, args):
    if args.full and not args.html:
        raise UsageError("kheap map: --full goes with --html FILE (the page shows the findings of "
                         "'check --full')")
    if args.html:
        return _map_html(session, args.html, args.full)
    prog = session.program()
    result = check(prog, pages=False)
    report = reports.map_report(prog, result.walk, result.findings, cells=args.cells, regions=args.regions)
    return _outcome(report)


def _map_html(session, path, full=False):
    report = reports.map_page_report(write_heap_page(session, path, full))
    return _outcome(report, report["errors"] > 0)


def _snapshot_options(parser):
    parser.add_argument("name", metavar="NAME", help="a name to compare against later with kheap diff")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="also save it as a JSON file (kheap diff takes the file's path as a name); "
                             "the CLI keeps nothing between runs: there it is required (or --json > FILE)")


@command("snapshot", "Remember the current segment list under NAME (for kheap diff); -o saves it "
         "to a file.", "kheap snapshot before -o before.json")
@options(_snapshot_options)
def _snapshot(session, args):
    if session.face == "cli" and not args.output and not args.json:
        # --json prints the snapshot itself: redirected, that is the file.
        raise UsageError(f"kheap snapshot: the CLI keeps nothing between runs: give -o FILE (or --json "
                         f"> FILE) to keep snapshot {args.name!r}, then 'kheap diff FILE'")
    prog = session.program()
    snap = take_snapshot(prog, tag=args.name)
    session.snapshots[args.name] = snap
    report = reports.snapshot_report(snap)
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(reports.to_json_text(report) + "\n")
        except OSError as error:
            raise CommandError(f"cannot write {args.output}: {error.strerror or error}") from None
    return _outcome(report)


def _diff_options(parser):
    parser.add_argument("before", metavar="A", help="snapshot name (or, in the CLI, a snapshot file)")
    parser.add_argument("after", metavar="B", nargs="?",
                        help="snapshot name or file; default: the heap now")
    parser.add_argument("--limit", type=count, default=reports.DIFF_LIMIT, metavar="N",
                        help=f"blocks listed per list: new, freed, resized (default {reports.DIFF_LIMIT}; "
                             "0: all); the rest is counted")


@command("diff", "What changed between two snapshots: new, freed, resized, live growth (leaks).",
         "kheap diff before")
@options(_diff_options)
def _diff(session, args):
    before = session.load_snapshot(args.before)
    if args.after is None:
        after = take_snapshot(session.program(), tag="now")
    else:
        after = session.load_snapshot(args.after)
    try:
        diff = diff_snapshots(before, after)
    except SnapshotMismatch as why:
        raise CommandError(f"kheap diff: {args.before} and {args.after or 'the heap now'} are not "
                           f"snapshots of the same heap ({why}): nothing to compare") from None
    return _outcome(reports.diff_report(diff, before.pointer_size, args.limit))


def _triage_options(parser):
    parser.add_argument("--full", action="store_true", help="also run the full page check")


@command("triage", "Everything a crash report needs: where it stopped, the fault and the segment "
         "it hits, backtrace, check, stats.", "kheap triage --json")
@options(_triage_options)
def _triage(session, args):
    prog = session.program()
    report = reports.triage_report(prog, asdict(session.stop_place()), full=args.full)
    failed = report["check"]["errors"] > 0 or report.get("fault_address") is not None
    return _outcome(report, failed)


# kheap watch / history / leaks (gdb, lldb: breakpoints on the allocator; see core/watch.py) --
def _watch_options(parser):
    parser.add_argument("action", nargs="?", choices=("on", "off", "status"), default="status",
                        help="on: set the breakpoints and record; off: remove them; status (default)")
    parser.add_argument("--full-every", type=count, default=DEFAULT_FULL_EVERY, metavar="N",
                        help="also run a full heap check every N operations (default 0: only at "
                             "kheap_checkpoint)")
    parser.add_argument("--history", type=count, default=DEFAULT_HISTORY, metavar="N",
                        help=f"operations kept in the history (default {DEFAULT_HISTORY}; counts "
                             "are kept for all)")
    parser.add_argument("--no-checkpoint", action="store_true",
                        help="no full check at kheap_checkpoint")
    parser.add_argument("--html", metavar="FILE",
                        help="also write the recorded operations as a timeline page (one HTML file)")


@command("watch", "Record every kmalloc/kcalloc/krealloc/kfree while the kernel runs and stop at "
         "the first bad one.", "kheap watch on --full-every 1000", faces=("gdb", "lldb"))
@options(_watch_options)
def _watch(session, args):
    controller = session.watch_controller()
    status = {}
    if args.action == "on":
        controller.enable(args.history, args.full_every, checkpoint=not args.no_checkpoint)
    elif args.action == "off":
        status["removed"] = controller.disable()
    report = reports.watch_report(args.action, {**controller.status(), **status})
    if args.html:
        report["html"] = write_watch_page(session, controller, args.html)
    return _outcome(report)


def _history_options(parser):
    parser.add_argument("address", metavar="ADDR", nargs="?",
                        help="only operations whose block holds ADDR (payload, header or interior)")
    parser.add_argument("--limit", type=count, default=50, metavar="N",
                        help="the last N operations (default 50; 0 for all)")


@command("history", "The allocator calls kheap watch recorded, all or those that touched an address.",
         "kheap history $r0 --limit 20", faces=("gdb", "lldb"))
@options(_history_options)
def _history(session, args):
    controller = session.watch_controller()
    watch = controller.watch
    if watch is None:
        raise CommandError("kheap history: nothing recorded: use 'kheap watch on' first")
    prog = controller.prog
    if args.address is not None:
        target = _address_arg(session, args.address)
        ops = watch.history_of(prog.header_size, target)
    else:
        target = None
        ops = list(watch.history)
    matched = len(ops)
    if args.limit:
        ops = ops[-args.limit:]
    report = reports.history_report(prog.pointer_size, target, ops, matched, watch.counters.to_json(),
                                    watch.freed_by.get(target) if target is not None else None,
                                    watch.live.get(target) if target is not None else None, prog=prog)
    return _outcome(report)


def _leaks_options(parser):
    parser.add_argument("--scan", action="store_true",
                        help="no watch needed: a conservative reachability scan of this moment (roots: "
                             "writable sections, each core's live stack and registers); lists the "
                             "allocated segments nothing reaches, by size and first bytes")
    parser.add_argument("--mark", action="store_true",
                        help="set the mark: later 'kheap leaks' lists only blocks allocated after it")
    parser.add_argument("--blocks", type=count, default=8, metavar="N",
                        help="block addresses listed per caller in text (default 8)")
    parser.add_argument("--prefix", type=count, default=DEFAULT_PREFIX, metavar="N",
                        help="with --scan: group lost segments by size and their first N bytes (default 16)")
    parser.add_argument("--groups", type=count, default=DEFAULT_GROUPS, metavar="N",
                        help=f"with --scan: groups shown in text, biggest first (default {DEFAULT_GROUPS}; "
                             "0: all; --json lists all)")
    _partial_option(parser)


def _partial_option(parser):
    parser.add_argument("--partial", action="store_true",
                        help="scan even when some roots cannot be read (a dump without them): "
                             "segments only they reach are then reported too")


def _reach_roots(session, prog, args):
    """The roots of a reachability scan, or one line saying which cannot be read."""
    try:
        roots = reach.gather_roots(prog, session.core_states(), session.current_settings().get("stacks"))
    except reach.StackSpecError as error:
        raise CommandError(f"{_spelling(session, 'stacks')}: {error}") from None
    missing = roots.missing
    if missing and not args.partial:
        what = "; ".join(f"{r.kind} {r.name} {prog.fmt(r.start + len(r.data))}..{prog.fmt(r.end)}"
                         for r in missing)
        raise CommandError(f"the scan needs memory this target does not have: {what} ('kheap dump' "
                           "saves it; --partial scans without it)")
    return roots


@command("leaks", "Allocated segments nothing references: --scan from this moment's roots (any face, "
         "dumps too), or since the mark of 'kheap watch' by caller.", "kheap leaks --scan")
@options(_leaks_options)
def _leaks(session, args):
    if args.scan:
        prog = session.program()
        scan = reach.leak_scan(prog, _reach_roots(session, prog, args))
        watch = session.recorded_watch()
        callers = {p: op.caller_function for p, op in watch.live.items()} if watch is not None else None
        report = reports.leak_scan_report(prog, scan, max(1, args.prefix), callers, args.groups)
        return _outcome(report, report["count"] > 0)
    if session.face == "cli":
        raise CommandError("kheap leaks: the CLI has no 'kheap watch' history: use --scan (a "
                           "reachability scan of this moment)")
    controller = session.watch_controller()
    watch = controller.watch
    if watch is None:
        raise CommandError("kheap leaks: nothing recorded: use 'kheap watch on' first, or "
                           "'kheap leaks --scan'")
    prog = controller.prog
    if args.mark:
        return _outcome(reports.leaks_report(prog.pointer_size, watch.set_mark(), [], args.blocks, mark_set=True))
    groups = watch.leaks()
    reports.leak_sources(prog, watch, groups)
    return _outcome(reports.leaks_report(prog.pointer_size, watch.mark, groups, args.blocks))


# kheap blame (gdb, lldb, CLI: re-runs the kernel from reset with a watchpoint; see core/blame.py)
def _blame_options(parser):
    parser.add_argument("address", metavar="ADDR", nargs="?",
                        help="the bytes to watch (default: those the first error finding of a fresh "
                             "check names: a header field, a payload's overwritten bytes); in a "
                             "debugger any expression")
    parser.add_argument("--size", type=positive, default=None, metavar="N",
                        help="bytes to watch from ADDR (default: the header field or global object "
                             "there, else one word)")
    parser.add_argument("--until", metavar="LOCATION",
                        help="where the re-run stops: a function, FILE:LINE or an address (default: "
                             "where the target is stopped now)")
    parser.add_argument("--max-hits", type=count, default=DEFAULT_MAX_HITS, metavar="N",
                        help=f"stop watching after N writes, then run on to the stop point (default "
                             f"{DEFAULT_MAX_HITS}; 0: no limit)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="restart the kernel without asking (nobody is asked when no person is at "
                             "the terminal)")


@command("blame", "Which instruction wrote the bytes a finding names: restarts the kernel (QEMU "
         "system_reset), watches every write up to where it is stopped now.",
         "kheap blame --until kheap_checkpoint")
@options(_blame_options)
def _blame(session, args):
    from gdbext.frontends.blame_controller import run_blame

    report, failed = run_blame(session, session.blame_target(), args)
    return _outcome(report, failed)


def _refs_options(parser):
    parser.add_argument("address", metavar="ADDR", nargs="?",
                        help="an address in the segment (an expression as for 'kheap find': $r0, ptr)")
    parser.add_argument("--dangling", action="store_true",
                        help="instead, every free segment something still points into (dangling "
                             "pointers, use after free)")
    _partial_option(parser)


@command("refs", "Every place holding a pointer into the segment at ADDR: other segments, globals, "
         "stack slots, registers; --dangling: free segments still pointed into.", "kheap refs $r0")
@options(_refs_options)
def _refs(session, args):
    if args.dangling == (args.address is not None):
        raise UsageError("kheap refs: give ADDR or --dangling (one of them)")
    prog = session.program()
    target = None if args.dangling else _address_arg(session, args.address, prog)
    roots = _reach_roots(session, prog, args)
    if args.dangling:
        index, items = reach.dangling(prog, roots)
        report = reports.dangling_report(prog, index, items, roots)
        return _outcome(report, report["count"] > 0)
    index, block, refs = reach.find_refs(prog, roots, target)
    if block is None:
        # As 'kheap show': no segment holds ADDR, so there is nothing to list (exit 2 in the
        # CLI, an error in a debugger), not an empty report that exits 0.
        raise CommandError(f"kheap refs: {prog.fmt(target)} is in no segment the walk reached")
    named = NamedSegment(index.starts[block], index.payloads[block][0])
    return _outcome(reports.refs_report(prog, index, block, refs, target, roots), named=named)
