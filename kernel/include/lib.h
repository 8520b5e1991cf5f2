/* The few libc routines a freestanding kernel needs (gcc may emit calls to memset/memcpy). */
#ifndef LIB_H
#define LIB_H

#include <stddef.h>
#include <stdint.h>

void *memset(void *dst, int value, size_t count);
void *memcpy(void *dst, const void *src, size_t count);
char *strcpy(char *dst, const char *src);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* Small deterministic PRNG (xorshift32) for the seeded workloads. */
uint32_t rand_next(uint32_t *state);

#endif
