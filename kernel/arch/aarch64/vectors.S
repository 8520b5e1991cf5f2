/* AArch64 exception vectors (16 entries of 0x80 bytes, table 2 KiB aligned). Every entry
 * switches to a fresh stack and calls arch_exception(kind, esr, far, elr) with the syndrome
 * registers of the EL we run at, which turns them into a kernel_panic. */
    .macro vector_entry kind
    .balign 0x80
    mov     x0, #\kind
    b       exception_common
    .endm

    .section .text
    .balign 0x800
    .global exception_vectors
exception_vectors:
    /* current EL with SP_EL0, current EL with SP_ELx, lower EL AArch64, lower EL AArch32;
     * kinds: 0 synchronous, 1 IRQ, 2 FIQ, 3 SError */
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3

exception_common:
    ldr     x9, =exception_stack_top
    mov     sp, x9
    mrs     x9, CurrentEL
    ubfx    x9, x9, #2, #2
    cmp     x9, #3
    b.ne    1f
    mrs     x1, esr_el3
    mrs     x2, far_el3
    mrs     x3, elr_el3
    b       3f
1:  cmp     x9, #2
    b.ne    2f
    mrs     x1, esr_el2
    mrs     x2, far_el2
    mrs     x3, elr_el2
    b       3f
2:  mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
3:  bl      arch_exception
    b       .
