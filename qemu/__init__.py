"""How to boot the kheap test kernel in QEMU (see launcher.py and README.md)."""
