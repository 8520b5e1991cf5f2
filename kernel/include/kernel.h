/* Kernel-wide entry points: checkpoints, panics, scenarios, board facts. */
#ifndef KERNEL_H
#define KERNEL_H

#include <stdint.h>

#if defined(__aarch64__)
#define KHEAP_ARCH "aarch64"
#else
#define KHEAP_ARCH "arm"
#endif

#define NOINLINE __attribute__((noinline, used))

/* Scenario selection: QEMU's generic loader writes SCENARIO_MAGIC | id at SCENARIO_WORD_ADDR
 * (outside every loaded ELF segment and far from the boot stack, which lives in .bss). */
#define SCENARIO_WORD_ADDR 0x1000u
#define SCENARIO_MAGIC     0x4B480000u          /* "KH" in the top half, id in the low byte */
#define SCENARIO_MAGIC_MASK 0xFFFF0000u
/* With this bit set the kernel stops before it builds the page array and the heap: it prints
 * an empty checkpoint (tag "preinit") and idles, list head NULL and page count 0. */
#define SCENARIO_FLAG_PREINIT 0x8000u

/* Address no device or RAM answers on either board: a load from it takes an external abort. */
#define UNASSIGNED_ADDRESS 0xDEAD0000u

enum panic_reason {
    PANIC_NONE = 0,
    PANIC_DATA_ABORT = 1,
    PANIC_PREFETCH_ABORT = 2,
    PANIC_UNDEFINED = 3,
    PANIC_SYNC_OTHER = 4,
    PANIC_SERROR = 5,
    PANIC_IRQ = 6,
    PANIC_SOFTWARE = 7,
};

struct panic_info {
    enum panic_reason reason;
    uintptr_t fault_address;   /* DFAR/IFAR on ARMv7, FAR_ELx on AArch64 */
    uintptr_t fault_status;    /* DFSR/IFSR on ARMv7, ESR_ELx on AArch64 */
    uintptr_t elr;             /* address of the faulting instruction */
};
extern struct panic_info panic_info;

void kheap_checkpoint(const char *tag);
void kernel_panic(enum panic_reason reason, uintptr_t fault_address, uintptr_t fault_status,
                  uintptr_t elr);
void kernel_idle(void) __attribute__((noreturn));

/* Firmware mailbox: ARM memory size in bytes, or 0 if the firmware does not answer. */
uintptr_t mailbox_arm_memory(void);

typedef void (*scenario_fn)(void);
struct scenario {
    const char *name;
    scenario_fn run;
};
extern const struct scenario scenarios[];
extern const unsigned scenario_count;

#endif
