/* kheap_checkpoint: the kernel's own dump of the heap, the ground truth tests compare kheap
 * against. It only reads the heap, and it is bounded: it stops at the first segment address
 * that is outside the heap, misaligned, or not above the previous one (a cycle or a back
 * link), and after at most as many segments as the heap can hold. */
#include "kernel.h"
#include "kheap.h"
#include "uart.h"

static void stop(const char *reason, uintptr_t addr)
{
    uart_puts("KHEAP-SEG-STOP reason=");
    uart_puts(reason);
    uart_puts(" addr=");
    uart_put_ptr(addr);
    uart_putc('\n');
}

static void put_field(const char *name, uintptr_t value)
{
    uart_putc(' ');
    uart_puts(name);
    uart_putc('=');
    uart_put_dec(value);
}

static void print_stats(void)
{
    uart_puts("KHEAP-STATS");
    put_field("allocations", heap_stats.allocations);
    put_field("frees", heap_stats.frees);
    put_field("failed", heap_stats.failed);
    put_field("bytes_requested", heap_stats.bytes_requested);
    put_field("bytes_allocated", heap_stats.bytes_allocated);
    put_field("bytes_freed", heap_stats.bytes_freed);
    put_field("current_usage", heap_stats.current_usage);
    put_field("peak_usage", heap_stats.peak_usage);
    uart_putc('\n');
}

static unsigned dump_segments(void)
{
    uintptr_t heap_start = KHEAP_START();
    uintptr_t heap_end = heap_start + KHEAP_SIZE();
    uintptr_t max_segments = KHEAP_SIZE() / sizeof(heap_segment_t);
    uintptr_t previous = 0;
    const heap_segment_t *seg = KHEAP_LIST_HEAD();
    unsigned count = 0;

    while (seg != NULL) {
        uintptr_t addr = (uintptr_t)seg;
        if (addr < heap_start || addr + sizeof(heap_segment_t) > heap_end) {
            stop("outside-heap", addr);
            break;
        }
        if (addr % HEAP_ALIGN != 0) {
            stop("misaligned", addr);           /* reading it could fault with the MMU off */
            break;
        }
        if (count > 0 && addr <= previous) {
            stop("backwards", addr);
            break;
        }
        if (count >= max_segments) {
            stop("limit", addr);
            break;
        }
        uart_puts("KHEAP-SEG addr=");
        uart_put_ptr(addr);
        uart_puts(" size=");
        uart_put_dec(seg->segment_size);
        if (seg->is_allocated == 0) {
            uart_puts(" state=free\n");
        } else if (seg->is_allocated == 1) {
            uart_puts(" state=used\n");
        } else {
            uart_puts(" state=bad(");
            uart_put_dec(seg->is_allocated);
            uart_puts(")\n");
        }
        count++;
        previous = addr;
        seg = seg->next;
    }
    return count;
}

__attribute__((noinline, used)) void kheap_checkpoint(const char *tag)
{
    unsigned count;

    uart_puts("KHEAP-CHECKPOINT BEGIN tag=");
    uart_puts(tag);
    uart_putc('\n');
    count = dump_segments();
    print_stats();
    uart_puts("KHEAP-CHECKPOINT END tag=");
    uart_puts(tag);
    uart_puts(" segments=");
    uart_put_dec(count);
    uart_putc('\n');
    __asm__ volatile("" ::: "memory");          /* a call boundary gdb can rely on */
}
