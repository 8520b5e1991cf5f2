"""The core must import with no debugger: gdb and lldb are poisoned in sys.modules."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, importlib, pkgutil
sys.modules['gdb'] = None
sys.modules['lldb'] = None
import gdbext.core as core
names = [m.name for m in pkgutil.iter_modules(core.__path__, 'gdbext.core.')]
for name in names:
    importlib.import_module(name)
bad = [m for m in sys.modules if m.split('.')[0] in ('gdb', 'lldb') and sys.modules[m] is not None]
assert not bad, bad
print(len(names))
"""


def test_every_core_module_imports_without_gdb_or_lldb():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 11


def test_core_modules_only_use_allowed_third_party_packages():
    import ast
    import gdbext.core as core
    allowed = {"elftools", "pygments", "gdbext"}
    for mod in pkgutil.iter_modules(core.__path__, "gdbext.core."):
        tree = ast.parse(Path(importlib.import_module(mod.name).__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in sys.stdlib_module_names or top in allowed, f"{mod.name} imports {top}"
