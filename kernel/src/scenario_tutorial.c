/* tutorial-bug: the split and free logic exactly as the published tutorial (jsandler18's
 * "Dynamic Memory" chapter) writes it, run on our heap. Its split never updates the old
 * successor's prev, and its kfree never updates any prev after merging, so stale prev links
 * are left behind (and, because kfree follows those stale links, two free segments end up
 * side by side, unmerged). The only changes are uintptr_t-clean pointer arithmetic and
 * the wrappers below, which keep heap_stats and poison right so that the links are the only
 * thing wrong. */
#include "kernel.h"
#include "kheap.h"
#include "lib.h"
#include "scenarios.h"

static void *tutorial_kmalloc(uint32_t bytes)
{
    heap_segment_t *curr, *best = NULL;
    int diff, best_diff = 0x7fffffff;

    bytes += sizeof(heap_segment_t);
    bytes += bytes % 16 ? 16 - (bytes % 16) : 0;

    for (curr = KHEAP_LIST_HEAD(); curr != NULL; curr = curr->next) {
        diff = (int)curr->segment_size - (int)bytes;
        if (!curr->is_allocated && diff < best_diff && diff >= 0) {
            best = curr;
            best_diff = diff;
        }
    }
    if (best == NULL)
        return NULL;

    if (best_diff > (int)(2 * sizeof(heap_segment_t))) {
        memset((void *)((uintptr_t)best + bytes), 0, sizeof(heap_segment_t));
        curr = best->next;
        best->next = (heap_segment_t *)((uintptr_t)best + bytes);
        best->next->next = curr;
        best->next->prev = best;
        best->next->segment_size = best->segment_size - bytes;
        KHEAP_SEGMENT_INIT(best->next);
        best->segment_size = bytes;
        /* (missing: curr->prev = best->next) */
    }
    best->is_allocated = 1;
    return best + 1;
}

static void tutorial_kfree(void *ptr)
{
    heap_segment_t *seg = (heap_segment_t *)((uintptr_t)ptr - sizeof(heap_segment_t));
    seg->is_allocated = 0;

    while (seg->prev != NULL && !seg->prev->is_allocated) {
        seg->prev->next = seg->next;
        /* (missing: seg->next->prev = seg->prev) */
        seg->prev->segment_size += seg->segment_size;
        seg = seg->prev;
    }
    while (seg->next != NULL && !seg->next->is_allocated) {
        seg->segment_size += seg->next->segment_size;
        seg->next = seg->next->next;
        /* (missing: seg->next->prev = seg) */
    }
}

static void *tutorial_alloc_counted(uint32_t bytes)
{
    void *p = tutorial_kmalloc(bytes);
    if (p != NULL)
        kheap_account_alloc(kheap_segment_of(p), bytes);
    return p;
}

/* Frees, then re-poisons whichever segment now holds the block (found by walking next links,
 * which the tutorial keeps right), so poison matches what our kfree would leave. */
static void tutorial_free_counted(void *ptr)
{
    uintptr_t header = (uintptr_t)kheap_segment_of(ptr);
    heap_segment_t *seg;

    kheap_account_free(kheap_segment_of(ptr));
    tutorial_kfree(ptr);
    for (seg = KHEAP_LIST_HEAD(); seg != NULL; seg = seg->next) {
        if ((uintptr_t)seg <= header && header < (uintptr_t)seg + seg->segment_size) {
            kheap_poison_payload(seg);
            break;
        }
    }
}

void *tutorial_blocks[7];

void scenario_tutorial_bug(void)
{
    unsigned i;
    for (i = 0; i < 4; i++)
        tutorial_blocks[i] = tutorial_alloc_counted(128);
    tutorial_free_counted(tutorial_blocks[1]);     /* neighbours allocated: no merge */
    /* Best fit is the hole just freed; the split leaves block 2's prev on the old segment
     * instead of the new free remainder. */
    tutorial_blocks[4] = tutorial_alloc_counted(16);
    /* Block 2's stale prev names an allocated segment, so this free does not merge with the
     * free remainder right before it: two free segments now sit side by side. */
    tutorial_free_counted(tutorial_blocks[2]);
    /* Two more blocks from the free tail (too big for either hole), then free block 3: it
     * merges left into block 2's segment, and block 5 keeps a prev naming the absorbed
     * header, an address in the middle of a free segment. */
    tutorial_blocks[4 + 1] = tutorial_alloc_counted(200);
    tutorial_blocks[4 + 2] = tutorial_alloc_counted(200);
    tutorial_free_counted(tutorial_blocks[3]);
    tutorial_blocks[1] = NULL;
    tutorial_blocks[2] = NULL;
    tutorial_blocks[3] = NULL;
    kheap_checkpoint("tutorial-bug");
}
