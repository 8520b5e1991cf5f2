"""Load kheap into lldb with one line: ``command script import <repo>/gdbext/lldbinit.py``.

lldb embeds /usr/bin/python3 like gdb does, so the venv that install.sh made must be put on
sys.path first. Failures are one line, never a traceback in someone's session.
"""

import os
import sys

_repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def __lldb_init_module(debugger, internal_dict):
    if _repo not in sys.path:
        sys.path.insert(0, _repo)
    try:
        from gdbext.frontends.loader import add_venv_to_path

        add_venv_to_path(_repo)
        from gdbext.frontends import lldb as face

        if face.register(debugger):
            print("kheap loaded: 'help kheap' lists the commands")
    except Exception as error:  # noqa: BLE001 - the debugger session must survive a broken install
        print(f"kheap: not loaded: {type(error).__name__}: {error} (run {_repo}/install.sh)")
