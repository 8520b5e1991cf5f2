"""Benchmark: ``kheap map --html`` on the ``stress`` heap: the page's size and how fast headless
Chromium draws it.

Boots the kernel (``stress``: ~5000 segments in 1 MiB) with qemu/launcher.py, writes the page
with the real CLI (``kheap map --html FILE --remote ...``, timed as a process), then loads it
``--repeat`` times in Debian's chromium, headless (tests/browser.py), and reports for each load:

- drawn: milliseconds from the start of navigation to the end of the page's script (every
  segment and page run laid out in the DOM: ``performance.now()`` when it finishes),
- first paint: the browser's first-contentful-paint entry,
- load: wall time of the whole navigation as the test harness sees it (protocol round trips
  included),
- zoom: one redraw at 4x zoom (what a click on + costs), and the log scale.

Targets (issue 16): the page under 1 MB and drawn in under 1 s. Nothing is asserted: machines
are noisy; the integration tests assert the two targets with margin.

    .venv/bin/python bench/bench_html.py [--arch arm|aarch64] [--repeat 5]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from browser import Chromium  # noqa: E402
from qemu.launcher import KernelVM  # noqa: E402

KHEAP = REPO / ".venv" / "bin" / "kheap"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="arm", choices=("arm", "aarch64"))
    parser.add_argument("--scenario", default="stress")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with KernelVM(arch=args.arch, scenario=args.scenario) as vm, \
            tempfile.TemporaryDirectory(prefix="kheap-bench-html-") as tmp:
        vm.wait_until_settled(60)
        out = Path(tmp) / "heap.html"
        started = time.perf_counter()
        proc = subprocess.run([str(KHEAP), "map", "--html", str(out), "--remote", f"127.0.0.1:{vm.gdb_port}",
                               "--elf", str(vm.elf)], capture_output=True, text=True)
        made = time.perf_counter() - started
        if not out.exists():
            raise SystemExit(f"kheap map --html failed: {proc.stderr}")
        size = out.stat().st_size
        print(f"{args.scenario} ({args.arch}): {proc.stdout.strip()}")
        print(f"  page: {size} bytes ({size / 1e6:.2f} MB; target < 1 MB); kheap map --html process: {made:.2f} s")

        drawn, paint, load, zoom, log = [], [], [], [], []
        with Chromium(width=1280, height=900) as browser:
            for _ in range(args.repeat):
                page = browser.open(out)
                drawn.append(page.evaluate("+document.documentElement.dataset.rendered"))
                paint.append(page.evaluate(
                    "new Promise(done => { new PerformanceObserver(list => { for (const e of list.getEntries())"
                    " if (e.name === 'first-contentful-paint') done(e.startTime); })"
                    ".observe({type: 'paint', buffered: true}); setTimeout(() => done(-1), 3000); })"))
                load.append(page.load_seconds * 1000)
                zoom.append(page.evaluate("(() => { const t = performance.now(); for (let k = 0; k < 2; k++)"
                                          " window.kheapPage.zoom('in'); return performance.now() - t; })()"))
                log.append(page.evaluate("(() => { const t = performance.now(); window.kheapPage.setScale('log');"
                                         " return performance.now() - t; })()"))
                segments = page.evaluate("document.querySelectorAll('#band .seg').length")
                browser.send("Target.closeTarget", {"targetId": page.target})

        def show(name, values, note=""):
            print(f"  {name:<12} median {statistics.median(values):7.0f} ms   best {min(values):7.0f} ms{note}")

        print(f"  Chromium {args.repeat} loads, {segments} segments drawn:")
        show("drawn", drawn, "   (navigation start to the end of the page's script; target < 1000 ms)")
        show("first paint", paint)
        show("load", load, "   (the harness's wall time for the whole navigation)")
        show("zoom x4", zoom, "   (two clicks on +)")
        show("log scale", log)


if __name__ == "__main__":
    main()
