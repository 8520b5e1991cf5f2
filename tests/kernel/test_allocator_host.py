"""Host-side correctness test of the kernel allocator (kernel/src/kheap.c).

Compiles kheap.c with the host gcc next to allocator_check.c (a fake 1 MiB heap and a long
seeded random sequence of kmalloc/kcalloc/krealloc/kfree, every invariant checked after every
step), runs it, and proves the check can fail by running it on copies of kheap.c with the
published tutorial's bugs put back in.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KHEAP_C = REPO / "kernel" / "src" / "kheap.c"
INCLUDE = REPO / "kernel" / "include"
CHECK_C = Path(__file__).resolve().parent / "allocator_check.c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")

# The lines whose absence is the tutorial's bug (each must exist exactly once in kheap.c).
TUTORIAL_SPLIT_LINE = "rest->next->prev = rest;"        # split forgets the old successor's prev
TUTORIAL_MERGE_LINE = "into->next->prev = into;"        # merge never fixes prev
TUTORIAL_RIGHT_MERGE_LINE = "seg->next->prev = seg;"    # neither does the right-hand merge


def build(tmp_path, name, source=KHEAP_C, poison=1, remove_line=None):
    """Compiles allocator_check.c with (a possibly patched copy of) kheap.c."""
    text = source.read_text()
    if remove_line is not None:
        assert text.count(remove_line) == 1, f"{remove_line!r} not found once in {source}"
        text = text.replace(remove_line, "(void)0; /* removed by the test */")
    patched = tmp_path / f"{name}_kheap.c"
    patched.write_text(text)
    exe = tmp_path / name
    subprocess.run(
        ["gcc", "-O2", "-g", "-Wall", "-Wextra", "-Werror", f"-DKHEAP_POISON={poison}",
         f"-I{INCLUDE}", "-o", str(exe), str(CHECK_C), str(patched)],
        check=True, capture_output=True, text=True)
    return exe


def run(exe, seed, steps):
    return subprocess.run([str(exe), str(seed), str(steps)], capture_output=True, text=True,
                          timeout=300)


def test_allocator_keeps_every_invariant(tmp_path):
    exe = build(tmp_path, "allocator")
    result = run(exe, 0x4B48, 50000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK ")


def test_allocator_without_poison(tmp_path):
    exe = build(tmp_path, "allocator_nopoison", poison=0)
    result = run(exe, 7, 10000)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("line, symptom", [
    (TUTORIAL_SPLIT_LINE, "prev does not point at the previous segment"),
    (TUTORIAL_MERGE_LINE, "prev does not point at the previous segment"),
    (TUTORIAL_RIGHT_MERGE_LINE, "prev does not point at the previous segment"),
])
def test_check_catches_the_tutorial_bugs(tmp_path, line, symptom):
    exe = build(tmp_path, "broken", remove_line=line)
    result = run(exe, 0x4B48, 50000)
    assert result.returncode == 1, result.stdout
    assert "FAIL" in result.stdout and symptom in result.stdout, result.stdout


def test_check_catches_missing_poison(tmp_path):
    exe = build(tmp_path, "unpoisoned", remove_line="poison_header(absorbed);")
    result = run(exe, 0x4B48, 50000)
    assert result.returncode == 1 and "free payload is not poisoned" in result.stdout, \
        result.stdout
