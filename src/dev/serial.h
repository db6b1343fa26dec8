/* serial.h — a 16550A UART (COM1) in front of a chardev. */
#ifndef CPRVM_SERIAL_H
#define CPRVM_SERIAL_H

#include <stdbool.h>
#include <stdint.h>

#include "dev/chardev.h"

#define SERIAL_FIFO_LEN 16

struct serial;

/* set_irq(opaque, irq, level) drives the interrupt line. */
typedef void (*serial_irq_fn)(void *opaque, int irq, int level);

int serial_new(struct serial **out, struct chardev *chr, int irq, serial_irq_fn set_irq,
	       void *irq_opaque);
void serial_free(struct serial *s);
/* Port access at offset 0..7 from the base, from a vCPU thread. */
uint8_t serial_read(struct serial *s, unsigned off);
void serial_write(struct serial *s, unsigned off, uint8_t val);
/* Several reads of the same register at once (rep insb). */
void serial_read_many(struct serial *s, unsigned off, uint8_t *buf, unsigned n);

#endif
