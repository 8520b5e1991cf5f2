/* memset/memcpy/str* for a freestanding kernel. With the MMU off, AArch64 treats all data as
 * Device memory where unaligned accesses fault, so the word loops only run on aligned
 * pointers and everything else goes byte by byte. Never uses DC ZVA. */
#include "lib.h"

void *memset(void *dst, int value, size_t count)
{
    unsigned char *d = dst;
    uintptr_t pattern = (unsigned char)value;

    pattern |= pattern << 8;
    pattern |= pattern << 16;
#if UINTPTR_MAX > 0xFFFFFFFFu
    pattern |= pattern << 32;
#endif
    while (count > 0 && ((uintptr_t)d & (sizeof(uintptr_t) - 1)) != 0) {
        *d++ = (unsigned char)value;
        count--;
    }
    while (count >= sizeof(uintptr_t)) {
        *(volatile uintptr_t *)d = pattern;   /* volatile: stop gcc turning this into memset */
        d += sizeof(uintptr_t);
        count -= sizeof(uintptr_t);
    }
    while (count > 0) {
        *d++ = (unsigned char)value;
        count--;
    }
    return dst;
}

void *memcpy(void *dst, const void *src, size_t count)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if ((((uintptr_t)d | (uintptr_t)s) & (sizeof(uintptr_t) - 1)) == 0) {
        while (count >= sizeof(uintptr_t)) {
            *(volatile uintptr_t *)d = *(const uintptr_t *)s;
            d += sizeof(uintptr_t);
            s += sizeof(uintptr_t);
            count -= sizeof(uintptr_t);
        }
    }
    while (count > 0) {
        *(volatile unsigned char *)d = *s;
        d++;
        s++;
        count--;
    }
    return dst;
}

char *strcpy(char *dst, const char *src)
{
    char *d = dst;
    while ((*(volatile char *)d = *src) != '\0') {
        d++;
        src++;
    }
    return dst;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

uint32_t rand_next(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}
