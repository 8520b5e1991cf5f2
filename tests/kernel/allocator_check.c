/* Host-side correctness check for kernel/src/kheap.c.
 *
 * Runs a long seeded random sequence of kmalloc/kcalloc/krealloc/kfree on a 1 MiB buffer and
 * checks every invariant after every step: links both ways, coverage of the whole heap, no
 * two adjacent free segments, alignment, poison in free payloads, the counters against a walk,
 * and that live blocks keep their contents. Prints "OK ..." and exits 0, or prints
 * "FAIL step=N: why" and exits 1.
 *
 *   usage: allocator_check SEED STEPS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kheap.h"

#define MAX_LIVE 4096

struct live_block {
    unsigned char *ptr;
    size_t size;
    unsigned char fill;
};

static struct live_block live[MAX_LIVE];
static unsigned live_count;
static unsigned long step;
static const char *last_op = "init";
static uint64_t rng_state;

static uint32_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static void fail(const char *why, uintptr_t addr)
{
    printf("FAIL step=%lu op=%s: %s (segment offset 0x%lx)\n", step, last_op, why,
           (unsigned long)(addr - kernel_heap_start));
    exit(1);
}

static int payload_is_poisoned(heap_segment_t *seg, int full)
{
    const unsigned char *p = kheap_payload_of(seg);
    size_t n = seg->segment_size - sizeof(heap_segment_t), i;
    if (heap_poison < 0)
        return 1;
    for (i = 0; i < n; i++) {
        if (!full && i == 64 && n > 128)
            i = n - 64;                          /* quick check: both ends only */
        if (p[i] != (unsigned char)heap_poison)
            return 0;
    }
    return 1;
}

/* Used segments seen by the last walk, in address order (the list is address-ordered). */
static uintptr_t used_headers[MAX_LIVE + 1];

