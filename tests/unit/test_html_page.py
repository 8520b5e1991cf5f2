"""kheap map --html / watch --html: the pure renderer (core/html_page.py) and its adapter
(core/reports/heap_page.py) on synthetic heaps, and the pages as headless Chromium draws them.

The browser tests load each page, read the DOM it drew (or evaluate a script in it), and click
and hover with real mouse events; they are skipped when chromium is not installed.
"""

import html
import json
import re
import sys
from pathlib import Path

import pytest

from gdbext.core import html_page
from gdbext.core.check import check
from gdbext.core.watch import Watch
from gdbext.core.reports import heap_page as html_data
from heapbuilder import SyntheticKernel, busy_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from browser import Chromium, find_chromium  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
HOSTILE_ELF = "/tmp/</script><script>window.pwned=3;document.title='pwned'</script><x-pwn>.elf"
OVERFLOW = (b"A" * 32 + b"<script>window.pwned=1;document.title='pwned'</script>"
            + b"<!--" + b"\x1b[2J\x07&amp;" + b"\xe2\x80\xa8")
IMG = b"<img src=x onerror=\"window.pwned=2\">"
META = {"elf": HOSTILE_ELF, "arch": "arm", "target": "synthetic <x-pwn>heap</x-pwn>", "time": "2024-01-01T00:00:00Z",
        "tool": "kheap test"}


def hostile_kernel():
    """A heap where a used payload holds an <img onerror> and a strcpy of <script> text ran
    over the next segment's header (like the kernel's overflow scenario)."""
    k = SyntheticKernel(4, "<")
    img = k.kmalloc(64)
    line = k.kmalloc(24)
    k.kmalloc(64)
    k.kmalloc(100)
    k.write(img, IMG)
    k.write(line, OVERFLOW)
    return k, line, img


def page_data(k, meta=META):
    prog = k.program()
    return prog, html_data.heap_page_data(prog, check(prog), dict(meta))


def script_blocks(text):
    return re.findall(r"<script\b[^>]*>", text, flags=re.I)


# -- the renderer, without a browser ----------------------------------------------------------------

def test_embedded_json_cannot_end_its_script_element():
    value = {"a": "</script><script>x()</script>", "b": "<!-- & -->", "c": "\u2028\u2029", "d": [1, 2 ** 70]}
    text = html_page.embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_hostile_strings_stay_text_in_the_html():
    k, line, img = hostile_kernel()
    _, data = page_data(k)
    text = html_page.heap_page(data)
    # Only the page's own two script elements: the JSON data and the code.
    assert script_blocks(text) == ['<script type="application/json" id="kheap-data">', "<script>"]
    assert "<img" not in text and "<x-pwn" not in text and "<!--" not in text
    assert "&lt;/script&gt;&lt;script&gt;window.pwned=3" in text          # the ELF path, escaped
    assert "\x1b" not in text and "\x07" not in text and "\u2028" not in text
    # Nothing in the page is fetched: no src/href, and the CSP forbids it anyway.
    assert not re.search(r"\b(src|href)\s*=", text, flags=re.I)
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', text).group(1))
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1]


def test_the_data_and_the_counts():
    k, live = busy_kernel(4, "<")
    prog, data = page_data(k, {"elf": "k.elf", "arch": "arm"})
    walk = check(prog).walk
    assert [s["address"] for s in data["segments"]] == list(walk.addresses)
    assert data["verdict"] == "ok" and data["walk"]["count"] == len(walk)
    # Payload heads read through the walk's own cache: used payloads as written, free ones poison.
    for s in data["segments"]:
        want = min(html_data.HEAD_BYTES, s["size"] - k.hdr)
        assert bytes.fromhex(s["head"]) == k.read(s["payload"], want)
    assert data["pages"]["runs"][0][2] == "kernel" and sum(r[1] for r in data["pages"]["runs"]) == k.num_pages
    embedded = json.loads(re.search(r'id="kheap-data">(.*?)</script>', html_page.heap_page(data)).group(1))
    assert len(embedded["seg"]) == len(walk)
    # Segments and gaps cover the heap exactly, in address order.
    covered = sum(embedded["seg"][i][1] if i >= 0 else embedded["gaps"][-i - 1][1] for i in embedded["items"])
    assert covered == k.heap_size and embedded["gaps"] == []
    assert len(embedded["heads"]) < len(walk)          # identical payloads (poison) stored once


