"""The CLI face: ``kheap COMMAND`` for scripts, CI and crash triage, with no debugger in the loop.

It is a thin adapter like gdb.py and lldb.py: :class:`CliSession` gives the shared command
table bytes from a target of :mod:`gdbext.targets` (a live gdbstub with ``--remote``, a core
with ``--core``, a raw image with ``--raw --base``), the kernel ELF (``--elf``), a small
expression evaluator (numbers, symbols, ``symbol+offset``, ``$register``) and the stop place
from the target's registers. The commands themselves, their options, text and JSON come from
:mod:`gdbext.frontends.commands`; the CLI adds three commands to that same table with
``faces=("cli",)``: ``dump``, ``demo`` and nothing else (``snapshot -o`` and ``diff FILE``
are the shared commands).

Options that choose the target, the output and the overrides may come before or after the
command name (``kheap --json check --core x`` = ``kheap check --core x --json``): they are
taken out first, and the rest goes to the command's own parser.

Exit codes: 0 healthy, 1 findings of error severity, 2 usage, connection or file error (one
line on stderr, never a traceback), 130 on Ctrl-C. Imports are kept lazy (pyelftools when an
ELF or core is opened, qemu.launcher only for ``demo``, the process pool only for many dumps)
so a ``kheap check --remote`` process starts fast (bench/bench_cli.py).
"""

import argparse
import functools
import os
import re
import sys

from gdbext import SCHEMA_VERSION
from gdbext.frontends import commands
from gdbext.frontends.cmdline import SafeArgumentParser, UsageError, address, count
from gdbext.frontends.commands import Outcome, command, options
from gdbext.frontends.session import CommandError, Session, StopPlace

PROG = "kheap"
EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
PROBE_BYTES = 64            # bytes of .text (its end) and .rodata (its start) compared with the target
CORE_SUFFIXES = (".core", ".dump", ".kdump", ".elf")


# ---------------------------------------------------------------------------------------------
# Options shared by every command (before or after the command name)
# ---------------------------------------------------------------------------------------------
def _add_global_options(parser, json_option=True, with_help=True):
    target = parser.add_argument_group("target (one of --remote, --core, --raw)")
    target.add_argument("--elf", metavar="KERNEL.elf",
                        help="the kernel ELF the target runs (symbols and DWARF layouts); "
                             "a 'kheap dump' file remembers it")
    target.add_argument("--remote", metavar="HOST:PORT",
                        help="a live gdbstub, e.g. QEMU's -gdb tcp::1234 (read-only; the target is "
                             "left running or stopped as it was found)")
    target.add_argument("--core", metavar="FILE", action="append",
                        help="a QEMU dump-guest-memory core or a 'kheap dump' file; 'check' takes "
                             "it several times, or a directory, and checks every dump in parallel")
    target.add_argument("--raw", metavar="FILE", help="a raw memory image (needs --base)")
    target.add_argument("--base", metavar="ADDR", type=address,
                        help="physical address of the raw image's first byte")
    target.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0,
                        help="--remote: seconds to wait for the stub (default 5)")
    out = parser.add_argument_group("output")
    if json_option:
        out.add_argument("--json", action="store_true",
                         help="one JSON object (schema_version 1), the same as in gdb and lldb")
    out.add_argument("--color", choices=("auto", "always", "never", "on", "off"), default="auto",
                     help="colour the text (auto: when stdout is a terminal)")
    out.add_argument("-q", "--quiet", action="count", default=0,
                     help="only the verdict line (check, triage); -qq: nothing, the exit code only")
    out.add_argument("--debug", action="store_true", help="show Python tracebacks of kheap's own bugs")
    over = parser.add_argument_group("overrides (for kernels that differ from docs/kernel-interface.md)")
    over.add_argument("--heap-start", metavar="ADDR", help="heap start address")
    over.add_argument("--heap-size", metavar="BYTES", help="heap size in bytes")
    over.add_argument("--list-head", metavar="ADDR", help="address of the first heap_segment_t")
    over.add_argument("--block-size", metavar="BYTES",
                      help="cache block in bytes (a power of two, default 4096); adjacent missing blocks are read together")
    if with_help:
        parser.add_argument("-h", "--help", action="store_true", help="show this help")
        parser.add_argument("--version", action="store_true", help="print kheap's version")


