/* Scenario ids: the index in this table. qemu/launcher.py has the same list in the same order;
 * the boot tests check every name round-trips through KHEAP-BOOT. */
#include "kernel.h"
#include "scenarios.h"

const struct scenario scenarios[] = {
    {"clean", scenario_clean},
    {"stress", scenario_stress},
    {"overflow", scenario_overflow},
    {"backlink", scenario_backlink},
    {"cycle", scenario_cycle},
    {"wild", scenario_wild},
    {"double-free", scenario_double_free},
    {"uaf", scenario_uaf},
    {"leak", scenario_leak},
    {"pages", scenario_pages},
    {"tutorial-bug", scenario_tutorial_bug},
    {"crash", scenario_crash},
};
const unsigned scenario_count = sizeof(scenarios) / sizeof(scenarios[0]);
