/* ARMv7 (Cortex-A7, qemu-system-arm -M raspi2b) entry. QEMU starts all four cores here:
 * cores 1-3 park in wfi. Core 0 leaves HYP mode if it was started there, gets stacks for
 * SVC, abort and undefined modes (all in .bss, far from the scenario word), installs the
 * vectors, clears .bss and calls kernel_main. */
#define MODE_SVC 0x13
#define MODE_ABT 0x17
#define MODE_UND 0x1b
#define MODE_HYP 0x1a
#define MODE_MASK 0x1f
#define IRQ_FIQ_MASKED 0xc0

    .section .text.boot, "ax"
    .arm
    .global _start
_start:
    mrc     p15, 0, r0, c0, c0, 5           @ MPIDR
    ands    r0, r0, #3
    bne     park

    mrs     r0, cpsr
    and     r1, r0, #MODE_MASK
    cmp     r1, #MODE_HYP
    bne     in_svc_or_other
    bic     r0, r0, #MODE_MASK
    orr     r0, r0, #(MODE_SVC | IRQ_FIQ_MASKED)
    msr     spsr_hyp, r0
    adr     r0, in_svc_or_other
    msr     elr_hyp, r0
    eret

in_svc_or_other:
    cpsid   if, #MODE_ABT
    ldr     sp, =abort_stack_top
    cps     #MODE_UND
    ldr     sp, =abort_stack_top
    cps     #MODE_SVC
    ldr     sp, =boot_stack_top

    ldr     r0, =exception_vectors
    mcr     p15, 0, r0, c12, c0, 0          @ VBAR
    mrc     p15, 0, r0, c1, c0, 0           @ SCTLR
    bic     r0, r0, #(1 << 13)              @ V=0: use VBAR, not the high vectors
    mcr     p15, 0, r0, c1, c0, 0
    isb

    ldr     r0, =__bss_start
    ldr     r1, =__bss_end
    mov     r2, #0
clear_bss:
    cmp     r0, r1
    strlo   r2, [r0], #4
    blo     clear_bss

    bl      kernel_main
    b       kernel_idle

park:
    wfi
    b       park

    .section .bss.stacks, "aw", %nobits
    .balign 16
    .space  16384
    .global boot_stack_top
boot_stack_top:
    .space  4096
    .global abort_stack_top
abort_stack_top:
