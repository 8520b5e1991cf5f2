/* Page metadata (the tutorial's design): one page_t per 4 KiB of RAM at __end; kernel pages,
 * then the heap's pages, then every other page on the free list in ascending order. */
#include "mem.h"
#include "kheap.h"
#include "lib.h"

#if KHEAP_IS(TUTORIAL)
/* As in the tutorial's mem.c: file-local. */
static page_t *all_pages_array;
static uint32_t num_pages;
static page_list_t free_pages;

uint32_t mem_num_pages(void)
{
    return num_pages;
}

uintptr_t mem_heap_start(void)
{
    uintptr_t array_end = (uintptr_t)&__end + num_pages * sizeof(page_t);
    return (array_end + PAGE_SIZE - 1) & ~(uintptr_t)(PAGE_SIZE - 1);
}
#else
page_t *all_pages_array;
uint32_t num_pages;
page_list_t free_pages;
#endif

static void list_append(page_list_t *list, page_t *page)
{
    page->nextpage = NULL;
    page->prevpage = list->tail;
    if (list->tail != NULL)
        list->tail->nextpage = page;
    else
        list->head = page;
    list->tail = page;
    list->size++;
}

static void list_remove(page_list_t *list, page_t *page)
{
    if (page->prevpage != NULL)
        page->prevpage->nextpage = page->nextpage;
    else
        list->head = page->nextpage;
    if (page->nextpage != NULL)
        page->nextpage->prevpage = page->prevpage;
    else
        list->tail = page->prevpage;
    page->nextpage = NULL;
    page->prevpage = NULL;
    list->size--;
}

/* Keeps the free list in ascending address order, as a healthy kernel promises. */
static void list_insert_sorted(page_list_t *list, page_t *page)
{
    page_t *after = list->head;
    while (after != NULL && after < page)
        after = after->nextpage;
    if (after == NULL) {
        list_append(list, page);
        return;
    }
    page->nextpage = after;
    page->prevpage = after->prevpage;
    if (after->prevpage != NULL)
        after->prevpage->nextpage = page;
    else
        list->head = page;
    after->prevpage = page;
    list->size++;
}

void mem_init(uintptr_t ram_bytes)
{
    uintptr_t array_end, heap_start, i;
    uint32_t kernel_pages, heap_pages;

    num_pages = (uint32_t)(ram_bytes / PAGE_SIZE);
    all_pages_array = (page_t *)&__end;
    array_end = (uintptr_t)&__end + num_pages * sizeof(page_t);
    heap_start = (array_end + PAGE_SIZE - 1) & ~(uintptr_t)(PAGE_SIZE - 1);
    kernel_pages = (uint32_t)(heap_start / PAGE_SIZE);
    heap_pages = KERNEL_HEAP_SIZE / PAGE_SIZE;

    memset(&free_pages, 0, sizeof(free_pages));
    for (i = 0; i < num_pages; i++) {
        page_t *page = &all_pages_array[i];
#if KHEAP_IS(TUTORIAL)
        /* The tutorial identity-maps only what the kernel uses: its image and the heap. */
        page->vaddr_mapped = i < kernel_pages + heap_pages ? i * PAGE_SIZE : 0;
#else
        page->vaddr_mapped = i * PAGE_SIZE;
#endif
        page->flags.allocated = 0;
        page->flags.kernel_page = 0;
        page->flags.kernel_heap_page = 0;
        page->flags.reserved = 0;
        page->nextpage = NULL;
        page->prevpage = NULL;
        if (i < kernel_pages) {
            page->flags.allocated = 1;
            page->flags.kernel_page = 1;
        } else if (i < kernel_pages + heap_pages) {
            page->flags.allocated = 1;
            page->flags.kernel_heap_page = 1;
        } else {
            list_append(&free_pages, page);
        }
    }
    kheap_init(heap_start, KERNEL_HEAP_SIZE);
}

void *alloc_page(void)
{
    page_t *page = free_pages.head;
    if (page == NULL)
        return NULL;
    list_remove(&free_pages, page);
    page->flags.allocated = 1;
#if KHEAP_IS(TUTORIAL)
    /* The tutorial's alloc_page: the address from the page's index, vaddr_mapped left 0. */
    {
        void *address = (void *)((uintptr_t)(page - all_pages_array) * PAGE_SIZE);
        memset(address, 0, PAGE_SIZE);
        return address;
    }
#else
    memset((void *)page->vaddr_mapped, 0, PAGE_SIZE);
    return (void *)page->vaddr_mapped;
#endif
}

/* Trusts its caller, like the tutorial's: freeing a page that is not from alloc_page (the
 * `pages` scenario frees a heap page by mistake) corrupts the metadata instead of failing. */
void free_page(void *ptr)
{
    page_t *page = &all_pages_array[(uintptr_t)ptr / PAGE_SIZE];
    page->flags.allocated = 0;
    page->flags.kernel_page = 0;
    page->flags.kernel_heap_page = 0;
    list_insert_sorted(&free_pages, page);
}