@functools.lru_cache(maxsize=1)
def _global_parser():
    parser = SafeArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    _add_global_options(parser)
    return parser


def _cli_commands():
    return {c.name: c for c in commands.commands_for("cli")}


def main_help():
    lines = [f"usage: {PROG} [OPTIONS] COMMAND [COMMAND OPTIONS]", "",
             "Inspect and validate the kernel heap of the bare-metal Raspberry Pi kernel: live over",
             "the GDB remote protocol, or offline from a core dump, with no debugger.", "",
             "commands:"]
    for cmd in _cli_commands().values():
        lines.append(f"  {cmd.name:<9} {cmd.summary}")
    lines += ["", "examples:",
              "  kheap check --remote 127.0.0.1:1234 --elf kernel/build/arm/kernel.elf",
              "  kheap dump  --remote 127.0.0.1:1234 --elf kernel/build/arm/kernel.elf -o crash.kdump",
              "  kheap triage --core crash.kdump --json",
              "  kheap check --core dumps/ --elf kernel/build/arm/kernel.elf     (every dump, in parallel)",
              "  kheap demo --arch aarch64 --scenario overflow", "",
              "exit codes: 0 healthy, 1 findings of error severity, 2 usage, connection or file error",
              "", f"'{PROG} COMMAND --help' shows a command's options."]
    parser = SafeArgumentParser(prog=PROG, add_help=False)
    _add_global_options(parser)
    options_text = parser.format_help().split("\n\n", 1)[-1]
    return "\n".join(lines) + "\n\n" + options_text.strip("\n") + "\n"


def command_help(cmd):
    parser = commands.build_parser(cmd, prog=f"{PROG} {cmd.name}")
    _add_global_options(parser, json_option=not cmd.json_option, with_help=False)
    return parser.format_help()


def _version():
    try:
        from importlib.metadata import version
        return version("kheap")
    except Exception:  # noqa: BLE001 - not installed: running from a checkout
        return "0.1.0"


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------
def elf_probe(elf, size=PROBE_BYTES):
    """``[(address, bytes)]`` the target must hold if it runs this ELF: the end of ``.text``
    and the start of ``.rodata`` (code and constants the kernel never writes; a rebuilt kernel
    moves the end of its code), merged into one read when they touch."""
    wanted = []
    for sec in elf.sections:
        if sec.data is None or not sec.size:
            continue
        if sec.name == ".text":
            n = min(size, sec.size)
            wanted.append((sec.address + sec.size - n, bytes(sec.data[sec.size - n:sec.size])))
        elif sec.name == ".rodata":
            wanted.append((sec.address, bytes(sec.data[:size])))
    wanted.sort()
    merged = []
    for addr, data in wanted:
        if merged and merged[-1][0] + len(merged[-1][1]) == addr:
            merged[-1] = (merged[-1][0], merged[-1][1] + data)
        else:
            merged.append((addr, data))
    return merged


def file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _article(word):
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


