/* PL011 output. QEMU needs no baud-rate setup, so init only enables the transmitter. */
#ifndef UART_H
#define UART_H

#include <stdint.h>

void uart_init(void);
void uart_putc(char c);
void uart_puts(const char *s);
void uart_put_dec(uintptr_t value);
void uart_put_hex(uintptr_t value, int digits);   /* "0x" + digits hex digits */
void uart_put_ptr(uintptr_t value);              /* zero-padded to the pointer width */

#endif
