"""The data behind ``kheap map --html`` and ``kheap watch --html``: the one place that knows kheap.

:mod:`gdbext.core.html_page` draws pages from plain dicts and imports nothing of kheap. The
dicts are built here, from the same JSON reports the commands print (walk, check, stats,
pages), plus what only the page needs: the first bytes of each payload, the page array as runs
of one kind, and where and when it all came from. :func:`heap_page_data` is the adapter to
re-point if the core's objects change; :func:`watch_page_data` does the same for a watch.
"""

import datetime
import os

from gdbext.core import html_page
from gdbext.frontends.session import CommandError

HEAD_BYTES = 32          # payload bytes shown per segment (read through the walk's own cache)


def heap_page_data(prog, meta, head_bytes=HEAD_BYTES, pages=True, full=False):
    """The dict :func:`html_page.heap_page` draws (its shape is in that module's doc).

    ``prog``: the session's Program (its block cache already holds the heap once the check has
    run, so the payload bytes cost no target reads); ``meta``: :func:`page_meta`'s dict;
    ``pages``: also read the whole page array for the page band (one bulk read: 4 MiB on the
    real kernel); ``full``: the findings of ``check --full`` (the free-page list walked too)
    rather than those of ``check``.
    """
    from itertools import groupby

    from gdbext.core import render
    from gdbext.core.layout import PAGE_SIZE
    from gdbext.core.memory import MemoryFault
    from gdbext.core.pages import page_kind, read_free_list_head, read_pages
    from gdbext.core.stats import heap_stats
    from gdbext.core.validate import CODES, check

    result = check(prog, full=full)
    walk = result.walk
    walk_report = render.walk_report(prog, walk)
    check_report = render.check_report(prog, result)
    stats_report = render.stats_report(prog, heap_stats(prog, walk))

    hdr, heap_end = walk.header_size, walk.heap_end
    segments = walk_report["segments"]
    for s in segments:
        size_ok = hdr <= s["size"] and s["address"] + s["size"] <= heap_end
        room = (s["address"] + s["size"] if size_ok else heap_end) - s["payload"]
        n = max(0, min(head_bytes, room, heap_end - s["payload"]))
        try:
            s["head"] = prog.read(s["payload"], n).hex() if n else ""
        except MemoryFault as fault:
            s["head"], s["head_error"] = None, f"unreadable ({fault})"

    page_data = None
    b = prog.bounds
    if pages and b.page_array is not None and b.num_pages:
        rng = read_pages(prog)
        fv = prog.layouts.page.flag_value
        kinds = {}
        runs = []
        index = rng.first
        for word, group in groupby(entry[1] for entry in rng.entries):   # runs of one flags word
            n = sum(1 for _ in group)
            kind = kinds.get(word) or kinds.setdefault(word, page_kind(fv(word)))
            if runs and runs[-1][2] == kind:
                runs[-1][1] += n
            else:
                runs.append([index, n, kind])
            index += n
        counts = {"kernel": 0, "heap": 0, "free": 0, "allocated": 0, "bad": 0}
        for _, n, kind in runs:
            counts[kind] += n
        head = read_free_list_head(prog)
        page_data = {"num_pages": b.num_pages, "scanned": len(rng.entries), "counts": counts,
                     "free_list": None if head is None else dict(zip(("head", "tail", "size"), head)),
                     "fault": rng.fault, "page_array": b.page_array, "entry_size": prog.layouts.page.size,
                     "page_size": PAGE_SIZE, "runs": runs}

    return {
        "meta": dict(meta, pointer_size=prog.pointer_size),
        "heap": {"start": b.start, "size": b.size, "end": b.end, "header_size": hdr, "list_head": b.list_head},
        "verdict": check_report["verdict"],
        "walk": {"count": walk_report["count"], "complete": walk_report["complete"],
                 "stop": walk_report["stop"]},
        "segments": segments,
        "findings": check_report["findings"],
        "codes": dict(CODES),
        "stats": {k: stats_report[k] for k in ("used", "free", "bad", "largest_free", "fragmentation",
                                               "histogram", "kernel", "comparison")},
        "pages": page_data,
        "notes": check_report.get("notes", []),
    }


def watch_page_data(controller, meta):
    """The dict :func:`html_page.watch_timeline` draws, from a watch controller's record."""
    watch, prog = controller.watch, controller.prog
    heap = {"header_size": prog.header_size}
    try:
        b = prog.bounds
        heap.update(start=b.start, size=b.size, end=b.end)
    except Exception:  # noqa: BLE001 - bounds unknown before kheap_init: the timeline still draws
        pass
    return {
        "meta": dict(meta, pointer_size=prog.pointer_size),
        "heap": heap,
        "operations": [o.to_json() for o in watch.history],
        "counters": watch.counters.to_json(),
        "stop": watch.last_stop.to_json() if watch.last_stop else None,
        "stops": watch.stops,
        "active": controller.active,
    }


def page_meta(session, prog):
    """Where and when: the ELF, its arch, the target, the time (UTC), the tool and face."""
    from gdbext import __version__

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
    data = heap_page_data(prog, page_meta(session, prog), full=full)
    size = write_page(path, html_page.heap_page(data))
    errors = sum(1 for f in data["findings"] if f["severity"] == "error")
    return {"path": str(path), "bytes": size, "verdict": data["verdict"], "segments": len(data["segments"]),
            "errors": errors, "warnings": len(data["findings"]) - errors}


def write_watch_page(session, controller, path):
    """``kheap watch --html FILE``: the timeline of what the watch recorded."""
    if controller.watch is None:
        raise CommandError("kheap watch --html: nothing recorded: use 'kheap watch on' first")
    data = watch_page_data(controller, page_meta(session, controller.prog))
    size = write_page(path, html_page.watch_timeline(data))
    return {"path": str(path), "bytes": size, "operations": len(data["operations"])}
