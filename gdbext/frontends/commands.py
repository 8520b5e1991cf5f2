"""The one command table: an argparse spec and a handler per command, used by every face.

gdb registers each entry as ``kheap NAME``, lldb as ``kheap NAME`` under a command container,
and the CLI as a subcommand, so options, help, text and JSON are the same everywhere. Handlers
return an Outcome (JSON-ready data plus a text renderer); ``execute_to_text`` is the single
place that turns any failure into one line, so no face can leak a traceback.
"""

import json
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

from gdbext.core.memory import MemoryFault
from gdbext.frontends.cmdline import HelpShown, SafeArgumentParser, UsageError
from gdbext.frontends.session import SETTINGS, CommandError  # noqa: F401 - faces import SETTINGS here

PREFIX_SUMMARY = "Inspect and validate the kernel heap (heap_segment_t list and page_t array)."


@dataclass
class Outcome:
    """What a handler produced: ``data`` is the JSON report, ``render`` makes the text."""

    data: dict
    render: Callable[[bool], str]
    failed: bool = False            # findings of error severity (CLI exit code 1)


@dataclass
class Text:
    """What a face prints for one command."""

    text: str
    is_error: bool = False
    status: int = 0                 # 0 healthy, 1 error findings, 2 usage/target error


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


def configure_parser(cmd, parser):
    cmd.configure(parser)
    if cmd.json_option:
        parser.add_argument("--json", action="store_true",
                            help="print one JSON object (schema_version 1), the same in every face")


def long_help(cmd):
    return build_parser(cmd).format_help()


def prefix_help():
    """``help kheap``: the subcommands, one line each, with an example."""
    lines = [PREFIX_SUMMARY, "", "Subcommands (each takes --help and --json):"]
    for cmd in _COMMANDS.values():
        lines.append(f"  {cmd.name:<10} {cmd.summary}")
        lines.append(f"  {'':<10}   e.g. {cmd.example}")
    lines += ["", "Settings: 'show kheap' / 'set kheap NAME VALUE' (gdb), "
              "'kheap show' / 'kheap set NAME VALUE' (lldb)."]
    return "\n".join(lines)


def run(session, name, argv):
    """Parse and run one command; exceptions propagate (``execute_to_text`` catches them)."""
    cmd = _COMMANDS.get(name)
    if cmd is None:
        known = ", ".join(_COMMANDS)
        raise UsageError(f"kheap: unknown command {name!r} (one of: {known})")
    args = build_parser(cmd).parse_args(argv)
    return cmd, args, cmd.handler(session, args)


def outcome_to_text(session, args, outcome):
    if getattr(args, "json", False):
        return Text(json.dumps(outcome.data, indent=2), status=1 if outcome.failed else 0)
    return Text(outcome.render(session.color_wanted()), status=1 if outcome.failed else 0)


def execute_to_text(session, name, argv):
    """Run a command and return what to print; never raises (the debugger must survive)."""
    try:
        _, args, outcome = run(session, name, argv)
        return outcome_to_text(session, args, outcome)
    except HelpShown as shown:
        return Text(shown.text)
    except (UsageError, CommandError) as error:
        return Text(_one_line(error), is_error=True, status=2)
    except MemoryFault as fault:
        return Text(f"kheap {name}: {_one_line(fault)}", is_error=True, status=2)
    except Exception as error:  # noqa: BLE001 - the last line of defence for the session
        return Text(describe_unexpected(session, name, error), is_error=True, status=2)


def describe_unexpected(session, name, error):
    """Known failure kinds get their message; true bugs get one line (traceback on debug)."""
    from gdbext.core.program import ProgramError

    if isinstance(error, ProgramError) or type(error).__name__ in ("TargetError", "ElfError",
                                                                   "LayoutError"):
        return f"kheap {name}: {_one_line(error)}"
    line = f"kheap {name}: internal error: {type(error).__name__}: {_one_line(error)}"
    if getattr(session, "debug", False):
        return line + "\n" + traceback.format_exc()
    return line + " (set kheap debug on for details)"


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# Pretty printers / type summaries and $kheap_segment share these two helpers ------------------
def struct_describer(tag) -> Optional[Callable]:
    """A function (session, address, raw_bytes) -> str for a struct tag kheap knows, or None."""
    from gdbext.frontends import describe

    return describe.describer_for(tag)


def segment_header_for(session, address):
    """The header address of the segment holding ``address``, or None."""
    from gdbext.core.heap import find_segment

    match = find_segment(session.program(), address)
    return match.segment.address if match else None
