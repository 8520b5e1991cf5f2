"""Load kheap into gdb with one line: ``source <repo>/gdbext/gdbinit.py``.

gdb embeds /usr/bin/python3, whose sys.path knows nothing about the venv that install.sh made,
so this loader puts the repository and the venv's site-packages on sys.path before importing
anything that needs pyelftools or pygments. Any failure is reported in one line: a loader that
throws a traceback into someone's .gdbinit would be worse than no loader.
"""

import os
import sys

_repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _repo not in sys.path:
    sys.path.insert(0, _repo)

try:
    from gdbext.frontends.loader import add_venv_to_path

    add_venv_to_path(_repo)
    from gdbext.frontends import gdb as _kheap_gdb

    _kheap_gdb.register()
except Exception as _error:  # noqa: BLE001 - the debugger session must survive a broken install
    print(f"kheap: not loaded: {type(_error).__name__}: {_error} (run {_repo}/install.sh)")
