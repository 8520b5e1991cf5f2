/* Build-time variants of the test kernel: `make -C kernel VARIANT=<name>` (docs/variants.md).
 * Each variant is one way other people's tutorial-derived kernels differ from ours; the
 * allocator's behaviour is the same in all of them. The Makefile passes KHEAP_VARIANT (one of
 * the numbers below) and KHEAP_VARIANT_NAME; a plain build is the default variant. */
#ifndef VARIANT_H
#define VARIANT_H

#define KHEAP_VARIANT_DEFAULT   0   /* ours: docs/kernel-interface.md */
#define KHEAP_VARIANT_BITFIELD  1   /* the tutorial's header: is_allocated:1, segment_size:31 */
#define KHEAP_VARIANT_TUTORIAL  2   /* the tutorial's globals (static, heap size a #define)
                                       and page conventions (vaddr_mapped 0 on free pages) */
#define KHEAP_VARIANT_REORDERED 3   /* header {segment_size, is_allocated, next, prev} */
#define KHEAP_VARIANT_CANARY    4   /* header {next, prev, is_allocated, segment_size, magic} */
#define KHEAP_VARIANT_RENAMED   5   /* other names for the types, fields and globals */

#ifndef KHEAP_VARIANT
#define KHEAP_VARIANT KHEAP_VARIANT_DEFAULT
#endif
#define KHEAP_IS(name) (KHEAP_VARIANT == KHEAP_VARIANT_##name)

/* The variant's name, printed on the KHEAP-BOOT line (KHEAP_G3: the Makefile built with -g3). */
#if KHEAP_IS(BITFIELD)
#define KHEAP_VARIANT_NAME "bitfield"
#elif KHEAP_IS(TUTORIAL) && defined(KHEAP_G3)
#define KHEAP_VARIANT_NAME "tutorial-g3"
#elif KHEAP_IS(TUTORIAL)
#define KHEAP_VARIANT_NAME "tutorial"
#elif KHEAP_IS(REORDERED)
#define KHEAP_VARIANT_NAME "reordered"
#elif KHEAP_IS(CANARY)
#define KHEAP_VARIANT_NAME "canary"
#elif KHEAP_IS(RENAMED)
#define KHEAP_VARIANT_NAME "renamed"
#else
#define KHEAP_VARIANT_NAME "default"
#endif

#if KHEAP_IS(RENAMED)
/* Another kernel's names for the same things. Only identifiers no other code uses are renamed
 * (next/prev, page_t and heap_stats keep theirs), so the preprocessor can do it everywhere. */
#define heap_segment           mem_block
#define heap_segment_t         mem_block_t
#define is_allocated           in_use
#define segment_size           block_size
#define heap_segment_list_head kheap_list
#define kernel_heap_start      heap_base
#define kernel_heap_size       heap_bytes
#define all_pages_array        page_array
#define num_pages              total_pages
#define free_pages             free_page_list
#endif

#endif
