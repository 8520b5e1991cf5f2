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

/* References stress drops on purpose at the end (blocks it keeps but forgets): a conservative
 * leak scan must find exactly these. Kept complemented, so they are no pointers themselves. */
#define STRESS_LOST_EVERY 500
#define STRESS_LOST_MAX (STRESS_LIVE / STRESS_LOST_EVERY + 1)
uintptr_t stress_lost[STRESS_LOST_MAX];
unsigned stress_lost_count;

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
                stress_blocks[live] = NULL;       /* no stale copy: exactly live references */
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
    /* Forget a few blocks without freeing them: leaks the heap itself cannot show. */
    for (i = STRESS_LOST_EVERY / 2; i < live; i += STRESS_LOST_EVERY) {
        if (stress_blocks[i] != NULL && stress_lost_count < STRESS_LOST_MAX) {
            stress_lost[stress_lost_count++] = ~(uintptr_t)stress_blocks[i];
            stress_blocks[i] = NULL;
        }
    }
    kheap_checkpoint("stress");
}

/* Scratch registers keep stale pointers for a while after a call returns (strcpy's cursor,
 * say), and a conservative leak scan rightly counts every register as a root. So that a
 * scenario's lost blocks are exactly the ones it means to lose, the caller-saved registers are
 * cleared before returning: no copy of a forgotten pointer survives in one. */
static inline __attribute__((always_inline)) void forget_scratch_registers(void)
{
#if defined(__aarch64__)
    __asm__ volatile("mov x0, xzr\n\tmov x1, xzr\n\tmov x2, xzr\n\tmov x3, xzr\n\t"
                     "mov x4, xzr\n\tmov x5, xzr\n\tmov x6, xzr\n\tmov x7, xzr\n\t"
                     "mov x8, xzr\n\tmov x9, xzr\n\tmov x10, xzr\n\tmov x11, xzr\n\t"
                     "mov x12, xzr\n\tmov x13, xzr\n\tmov x14, xzr\n\tmov x15, xzr\n\t"
                     "mov x16, xzr\n\tmov x17, xzr\n\tmov x18, xzr"
                     ::: "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10",
                         "x11", "x12", "x13", "x14", "x15", "x16", "x17", "x18", "memory");
#elif defined(__arm__)
    __asm__ volatile("mov r0, #0\n\tmov r1, #0\n\tmov r2, #0\n\tmov r3, #0\n\tmov r12, #0"
                     ::: "r0", "r1", "r2", "r3", "r12", "memory");
#endif
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
    forget_scratch_registers();
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
