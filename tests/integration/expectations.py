"""What each corruption scenario must make kheap report, shared by the gdb, lldb and CLI tests.

Each entry is a set of alternatives: the check must report at least one of the codes (the
issue allows e.g. HEAP-SIZE *or* HEAP-GAP/HEAP-BACKLINK for an overflow), and ``culprit``
says whether a finding with one of those codes must name a culprit segment.
"""

CORRUPTION_CODES = {
    "overflow": ({"HEAP-SIZE", "HEAP-GAP", "HEAP-BACKLINK"}, True),
    "backlink": ({"HEAP-BACKLINK"}, False),
    "cycle": ({"HEAP-CYCLE"}, False),
    "wild": ({"HEAP-BOUNDS"}, False),
    "double-free": ({"HEAP-STATS"}, False),
    "uaf": ({"HEAP-POISON"}, False),
    "pages": ({"PAGE-FLAGS", "PAGE-FREELIST"}, False),
    "tutorial-bug": ({"HEAP-BACKLINK"}, False),
    "crash": ({"HEAP-BOUNDS"}, False),
}

HEALTHY = ("clean", "stress")
ARCHES = ("arm", "aarch64")


def assert_expected_findings(scenario, report):
    """``report`` is a check report's JSON; fail with its findings if the scenario's code is
    missing or a required culprit is absent."""
    wanted, needs_culprit = CORRUPTION_CODES[scenario]
    findings = report["findings"]
    hits = [f for f in findings if f["code"] in wanted]
    assert hits, f"{scenario}: expected one of {sorted(wanted)}, got {[f['code'] for f in findings]}"
    assert report["verdict"] == "corrupt", report["verdict"]
    if needs_culprit:
        assert any(f.get("culprit") for f in hits), f"{scenario}: no culprit named in {hits}"
