"""The commands only the CLI has: ``dump`` and ``demo`` (registered in the shared command table
with ``faces=("cli",)``), and ``check`` of many dumps in parallel (``--core`` given several
times, or a directory). Their reports are :mod:`gdbext.core.reports.runs`'.

``demo`` needs qemu/launcher.py from the kheap checkout (it is not installed), and the process
pool is started only for many dumps: both are imported when used, so a plain ``kheap check``
process does not pay for them (bench/bench_cli.py).
"""

import argparse
import importlib
import os
import sys

from gdbext.core import reach, reports
from gdbext.core.memory import MemoryFault, merge_ranges
from gdbext.core.symbols import KERNEL_VARIABLES
from gdbext.frontends import commands
from gdbext.frontends.cli_options import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, PROG
from gdbext.frontends.cli_session import CliSession, elf_probe, file_sha256
from gdbext.frontends.cmdline import UsageError, count
from gdbext.frontends.commands import Outcome, command, options
from gdbext.frontends.session import CommandError
from gdbext.targets import write_kheap_dump

CORE_SUFFIXES = (".core", ".dump", ".kdump", ".elf")
MAX_PAGE_ARRAY_DUMPED = 256 * 1024 * 1024     # a larger page array is taken as a corrupt num_pages


def _outcome(report, failed=False):
    return Outcome(report, lambda color: reports.render_text(report, color), failed)


# ---------------------------------------------------------------------------------------------
# kheap dump
# ---------------------------------------------------------------------------------------------
def _dump_options(parser):
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="where to write the dump (an ELF core: readelf -a shows it)")


def dump_wanted(prog, roots=None):
    """``[(start, end, what)]``: the memory a dump keeps: the kernel image, the kernel's
    globals, the bytes the ELF check compares, the page array, the heap, and with ``roots``
    (:func:`gdbext.core.reach.plan_roots`) what ``leaks --scan`` and ``refs`` scan: the
    writable sections and every stack (whole: the live part from each core's SP and below)."""
    elf, bounds = prog.elf, prog.bounds
    wanted = []
    if elf.image_end > elf.image_start:
        wanted.append((elf.image_start, elf.image_end, "kernel image (globals, .text, .rodata, .bss)"))
    for sec in elf.sections:
        if sec.writable and sec.size:
            wanted.append((sec.address, sec.address + sec.size, f"writable section {sec.name}"))
    for stack in (roots.stacks if roots is not None else ()):
        wanted.append((stack["low"], stack["top"], f"stack {stack['name']}"))
    for name in KERNEL_VARIABLES:
        addr = elf.address_of(name)
        if addr is not None:
            wanted.append((addr, addr + elf.variable_size(name, prog.pointer_size), name))
    for addr, data in elf_probe(elf):
        wanted.append((addr, addr + len(data), "ELF check"))
    if bounds.page_array is not None and bounds.num_pages:
        size = bounds.num_pages * prog.layouts.page.size
        if size <= MAX_PAGE_ARRAY_DUMPED:
            wanted.append((bounds.page_array, bounds.page_array + size, "page array"))
    wanted.append((bounds.start, bounds.end, "heap"))
    return wanted


@command("dump", "Save the heap, page array, globals and every CPU's registers into one file "
         "(read it back with --core FILE).", "kheap dump --remote 127.0.0.1:1234 --elf K -o crash.kdump",
         faces=("cli",))
@options(_dump_options)
def _dump(session, args):
    prog = session.program()
    elf, bounds = prog.elf, prog.bounds
    try:
        cpus, stop_cpu = session.all_registers()
    except MemoryFault:
        cpus, stop_cpu = [{}], 0
    try:
        roots = reach.plan_roots(prog, [reach.CoreState(i + 1, r) for i, r in enumerate(cpus)],
                                 session.current_settings().get("stacks"))
    except reach.StackSpecError as error:
        raise CommandError(f"--stacks: {error}") from None
    wanted = dump_wanted(prog, roots)
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
    path = session.elf_path()
    elf_sha256 = file_sha256(path)
    meta = {"arch": elf.arch, "elf_path": os.path.abspath(path), "elf_sha256": elf_sha256,
            "source": f"{session.target_kind()} {session.target_name()}", "stop_cpu": stop_cpu,
            "heap": {"start": bounds.start, "size": bounds.size, "page_array": bounds.page_array,
                     "num_pages": bounds.num_pages}, "ranges": saved}
    write_kheap_dump(args.output, ranges, cpus, meta)
    return _outcome(reports.dump_report(os.path.abspath(args.output), os.path.getsize(args.output), saved,
                                        len(cpus), stop_cpu, elf.arch, elf_sha256, prog.pointer_size))


# ---------------------------------------------------------------------------------------------
# kheap demo
# ---------------------------------------------------------------------------------------------
def _launcher():
    """qemu.launcher, from the checkout this package lives in (it is not installed)."""
    try:
        return importlib.import_module("qemu.launcher")
    except ImportError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(repo, "qemu", "launcher.py")):
        raise CommandError("kheap demo needs the kheap checkout (qemu/launcher.py) next to gdbext/")
    sys.path.insert(0, repo)
    return importlib.import_module("qemu.launcher")


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
                    results.append((name, argv, outcome.data))
            finally:
                live.close()
    except launcher.LauncherError as error:
        raise CommandError(str(error).splitlines()[0]) from None
    return _outcome(reports.demo_report(args.arch, args.scenario, str(elf), results))


# ---------------------------------------------------------------------------------------------
# kheap check of many dumps: one verdict each, checked in parallel
# ---------------------------------------------------------------------------------------------
def is_many_dumps(opts):
    """Whether ``--core`` names several dumps (given more than once, or a directory)."""
    return bool(opts.core) and (len(opts.core) > 1 or os.path.isdir(opts.core[0]))


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


_DUMP_STATUS = {EXIT_OK: "ok", EXIT_FINDINGS: "corrupt", EXIT_ERROR: "error"}


def check_one(job):
    """Check one dump (in a worker process): ``(path, status, check report or None, error line)``
    with a status of :data:`gdbext.core.reports.DUMP_STATUSES`."""
    opts, path, argv = job
    session = CliSession(opts, core=path)
    try:
        result = commands.execute_to_text(session, "check", list(argv))
    finally:
        session.close()
    if result.is_error:
        message = result.text
        if message.startswith("kheap check: "):
            message = message[len("kheap check: "):]
        return path, "error", None, message
    if result.status == EXIT_ERROR:        # a report, but part of the heap could not be read
        return path, "incomplete", result.data, None
    return path, _DUMP_STATUS[result.status], result.data, None


def check_many(opts, argv):
    """``kheap check`` of every dump ``--core`` names: the check-many report (its
    ``exit_status`` is the process's: any dump unreadable 2, else any corrupt 1, else 0)."""
    paths = expand_cores(opts.core)
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
        from concurrent.futures import ProcessPoolExecutor   # only here: it costs a plain check ~15 ms

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check_one, jobs))
    else:
        results = [check_one(j) for j in jobs]
    statuses = {status for _, status, _, _ in results}
    exit_status = (EXIT_ERROR if statuses & {"error", "incomplete"} else EXIT_FINDINGS if "corrupt" in statuses
                   else EXIT_OK)
    return reports.check_many_report(results, exit_status)
