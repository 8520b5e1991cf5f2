/* Where every fault ends: the exception vectors call kernel_panic, which records what
 * happened in panic_info (for debuggers), prints one KHEAP-PANIC line and idles. */
#include "kernel.h"
#include "uart.h"

struct panic_info panic_info;

static const char *reason_name(enum panic_reason reason)
{
    switch (reason) {
    case PANIC_DATA_ABORT: return "data-abort";
    case PANIC_PREFETCH_ABORT: return "prefetch-abort";
    case PANIC_UNDEFINED: return "undefined-instruction";
    case PANIC_SYNC_OTHER: return "sync-exception";
    case PANIC_SERROR: return "serror";
    case PANIC_IRQ: return "unexpected-interrupt";
    case PANIC_SOFTWARE: return "software";
    default: return "unknown";
    }
}

void kernel_idle(void)
{
    for (;;)
        __asm__ volatile("wfi");    /* QEMU halts the vCPU on wfi; its wfe would spin */
}

__attribute__((noinline, used)) void kernel_panic(enum panic_reason reason,
                                                  uintptr_t fault_address,
                                                  uintptr_t fault_status, uintptr_t elr)
{
    panic_info.reason = reason;
    panic_info.fault_address = fault_address;
    panic_info.fault_status = fault_status;
    panic_info.elr = elr;

    uart_puts("KHEAP-PANIC reason=");
    uart_puts(reason_name(reason));
    uart_puts(" fault_address=");
    uart_put_ptr(fault_address);
    uart_puts(" fault_status=");
    uart_put_hex(fault_status, 8);
    uart_puts(" elr=");
    uart_put_ptr(elr);
    uart_putc('\n');
    kernel_idle();
}
