/* Scenarios that leave a consistent heap: clean, stress, and leak (leaks are consistent,
 * just unreferenced). */
#include "kernel.h"
#include "kheap.h"
#include "lib.h"
#include "mem.h"
#include "scenarios.h"

/* Roots: what the kernel still references after a workload, so leak checkers can tell
 * referenced blocks from leaked ones. */
void *clean_roots[8];

void scenario_clean(void)
{
    char *name = kmalloc(20);
    uint32_t *table = kcalloc(32, sizeof(uint32_t));
    char *buffer = kmalloc(200);
    void *scratch1 = kmalloc(48);
    void *scratch2 = kmalloc(100);
    void *page;
    unsigned i;

    strcpy(name, "kheap-clean");
    for (i = 0; i < 32; i++)
        table[i] = i * i;
    table = krealloc(table, 64 * sizeof(uint32_t));   /* grows: moves, frees the old block */
    kfree(scratch1);
    buffer = krealloc(buffer, 120);                   /* shrinks: stays in place */
    memset(buffer, 'b', 120);
    clean_roots[0] = name;
    clean_roots[1] = table;
    clean_roots[2] = buffer;
    clean_roots[3] = kcalloc(10, 12);
    clean_roots[4] = kmalloc(1000);
    kfree(scratch2);
    clean_roots[5] = kmalloc(24);                     /* best fit: lands in a freed hole */

    page = alloc_page();                              /* the page allocator works too */
    free_page(page);

    kheap_checkpoint("clean");
}

/* Seeded random workload: grows to STRESS_LIVE live blocks (then frees a fifth of them) with frees, reallocs and callocs
 * mixed in, so the heap ends with thousands of used segments and scattered free holes. */
#define STRESS_LIVE 5200
#define STRESS_SEED 0x4B484541u
static void *stress_blocks[STRESS_LIVE];

void scenario_stress(void)
{
    uint32_t state = STRESS_SEED;
    unsigned live = 0, i;

    while (live < STRESS_LIVE) {
        uint32_t r = rand_next(&state);
        uint32_t size = 1 + (rand_next(&state) % 48);
        if (live == 0 || r % 100 < 65) {
            void *p = (r % 8 == 0) ? kcalloc(1, size) : kmalloc(size);
            if (p == NULL)
                break;
            stress_blocks[live++] = p;
        } else {
            unsigned victim = rand_next(&state) % live;
            if (r % 10 == 0) {
                void *p = krealloc(stress_blocks[victim], size + 16);
                if (p != NULL)
                    stress_blocks[victim] = p;
            } else {
                kfree(stress_blocks[victim]);
                stress_blocks[victim] = stress_blocks[--live];
            }
        }
    }
    /* Best fit refills every hole while growing, so finish by freeing a random fifth of the
     * blocks: the heap ends with thousands of used segments and hundreds of free holes. */
    for (i = 0; i < live; i++) {
        if (rand_next(&state) % 5 == 0) {
            kfree(stress_blocks[i]);
            stress_blocks[i] = NULL;
        }
    }
    kheap_checkpoint("stress");
}

/* The leaking caller: a distinct, non-inlined function so a debugger's backtrace or an
 * allocation-site tracker can name it. It builds a reply and forgets to free it. */
__attribute__((noinline, used)) void leak_handle_request(unsigned request_id)
{
    char *reply = kmalloc(40 + request_id % 24);
    if (reply == NULL)
        return;
    strcpy(reply, "reply to request");
    reply[0] = (char)('A' + request_id % 26);
    /* BUG: reply is never freed and no pointer to it survives. */
}

void *leak_sessions[16];

void scenario_leak(void)
{
    unsigned i;

    for (i = 0; i < 4; i++)
        leak_sessions[i] = kmalloc(64);              /* referenced: not leaks */
    for (i = 0; i < 3; i++)
        leak_handle_request(i);
    kheap_checkpoint("leak-1");

    for (i = 4; i < 8; i++)
        leak_sessions[i] = kmalloc(64);
    for (i = 3; i < 60; i++)
        leak_handle_request(i);
    kheap_checkpoint("leak-2");
}
