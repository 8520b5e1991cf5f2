"""``kheap map --html`` and ``kheap watch --html`` in the faces: where and when a page came from,
and writing it. The page's data is built by :mod:`gdbext.core.reports.heap_page` and drawn by
:mod:`gdbext.core.html_page`.
"""

import datetime
import os

from gdbext import __version__
from gdbext.core import html_page
from gdbext.core.check import check
from gdbext.core.reports.heap_page import heap_page_data, watch_page_data
from gdbext.frontends.session import CommandError


def page_meta(session, prog):
    """Where and when: the ELF, its arch, the target, the time (UTC), the tool and face."""
    opts = getattr(session, "opts", None)
    target = f"live target in {session.face}"
    if opts is not None:
        if getattr(opts, "remote", None):
            target = f"live target {opts.remote} (gdbstub)"
        elif getattr(session, "_core", None) or getattr(opts, "core", None):
            core = getattr(session, "_core", None) or opts.core[0]
            target = f"dump {core}"
        elif getattr(opts, "raw", None):
            target = f"raw image {opts.raw} at {opts.base:#x}" if opts.base is not None else f"raw image {opts.raw}"
    try:
        elf = str(session.elf_path())
    except Exception:  # noqa: BLE001
        elf = getattr(prog.elf, "path", "")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"elf": elf, "arch": prog.elf.arch, "target": target,
            "time": now.isoformat().replace("+00:00", "Z"), "tool": f"kheap {__version__} ({session.face})"}


def write_page(path, text):
    """Write a page; a file that cannot be written is one line for the user, not a traceback."""
    try:
        with open(os.path.expanduser(str(path)), "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror or error}") from None
    return len(text.encode("utf-8"))


def write_heap_page(session, path, full=False):
    """``kheap map --html FILE``: draw the heap now and write the page; returns a small report."""
    prog = session.program()
    data = heap_page_data(prog, check(prog, full=full), page_meta(session, prog))
    size = write_page(path, html_page.heap_page(data))
    errors = sum(1 for f in data["findings"] if f["severity"] == "error")
    return {"path": str(path), "bytes": size, "verdict": data["verdict"], "segments": len(data["segments"]),
            "errors": errors, "warnings": len(data["findings"]) - errors}


def write_watch_page(session, controller, path):
    """``kheap watch --html FILE``: the timeline of what the watch recorded."""
    if controller.watch is None:
        raise CommandError("kheap watch --html: nothing recorded: use 'kheap watch on' first")
    data = watch_page_data(controller.watch, controller.prog, page_meta(session, controller.prog), controller.active)
    size = write_page(path, html_page.watch_timeline(data))
    return {"path": str(path), "bytes": size, "operations": len(data["operations"])}
