"""targets layer of kheap: where bytes come from when no debugger is there.

- :mod:`.rsp`: :class:`RemoteTarget`, a read-only GDB remote protocol client (QEMU's gdbstub);
- :mod:`.dump`: :func:`open_dump` for QEMU ELF cores, kheap dumps and raw images, and
  :func:`write_kheap_dump`.

Every target has ``read(address, size) -> bytes`` raising the core's ``MemoryFault`` for memory
it cannot read, and raises :class:`TargetError` (one line) when the target itself is unusable.
pyelftools is imported only when a core is opened, so importing this package is cheap.
"""

from .errors import MemoryFault, TargetError
from .dump import CoreDump, RawDump, open_dump, write_kheap_dump
from .rsp import RemoteTarget, StopReply, WriteForbidden, parse_hostport

__all__ = ["MemoryFault", "TargetError", "RemoteTarget", "StopReply", "WriteForbidden",
           "parse_hostport", "CoreDump", "RawDump", "open_dump", "write_kheap_dump"]
