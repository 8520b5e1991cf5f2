#!/usr/bin/env bash
# Sets up a fresh Debian machine for kheap: system packages, the lldb Python path fix, a venv
# that gdb's and lldb's embedded Python can use (with .venv/bin/kheap and the lldb launcher
# .venv/bin/kheap-lldb), the bundled kernel, its build-time variants and the Go target
# (userland/mazarin). Safe to run again: every step checks first and says whether it did
# something or found it done.
#
#   ./install.sh                 install everything (asks before touching ~/.gdbinit on a tty)
#   ./install.sh --demo          ... then boot the bundled kernel in QEMU and inspect its heap
#   ./install.sh --test          ... then run the whole test suite (what CI runs)
#   ./install.sh --gdbinit       also add the kheap loader to ~/.gdbinit and ~/.lldbinit
#   ./install.sh --no-gdbinit    never ask about ~/.gdbinit / ~/.lldbinit
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="$repo/.venv"
# gdb and lldb on Debian embed /usr/bin/python3, not whatever python3 is first on PATH: the venv
# must be made from that interpreter or the debuggers cannot import its packages.
system_python=/usr/bin/python3
packages=(make gcc libc6-dev python3 python3-venv qemu-system-arm gdb-multiarch
          gcc-arm-none-eabi gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu lldb python3-lldb
          golang-go qemu-user chromium)
lldb_module_src=/usr/lib/llvm-14/lib/python3.11/dist-packages/lldb
lldb_module_link=/usr/lib/local/lib/python3.11/dist-packages/lldb

init_choice=ask
then_run=
for arg in "$@"; do
    case "$arg" in
        --demo) then_run=demo ;;
        --test) then_run=test ;;
        --gdbinit) init_choice=yes ;;
        --no-gdbinit) init_choice=no ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'install.sh: %s\n' "$*"; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root for: $*"; exit 1
    fi
}

# 1. System packages: only touch apt when something is missing, so a second run is quick.
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
else
    say "system packages: all ${#packages[@]} already installed"
fi

# 2. Debian's lldb 14 looks for its Python module under /usr/lib/local, which does not exist.
if [ -d "$lldb_module_src" ]; then
    if [ "$(readlink "$lldb_module_link" 2>/dev/null)" = "$lldb_module_src" ]; then
        say "lldb Python module link: already in place"
    else
        as_root mkdir -p "$(dirname "$lldb_module_link")"
        as_root ln -sfn "$lldb_module_src" "$lldb_module_link"
        say "lldb Python module link: created $lldb_module_link"
    fi
else
    say "lldb Python module not found at $lldb_module_src: lldb support will be unavailable"
fi

# 3. The venv, from the interpreter the debuggers embed. Reinstall only when pyproject changes.
if [ ! -x "$venv/bin/python" ] || [ "$(readlink -f "$venv/bin/python")" != "$(readlink -f "$system_python")" ]; then
    rm -rf "$venv"
    "$system_python" -m venv "$venv"
    say "venv: created $venv from $system_python"
fi
stamp="$venv/.kheap-installed"
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"
    echo "$want" > "$stamp"
    say "venv: installed kheap (editable) with pyelftools, pygments, pytest, hypothesis"
else
    say "venv: kheap already installed"
fi

# Byte-compile kheap itself: a venv's packages are compiled by pip, but an editable install is
# not, and where PYTHONDONTWRITEBYTECODE is set (this kind of machine sets it) every kheap
# process and every gdb or lldb that loads kheap would compile ~8,000 lines again (~130 ms).
# compileall only redoes files that changed.
"$venv/bin/python" -m compileall -q "$repo/gdbext" >/dev/null
say "venv: kheap byte-compiled"

# The lldb launcher beside .venv/bin/kheap: lldb's embedded Python takes its prefix from the first
# python3 on PATH (pyenv, conda, this very venv when activated) and then fails before kheap loads;
# bin/kheap-lldb starts lldb with the system's python3 first and kheap loaded.
if [ "$(readlink "$venv/bin/kheap-lldb" 2>/dev/null)" = "$repo/bin/kheap-lldb" ]; then
    say "lldb launcher: $venv/bin/kheap-lldb already in place"
else
    ln -sfn "$repo/bin/kheap-lldb" "$venv/bin/kheap-lldb"
    say "lldb launcher: created $venv/bin/kheap-lldb (lldb with kheap, whatever python3 is on PATH)"
fi

# 4. The bundled kernel, both builds (make rebuilds only what changed).
if make -s -C "$repo/kernel" -q 2>/dev/null; then
    say "kernel: both builds up to date"
else
    make -s -C "$repo/kernel"
    say "kernel: built kernel/build/arm/kernel.elf and kernel/build/aarch64/kernel.elf"
fi

# 5. The kernel's build-time variants (docs/variants.md), each into kernel/build/<variant>/.
variants=$(make -s -C "$repo/kernel" --no-print-directory list-variants)
variants=${variants#default }
stale=()
for v in $variants; do
    make -s -C "$repo/kernel" -q VARIANT="$v" 2>/dev/null || stale+=("$v")
done
if [ ${#stale[@]} -eq 0 ]; then
    say "kernel variants: all up to date ($variants)"
else
    for v in "${stale[@]}"; do make -s -C "$repo/kernel" VARIANT="$v"; done
    say "kernel variants: built ${stale[*]} (kernel/build/<variant>/<arch>/kernel.elf)"
fi

# 6. The Go target: userland/mazarin, both heap layouts, static linux/arm64 for qemu-aarch64.
if make -s -C "$repo/userland/mazarin" -q 2>/dev/null; then
    say "Go target: both layouts up to date"
else
    make -s -C "$repo/userland/mazarin"
    say "Go target: built userland/mazarin/build/v1/mazarin.elf and build/v2/mazarin.elf"
fi

# 7. Offer to load kheap automatically in gdb and lldb.
gdb_line="source $repo/gdbext/gdbinit.py"
lldb_line="command script import $repo/gdbext/lldbinit.py"
if [ "$init_choice" = ask ]; then
    init_choice=no
    if [ -t 0 ] && ! grep -qsF "$gdb_line" ~/.gdbinit; then
        read -r -p "install.sh: load kheap in every gdb and lldb session (~/.gdbinit, ~/.lldbinit)? [y/N] " reply
        case "$reply" in [yY]*) init_choice=yes ;; esac
    fi
fi
if [ "$init_choice" = yes ]; then
    for pair in "$HOME/.gdbinit|$gdb_line" "$HOME/.lldbinit|$lldb_line"; do
        file=${pair%%|*}; line=${pair#*|}
        if grep -qsF "$line" "$file"; then say "$file: already loads kheap"
        else echo "$line" >> "$file"; say "$file: added '$line'"
        fi
    done
fi

case "$then_run" in
    demo) say "done; running: $venv/bin/kheap demo"; exec "$venv/bin/kheap" demo ;;
    test) say "done; running the test suite"; cd "$repo"; exec "$venv/bin/python" -m pytest -n auto ;;
    *) say "done. Try: $venv/bin/kheap demo    (tests: ./install.sh --test)" ;;
esac