class CliSession(Session):
    """What the command table needs, from a target of gdbext.targets instead of a debugger.

    ``opts`` is the parsed global options (argparse Namespace); ``core`` picks one of several
    ``--core`` files (the many-dumps mode runs one session per dump).
    """

    face = "cli"

    def __init__(self, opts, core=None):
        super().__init__()
        self.opts = opts
        self._core = core
        self._target = None
        self._elf = None
        self._verified = False
        self._stop = None
        color = {"always": "on", "never": "off"}.get(opts.color, opts.color)
        self.apply_setting("color", color)
        if opts.debug:
            self.apply_setting("debug", True)
        for name in ("heap-start", "heap-size", "list-head", "block-size"):
            value = getattr(opts, name.replace("-", "_"), None)
            if value is not None:
                self.apply_setting(name, value)

    # The target ---------------------------------------------------------------------------
    def target_kind(self):
        opts = self.opts
        if opts.remote:
            return "remote"
        if self._core or opts.core:
            return "core"
        if opts.raw:
            return "raw"
        return None

    def target_name(self):
        kind = self.target_kind()
        if kind == "remote":
            return opts_remote(self.opts)
        if kind == "core":
            return self._core or self.opts.core[0]
        if kind == "raw":
            return self.opts.raw
        return "no target"

    def target(self):
        """The opened target (once per session)."""
        if self._target is None:
            from gdbext.targets import RawDump, RemoteTarget, open_dump

            kind = self.target_kind()
            if kind == "remote":
                self._target = RemoteTarget.from_hostport(self.opts.remote, timeout=self.opts.timeout)
            elif kind == "core":
                path = self._core or self.opts.core[0]
                if os.path.isdir(path):
                    raise CommandError(f"{path} is a directory: only 'kheap check' takes many dumps")
                self._target = open_dump(path)
            elif kind == "raw":
                if self.opts.base is None:
                    raise CommandError("--raw needs --base ADDR: the physical address of its first byte")
                self._target = RawDump(self.opts.raw, self.opts.base)
            else:
                raise CommandError("no target: give --remote HOST:PORT, --core FILE or --raw FILE --base ADDR")
        return self._target

    def close(self):
        if self._target is not None:
            try:
                self._target.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result
                pass
            self._target = None

    def dump_meta(self):
        target = self.target() if self.target_kind() == "core" else None
        return getattr(target, "meta", None) or {}

    def elf_path(self):
        if self._elf is not None:
            return self._elf
        if self.opts.elf:
            if not os.path.isfile(self.opts.elf):
                raise CommandError(f"cannot open the kernel ELF {self.opts.elf}: no such file")
            self._elf = self.opts.elf
            return self._elf
        meta = self.dump_meta() if self.target_kind() == "core" else {}
        saved = meta.get("elf_path")
        if saved and os.path.isfile(saved):
            if meta.get("elf_sha256") and file_sha256(saved) != meta["elf_sha256"]:
                raise CommandError(f"{self.target_name()} was dumped with another build of {saved} "
                                   "(its sha256 differs): give the right one with --elf")
            self._elf = saved
            return self._elf
        hint = f" ({saved} is gone)" if saved else ""
        raise CommandError(f"the kernel ELF is needed{hint}: add --elf kernel/build/<arch>/kernel.elf")

    def elf_info(self):
        from gdbext.core.symbols import load_elf_info

        return load_elf_info(self.elf_path())

    def reader(self):
        target = self.target()
        if not self._verified:
            self.verify(target)
            self._verified = True
        return target

    def verify(self, target):
        """Refuse a target that does not run this ELF: other architecture, other build."""
        from gdbext.core.memory import MemoryFault

        path = self.elf_path()
        elf = self.elf_info()
        name = self.target_name()
        kind = self.target_kind()

        def same_arch():
            # A core's header says its arch for free; a stub's target description costs a
            # dozen packets, so a live target is asked only when its memory disagrees.
            target_arch = getattr(target, "arch", None) if kind != "raw" else None
            if target_arch and elf.arch in ("arm", "aarch64") and target_arch != elf.arch:
                what = {"remote": "target", "core": "core"}.get(kind, "target")
                raise CommandError(f"{name} is {_article(target_arch)} {what} but {path} is "
                                   f"{_article(elf.arch)} kernel ELF: use the kernel it runs")

        if kind == "core":
            same_arch()
        meta = self.dump_meta() if kind == "core" else {}
        if self.opts.elf and meta.get("elf_sha256") and file_sha256(path) != meta["elf_sha256"]:
            raise CommandError(f"{name} was dumped with another kernel ELF than {path} (sha256 differs)")
        for addr, expected in elf_probe(elf):
            try:
                got = target.read(addr, len(expected))
            except MemoryFault:
                continue                     # not saved in this dump: nothing to compare
            if got != expected:
                if kind == "remote":
                    same_arch()
                hint = " (wrong --base?)" if kind == "raw" else ""
                raise CommandError(f"{path} does not match {name}{hint}: the kernel's code and "
                                   f"constants at {addr:#x} differ from the target's memory")

    # Expressions and stop state -------------------------------------------------------------
    def evaluate(self, expression):
        text = expression.strip()
        try:
            return int(text, 0)
        except ValueError:
            pass
        if text.startswith("$"):
            registers = self.stop_place().registers
            value = registers.get(text[1:])
            if value is None:
                known = " ".join(sorted(registers)) or "none (this target has no registers)"
                raise CommandError(f"cannot evaluate {expression!r}: no register {text[1:]!r} "
                                   f"(known: {known})")
            return value
        match = re.fullmatch(r"&?\s*([A-Za-z_.][\w.]*)\s*(?:([+-])\s*(\w+))?", text)
        if match:
            address = self.elf_info().address_of(match.group(1))
            if address is not None:
                offset = 0
                if match.group(3):
                    try:
                        offset = int(match.group(3), 0)
                    except ValueError:
                        raise CommandError(f"cannot evaluate {expression!r}: bad offset") from None
                return address + offset if match.group(2) != "-" else address - offset
            raise CommandError(f"cannot evaluate {expression!r}: no symbol {match.group(1)!r} in "
                               f"{self.elf_path()}")
        raise CommandError(f"cannot evaluate {expression!r}: the CLI takes numbers, symbols, "
                           "symbol+offset and $registers (a debugger evaluates C expressions)")

    def all_registers(self):
        """``([registers of each CPU], index of the CPU that stopped)``."""
        target = self.target()
        kind = self.target_kind()
        if kind == "remote":
            stop = target.last_stop or target.stop_reason()
            threads = target.threads() or [None]
            cpus = [target.registers(t) for t in threads]
            index = threads.index(stop.thread) if stop.thread in threads else 0
            return cpus, index
        if kind == "core":
            count_ = max(1, len(getattr(target, "cpus", [])), len(target.meta.get("registers") or []))
            cpus = [target.registers(i) for i in range(count_)]
            index = int(target.meta.get("stop_cpu", 0) or 0)
            return cpus, min(index, len(cpus) - 1)
        return [{}], 0

    def stop_place(self):
        if self._stop is not None:
            return self._stop
        target = self.target()
        kind = self.target_kind()
        registers, thread = {}, None
        if kind == "remote":
            stop = target.last_stop or target.stop_reason()
            registers = target.registers(stop.thread) if stop.thread else target.registers()
            thread = _thread_number(stop.thread)
        elif kind == "core":
            cpus, index = self.all_registers()
            registers, thread = cpus[index], index + 1
        pc = registers.get("pc")
        function = None
        if pc is not None:
            try:
                function = self.elf_info().symbolize(pc)
            except Exception:  # noqa: BLE001 - a name is a nicety
                function = None
        # No debugger, no unwinder: frames stay empty (the text output says so).
        self._stop = StopPlace(pc=pc, function=function, frames=[], registers=registers, thread=thread)
        return self._stop

    def color_wanted(self):
        setting = self.current_settings()["color"]
        if setting == "auto":
            try:
                return sys.stdout.isatty()
            except (AttributeError, ValueError):
                return False
        return setting == "on"