def test_findings_name_their_segments():
    k, line, img = hostile_kernel()
    prog, data = page_data(k)
    assert data["verdict"] == "corrupt"
    victim = line - k.hdr + 48
    embedded = json.loads(re.search(r'id="kheap-data">(.*?)</script>', html_page.heap_page(data)).group(1))
    index = {row[0]: i for i, row in enumerate(embedded["seg"])}
    assert embedded["seg"][index[victim]][6] == 2                      # drawn as corrupt
    named = [f for f in embedded["f"] if f["seg"] == index[victim]]
    assert named and all(f["by"] == index[line - k.hdr] for f in named if f["culprit"])
    assert any(f["culprit"] and "<script>" in f["culprit"]["detail"] for f in named)
    # The walk stops at the clobbered header: the rest of the heap is a gap, not on the list.
    assert embedded["gaps"] and embedded["gaps"][-1][0] + embedded["gaps"][-1][1] == k.heap_end


def test_numbers_beyond_javascript_precision_are_strings():
    assert html_page._num(2 ** 53 + 1) == hex(2 ** 53 + 1) and html_page._num(5) == 5
    k, _ = busy_kernel(8, "<")
    a = k.segments()[1][0]
    k.set_seg(a, prev=0xFFFF_FFFF_FFFF_FFF0)
    _, data = page_data(k)
    text = html_page.heap_page(data)
    assert '"0xfffffffffffffff0"' in text


def test_the_text_map_bounds_its_region_table():
    from gdbext.frontends import commands

    k = SyntheticKernel(4, "<", heap_size=256 * 1024)
    ptrs = [k.kmalloc(40) for _ in range(300)]
    for p in ptrs[::2]:
        k.kfree(p)

    from gdbext.frontends.session import Session

    class Fake(Session):
        def program(self):
            return k.program()

    out = commands.execute_to_text(Fake(), "map", ["--regions", "10"])
    assert out.status == 0, out.text
    assert "more regions not shown" in out.text
    rows = [line for line in out.text.splitlines() if re.match(r"\s+0x[0-9a-f]{8}\s+0x", line)]
    assert len(rows) == 10
    full = json.loads(commands.execute_to_text(Fake(), "map", ["--regions", "0", "--json"]).text)
    assert full["regions_not_shown"] == 0 and full["regions_total"] == len(full["regions"]) > 300


# -- in a real browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("chromium not installed (install.sh installs it)")
    with Chromium() as b:
        yield b


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_hostile_heap_in_chromium_runs_none_of_its_text(browser, tmp_path):
    k, line, img = hostile_kernel()
    prog, data = page_data(k)
    page = browser.open(write(tmp_path, "hostile.html", html_page.heap_page(data)))
    assert page.exceptions() == []
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.title").startswith("kheap: heap CORRUPT")
    assert page.evaluate("document.querySelectorAll('img, x-pwn').length") == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    assert page.evaluate("document.getElementById('meta-elf').textContent") == HOSTILE_ELF
    # The Content-Security-Policy is in force: a script the page did not ship does not run.
    assert page.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
                         " document.body.appendChild(s); return typeof window.injected; })()") == "undefined"
    # The payload holding <img onerror> is shown as text in the detail panel.
    page.click(f'#band .seg[data-addr="0x{img - k.hdr:08x}"]')
    text = page.evaluate("document.querySelector('#detail .astext').textContent")
    assert text == 'as text: "' + IMG[:html_data.HEAD_BYTES].decode() + '"'
    assert page.evaluate("typeof window.pwned") == "undefined"
    # The culprit's <script> text is shown, escaped by the DOM, in the findings list.
    assert "\u201c<script>window.p\u201d" in page.evaluate("document.getElementById('findings').textContent")
    page.screenshot(ARTIFACTS / "synthetic-hostile.png")


def test_the_corrupt_segment_is_drawn_at_its_address_and_shows_its_finding(browser, tmp_path):
    k, line, img = hostile_kernel()
    prog, data = page_data(k, {"elf": "kernel.elf", "arch": "arm"})
    walk = check(prog).walk
    page = browser.open(write(tmp_path, "overflow.html", html_page.heap_page(data)))
    assert page.evaluate("document.querySelectorAll('#band .seg').length") == len(walk)
    victim = f"0x{line - k.hdr + 48:08x}"
    sel = f'#band .seg[data-addr="{victim}"]'
    assert page.evaluate(f"document.querySelector('{sel}').className").split() >= ["blk", "seg", "corrupt"]
    assert "mark" in page.evaluate(f"document.querySelector('{sel}').className")
    page.evaluate("window.kheapPage.select(0, false)")        # somewhere else first
    page.hover(sel)
    tip = page.evaluate("document.getElementById('tip').hidden ? null : document.getElementById('tip').textContent")
    assert tip and victim in tip and "HEAP-" in tip
    page.click(sel)
    detail = page.evaluate("document.getElementById('detail').textContent")
    codes = {f["code"] for f in data["findings"] if f["address"] == int(victim, 16)}
    assert codes and all(c in detail for c in codes), detail
    assert f"kheap find {victim}" in detail and "is_allocated" in detail and "segment_size" in detail
    # A click on a finding in the list selects its segment.
    page.evaluate("window.kheapPage.select(0, false)")
    page.click('.finding[data-f="0"]')
    assert page.evaluate("document.getElementById('detail').dataset.i") == \
        page.evaluate(f"document.querySelector('{sel}').dataset.i")


