/* Page metadata: one page_t per 4 KiB page of RAM, placed at the linker symbol __end. */
#ifndef MEM_H
#define MEM_H

#include <stdint.h>

#include "variant.h"

#define PAGE_SIZE 4096u

typedef struct {
    uint8_t  allocated : 1;
    uint8_t  kernel_page : 1;
    uint8_t  kernel_heap_page : 1;
    uint32_t reserved : 29;
} page_flags_t;

typedef struct page {
    uintptr_t vaddr_mapped;                   /* identity: the page's physical address (the
                                                 tutorial variant: only on kernel and heap
                                                 pages, 0 on the others) */
    page_flags_t flags;
    struct page *nextpage;                    /* free-page list links (DEFINE_LINK(page)) */
    struct page *prevpage;
} page_t;

typedef struct {                              /* DEFINE_LIST(page) */
    struct page *head;
    struct page *tail;
    uint32_t size;
} page_list_t;

extern char __end;                            /* from the linker script */
#if KHEAP_IS(TUTORIAL)
uint32_t mem_num_pages(void);                 /* the tutorial's globals are static in mem.c */
#define MEM_NUM_PAGES() mem_num_pages()
#else
extern page_t *all_pages_array;
extern uint32_t num_pages;
extern page_list_t free_pages;
#define MEM_NUM_PAGES() num_pages
#endif

/* Builds the page array for ram_bytes of RAM, reserves kernel and heap pages, starts the heap. */
void mem_init(uintptr_t ram_bytes);
void *alloc_page(void);
void free_page(void *ptr);

#endif
