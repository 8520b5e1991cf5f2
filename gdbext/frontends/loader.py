"""Make the venv's packages importable from a debugger's embedded Python.

Shared by gdbinit.py and lldbinit.py. The venv is the one install.sh creates at ``<repo>/.venv``
with the same /usr/bin/python3 the debuggers embed, so its site-packages match the running
interpreter's version exactly; a KHEAP_VENV environment variable points elsewhere if needed.
"""

import glob
import os
import site
import sys


def venv_site_packages(repo):
    """The site-packages folders of the kheap venv that match this interpreter's version."""
    venv = os.environ.get("KHEAP_VENV") or os.path.join(repo, ".venv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return sorted(glob.glob(os.path.join(venv, "lib", version, "site-packages")))


def add_venv_to_path(repo):
    """Put the venv's site-packages on sys.path (processing .pth files, as editable installs
    need), after the repository itself so the checked-out gdbext always wins."""
    for folder in venv_site_packages(repo):
        if folder not in sys.path:
            site.addsitedir(folder)
