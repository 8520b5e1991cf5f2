/* Boot: read the scenario word (first, before anything could clobber it), find the RAM size,
 * build the page metadata and heap, run the scenario, then idle so a debugger can attach. */
#include "kernel.h"
#include "kheap.h"
#include "mem.h"
#include "uart.h"

/* Raspberry Pi 2B/3B: 1 GiB, of which the ARM sees everything below the peripherals. */
#define BOARD_DEFAULT_ARM_MEMORY 0x3F000000u

static const struct scenario *choose_scenario(uint32_t word)
{
    uint32_t id = word & ~(SCENARIO_MAGIC_MASK | SCENARIO_FLAG_PREINIT);
    if ((word & SCENARIO_MAGIC_MASK) == SCENARIO_MAGIC && id < scenario_count)
        return &scenarios[id];
    return &scenarios[0];                       /* absent or unknown: clean */
}

void kernel_main(void)
{
    uint32_t word = *(volatile uint32_t *)(uintptr_t)SCENARIO_WORD_ADDR;
    const struct scenario *scenario = choose_scenario(word);
    uintptr_t ram = mailbox_arm_memory();
    const char *ram_source = "mailbox";

    uart_init();
    if (ram == 0) {
        ram = BOARD_DEFAULT_ARM_MEMORY;
        ram_source = "board-default";
    }
    uart_puts("KHEAP-BOOT arch=" KHEAP_ARCH " scenario=");
    uart_puts(scenario->name);
    uart_puts(" ram=");
    uart_put_dec(ram);
    uart_puts(" ram_source=");
    uart_puts(ram_source);
    uart_puts(" scenario_word=");
    uart_put_hex(word, 8);
    uart_puts(" variant=" KHEAP_VARIANT_NAME);
    uart_putc('\n');

    if ((word & SCENARIO_MAGIC_MASK) == SCENARIO_MAGIC && (word & SCENARIO_FLAG_PREINIT)) {
        kheap_checkpoint("preinit");            /* nothing set up yet: an empty dump */
        uart_puts("KHEAP-READY scenario=preinit\n");
        return;
    }

    mem_init(ram);
    uart_puts("KHEAP-LAYOUT end=");
    uart_put_ptr((uintptr_t)&__end);
    uart_puts(" num_pages=");
    uart_put_dec(MEM_NUM_PAGES());
    uart_puts(" heap_start=");
    uart_put_ptr(KHEAP_START());
    uart_puts(" heap_size=");
    uart_put_dec(KHEAP_SIZE());
    uart_puts(" poison=");
    uart_puts(heap_poison < 0 ? "off" : "0xa5");
    uart_putc('\n');

    scenario->run();

    uart_puts("KHEAP-READY scenario=");
    uart_puts(scenario->name);
    uart_putc('\n');
}
