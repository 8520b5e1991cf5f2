"""TAB completion of ``kheap`` command lines, read from the command table's argparse specs.

Every face completes from the same parsers the commands run with, so a new option completes
the day it is added and nothing can list an option the command does not take. What is
completed where:

- ``kheap walk --f`` -> ``--free``: option names (those not given yet, and not one that a given
  option excludes, as ``--free`` and ``--used``);
- an option's or a positional's value with ``choices`` -> the choices (``kheap watch o`` ->
  ``on``, ``off``);
- a value whose metavar says it is an address or expression (``ADDR``) or a location
  (``LOCATION``) -> the debugger's own completer of that kind (gdb: symbols and fields);
  a file (``FILE``) -> the paths that start so;
- any other value (a count, a name) -> nothing: offering symbols there would be noise.

No debugger import here: gdb's ``complete`` method turns a :class:`Completion` into words or its
expression completer. (lldb 14 completes the ``kheap`` container's subcommands itself, and its
``command script add`` has no way to complete a script command's arguments.)
"""

import argparse
import functools
import os
import shlex
from dataclasses import dataclass
from typing import Optional, Tuple

from gdbext.frontends import cmdline, commands

# What a completion hands back: words to choose from, or the kind of completer to run.
WORDS = "words"
EXPRESSION = "expression"   # an address or an expression: the debugger's symbols
LOCATION = "location"       # a function, FILE:LINE or *ADDR
FILENAME = "filename"
NONE = "none"

# What a value is, by the metavar the command table gives it (and cmdline.address as a type).
KIND_OF_METAVAR = {"ADDR": EXPRESSION, "EXPR": EXPRESSION, "LOCATION": LOCATION, "FILE": FILENAME}


@dataclass(frozen=True)
class Completion:
    """What completes the last word of a command line.

    ``kind`` is WORDS (``words`` are the whole tokens that complete ``token``), or the kind of
    the debugger's completer to run (EXPRESSION, LOCATION), or NONE; a FILE value is
    completed here, as WORDS."""

    kind: str
    token: str = ""
    words: Tuple[str, ...] = ()

    def relative_to(self, word):
        """The words as replacements of ``word``, the part of ``token`` the debugger will
        replace: gdb breaks words at '-' too, so for ``--f`` it replaces ``f`` and must be
        handed ``free``, not ``--free``."""
        if word is None or not self.token.endswith(word):
            return list(self.words)
        cut = len(self.token) - len(word)
        return [w[cut:] for w in self.words]


@functools.lru_cache(maxsize=None)
def _parser(cmd):
    return commands.build_parser(cmd)


def _split(text):
    """The tokens typed so far and the one being typed ('' after a space), as the command
    will read them (quotes honoured; an unclosed quote is closed for the purpose)."""
    for closing in ("", '"', "'"):
        try:
            tokens = shlex.split(text + closing)
            break
        except ValueError:
            continue
    else:
        tokens = text.split()
    if not text or text[-1].isspace() and not closing:
        return tokens, ""
    return tokens[:-1], (tokens[-1] if tokens else "")


def _takes_value(action):
    return action.nargs != 0


def _value_kind(action):
    if action.choices:
        return WORDS
    kind = KIND_OF_METAVAR.get(action.metavar if isinstance(action.metavar, str) else None)
    if kind is None and action.type is cmdline.address:
        kind = EXPRESSION
    return kind or NONE


def _complete_value(action, token):
    kind = _value_kind(action)
    if kind == FILENAME:
        return Completion(WORDS, token, files(token))
    if kind != WORDS:
        return Completion(kind, token)
    return Completion(WORDS, token, tuple(str(c) for c in action.choices if str(c).startswith(token)))


MAX_FILES = 500


def files(token):
    """The paths that complete ``token`` (directories end in '/'; dot files only when asked
    for): the same in every face, and a debugger's own file completer would read the whole
    argument text (``--html he``) as one file name."""
    directory, slash, prefix = token.rpartition("/")
    where = os.path.expanduser(directory + slash) if slash else "."
    try:
        names = sorted(os.listdir(where or "/"))
    except OSError:
        return ()
    out = []
    for name in names:
        if name.startswith(prefix) and (prefix.startswith(".") or not name.startswith(".")):
            path = directory + slash + name
            out.append(path + "/" if os.path.isdir(os.path.join(where or "/", name)) else path)
            if len(out) == MAX_FILES:
                break
    return tuple(out)


def _option_named(parser, name):
    """The option action ``name`` stands for: exact, or a unique prefix (argparse's
    abbreviations), or None."""
    exact = parser._option_string_actions.get(name)
    if exact is not None:
        return exact
    matches = {a for s, a in parser._option_string_actions.items() if s.startswith(name)}
    return matches.pop() if len(matches) == 1 else None


def _excluded(parser, given):
    """Options that add nothing after ``given``: those given (unless repeatable) and those a
    mutually exclusive group rules out."""
    out = {a for a in given if not isinstance(a, (argparse._AppendAction, argparse._CountAction))}
    for group in parser._mutually_exclusive_groups:
        if any(a in given for a in group._group_actions):
            out.update(group._group_actions)
    return out


def _options(parser, token, given):
    excluded = _excluded(parser, given)
    words = sorted(s for a in parser._actions if a not in excluded for s in a.option_strings
                   if s.startswith(token))
    return Completion(WORDS, token, tuple(words))


def complete(cmd, text):
    """The :class:`Completion` of the last word of ``text``, the arguments typed after
    ``kheap NAME`` (``cmd`` is the command table's entry)."""
    parser = _parser(cmd)
    before, token = _split(text)
    positionals = [a for a in parser._actions if not a.option_strings]
    given, pending, used, only_positionals = set(), None, 0, False
    for tok in before:
        if pending is not None:
            pending = None
            continue
        if not only_positionals and tok == "--":
            only_positionals = True
            continue
        if not only_positionals and tok.startswith("-") and len(tok) > 1:
            name, equals, _ = tok.partition("=")
            action = _option_named(parser, name)
            if action is not None:
                given.add(action)
                if _takes_value(action) and not equals:
                    pending = action
            continue
        if used < len(positionals) and positionals[used].nargs not in ("*", "+",
                                                                        argparse.REMAINDER):
            used += 1
    if pending is not None:
        return _complete_value(pending, token)
    if token.startswith("-") and not only_positionals:
        if "=" in token:
            return Completion(NONE, token)
        return _options(parser, token, given)
    positional: Optional[argparse.Action] = positionals[used] if used < len(positionals) else None
    if positional is not None:
        return _complete_value(positional, token)
    if token == "" and not only_positionals:
        return _options(parser, token, given)
    return Completion(NONE, token)