def opts_remote(opts):
    return opts.remote


def _thread_number(thread):
    if not thread:
        return None
    try:
        return int(thread.split(".")[-1], 16)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# CLI-only commands, registered in the shared table
# ---------------------------------------------------------------------------------------------
def _dump_options(parser):
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="where to write the dump (an ELF core: readelf -a shows it)")


@command("dump", "Save the heap, page array, globals and every CPU's registers into one file "
         "(read it back with --core FILE).", "kheap dump --remote 127.0.0.1:1234 --elf K -o crash.kdump",
         faces=("cli",))
@options(_dump_options)
def _dump(session, args):
    from gdbext.core.memory import MemoryFault, merge_ranges
    from gdbext.targets import write_kheap_dump

    prog = session.program()
    elf = prog.elf
    bounds = prog.bounds
    wanted = []                                   # (start, end, what)
    if elf.image_end > elf.image_start:
        wanted.append((elf.image_start, elf.image_end, "kernel image (globals, .text, .rodata, .bss)"))
    for name in ("heap_segment_list_head", "all_pages_array", "num_pages", "free_pages", "panic_info",
                 "heap_stats", "heap_poison", "kernel_heap_start", "kernel_heap_size"):
        addr = elf.address_of(name)
        if addr is not None:
            wanted.append((addr, addr + elf.variable_size(name, prog.pointer_size), name))
    for addr, data in elf_probe(elf):
        wanted.append((addr, addr + len(data), "ELF check"))
    if bounds.page_array is not None and bounds.num_pages:
        size = bounds.num_pages * prog.layouts.page.size
        if size <= 256 * 1024 * 1024:
            wanted.append((bounds.page_array, bounds.page_array + size, "page array"))
    wanted.append((bounds.start, bounds.end, "heap"))
    ranges, saved = [], []
    merged = merge_ranges([(s, e) for s, e, _ in wanted])
    prog.memory.prefetch_ranges([(start, end - start) for start, end in merged])   # one stream
    for start, end in merged:
        data = prog.memory.read_prefix(start, end - start)
        if data:
            ranges.append((start, data))
            parts = sorted({w for s, e, w in wanted if s < start + len(data) and start < e})
            saved.append({"start": start, "size": len(data), "what": parts})
    if not ranges:
        raise CommandError("nothing readable to dump: is this the right ELF and target?")
    try:
        cpus, stop_cpu = session.all_registers()
    except MemoryFault:
        cpus, stop_cpu = [{}], 0
    path = session.elf_path()
    meta = {"arch": elf.arch, "elf_path": os.path.abspath(path), "elf_sha256": file_sha256(path),
            "source": f"{session.target_kind()} {session.target_name()}", "stop_cpu": stop_cpu,
            "heap": {"start": bounds.start, "size": bounds.size, "page_array": bounds.page_array,
                     "num_pages": bounds.num_pages}, "ranges": saved}
    write_kheap_dump(args.output, ranges, cpus, meta)
    report = {"schema_version": SCHEMA_VERSION, "report": "dump", "path": os.path.abspath(args.output),
              "bytes": os.path.getsize(args.output), "ranges": saved, "cpus": len(cpus),
              "stop_cpu": stop_cpu, "arch": elf.arch, "elf_sha256": meta["elf_sha256"]}

    def text(color):
        lines = [f"kheap dump: wrote {args.output} ({report['bytes'] / 1048576:.1f} MiB, "
                 f"registers of {len(cpus)} CPU{'s' if len(cpus) != 1 else ''})"]
        for r in saved:
            lines.append(f"  {prog.fmt(r['start'])} {r['size']:>9} bytes  {', '.join(r['what'])}")
        lines.append(f"read it back with: kheap check --core {args.output}")
        return "\n".join(lines) + "\n"

    return Outcome(report, text)


