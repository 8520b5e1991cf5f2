"""The CLI face: ``kheap COMMAND`` for scripts, CI and crash triage, with no debugger in the loop.

It is a thin adapter like gdb.py and lldb.py. The commands themselves, their options, text and
JSON come from :mod:`gdbext.frontends.commands`; this module parses a command line, checks the
target options, runs the command and prints what it made, and turns every failure into one
line on stderr and an exit code. Beside it:

- :mod:`.cli_options`: the options every command shares, the help texts, the exit codes;
- :mod:`.cli_session`: :class:`~.cli_session.CliSession`, the targets, the ELF check, the
  expression evaluator;
- :mod:`.cli_commands`: the CLI-only commands ``dump``, ``demo`` and ``check`` of many dumps.

Exit codes: 0 healthy, 1 findings of error severity, 2 usage, connection or file error (one
line on stderr, never a traceback), 130 on Ctrl-C.
"""

import os
import sys
import traceback

from gdbext import __version__
from gdbext.core import reports
from gdbext.frontends import cli_commands, commands
from gdbext.frontends.cli_options import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, PROG, TARGET_OPTIONS, cli_command_table,
                                          command_help, main_help, parse_global_options)
from gdbext.frontends.cli_session import CliSession
from gdbext.frontends.cmdline import UsageError
from gdbext.frontends.session import CommandError

NO_BACKTRACE_NOTE = "  (no backtrace: the CLI reads memory and registers, it does not unwind; gdb does)"


def run_cli(argv, out, err):
    """Parse and run one command line; returns the exit status. Raises only UsageError."""
    opts, rest = parse_global_options(argv)
    if opts.version:
        out.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    table = cli_command_table()
    if not rest:
        if opts.help:
            out.write(main_help())
            return EXIT_OK
        raise UsageError(f"{PROG}: no command given (one of: {', '.join(table)}; see '{PROG} --help')")
    name, cmd_argv = rest[0], rest[1:]
    cmd = table.get(name)
    if cmd is None:
        if name.startswith("-"):
            raise UsageError(f"{PROG}: unknown option {name} (see '{PROG} --help')")
        raise UsageError(f"{PROG}: unknown command {name!r} (one of: {', '.join(table)})")
    if opts.help or any(a in ("-h", "--help") for a in cmd_argv):
        out.write(command_help(cmd))
        return EXIT_OK
    check_target_options(name, opts)
    if name == "check" and cli_commands.is_many_dumps(opts):
        commands.build_parser(cmd).parse_args(cmd_argv)     # the command's own options, before any worker
        return print_check_many(opts, cli_commands.check_many(opts, cmd_argv), out)

    if opts.json and not opts.quiet and cmd.json_option:
        cmd_argv = cmd_argv + ["--json"]
    try:
        session = CliSession(opts)
    except CommandError as error:                          # a setting's value (--heap-size abc)
        raise UsageError(f"{PROG} {name}: {str(error).removeprefix('kheap ')}") from None
    try:
        result = commands.execute_to_text(session, name, cmd_argv)
    finally:
        session.close()
    if result.is_error:
        err.write(result.text.rstrip("\n") + "\n")
        return result.status or EXIT_ERROR
    if name == "blame" and (result.data or {}).get("ended") == "interrupted":
        result.status = EXIT_INTERRUPTED           # Ctrl-C: the report of what was seen, then 130
    if opts.quiet:
        line = quiet_line(name, result.data) if opts.quiet == 1 else None
        if line:
            out.write(line + "\n")
        return result.status
    text = result.text
    if name == "triage" and "--json" not in cmd_argv:
        text = note_no_backtrace(text)
    if text:
        out.write(text if text.endswith("\n") else text + "\n")
    return result.status


def check_target_options(name, opts):
    """At most one target, --base only with --raw, many dumps only for check."""
    given = [k for k in TARGET_OPTIONS if getattr(opts, k)]
    if len(given) > 1:
        raise UsageError(f"{PROG} {name}: give one target, not --{' and --'.join(given)}")
    if opts.base is not None and not opts.raw:
        raise UsageError(f"{PROG} {name}: --base goes with --raw FILE")
    if name != "check" and cli_commands.is_many_dumps(opts):
        raise UsageError(f"{PROG} {name}: one --core FILE (only 'check' takes many dumps)")


def print_check_many(opts, report, out):
    """The check-many report as JSON, as one line per dump, or with -q one per dump not OK."""
    if opts.json and not opts.quiet:
        out.write(reports.to_json_text(report) + "\n")
    elif opts.quiet == 1:
        for dump in report["dumps"]:
            if dump["status"] != "ok":
                out.write(reports.dump_verdict_line(dump) + "\n")
    elif not opts.quiet:
        out.write(reports.render_text(report, CliSession(opts).color_wanted()))
    return report["exit_status"]


def quiet_line(name, report):
    """What ``-q`` prints: the verdict line of a report that has a verdict, else nothing."""
    if not isinstance(report, dict) or "verdict" not in report:
        return None
    if name == "check":
        return reports.verdict_line(report)
    return f"{PROG} {name}: {str(report['verdict']).upper()}"


def note_no_backtrace(text):
    """Triage text says, under 'stopped at', why it shows no frames."""
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("stopped at")), None)
    if at is None:
        return text
    return "\n".join(lines[:at + 1] + [NO_BACKTRACE_NOTE] + lines[at + 1:])


def main(argv=None):
    """The ``kheap`` console script and ``python -m gdbext``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = run_cli(argv, sys.stdout, sys.stderr)
        sys.stdout.flush()
        return status
    except UsageError as error:
        _error_line(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - never a traceback on the user's terminal
        if "--debug" in argv:
            traceback.print_exc()
        _error_line(f"{PROG}: internal error: {type(error).__name__}: {error} (--debug shows more)")
        return EXIT_ERROR


def _error_line(text):
    try:
        sys.stderr.write(" ".join(str(text).split()) + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass


def _silence_stdout():
    # Python flushes stdout at exit; on a closed pipe that raises again: point it at /dev/null.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
