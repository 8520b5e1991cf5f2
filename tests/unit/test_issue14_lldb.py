"""Issue 14, the lldb face's share that needs no debugger: the roots of a reachability scan are
the same registers whichever face gathered them."""

from gdbext.core import reach

from unit.test_reach import Kernel


def test_roots_are_the_general_purpose_registers_in_every_face():
    """gdb's "general" register group brings QEMU's system registers (239 on AArch64), lldb's
    "general" set the vector registers (68), the CLI's 'g' packet neither (34): plan_roots keeps
    the general-purpose ones, so every face counts and scans the same registers."""
    kern = Kernel(8, "<")
    a = kern.k.kmalloc(64)
    sp = kern.boot_top - 0x80
    registers = {"x0": a, "x29": sp, "x30": 0x80000, "sp": sp, "pc": 0x80004, "cpsr": 0x3c5,
                 "v0": a, "fpsr": 0, "TTBR0_EL1": a, "SCTLR": 0x30d00800}
    roots = reach.plan_roots(kern.program(), [reach.CoreState(1, registers)])
    assert sorted(roots.cores[0].registers) == ["cpsr", "pc", "sp", "x0", "x29", "x30"]
    assert roots.cores[0].sp == sp