static int is_used_header(uintptr_t header, unsigned used)
{
    unsigned lo = 0, hi = used;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (used_headers[mid] == header)
            return 1;
        if (used_headers[mid] < header)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static void check_heap(int full)
{
    uintptr_t start = kernel_heap_start, end = start + kernel_heap_size;
    uintptr_t covered = 0, used_bytes = 0;
    unsigned used = 0, count = 0, i;
    heap_segment_t *seg = heap_segment_list_head, *prev = NULL;

    if ((uintptr_t)seg != start)
        fail("head is not the heap start", (uintptr_t)seg);
    while (seg != NULL) {
        uintptr_t addr = (uintptr_t)seg;
        if (++count > KERNEL_HEAP_SIZE / (sizeof(heap_segment_t) + HEAP_MIN_PAYLOAD))
            fail("more segments than the heap can hold (cycle?)", addr);
        if (addr < start || addr >= end)
            fail("segment outside the heap", addr);
        if (addr % HEAP_ALIGN != 0 || ((uintptr_t)kheap_payload_of(seg)) % HEAP_ALIGN != 0)
            fail("segment or payload not 16-byte aligned", addr);
        if (seg->segment_size % HEAP_ALIGN != 0)
            fail("segment_size not a multiple of 16", addr);
        if (seg->segment_size < sizeof(heap_segment_t) + HEAP_MIN_PAYLOAD)
            fail("segment smaller than header + minimum payload", addr);
        if (addr + seg->segment_size > end)
            fail("segment runs past the heap end", addr);
        if (seg->prev != prev)
            fail("prev does not point at the previous segment", addr);
        if (seg->is_allocated > 1)
            fail("is_allocated neither 0 nor 1", addr);
        if (seg->next != NULL && (uintptr_t)seg->next != addr + seg->segment_size)
            fail("next is not the adjacent segment", addr);
        if (seg->next == NULL && addr + seg->segment_size != end)
            fail("list ends before the heap end", addr);
        if (!seg->is_allocated) {
            if (prev != NULL && !prev->is_allocated)
                fail("two adjacent free segments", addr);
            if (!payload_is_poisoned(seg, full))
                fail("free payload is not poisoned", addr);
        } else {
            if (used > MAX_LIVE)
                fail("more used segments than live blocks", addr);
            used_headers[used++] = addr;
            used_bytes += seg->segment_size;
        }
        covered += seg->segment_size;
        prev = seg;
        seg = seg->next;
    }
    if (covered != kernel_heap_size)
        fail("segment sizes do not sum to the heap size", end);
    if (used != live_count || heap_stats.allocations - heap_stats.frees != used)
        fail("allocations - frees != number of used segments", end);
    if (heap_stats.current_usage != used_bytes)
        fail("current_usage != sum of used segment sizes", end);
    if (heap_stats.bytes_allocated - heap_stats.bytes_freed != heap_stats.current_usage)
        fail("bytes_allocated - bytes_freed != current_usage", end);
    if (heap_stats.peak_usage < heap_stats.current_usage)
        fail("peak_usage below current_usage", end);
    /* Every live block is a distinct used segment (counts are equal, so it is a bijection),
     * big enough, and keeps its contents (all bytes on full checks, both ends otherwise). */
    for (i = 0; i < live_count; i++) {
        size_t k, n = live[i].size;
        heap_segment_t *h = kheap_segment_of(live[i].ptr);
        if (!is_used_header((uintptr_t)h, used))
            fail("live block is not a used segment on the list", (uintptr_t)h);
        if (h->segment_size - sizeof(heap_segment_t) < n)
            fail("live block smaller than requested", (uintptr_t)h);
        for (k = 0; k < n; k++) {
            if (!full && k == 8 && n > 16)
                k = n - 8;
            if (live[i].ptr[k] != live[i].fill)
                fail("live block contents changed", (uintptr_t)h);
        }
    }
}

static size_t random_size(void)
{
    uint32_t r = rng() % 100;
    if (r < 70)
        return 1 + rng() % 64;
    if (r < 95)
        return 1 + rng() % 1024;
    if (r < 99)
        return 1 + rng() % 65536;
    return KERNEL_HEAP_SIZE + rng() % 1000;       /* must fail */
}

static void remember(unsigned char *p, size_t size)
{
    unsigned char fill = (unsigned char)(1 + rng() % 250);
    memset(p, fill, size);
    live[live_count].ptr = p;
    live[live_count].size = size;
    live[live_count].fill = fill;
    live_count++;
}

static void one_step(void)
{
    uint32_t r = rng() % 100;
    uint32_t failed_before = heap_stats.failed;

    if (live_count > 0 && (r < 35 || live_count == MAX_LIVE)) {
        unsigned victim = rng() % live_count;
        last_op = "kfree";
        kfree(live[victim].ptr);
        live[victim] = live[--live_count];
    } else if (live_count > 0 && r < 50) {
        unsigned victim = rng() % live_count;
        size_t size = (rng() % 8 == 0) ? 0 : random_size();
        size_t keep = size < live[victim].size ? size : live[victim].size;
        unsigned char *p;
        last_op = "krealloc";
        p = krealloc(live[victim].ptr, size);
        if (size == 0) {
            if (p != NULL)
                fail("krealloc(p, 0) did not return NULL", 0);
            live[victim] = live[--live_count];
        } else if (p == NULL) {
            if (heap_stats.failed != failed_before + 1)
                fail("failed krealloc not counted", 0);
        } else {
            size_t k;
            for (k = 0; k < keep; k++)
                if (p[k] != live[victim].fill)
                    fail("krealloc lost the old contents", (uintptr_t)kheap_segment_of(p));
            memset(p, live[victim].fill, size);
            live[victim].ptr = p;
            live[victim].size = size;
        }
    } else if (r < 60) {
        size_t count = 1 + rng() % 16, each = 1 + rng() % 64, k;
        unsigned char *p;
        last_op = "kcalloc";
        p = kcalloc(count, each);
        if (p == NULL) {
            if (heap_stats.failed != failed_before + 1)
                fail("failed kcalloc not counted", 0);
            return;
        }
        for (k = 0; k < count * each; k++)
            if (p[k] != 0)
                fail("kcalloc payload not zeroed", (uintptr_t)kheap_segment_of(p));
        remember(p, count * each);
    } else {
        size_t size = random_size();
        unsigned char *p;
        last_op = "kmalloc";
        p = kmalloc(size);
        if (p == NULL) {
            if (heap_stats.failed != failed_before + 1)
                fail("failed kmalloc not counted", 0);
            return;
        }
        if ((uintptr_t)p % HEAP_ALIGN != 0)
            fail("payload not 16-byte aligned", (uintptr_t)p);
        remember(p, size);
    }
}

int main(int argc, char **argv)
{
    unsigned long steps;
    void *heap;

    if (argc != 3) {
        fprintf(stderr, "usage: %s SEED STEPS\n", argv[0]);
        return 2;
    }
    rng_state = strtoull(argv[1], NULL, 0);
    steps = strtoul(argv[2], NULL, 0);
    heap = aligned_alloc(4096, KERNEL_HEAP_SIZE);
    kheap_init((uintptr_t)heap, KERNEL_HEAP_SIZE);
    check_heap(1);
    for (step = 1; step <= steps; step++) {
        one_step();
        check_heap(step % 128 == 0);
        /* Drain now and then so the heap goes through empty and full phases. */
        if (step % 20000 == 0) {
            while (live_count > 0) {
                last_op = "drain kfree";
                kfree(live[0].ptr);
                live[0] = live[--live_count];
                check_heap(0);
            }
            check_heap(1);
            if (heap_segment_list_head->segment_size != KERNEL_HEAP_SIZE)
                fail("empty heap is not one free segment", kernel_heap_start);
        }
    }
    check_heap(1);
    printf("OK seed=%s steps=%lu allocations=%u frees=%u failed=%u peak=%lu live=%u\n",
           argv[1], steps, heap_stats.allocations, heap_stats.frees, heap_stats.failed,
           (unsigned long)heap_stats.peak_usage, live_count);
    return 0;
}
