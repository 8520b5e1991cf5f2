"""Issue 14, proof: what a new user's trial of every command in every face found (branch
i14-trial). One test per defect; each failed before its fix."""

from types import SimpleNamespace

from gdbext.core.reports import reach as reach_reports


def test_scan_notes_agree_in_number():
    """``kheap leaks --scan`` on the overflow scenario said "1 segments with a corrupt header
    were neither scanned nor judged"; a walk stopped after one segment "only the 1 segments"."""
    prog = SimpleNamespace(fmt=lambda a: f"0x{a:08x}", heap_end=0x2000)
    walk = SimpleNamespace(complete=False,
                           stop_json=lambda: {"reason": "outside-heap", "address": 0x65722065,
                                              "detail": "next points outside the heap"})
    ix = SimpleNamespace(walk=walk, blocks=[object()], bad=[object()], readable_end=0x2000)
    roots = SimpleNamespace(notes=[], missing=[])
    notes = reach_reports._scan_notes(prog, ix, roots)
    assert notes[0].endswith("only the 1 segment before it was scanned and judged"), notes
    assert notes[1] == "1 segment with a corrupt header was neither scanned nor judged", notes
