/* The kernel heap allocator: best-fit over one address-ordered, doubly-linked segment list.
 *
 * Unlike the tutorial this design comes from, every split and merge fixes both directions of
 * the list (the old successor's prev on split, the new neighbour's prev on merge), and the list
 * end (next == NULL) is never written through. kfree is deliberately naive about double frees:
 * the `double-free` scenario relies on it. This file is also compiled for the host by
 * tests/kernel/test_allocator_host.py, so it depends on nothing but kheap.h and lib.h. */
#include "kheap.h"
#include "lib.h"

#define NOINLINE __attribute__((noinline, used))

#if KHEAP_IS(TUTORIAL)
static heap_segment_t *heap_segment_list_head;    /* the tutorial's: file-local, no bounds */

heap_segment_t *kheap_list_head(void)
{
    return heap_segment_list_head;
}
#else
heap_segment_t *heap_segment_list_head;
uintptr_t kernel_heap_start;
uintptr_t kernel_heap_size;
#endif
heap_stats_t heap_stats;
#if KHEAP_POISON
const int32_t heap_poison = HEAP_POISON_BYTE;
#else
const int32_t heap_poison = -1;
#endif

static uintptr_t align_up(uintptr_t value, uintptr_t align)
{
    return (value + align - 1) & ~(align - 1);
}

void kheap_poison_payload(heap_segment_t *seg)
{
#if KHEAP_POISON
    memset(kheap_payload_of(seg), HEAP_POISON_BYTE, seg->segment_size - sizeof(heap_segment_t));
#else
    (void)seg;
#endif
}

/* An absorbed header becomes part of a free payload, so it gets the poison too. */
static void poison_header(heap_segment_t *seg)
{
#if KHEAP_POISON
    memset(seg, HEAP_POISON_BYTE, sizeof(heap_segment_t));
#else
    (void)seg;
#endif
}

void kheap_init(uintptr_t start, uintptr_t size)
{
    heap_segment_t *first = (heap_segment_t *)start;
#if !KHEAP_IS(TUTORIAL)
    kernel_heap_start = start;
    kernel_heap_size = size;
#endif
    first->next = NULL;
    first->prev = NULL;
    first->is_allocated = 0;
    first->segment_size = (uint32_t)size;
    KHEAP_SEGMENT_INIT(first);
    kheap_poison_payload(first);
    heap_segment_list_head = first;
    memset(&heap_stats, 0, sizeof(heap_stats));
}

void kheap_account_alloc(heap_segment_t *seg, uintptr_t requested)
{
    heap_stats.allocations++;
    heap_stats.bytes_requested += requested;
    heap_stats.bytes_allocated += seg->segment_size;
    heap_stats.current_usage += seg->segment_size;
    if (heap_stats.current_usage > heap_stats.peak_usage)
        heap_stats.peak_usage = heap_stats.current_usage;
}

void kheap_account_free(heap_segment_t *seg)
{
    heap_stats.frees++;
    heap_stats.bytes_freed += seg->segment_size;
    heap_stats.current_usage -= seg->segment_size;
}

static void account_failure(uintptr_t requested)
{
    heap_stats.failed++;
    heap_stats.bytes_requested += requested;
}

/* Finds the smallest free segment that fits, splits off the rest if it can stand alone,
 * and marks it allocated. Returns NULL (and touches nothing) when nothing fits. */
static heap_segment_t *take_segment(size_t bytes)
{
    heap_segment_t *curr, *best = NULL;
    uintptr_t need, best_size = ~(uintptr_t)0;

    if (bytes == 0 || bytes > KERNEL_HEAP_SIZE)
        return NULL;
    need = align_up(sizeof(heap_segment_t) + bytes, HEAP_ALIGN);

    for (curr = heap_segment_list_head; curr != NULL; curr = curr->next) {
        if (curr->is_allocated || curr->segment_size < need || curr->segment_size >= best_size)
            continue;
        best = curr;
        best_size = curr->segment_size;
        if (best_size == need)
            break;                                  /* cannot do better than exact */
    }
    if (best == NULL)
        return NULL;

    if (best->segment_size - need >= sizeof(heap_segment_t) + HEAP_MIN_PAYLOAD) {
        heap_segment_t *rest = (heap_segment_t *)((uintptr_t)best + need);
        /* rest's payload lies inside best's old payload, so it is already poisoned. */
        rest->next = best->next;
        rest->prev = best;
        rest->is_allocated = 0;
        rest->segment_size = best->segment_size - (uint32_t)need;
        KHEAP_SEGMENT_INIT(rest);
        if (rest->next != NULL)
            rest->next->prev = rest;                /* the tutorial forgets this one */
        best->next = rest;
        best->segment_size = (uint32_t)need;
    }
    best->is_allocated = 1;
    return best;
}

/* Marks a segment free and merges it with free neighbours on both sides. */
static void release_segment(heap_segment_t *seg)
{
    seg->is_allocated = 0;
    kheap_poison_payload(seg);

    while (seg->next != NULL && seg->next->is_allocated == 0) {
        heap_segment_t *absorbed = seg->next;
        seg->segment_size += absorbed->segment_size;
        seg->next = absorbed->next;
        if (seg->next != NULL)
            seg->next->prev = seg;
        poison_header(absorbed);
    }
    while (seg->prev != NULL && seg->prev->is_allocated == 0) {
        heap_segment_t *into = seg->prev;
        into->segment_size += seg->segment_size;
        into->next = seg->next;
        if (into->next != NULL)
            into->next->prev = into;
        poison_header(seg);
        seg = into;
    }
}

NOINLINE void *kmalloc(size_t bytes)
{
    heap_segment_t *seg = take_segment(bytes);
    if (seg == NULL) {
        account_failure(bytes);
        return NULL;
    }
    kheap_account_alloc(seg, bytes);
    return kheap_payload_of(seg);
}

NOINLINE void *kcalloc(size_t count, size_t size)
{
    heap_segment_t *seg;
    size_t bytes = count * size;

    if (size != 0 && bytes / size != count) {       /* multiplication overflowed */
        account_failure(0);                          /* the size is not representable */
        return NULL;
    }
    seg = take_segment(bytes);
    if (seg == NULL) {
        account_failure(bytes);
        return NULL;
    }
    kheap_account_alloc(seg, bytes);
    memset(kheap_payload_of(seg), 0, seg->segment_size - sizeof(heap_segment_t));
    return kheap_payload_of(seg);
}

/* No double-free detection on purpose: the `double-free` scenario needs it to really happen. */
NOINLINE void kfree(void *ptr)
{
    heap_segment_t *seg;
    if (ptr == NULL)
        return;
    seg = kheap_segment_of(ptr);
    kheap_account_free(seg);
    release_segment(seg);
}

/* Keeps the block when it is already big enough; otherwise allocates a new block first (so a
 * failure leaves the old one intact), copies, then frees the old block. */
NOINLINE void *krealloc(void *ptr, size_t bytes)
{
    heap_segment_t *old, *seg;
    uintptr_t old_payload;

    if (ptr == NULL)
        return kmalloc(bytes);
    if (bytes == 0) {
        kfree(ptr);
        return NULL;
    }
    old = kheap_segment_of(ptr);
    old_payload = old->segment_size - sizeof(heap_segment_t);
    if (bytes <= old_payload)
        return ptr;

    seg = take_segment(bytes);
    if (seg == NULL) {
        account_failure(bytes);
        return NULL;
    }
    kheap_account_alloc(seg, bytes);
    memcpy(kheap_payload_of(seg), ptr, old_payload);
    kfree(ptr);
    return kheap_payload_of(seg);
}