def _launcher():
    """qemu.launcher, from the checkout this package lives in (it is not installed)."""
    try:
        from qemu import launcher
        return launcher
    except ImportError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(repo, "qemu", "launcher.py")):
        raise CommandError("kheap demo needs the kheap checkout (qemu/launcher.py) next to gdbext/")
    sys.path.insert(0, repo)
    from qemu import launcher
    return launcher


def _demo_options(parser):
    parser.add_argument("--arch", choices=("arm", "aarch64"), default="arm",
                        help="which build of the bundled kernel to boot (default arm)")
    parser.add_argument("--scenario", default="clean", metavar="NAME",
                        help="what the kernel does to its heap: clean, stress, overflow, backlink, "
                             "cycle, wild, double-free, uaf, leak, pages, tutorial-bug, crash "
                             "(default clean)")
    parser.add_argument("--limit", type=count, default=25, metavar="N",
                        help="segments the walk shows (default 25)")
    parser.add_argument("--boot-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the kernel's checkpoint (default 60)")


def _heading(text, color):
    return f"\x1b[1;36m{text}\x1b[0m" if color else text


@command("demo", "Boot the bundled kernel in QEMU, then walk, check and stat its heap (triage a "
         "crash) over the GDB remote protocol.", "kheap demo --arch aarch64 --scenario overflow",
         faces=("cli",))
