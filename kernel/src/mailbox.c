/* Asks the VideoCore firmware (QEMU's bcm2835_property device) how much RAM the ARM owns.
 * QEMU passes no ATAGs or device tree to an ELF kernel, so this is the only honest source. */
#include "kernel.h"

#define MBOX_BASE   0x3F00B880u
#define MBOX_READ   (MBOX_BASE + 0x00)
#define MBOX_STATUS (MBOX_BASE + 0x18)
#define MBOX_WRITE  (MBOX_BASE + 0x20)
#define MBOX_FULL   0x80000000u
#define MBOX_EMPTY  0x40000000u
#define MBOX_CHANNEL_PROPERTY 8u
#define TAG_GET_ARM_MEMORY 0x00010005u
#define MBOX_SPIN_LIMIT 1000000u

static volatile uint32_t mbox_buffer[8] __attribute__((aligned(16)));

static inline uint32_t reg_read(uintptr_t reg) { return *(volatile uint32_t *)reg; }
static inline void reg_write(uintptr_t reg, uint32_t v) { *(volatile uint32_t *)reg = v; }

uintptr_t mailbox_arm_memory(void)
{
    uint32_t spins, message = (uint32_t)(uintptr_t)mbox_buffer | MBOX_CHANNEL_PROPERTY;

    mbox_buffer[0] = sizeof(mbox_buffer);
    mbox_buffer[1] = 0;                         /* request */
    mbox_buffer[2] = TAG_GET_ARM_MEMORY;
    mbox_buffer[3] = 8;                         /* value buffer: base, size */
    mbox_buffer[4] = 0;
    mbox_buffer[5] = 0;
    mbox_buffer[6] = 0;
    mbox_buffer[7] = 0;                         /* end tag */

    for (spins = 0; reg_read(MBOX_STATUS) & MBOX_FULL; spins++)
        if (spins > MBOX_SPIN_LIMIT)
            return 0;
    reg_write(MBOX_WRITE, message);
    for (spins = 0; spins < MBOX_SPIN_LIMIT; spins++) {
        if (reg_read(MBOX_STATUS) & MBOX_EMPTY)
            continue;
        if (reg_read(MBOX_READ) == message)
            break;
    }
    if (spins >= MBOX_SPIN_LIMIT || mbox_buffer[1] != 0x80000000u)
        return 0;
    return (uintptr_t)mbox_buffer[5] + mbox_buffer[6];   /* ARM memory starts at base 0 */
}
