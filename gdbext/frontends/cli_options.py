"""What the ``kheap`` command line takes and answers with: the options every command shares,
the help texts, and the exit codes.

The shared options choose the target, the output and the overrides; they may come before or
after the command name (``kheap --json check --core x`` = ``kheap check --core x --json``):
:func:`global_parser` takes them out first, and the rest goes to the command's own parser
from :mod:`gdbext.frontends.commands`.
"""

import functools

from gdbext import SCHEMA_VERSION
from gdbext.frontends import commands
from gdbext.frontends.cmdline import SafeArgumentParser, address, seconds
from gdbext.frontends.session import COLOR_VALUES

PROG = "kheap"

# Exit codes, for scripts and CI (README.md "Command line").
EXIT_OK = 0             # healthy (warnings only at most)
EXIT_FINDINGS = 1       # findings of error severity (a corrupt heap, or a kernel panic in triage)
EXIT_ERROR = 2          # usage, connection or file error (one line on stderr), an unreadable dump
EXIT_INTERRUPTED = 130  # Ctrl-C

TARGET_OPTIONS = ("remote", "core", "raw")


def add_global_options(parser, json_option=True, with_help=True):
    """The options every command takes; ``json_option`` False where the command has its own."""
    target = parser.add_argument_group("target (one of --remote, --core, --raw)")
    target.add_argument("--elf", metavar="KERNEL.elf",
                        help="the kernel ELF the target runs (symbols and DWARF layouts); "
                             "a 'kheap dump' file remembers it")
    target.add_argument("--remote", metavar="HOST:PORT",
                        help="a live gdbstub, e.g. QEMU's -gdb tcp::1234 (read-only, but 'blame' "
                             "restarts the kernel; the target is left running or stopped as it was found)")
    target.add_argument("--core", metavar="FILE", action="append",
                        help="a QEMU dump-guest-memory core or a 'kheap dump' file; 'check' takes "
                             "it several times, or a directory, and checks every dump in parallel")
    target.add_argument("--raw", metavar="FILE", help="a raw memory image (needs --base)")
    target.add_argument("--base", metavar="ADDR", type=address,
                        help="physical address of the raw image's first byte")
    target.add_argument("--timeout", metavar="SECONDS", type=seconds, default=5.0,
                        help="--remote: seconds to wait for the stub (default 5)")
    out = parser.add_argument_group("output")
    if json_option:
        out.add_argument("--json", action="store_true",
                         help=f"one JSON object (schema_version {SCHEMA_VERSION}), the same as in gdb and lldb")
    out.add_argument("--color", choices=COLOR_VALUES, default="auto",
                     help="colour the text (auto: when stdout is a terminal)")
    out.add_argument("-q", "--quiet", action="count", default=0,
                     help="only the verdict line (check, triage); -qq: nothing, the exit code only")
    out.add_argument("--debug", action="store_true", help="show Python tracebacks of kheap's own bugs")
    over = parser.add_argument_group("overrides (for kernels that differ from docs/kernel-interface.md)")
    over.add_argument("--heap-start", metavar="ADDR", help="heap start address")
    over.add_argument("--heap-size", metavar="BYTES", help="heap size in bytes")
    over.add_argument("--list-head", metavar="ADDR", help="address of the first heap_segment_t")
    over.add_argument("--page-convention", metavar="WORDS",
                      help="page conventions: auto (default), identity or mapped-only (vaddr_mapped), "
                           "heap-bit or no-heap-bit (heap pages' flags), comma-separated")
    over.add_argument("--stacks", metavar="SPEC",
                      help="stacks for leaks --scan and refs: TOP:SIZE or LOW..TOP, comma separated, "
                           "or none (default: the ELF's *stack_top symbols)")
    over.add_argument("--block-size", metavar="BYTES",
                      help="cache block in bytes (a power of two, default 4096); adjacent missing blocks are read together")
    if with_help:
        parser.add_argument("-h", "--help", action="store_true", help="show this help")
        parser.add_argument("--version", action="store_true", help="print kheap's version")


@functools.lru_cache(maxsize=1)
def global_parser():
    """The parser of the shared options (``parse_known_args`` leaves the command and its own)."""
    parser = SafeArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    add_global_options(parser)
    return parser


def parse_global_options(argv):
    """``(the shared options as a Namespace, the rest: command name and its own arguments)``."""
    return global_parser().parse_known_args(argv)


def cli_command_table():
    """The command table's commands the CLI offers, by name."""
    return {c.name: c for c in commands.commands_for("cli")}


def main_help():
    lines = [f"usage: {PROG} [OPTIONS] COMMAND [COMMAND OPTIONS]", "",
             "Inspect and validate the kernel heap of the bare-metal Raspberry Pi kernel: live over",
             "the GDB remote protocol, or offline from a core dump, with no debugger.", "",
             "commands:"]
    for cmd in cli_command_table().values():
        lines.append(f"  {cmd.name:<9} {cmd.summary}")
    lines += ["", "examples:",
              "  kheap check --remote 127.0.0.1:1234 --elf kernel/build/arm/kernel.elf",
              "  kheap dump  --remote 127.0.0.1:1234 --elf kernel/build/arm/kernel.elf -o crash.kdump",
              "  kheap triage --core crash.kdump --json",
              "  kheap check --core dumps/ --elf kernel/build/arm/kernel.elf     (every dump, in parallel)",
              "  kheap demo --arch aarch64 --scenario overflow", "",
              f"exit codes: {EXIT_OK} healthy, {EXIT_FINDINGS} findings of error severity, {EXIT_ERROR} usage, "
              "connection or file error",
              "", f"'{PROG} COMMAND --help' shows a command's options."]
    options_text = global_parser().format_help().split("\n\n", 1)[-1]
    return "\n".join(lines) + "\n\n" + options_text.strip("\n") + "\n"


def command_help(cmd):
    parser = commands.build_parser(cmd, prog=f"{PROG} {cmd.name}")
    add_global_options(parser, json_option=not cmd.json_option, with_help=False)
    return parser.format_help()
