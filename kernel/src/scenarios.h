/* The workloads a kernel can run at boot, one per scenario name (see scenario_table.c). */
#ifndef SCENARIOS_H
#define SCENARIOS_H

void scenario_clean(void);
void scenario_stress(void);
void scenario_leak(void);
void scenario_overflow(void);
void scenario_backlink(void);
void scenario_cycle(void);
void scenario_wild(void);
void scenario_double_free(void);
void scenario_uaf(void);
void scenario_pages(void);
void scenario_tutorial_bug(void);
void scenario_crash(void);

#endif
