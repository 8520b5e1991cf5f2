/* AArch64 (Cortex-A53, qemu-system-aarch64 -M raspi3b) entry. QEMU starts all four cores
 * here at EL3: cores 1-3 park in wfi. Core 0 stays at whatever EL it was started in (EL3 on
 * QEMU 7.2), sets the stack (in .bss, far from the scenario word) and that EL's VBAR,
 * clears .bss and calls kernel_main. The MMU stays off. */
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #3
    cbnz    x0, park

    ldr     x0, =boot_stack_top
    mov     sp, x0

    adr     x0, exception_vectors
    mrs     x1, CurrentEL
    ubfx    x1, x1, #2, #2
    cmp     x1, #3
    b.ne    1f
    msr     vbar_el3, x0
    b       3f
1:  cmp     x1, #2
    b.ne    2f
    msr     vbar_el2, x0
    b       3f
2:  msr     vbar_el1, x0
3:  isb

    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
clear_bss:
    cmp     x0, x1
    b.hs    bss_done
    str     xzr, [x0], #8
    b       clear_bss
bss_done:
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
    .space  8192
    .global exception_stack_top
exception_stack_top:
