"""The two ways a target can fail, shared by the remote client and the dump readers.

``MemoryFault`` (from the core) means "the target is fine but this address cannot be read": the
walkers stop there and report it. ``TargetError`` means "the target itself is unusable": no
connection, a dead or confused stub, a missing, truncated or foreign file. The CLI turns a
``TargetError`` into one line on stderr and exit code 2, so its message is always one line.
"""

from __future__ import annotations

from gdbext.core.memory import MemoryFault

__all__ = ["MemoryFault", "TargetError"]


class TargetError(Exception):
    """A connection, protocol or file problem; ``str()`` is always a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
