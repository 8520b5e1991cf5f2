/* Decodes an AArch64 exception syndrome into a kernel_panic reason. */
#include "kernel.h"

#define EC_UNKNOWN            0x00   /* undefined instruction */
#define EC_INSN_ABORT_LOWER   0x20
#define EC_INSN_ABORT_SAME    0x21
#define EC_DATA_ABORT_LOWER   0x24
#define EC_DATA_ABORT_SAME    0x25

void arch_exception(uintptr_t kind, uintptr_t esr, uintptr_t far, uintptr_t elr)
{
    uintptr_t ec = (esr >> 26) & 0x3F;

    if (kind == 1 || kind == 2)
        kernel_panic(PANIC_IRQ, 0, esr, elr);
    if (kind == 3)
        kernel_panic(PANIC_SERROR, 0, esr, elr);
    switch (ec) {
    case EC_DATA_ABORT_LOWER:
    case EC_DATA_ABORT_SAME:
        kernel_panic(PANIC_DATA_ABORT, far, esr, elr);
        break;
    case EC_INSN_ABORT_LOWER:
    case EC_INSN_ABORT_SAME:
        kernel_panic(PANIC_PREFETCH_ABORT, far, esr, elr);
        break;
    case EC_UNKNOWN:
        kernel_panic(PANIC_UNDEFINED, elr, esr, elr);
        break;
    default:
        kernel_panic(PANIC_SYNC_OTHER, far, esr, elr);
        break;
    }
}
