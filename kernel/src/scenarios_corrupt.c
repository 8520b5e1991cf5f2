/* Corruption scenarios, each produced the way a real bug produces it, never by poking the
 * allocator's internals directly. Each ends with kheap_checkpoint and leaves the kernel idle,
 * except `crash`, which checkpoints and then walks into the corruption. */
#include "kernel.h"
#include "kheap.h"
#include "lib.h"
#include "mem.h"
#include "scenarios.h"

/* An application keeps its objects on its own doubly-linked list; each object starts with a
 * link. Its container_of helper was copy-pasted from kfree and subtracts the allocator's
 * header size, so every "object link" it returns is really the object's heap header: list
 * writes through it land on the heap's next/prev fields (same offsets in both structs). */
struct app_link {
    char before_links[offsetof(heap_segment_t, next)];   /* empty unless a variant's header
                                                             puts next/prev further in: the
                                                             application copied that layout */
    struct app_link *next;
    struct app_link *prev;
};

static struct app_link *app_link_of(void *object)
{
    return (struct app_link *)((uintptr_t)object - sizeof(heap_segment_t));   /* BUG */
}

/* The application's list head, a static object outside the heap. */
struct app_link app_list_sentinel;

/* Linux-style list poison written into unlinked nodes; nothing answers at this address. */
#define APP_LIST_POISON ((struct app_link *)(uintptr_t)UNASSIGNED_ADDRESS)

static void *alloc_filled(size_t bytes, char fill)
{
    char *p = kmalloc(bytes);
    memset(p, fill, bytes);
    return p;
}

/* overflow: a log line is strcpy'd into a 24-byte buffer. The 24 bytes round up to a 32-byte
 * payload on both builds; the string is 72 characters, so it runs over the next segment's
 * whole header (next, prev, is_allocated, segment_size) with ASCII. */
void *overflow_blocks[3];

void scenario_overflow(void)
{
    static const char message[] =
        "sensor 3 reported an out-of-range reading; retrying calibration later..";
    char *line = kmalloc(24);
    overflow_blocks[0] = line;
    overflow_blocks[1] = alloc_filled(64, 'n');       /* the victim right after `line` */
    overflow_blocks[2] = alloc_filled(64, 'm');
    strcpy(line, message);                            /* BUG: no bounds check */
    kheap_checkpoint("overflow");
}

/* backlink: moving an object behind another on the application list sets only the backward
 * link, through the broken helper: the third segment's prev now names the first segment. */
void *backlink_blocks[4];

void scenario_backlink(void)
{
    unsigned i;
    for (i = 0; i < 4; i++)
        backlink_blocks[i] = alloc_filled(48, (char)('a' + i));
    app_link_of(backlink_blocks[2])->prev = app_link_of(backlink_blocks[0]);
    kheap_checkpoint("backlink");
}

/* cycle: the application closes its list into a ring (last->next = first) through the broken
 * helper: the last segment's next points back at the first. */
void *cycle_blocks[4];

void scenario_cycle(void)
{
    unsigned i;
    for (i = 0; i < 4; i++)
        cycle_blocks[i] = alloc_filled(48, (char)('c' + i));
    app_link_of(cycle_blocks[3])->next = app_link_of(cycle_blocks[0]);
    kheap_checkpoint("cycle");
}

/* wild: the application terminates its list at its static sentinel through the broken
 * helper: a segment's next now points into the kernel image, outside the heap. */
void *wild_blocks[4];

void scenario_wild(void)
{
    unsigned i;
    for (i = 0; i < 4; i++)
        wild_blocks[i] = alloc_filled(48, (char)('w' + i));
    app_link_of(wild_blocks[1])->next = &app_list_sentinel;
    kheap_checkpoint("wild");
}

/* double-free: a request buffer is freed when the request completes and again on the error
 * path. Its neighbours are both allocated, so neither kfree merges anything: the segment stays
 * where it was, free, and the counters count two frees (frees exceed allocations' reality:
 * allocations - frees is one less than the number of used segments, and current_usage is
 * short by the segment's size). */
void *double_free_blocks[3];

void scenario_double_free(void)
{
    void *request;
    double_free_blocks[0] = alloc_filled(40, 'L');    /* left neighbour, stays allocated */
    request = alloc_filled(40, 'R');
    double_free_blocks[2] = alloc_filled(40, 'N');    /* right neighbour, stays allocated */
    double_free_blocks[1] = request;                  /* dangling after the first kfree */
    kfree(request);                                   /* request completed */
    kfree(request);                                   /* BUG: error path frees it again */
    kheap_checkpoint("double-free");
}

/* uaf: a session object is freed, then a late callback still updates its fields, writing
 * into the poisoned payload of a free segment (neighbours allocated, so it stays separate). */
struct session {
    uint32_t id;
    uint32_t refcount;
    uint32_t state;
    char name[20];
};
void *uaf_blocks[3];

void scenario_uaf(void)
{
    struct session *session;
    uaf_blocks[0] = alloc_filled(32, 'x');
    session = kcalloc(1, sizeof(*session));
    uaf_blocks[2] = alloc_filled(32, 'y');
    session->id = 7;
    session->refcount = 1;
    uaf_blocks[1] = session;
    kfree(session);
    session->state = 3;                               /* BUG: late callback, session is gone */
    session->refcount = 0;
    kheap_checkpoint("uaf");
}

/* pages: a driver hands a kmalloc'd buffer to free_page (wrong allocator). free_page trusts
 * it: the heap page holding the buffer is marked free and put on the free-page list. */
void *pages_blocks[2];

void scenario_pages(void)
{
    pages_blocks[0] = alloc_filled(256, 'p');
    pages_blocks[1] = alloc_filled(3000, 'q');
    free_page(pages_blocks[1]);                       /* BUG: should have been kfree */
    kheap_checkpoint("pages");
}

/* crash: the application unlinks an object and, like Linux's list_del, poisons its next link,
 * through the broken helper: the segment's next now holds an address nothing answers at.
 * The checkpoint shows that heap; the next kmalloc walks the list into it and takes a data
 * abort, which ends in kernel_panic. */
void *crash_blocks[4];

void scenario_crash(void)
{
    unsigned i;
    for (i = 0; i < 3; i++)
        crash_blocks[i] = alloc_filled(48, (char)('k' + i));
    app_link_of(crash_blocks[1])->next = APP_LIST_POISON;
    kheap_checkpoint("crash");
    crash_blocks[3] = kmalloc(64);                    /* faults inside kmalloc */
}
