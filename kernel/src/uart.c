/* PL011 UART0 of the BCM2836/7, the device QEMU connects to its first -serial. */
#include "uart.h"

#define UART0_BASE 0x3F201000u
#define UART_DR    (UART0_BASE + 0x00)
#define UART_FR    (UART0_BASE + 0x18)
#define UART_CR    (UART0_BASE + 0x30)
#define UART_FR_TXFF (1u << 5)

static inline void mmio_write(uintptr_t reg, uint32_t value)
{
    *(volatile uint32_t *)reg = value;
}

static inline uint32_t mmio_read(uintptr_t reg)
{
    return *(volatile uint32_t *)reg;
}

void uart_init(void)
{
    mmio_write(UART_CR, 0x301);                 /* UARTEN | TXE | RXE; QEMU ignores baud */
}

void uart_putc(char c)
{
    while (mmio_read(UART_FR) & UART_FR_TXFF)
        ;
    mmio_write(UART_DR, (uint32_t)(unsigned char)c);
}

void uart_puts(const char *s)
{
    while (*s != '\0')
        uart_putc(*s++);
}

void uart_put_dec(uintptr_t value)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0)
        uart_putc(digits[--n]);
}

void uart_put_hex(uintptr_t value, int digits)
{
    uart_puts("0x");
    while (digits-- > 0)
        uart_putc("0123456789abcdef"[(value >> (4 * digits)) & 0xF]);
}

void uart_put_ptr(uintptr_t value)
{
    uart_put_hex(value, (int)(2 * sizeof(uintptr_t)));
}