@options(_demo_options)
def _demo(session, args):
    launcher = _launcher()
    if args.scenario not in launcher.SCENARIOS:
        raise CommandError(f"unknown scenario {args.scenario!r}; one of: {', '.join(launcher.SCENARIOS)}")
    quiet = getattr(session.opts, "quiet", 0)
    say = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    elf = launcher.elf_path(args.arch)
    steps = [("walk", ["--limit", str(args.limit)]), ("check", []), ("stats", [])]
    if args.scenario == "crash":
        steps.append(("triage", []))
    say(f"kheap demo: booting the {args.arch} kernel in QEMU (scenario {args.scenario}) ...")
    results = []
    try:
        with launcher.KernelVM(arch=args.arch, scenario=args.scenario) as vm:
            vm.wait_until_settled(args.boot_timeout)
            remote = f"127.0.0.1:{vm.gdb_port}"
            say(f"kheap demo: the kernel reached its checkpoint; reading its heap over {remote}")
            opts = argparse.Namespace(**vars(session.opts))
            opts.remote, opts.core, opts.raw, opts.elf = remote, None, None, str(elf)
            live = CliSession(opts)
            try:
                for name, argv in steps:
                    _, _, outcome = commands.run(live, name, argv)
                    results.append((name, argv, outcome))
            finally:
                live.close()
    except launcher.LauncherError as error:
        raise CommandError(str(error).splitlines()[0]) from None
    rel = os.path.relpath(elf) if not os.path.relpath(elf).startswith("..") else str(elf)
    report = {"schema_version": SCHEMA_VERSION, "report": "demo", "arch": args.arch, "scenario": args.scenario,
              "elf": str(elf), "reports": {name: outcome.data for name, _, outcome in results}}

    def text(color):
        parts = [_heading(f"kheap demo: the {args.arch} kernel, scenario '{args.scenario}', "
                          "inspected live over the GDB remote protocol", color), ""]
        for name, argv, outcome in results:
            line = " ".join(["$ kheap", name] + argv + ["--remote", "HOST:PORT", "--elf", rel])
            parts += [_heading(line, color), outcome.render(color).rstrip("\n"), ""]
        if args.scenario == "crash":
            parts.append("(no backtrace without a debugger: kheap read the registers and panic_info)")
        parts.append("QEMU has been shut down. Try another scenario: kheap demo --scenario overflow "
                     "(or crash, uaf, cycle, leak, ...); scenarios are described in "
                     "docs/kernel-interface.md.")
        return "\n".join(parts) + "\n"

    return Outcome(report, text)


