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

/* The device model's state, FIFOs unrolled (oldest byte first). */
struct serial_state {
	uint8_t ier, fcr, lcr, mcr, scr, dll, dlm, thri_pending;
	uint32_t rx_len, tx_len;
	uint8_t rx[SERIAL_FIFO_LEN], tx[SERIAL_FIFO_LEN];
};

struct state_desc;
extern const struct state_desc serial_state_desc;

void serial_save(struct serial *s, struct serial_state *st);
/* Validates first: -EINVAL leaves the device as it was. */
int serial_load(struct serial *s, const struct serial_state *st);

int serial_new(struct serial **out, struct chardev *chr, int irq, serial_irq_fn set_irq,
	       void *irq_opaque);
void serial_free(struct serial *s);
/* Port access at offset 0..7 from the base, from a vCPU thread. */
uint8_t serial_read(struct serial *s, unsigned off);
void serial_write(struct serial *s, unsigned off, uint8_t val);
/* Several reads of the same register at once (rep insb). */
void serial_read_many(struct serial *s, unsigned off, uint8_t *buf, unsigned n);

#endif
