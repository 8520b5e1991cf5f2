"""Every report kheap prints, in one place: a builder (a JSON-ready dict) beside its text.

``base`` holds what all share (schema version, the one JSON writer :func:`to_json_text`, the
text builder, :func:`render_text` which finds a report's renderer by its name); one module per
group of reports holds their builders and renderers. Faces print only what these build.
"""

from .base import SCHEMA_VERSION, clean, render_text, report_base, to_json_text
from .blame import blame_report
from .heap import (MAP_LEGEND, SHOW_BYTES, check_report, show_report, map_page_report, find_report, info_report, map_report, stats_report, verdict_line,
                   walk_report)
from .history import DIFF_LIMIT, diff_report, history_report, leak_sources, leaks_report, snapshot_report, watch_report, watch_stop_report
from .pages import page_report, pages_report
from .reach import dangling_report, leak_scan_report, refs_report
from .runs import DUMP_STATUSES, check_many_report, demo_report, demo_text, dump_report, dump_verdict_line
from .triage import triage_report, triage_text

__all__ = ["SCHEMA_VERSION", "clean", "render_text", "report_base", "to_json_text", "MAP_LEGEND", "check_report", "map_page_report",
           "find_report", "info_report", "map_report", "stats_report", "verdict_line", "walk_report", "diff_report",
           "history_report", "leaks_report", "snapshot_report", "watch_report", "watch_stop_report", "page_report", "pages_report",
           "triage_report", "triage_text", "DUMP_STATUSES", "check_many_report", "demo_report", "demo_text",
           "dump_report", "dump_verdict_line", "blame_report", "leak_scan_report", "refs_report",
           "dangling_report", "DIFF_LIMIT", "show_report", "SHOW_BYTES", "leak_sources"]
