"""kheap map --html and kheap watch --html against the real kernel in QEMU, checked in a real
browser: Debian's chromium, headless, driven over the DevTools protocol (tests/browser.py).

Each page is written by the real CLI (or gdb-multiarch, or lldb), loaded in Chromium, and the
tests read the DOM it drew: the segment count equals the walk's, each segment is drawn at its
address, the corrupt segment of overflow is drawn as corrupt, a hover and a click show its
finding, and target text holding ``<script>`` does not run. Screenshots go to tests/artifacts/
(clean, stress and overflow of both builds, the gdb and lldb pages, the watch timeline).
"""

import json
import subprocess
import sys

import pytest

from debuggers import REPO, run_gdb, run_lldb
from expectations import ARCHES, CORRUPTION_CODES

sys.path.insert(0, str(REPO / "tests"))
from browser import Chromium, find_chromium  # noqa: E402

pytestmark = [pytest.mark.qemu]

KHEAP = REPO / ".venv" / "bin" / "kheap"
ARTIFACTS = REPO / "tests" / "artifacts"
MAX_PAGE_BYTES = 1_000_000
MAX_RENDER_MS = 1000


def kheap(*argv, timeout=120):
    exe = [str(KHEAP)] if KHEAP.exists() else [sys.executable, "-m", "gdbext"]
    return subprocess.run(exe + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("chromium not installed (install.sh installs it)")
    with Chromium(width=1280, height=900) as b:
        yield b


def drawn_segments(page):
    return [tuple(x) for x in page.evaluate("Array.from(document.querySelectorAll('#band .seg'), e => [e.dataset.addr, e.dataset.state])")]


def named_segments(walk, check):
    """Addresses of the segments the page must draw as corrupt: each error finding's segment
    (the one holding its address, or, for a bad link, the segment the link leads from)."""
    hdr, end = walk["header_size"], walk["heap"]["end"]

    def holding(address):
        if not isinstance(address, int):
            return None
        for s in walk["segments"]:
            extent = s["size"] if hdr <= s["size"] and s["address"] + s["size"] <= end else hdr
            if s["address"] <= address < s["address"] + max(extent, hdr):
                return s["address"]
        return None

    out = set()
    for f in check["findings"]:
        if f["severity"] != "error" or f["code"].startswith("PAGE-"):
            continue
        at = holding(f.get("address"))
        if at is None:
            at = holding((f.get("values") or {}).get("from"))
        if at is not None:
            out.add(at)
    return out


def assert_page_matches_walk(page, walk, check, pointer_size):
    """Every walked segment drawn once, at its address, in its state (corrupt when an error
    finding names it); the title carries the verdict."""
    assert page.exceptions() == []
    width = pointer_size * 2
    drawn = drawn_segments(page)
    assert len(drawn) == walk["count"] == len(walk["segments"])
    bad = named_segments(walk, check)
    want = sorted((f"0x{s['address']:0{width}x}",
                   "corrupt" if s["state"] == "bad" or s["address"] in bad else s["state"])
                  for s in walk["segments"])
    assert sorted(drawn) == want
    title = page.evaluate("document.title")
    assert title.startswith({"ok": "kheap: heap OK", "corrupt": "kheap: heap CORRUPT",
                             "warnings": "kheap: heap OK with warnings"}[check["verdict"]]), title
    return drawn


def assert_corrupt_segment_shows_its_findings(page, check, pointer_size):
    """The segment the first error names: drawn corrupt and marked; hover and click show it."""
    width = pointer_size * 2
    findings = [f for f in check["findings"] if f["severity"] == "error"]
    first = findings[0]
    addr = f"0x{first['address']:0{width}x}"
    sel = f'#band .seg[data-addr="{addr}"]'
    classes = page.evaluate(f"document.querySelector('{sel}').className").split()
    assert "corrupt" in classes and "mark" in classes, classes
    page.evaluate("window.kheapPage.clear()")                      # nothing selected, no tip
    page.hover(sel)
    tip = page.evaluate("document.getElementById('tip').hidden ? '' : document.getElementById('tip').textContent")
    assert addr in tip and first["code"] in tip and first["message"] in tip, tip
    page.click(sel)
    detail = page.evaluate("document.getElementById('detail').textContent")
    for f in findings:
        if f["address"] == first["address"]:
            assert f["code"] in detail and f["message"] in detail, (f, detail)
    assert f"kheap find {addr}" in detail and "segment_size" in detail
    if first.get("culprit"):
        culprit = f"0x{first['culprit']['address']:0{width}x}"
        assert "culprit" in page.evaluate(
            f"document.querySelector('#band .seg[data-addr=\"{culprit}\"]').className")


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("scenario", ["clean", "stress", "overflow"])
def test_map_html_from_the_cli_in_chromium(vm_pool, browser, tmp_path, arch, scenario):
    vm = vm_pool.get(arch, scenario)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    walk = json.loads(kheap("walk", "--json", *remote).stdout)
    check = json.loads(kheap("check", "--json", *remote).stdout)
    out = tmp_path / f"{scenario}-{arch}.html"
    made = kheap("map", "--html", out, *remote)
    assert made.returncode == (1 if check["verdict"] == "corrupt" else 0), made.stderr
    assert f"wrote {out}" in made.stdout and made.stderr == ""
    size = out.stat().st_size
    assert size < MAX_PAGE_BYTES, size

    page = browser.open(out)
    assert_page_matches_walk(page, walk, check, walk["pointer_size"])
    rendered_ms = page.evaluate("+document.documentElement.dataset.rendered")
    if scenario == "stress":
        assert walk["count"] >= 4000
        assert rendered_ms < MAX_RENDER_MS, rendered_ms
        print(f"stress {arch}: page {size} bytes, drawn {rendered_ms:.0f} ms after navigation started")
    assert page.evaluate("document.getElementById('meta-arch').textContent") == arch
    assert page.evaluate("document.getElementById('meta-elf').textContent") == str(vm.elf)
    # The page band counts what `kheap pages` counts.
    pages = json.loads(kheap("pages", "--json", *remote).stdout)
    kinds = page.evaluate("Array.from(document.querySelectorAll('#page-band .run:not(.cont)'), e => e.dataset.kind)")
    assert set(kinds) == {k for k, n in pages["counts"].items() if n}
    if scenario == "overflow":
        assert_corrupt_segment_shows_its_findings(page, check, walk["pointer_size"])
    page.screenshot(ARTIFACTS / f"{scenario}-{arch}.png")


@pytest.mark.parametrize("scenario", sorted(set(CORRUPTION_CODES) - {"overflow"}))
def test_every_corruption_is_drawn_where_it_is(vm_pool, browser, tmp_path, scenario):
    """Each corruption scenario's page: every segment drawn, the expected codes listed, and each
    error finding drawn on a segment (its address, or the segment whose link leads there) or a
    page run, unless it names neither (the kernel's counters)."""
    vm = vm_pool.get("arm", scenario)
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    walk = json.loads(kheap("walk", "--json", *remote).stdout)
    check = json.loads(kheap("check", "--json", *remote).stdout)
    out = tmp_path / f"{scenario}.html"
    assert kheap("map", "--html", out, *remote).returncode == 1
    page = browser.open(out)
    drawn = assert_page_matches_walk(page, walk, check, 4)
    findings = page.evaluate("window.kheapPage.findings")
    assert [f["code"] for f in findings] == [f["code"] for f in check["findings"]]
    hs, he = walk["heap"]["start"], walk["heap"]["end"]
    for f, shown in zip(check["findings"], findings):
        if f["severity"] != "error":
            continue
        a, origin = f.get("address"), (f.get("values") or {}).get("from")
        in_heap = any(isinstance(x, int) and hs <= x < he for x in (a, origin))
        if f["code"].startswith("PAGE-") and "index" in (f.get("values") or {}):
            assert shown["run"] is not None, f
        elif in_heap and walk["segments"]:
            assert shown["seg"] is not None, f
            assert "corrupt" in page.evaluate(f"document.querySelector('#band .seg[data-i=\"{shown['seg']}\"]').className")
    if any(state == "corrupt" for _, state in drawn):
        page.evaluate("window.kheapPage.clear()")
        first = next(f for f in findings if f["seg"] is not None and f["sev"] == "error")
        page.click(f'#band .seg[data-i="{first["seg"]}"]')
        assert first["code"] in page.evaluate("document.getElementById('detail').textContent")
    page.screenshot(ARTIFACTS / f"{scenario}-arm.png")


def test_target_text_holding_script_does_not_run(vm_pool, browser, tmp_path):
    """The overflow heap as a raw image, with <script> and <img onerror> written into payloads
    (the CLI reads it like any memory): the page shows that text and runs none of it."""
    vm = vm_pool.get("arm", "overflow")
    remote = ["--remote", f"127.0.0.1:{vm.gdb_port}", "--elf", vm.elf]
    walk = json.loads(kheap("walk", "--json", *remote).stdout)
    line, victim = walk["segments"][0], walk["segments"][1]
    image = bytearray(vm.read_phys(0, walk["heap"]["end"]))
    script = b"<script>window.pwned=1</script>"          # 31 bytes and the NUL: the whole payload
    image[line["payload"]:line["payload"] + 32] = script + b"\0"
    img = b"<img src=x onerror=pwned=2>"                  # within the 32 bytes the page shows
    image[victim["payload"]:victim["payload"] + len(img)] = img
    raw = tmp_path / "hostile.raw"
    raw.write_bytes(bytes(image))
    out = tmp_path / "hostile.html"
    made = kheap("map", "--html", out, "--raw", raw, "--base", "0", "--elf", vm.elf)
    assert made.returncode == 1 and made.stderr == "", made.stderr
    text = out.read_text()
    assert text.count("<script") == 2 and "<img" not in text

    page = browser.open(out)
    assert page.exceptions() == []
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    page.click(f'#band .seg[data-addr="0x{line["address"]:08x}"]')
    assert page.evaluate("document.querySelector('#detail .astext').textContent") == \
        'as text: "<script>window.pwned=1</script>\\0"'
    page.click(f'#band .seg[data-addr="0x{victim["address"]:08x}"]')
    shown = page.evaluate("document.querySelector('#detail .astext').textContent")
    assert shown.startswith('as text: "<img src=x onerror=pwned=2>'), shown
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert "raw image" in page.evaluate("document.getElementById('meta-target').textContent")
    page.screenshot(ARTIFACTS / "hostile-raw-arm.png")


@pytest.mark.gdb
def test_map_html_in_gdb(vm_pool, browser, tmp_path):
    vm = vm_pool.get("aarch64", "overflow")
    out = tmp_path / "gdb-overflow.html"
    run = run_gdb(vm.elf, vm.gdb_port, [f"kheap map --html {out}", "kheap walk --json", "kheap check --json"])
    assert "wrote" in run.output(0) and "Traceback" not in run.stdout + run.stderr, run.steps[0]
    walk, check = run.json(1), run.json(2)
    page = browser.open(out)
    assert_page_matches_walk(page, walk, check, 8)
    assert_corrupt_segment_shows_its_findings(page, check, 8)
    assert "in gdb" in page.evaluate("document.getElementById('meta-target').textContent")
    page.screenshot(ARTIFACTS / "gdb-overflow-aarch64.png")


@pytest.mark.lldb
def test_map_html_in_lldb(vm_pool, browser, tmp_path):
    vm = vm_pool.get("arm", "overflow")
    out = tmp_path / "lldb-overflow.html"
    # lldb 14 cannot attach to a running QEMU: 'kheap connect' pauses it first (see README).
    run = run_lldb(vm.elf, vm.gdb_port, [f"kheap map --html {out}", "kheap walk --json", "kheap check --json"],
                   connect=False, pre=(f"kheap connect 127.0.0.1:{vm.gdb_port}",))
    assert "wrote" in run.output(0), run.steps[0]
    walk, check = run.json(1), run.json(2)
    page = browser.open(out)
    assert_page_matches_walk(page, walk, check, 4)
    assert_corrupt_segment_shows_its_findings(page, check, 4)
    assert "in lldb" in page.evaluate("document.getElementById('meta-target').textContent")


@pytest.mark.gdb
def test_watch_html_marks_the_double_free(start_vm, browser, tmp_path):
    vm = start_vm("arm", "double-free", halt=True)
    out = tmp_path / "watch.html"
    run = run_gdb(vm.elf, vm.gdb_port, ["kheap watch on", "continue", f"kheap watch --html {out}",
                                         "kheap history --json --limit 0", "kheap watch off"])
    assert "HEAP-DOUBLE-FREE" in run.output(1), run.output(1)
    assert "wrote" in run.output(2), run.steps[2]
    history = run.json(3)["operations"]
    page = browser.open(out)
    assert page.exceptions() == []
    assert page.evaluate("document.title").startswith("kheap watch:")
    assert page.evaluate("document.querySelectorAll('#tl .dfree').length") == 1
    assert page.evaluate("document.querySelectorAll('#tl line.badop').length") == 1
    allocs = [o for o in history if o["effect"] in ("alloc", "move")]
    assert page.evaluate("document.querySelectorAll('#tl rect.blockbar').length") >= len(allocs)
    page.click("#tl .dfree")
    detail = page.evaluate("document.getElementById('detail').textContent")
    second = [o for o in history if o["kind"] == "kfree"][-1]
    assert f"kfree(0x{second['pointer']:08x})" in detail and "Double free" in detail
    page.screenshot(ARTIFACTS / "watch-double-free-arm.png")
