/* ARMv7 exception vectors: every fault becomes kernel_panic(reason, address, status, elr).
 * lr holds the faulting instruction + 8 for aborts in ARM state, + 4 for undefined. */
#define PANIC_DATA_ABORT 1
#define PANIC_PREFETCH_ABORT 2
#define PANIC_UNDEFINED 3
#define PANIC_SYNC_OTHER 4
#define PANIC_IRQ 6

    .section .text
    .arm
    .balign 32
    .global exception_vectors
exception_vectors:
    b       on_other                        @ reset
    b       on_undefined
    b       on_other                        @ svc
    b       on_prefetch_abort
    b       on_data_abort
    b       on_other                        @ reserved
    b       on_irq
    b       on_irq                          @ fiq

on_data_abort:
    mov     r0, #PANIC_DATA_ABORT
    mrc     p15, 0, r1, c6, c0, 0           @ DFAR
    mrc     p15, 0, r2, c5, c0, 0           @ DFSR
    sub     r3, lr, #8
    bl      kernel_panic
    b       .

on_prefetch_abort:
    mov     r0, #PANIC_PREFETCH_ABORT
    mrc     p15, 0, r1, c6, c0, 2           @ IFAR
    mrc     p15, 0, r2, c5, c0, 1           @ IFSR
    sub     r3, lr, #4
    bl      kernel_panic
    b       .

on_undefined:
    mov     r0, #PANIC_UNDEFINED
    sub     r1, lr, #4                      @ the undefined instruction itself
    mov     r2, #0
    sub     r3, lr, #4
    ldr     sp, =abort_stack_top
    bl      kernel_panic
    b       .

on_irq:
    mov     r0, #PANIC_IRQ
    mov     r1, #0
    mov     r2, #0
    sub     r3, lr, #4
    ldr     sp, =abort_stack_top
    bl      kernel_panic
    b       .

on_other:
    mov     r0, #PANIC_SYNC_OTHER
    mov     r1, #0
    mov     r2, #0
    mov     r3, lr
    cpsid   if, #0x13
    ldr     sp, =boot_stack_top
    bl      kernel_panic
    b       .