def test_zoom_and_log_scale_keep_every_segment(browser, tmp_path):
    k, live = busy_kernel(4, "<", heap_size=256 * 1024)
    prog, data = page_data(k)
    page = browser.open(write(tmp_path, "busy.html", html_page.heap_page(data)))
    n = len(data["segments"])
    width = "document.querySelector('#band .seg').getBoundingClientRect().width"
    before = page.evaluate(width)
    for _ in range(4):
        page.click('#heap-controls button[data-zoom="in"]')
    assert page.evaluate("document.querySelectorAll('#band .seg').length") == n
    assert page.evaluate(width) > before
    page.evaluate("window.kheapPage.setScale('log')")
    assert page.evaluate("document.querySelectorAll('#band .seg').length") == n
    page.click('#heap-controls button[data-zoom="fit"]')
    assert page.evaluate("document.querySelectorAll('#band .seg').length") == n
    assert page.exceptions() == []


@pytest.mark.parametrize("how", ["null-head", "no-pages", "wiped-page"])
def test_degenerate_heaps_still_draw(browser, tmp_path, how):
    k, _ = busy_kernel(8, ">")
    if how == "null-head":
        k.set_global("heap_segment_list_head", 0)
    elif how == "wiped-page":
        k.set_page(k.heap_start // 4096 + 1, flags=0)
    prog = k.program()
    data = html_data.heap_page_data(prog, check(prog), {"elf": "k.elf"}, pages=how != "no-pages")
    page = browser.open(write(tmp_path, f"{how}.html", html_page.heap_page(data)))
    assert page.exceptions() == []
    assert page.evaluate("document.querySelectorAll('#band .seg').length") == len(data["segments"])
    if how == "null-head":
        assert data["segments"] == [] and page.evaluate("document.querySelectorAll('#band .gap').length") >= 1
        assert "HEAP-HEAD" in page.evaluate("document.getElementById('findings').textContent")
    if how == "no-pages":
        assert page.evaluate("document.getElementById('page-band')") is None
    if how == "wiped-page":
        assert "PAGE-FLAGS" in page.evaluate("document.getElementById('detail').textContent")
        assert page.evaluate("document.querySelectorAll('#page-band .mark').length") >= 1


def test_watch_timeline_marks_the_double_free(browser, tmp_path):
    k = SyntheticKernel(4, "<")
    w = Watch(word_bits=32)
    sp = 0x7F000
    ptrs = []

    def prog():
        return k.program(block_size=256)

    for n in (24, 100, 64, 300):
        w.enter(prog(), "kmalloc", 1, sp, 0x8100, [n], caller="app+0x10")
        p = k.kmalloc(n)
        w.leave(prog(), 1, sp, p)
        ptrs.append(p)
    for p in ptrs[:2]:
        w.enter(prog(), "kfree", 1, sp, 0x8200, [p], caller="app+0x20")
        k.kfree(p)
        w.leave(prog(), 1, sp, 0)
    stop = w.enter(prog(), "kfree", 1, sp, 0x8204, [ptrs[0]], caller="app+0x24")
    assert stop is not None and stop.findings[0].code == "HEAP-DOUBLE-FREE"

    class Controller:
        watch, active = w, True

    Controller.prog = prog()
    data = html_data.watch_page_data(w, Controller.prog, {"elf": HOSTILE_ELF, "arch": "arm"}, True)
    text = html_page.watch_timeline(data)
    assert script_blocks(text) == ['<script type="application/json" id="kheap-data">', "<script>"]
    page = browser.open(write(tmp_path, "watch.html", text))
    assert page.exceptions() == [] and page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('#tl rect.blockbar').length") == 4
    assert page.evaluate("document.querySelectorAll('#tl .dfree').length") == 1
    assert page.evaluate("document.querySelectorAll('#tl line.badop').length") == 1
    page.hover("#tl .dfree")
    assert "double free" in page.evaluate("document.getElementById('tip').textContent")
    page.click("#tl .dfree")
    assert f"kfree(0x{ptrs[0]:08x})" in page.evaluate("document.getElementById('detail').textContent")
    page.screenshot(ARTIFACTS / "synthetic-watch.png")
