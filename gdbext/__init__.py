"""kheap: inspect and validate the kernel heap of a bare-metal Raspberry Pi kernel.

The package is layered (see docs/ and ../shared/ARCHITECTURE.md): ``core`` is pure Python that
never imports a debugger, ``targets`` supplies bytes when no debugger is there, ``frontends``
are the thin gdb, lldb and command-line faces.
"""

__version__ = "0.1.0"      # the one version string (pyproject.toml reads it from here)
SCHEMA_VERSION = 1         # the one JSON schema version of every report
