"""argparse that is safe to run inside a debugger.

Plain argparse prints to stderr and calls sys.exit() on a bad argument, which inside gdb or
lldb means a SystemExit escaping into the debugger. These parsers raise instead, so every face
turns a wrong argument into one line and keeps the session alive.
"""

import argparse

from gdbext.core.text import parse_size


class UsageError(Exception):
    """A wrong command line: shown as one line, exit code 2 in the CLI."""


class HelpShown(Exception):
    """--help was asked for; the text has already been produced."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


class SafeArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError/HelpShown instead of printing and exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def exit(self, status=0, message=None):
        if status:
            raise UsageError((message or f"{self.prog}: error").strip())
        raise HelpShown(message or "")

    def print_help(self, file=None):
        raise HelpShown(self.format_help())

    def print_usage(self, file=None):
        raise HelpShown(self.format_usage())


def address(text):
    """An argparse type for addresses typed as numbers: 0x1f000, 1234, 0o17."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative address: {text}")
    return value


def count(text):
    """An argparse type for non-negative counts and sizes: the one size parser
    (:func:`gdbext.core.text.parse_size`: ``4096``, ``0x1000``, ``4k``, ``1M``)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive(text):
    """An argparse type for counts that must be at least 1 (``map --cells``)."""
    try:
        return parse_size(text, minimum=1)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds(text):
    """An argparse type for a wait in seconds (``--timeout``): a number above 0 (0 made the
    connection fail at once with "Operation now in progress"; a negative one likewise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value
