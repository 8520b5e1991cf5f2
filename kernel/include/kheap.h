/* The kernel heap: one address-ordered, doubly-linked list of segments (docs/kernel-interface.md).
 * This header is shared by the kernel and the host-side allocator test, so it only needs
 * <stdint.h>/<stddef.h>. */
#ifndef KHEAP_H
#define KHEAP_H

#include <stddef.h>
#include <stdint.h>

#include "variant.h"

#define HEAP_ALIGN 16
#if KHEAP_IS(TUTORIAL)
#define KERNEL_HEAP_SIZE (1024 * 1024)        /* the tutorial's: in no symbol (-g3: .debug_macro) */
#else
enum { KERNEL_HEAP_SIZE = 1024 * 1024 };      /* a DWARF enumerator kheap can read */
#endif

/* Smallest payload a split may leave behind: a free segment must hold something useful. */
#define HEAP_MIN_PAYLOAD 16

/* Poison byte for free payloads; POISON=0 at build time turns poisoning off. */
#ifndef KHEAP_POISON
#define KHEAP_POISON 1
#endif
#define HEAP_POISON_BYTE 0xA5

#if KHEAP_IS(BITFIELD)
/* The tutorial's own header: 12 bytes on ARMv7, 24 on AArch64, not padded, so payloads are
 * only 4- or 8-byte aligned (segments and sizes stay multiples of 16). */
typedef struct heap_segment {
    struct heap_segment *next, *prev;
    uint8_t is_allocated : 1;
    uint32_t segment_size : 31;
} heap_segment_t;
#elif KHEAP_IS(REORDERED)
typedef struct heap_segment {
    uint32_t segment_size;
    uint32_t is_allocated;
    struct heap_segment *next;
    struct heap_segment *prev;
} __attribute__((aligned(HEAP_ALIGN))) heap_segment_t;
#elif KHEAP_IS(CANARY)
#define HEAP_SEGMENT_MAGIC 0x4B48534Du          /* written into every header the allocator makes */
typedef struct heap_segment {
    struct heap_segment *next;
    struct heap_segment *prev;
    uint32_t is_allocated;
    uint32_t segment_size;
    uint32_t magic;                           /* HEAP_SEGMENT_MAGIC; never checked, only kept */
} __attribute__((aligned(HEAP_ALIGN))) heap_segment_t;
#else
typedef struct heap_segment {
    struct heap_segment *next;
    struct heap_segment *prev;
    uint32_t is_allocated;                    /* 0 free, 1 allocated; anything else is corrupt */
    uint32_t segment_size;                    /* bytes, header included, multiple of 16 */
} __attribute__((aligned(HEAP_ALIGN))) heap_segment_t;
#endif

/* Every header the allocator lays out gets the variant's constant fields (the canary). */
#if KHEAP_IS(CANARY)
#define KHEAP_SEGMENT_INIT(seg) ((seg)->magic = HEAP_SEGMENT_MAGIC)
#else
#define KHEAP_SEGMENT_INIT(seg) ((void)(seg))
#endif

typedef struct heap_stats {
    uint32_t  allocations;      /* blocks handed out (kmalloc, kcalloc, krealloc's new block) */
    uint32_t  frees;            /* blocks released (kfree, krealloc's old block) */
    uint32_t  failed;           /* requests that returned NULL */
    uintptr_t bytes_requested;  /* sum of sizes the callers asked for (cumulative) */
    uintptr_t bytes_allocated;  /* sum of segment_size of blocks handed out (cumulative) */
    uintptr_t bytes_freed;      /* sum of segment_size of blocks released (cumulative) */
    uintptr_t current_usage;    /* bytes_allocated - bytes_freed = sum of used segment sizes */
    uintptr_t peak_usage;       /* highest current_usage seen */
} heap_stats_t;

#if KHEAP_IS(TUTORIAL)
/* The tutorial keeps its list head static in one file and no heap bounds anywhere (the start
 * is where mem_init put the first segment, the size a #define). The checkpoint dump and the
 * boot line get them through these functions instead. */
heap_segment_t *kheap_list_head(void);
uintptr_t mem_heap_start(void);               /* mem.c: the same arithmetic as mem_init */
#define KHEAP_LIST_HEAD() kheap_list_head()
#define KHEAP_START() mem_heap_start()
#define KHEAP_SIZE() ((uintptr_t)KERNEL_HEAP_SIZE)
#else
extern heap_segment_t *heap_segment_list_head;
extern uintptr_t kernel_heap_start;
extern uintptr_t kernel_heap_size;
#define KHEAP_LIST_HEAD() heap_segment_list_head
#define KHEAP_START() kernel_heap_start
#define KHEAP_SIZE() kernel_heap_size
#endif
extern heap_stats_t heap_stats;
extern const int32_t heap_poison;

/* Lays one free segment over [start, start + size); start must be 16-byte aligned. */
void kheap_init(uintptr_t start, uintptr_t size);

void *kmalloc(size_t bytes);
void *kcalloc(size_t count, size_t size);
void *krealloc(void *ptr, size_t bytes);
void kfree(void *ptr);

/* Helpers the scenarios and tests use to reason about blocks. */
static inline heap_segment_t *kheap_segment_of(void *payload)
{
    return (heap_segment_t *)((uintptr_t)payload - sizeof(heap_segment_t));
}
static inline void *kheap_payload_of(heap_segment_t *seg)
{
    return (void *)((uintptr_t)seg + sizeof(heap_segment_t));
}
/* Counter updates, exposed so the tutorial-bug scenario can account for its own blocks. */
void kheap_account_alloc(heap_segment_t *seg, uintptr_t requested);
void kheap_account_free(heap_segment_t *seg);
/* Fills a free segment's payload with the poison byte (no-op with POISON=0). */
void kheap_poison_payload(heap_segment_t *seg);

#endif