# ---------------------------------------------------------------------------------------------
# Many dumps: one verdict line each, checked in parallel
# ---------------------------------------------------------------------------------------------
def expand_cores(paths):
    """Files given with --core, directories expanded to the dumps in them (sorted)."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if name.startswith(".") or not os.path.isfile(full):
                    continue
                if name.endswith(CORE_SUFFIXES) or _is_elf(full):
                    out.append(full)
        else:
            out.append(path)
    return out


def _is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def check_one(job):
    """Check one dump (in a worker process): ``(path, status, check report or None, error line)``."""
    opts, path, argv = job
    import json

    session = CliSession(opts, core=path)
    try:
        result = commands.execute_to_text(session, "check", list(argv) + ["--json"])
    finally:
        session.close()
    if result.is_error:
        message = result.text
        if message.startswith("kheap check: "):
            message = message[len("kheap check: "):]
        return path, EXIT_ERROR, None, message
    return path, result.status, json.loads(result.text), None


def verdict_of(path, status, report, error):
    if report is None:
        return f"{path}: UNREADABLE {error}"
    codes = []
    for finding in report["findings"]:
        if finding["code"] not in codes:
            codes.append(finding["code"])
    line = f"{path}: {report['verdict'].upper()} ({report['errors']} errors, {report['warnings']} warnings)"
    if codes:
        line += " " + " ".join(codes[:4]) + (" ..." if len(codes) > 4 else "")
    return line


def check_many(opts, paths, argv, out, err):
    if not paths:
        raise UsageError(f"{PROG} check: no dumps found in {', '.join(opts.core)}")
    try:
        if opts.elf:
            CliSession(opts).elf_info()   # parse once; forked workers inherit the cache
    except Exception:  # noqa: BLE001 - each worker reports it as its own one line
        pass
    jobs = [(opts, p, argv) for p in paths]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check_one, jobs))
    else:
        results = [check_one(j) for j in jobs]
    status = EXIT_OK
    if any(r[1] == EXIT_ERROR for r in results):
        status = EXIT_ERROR
    elif any(r[1] == EXIT_FINDINGS for r in results):
        status = EXIT_FINDINGS
    if opts.json and not opts.quiet:
        import json

        dumps = []
        for path, code, report, error in results:
            dumps.append({"path": path, "status": {0: "ok", 1: "corrupt", 2: "error"}[code],
                          "verdict": report["verdict"] if report else None,
                          "errors": report["errors"] if report else None,
                          "warnings": report["warnings"] if report else None,
                          "error": error, "report": report})
        summary = {k: sum(1 for d in dumps if d["status"] == k) for k in ("ok", "corrupt", "error")}
        out.write(json.dumps({"schema_version": SCHEMA_VERSION, "report": "check-many", "dumps": dumps,
                              "summary": summary, "exit_status": status}, indent=2) + "\n")
    elif opts.quiet < 2:
        for result in results:
            if opts.quiet and result[1] == EXIT_OK:
                continue
            out.write(verdict_of(*result) + "\n")
    return status


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def _quiet_line(name, data):
    if not isinstance(data, dict) or "verdict" not in data:
        return None
    if name == "check":
        return commands.verdict_line(data)
    return f"kheap {name}: {str(data['verdict']).upper()}"


def run_cli(argv, out, err):
    """Parse and run one command line; returns the exit status. Raises only UsageError."""
    opts, rest = _global_parser().parse_known_args(argv)
    if opts.version:
        out.write(f"kheap {_version()}\n")
        return EXIT_OK
    table = _cli_commands()
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
    given = [k for k in ("remote", "core", "raw") if getattr(opts, k)]
    if len(given) > 1:
        raise UsageError(f"{PROG} {name}: give one target, not --{' and --'.join(given)}")
    if opts.base is not None and not opts.raw:
        raise UsageError(f"{PROG} {name}: --base goes with --raw FILE")
    if opts.core and name != "check" and (len(opts.core) > 1 or os.path.isdir(opts.core[0])):
        raise UsageError(f"{PROG} {name}: one --core FILE (only 'check' takes many dumps)")
    if opts.core and name == "check" and (len(opts.core) > 1 or os.path.isdir(opts.core[0])):
        # Validate the command's own options before starting workers.
        commands.build_parser(cmd).parse_args(cmd_argv)
        return check_many(opts, expand_cores(opts.core), cmd_argv, out, err)

    quiet = opts.quiet
    if quiet and cmd.json_option:
        cmd_argv = cmd_argv + ["--json"]
    elif opts.json and cmd.json_option:
        cmd_argv = cmd_argv + ["--json"]
    session = CliSession(opts)
    try:
        result = commands.execute_to_text(session, name, cmd_argv)
    finally:
        session.close()
    if result.is_error:
        err.write(result.text.rstrip("\n") + "\n")
        return result.status or EXIT_ERROR
    text = result.text
    if quiet:
        if quiet == 1 and cmd.json_option:
            import json

            line = _quiet_line(name, json.loads(text))
            if line:
                out.write(line + "\n")
        return result.status
    if name == "triage" and "--json" not in cmd_argv:
        text = _note_no_backtrace(text)
    if text:
        out.write(text if text.endswith("\n") else text + "\n")
    return result.status


def _note_no_backtrace(text):
    """Triage text says, under 'stopped at', why it shows no frames."""
    note = "  (no backtrace: the CLI reads memory and registers, it does not unwind; gdb does)"
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("stopped at")), None)
    if at is None:
        return text
    return "\n".join(lines[:at + 1] + [note] + lines[at + 1:])


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
            import traceback

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
