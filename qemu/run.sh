#!/usr/bin/env bash
# Boots the kheap test kernel in QEMU in the foreground; a thin wrapper over qemu/launcher.py.
#   qemu/run.sh --arch {arm,aarch64} [--variant NAME] --scenario NAME [--gdb-port PORT]
#               [--halt | --preinit] [--serial FILE]
#   qemu/run.sh --go {v1,v2} --scenario NAME [--halt | --preinit | --direct]   (the Go target)
# Prints the gdb port; Ctrl-C stops QEMU and removes its temporary files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 -m qemu.launcher "$@"
