/* serial.c — 16550A UART model.
 *
 * State is the device model's: registers, a 16-byte RX FIFO and a 16-byte TX
 * FIFO (capacity 1 when the FIFOs are off), and whether a "transmitter holding
 * register empty" interrupt is pending. No byte is ever dropped: the TX FIFO
 * drains into the chardev only as fast as the chardev accepts (so LSR.THRE
 * stays clear while a client is slow), and the RX FIFO is topped up from the
 * chardev only when it has room (the rest waits in the kernel's buffers).
 * Receive timeouts are reported at once (IIR 0xc) rather than after four
 * character times: there is no line speed to wait for.
 * Locking: s->lock guards everything; chardev callbacks take it, chardev_*
 * calls are made with it held (lock order: serial, then chardev). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dev/serial.h"
#include "state/state.h"

#define UART_RBR 0
#define UART_IER 1
#define UART_IIR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define IER_RDI 0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI 0x08

#define IIR_NO_INT 0x01
#define IIR_MSI 0x00
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_RLSI 0x06
#define IIR_CTI 0x0c
#define IIR_FIFO 0xc0

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04

#define LCR_DLAB 0x80
#define MCR_LOOP 0x10

#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

struct fifo {
	uint8_t data[SERIAL_FIFO_LEN];
	uint8_t head, count;
};

struct serial {
	pthread_mutex_t lock;
	struct chardev *chr;
	int irq;
	int irq_level;
	serial_irq_fn set_irq;
	void *irq_opaque;
	/* device model state */
	uint8_t ier, fcr, lcr, mcr, msr, scr, dll, dlm;
	bool thri_pending;
	struct fifo rx, tx;
};

static unsigned fifo_cap(struct serial *s)
{
	return s->fcr & FCR_ENABLE ? SERIAL_FIFO_LEN : 1;
}

static void fifo_push(struct fifo *f, uint8_t b)
{
	f->data[(f->head + f->count) % SERIAL_FIFO_LEN] = b;
	f->count++;
}

static uint8_t fifo_pop(struct fifo *f)
{
	uint8_t b = f->data[f->head];

	f->head = (f->head + 1) % SERIAL_FIFO_LEN;
	f->count--;
	return b;
}

static unsigned rx_trigger(struct serial *s)
{
	static const unsigned levels[4] = { 1, 4, 8, 14 };

	return s->fcr & FCR_ENABLE ? levels[s->fcr >> 6] : 1;
}

static uint8_t serial_iir(struct serial *s)
{
	uint8_t fifo = s->fcr & FCR_ENABLE ? IIR_FIFO : 0;

	if ((s->ier & IER_RDI) && s->rx.count)
		return fifo | (s->rx.count >= rx_trigger(s) ? IIR_RDI : IIR_CTI);
	if ((s->ier & IER_THRI) && s->thri_pending)
		return fifo | IIR_THRI;
	return fifo | IIR_NO_INT;
}

static void serial_update_irq(struct serial *s)
{
	int level = !(serial_iir(s) & IIR_NO_INT);

	if (level != s->irq_level) {
		s->irq_level = level;
		s->set_irq(s->irq_opaque, s->irq, level);
	}
}

/* Move TX FIFO bytes to the chardev as far as it takes them. */
static void serial_flush_tx(struct serial *s)
{
	while (s->tx.count) {
		uint8_t buf[SERIAL_FIFO_LEN];
		unsigned n = 0;
		size_t done;

		for (unsigned i = 0; i < s->tx.count; i++)
			buf[n++] = s->tx.data[(s->tx.head + i) % SERIAL_FIFO_LEN];
		done = chardev_write(s->chr, buf, n);
		if (!done)
			break;
		for (size_t i = 0; i < done; i++)
			fifo_pop(&s->tx);
		if (!s->tx.count)
			s->thri_pending = true;
	}
}

/* Top the RX FIFO up from the chardev; watch it only while there is room. */
static void serial_fill_rx(struct serial *s)
{
	unsigned cap = fifo_cap(s);

	if (s->mcr & MCR_LOOP)
		return;
	while (s->rx.count < cap) {
		uint8_t buf[SERIAL_FIFO_LEN];
		size_t n = chardev_read(s->chr, buf, cap - s->rx.count);
		if (!n)
			break;
		for (size_t i = 0; i < n; i++)
			fifo_push(&s->rx, buf[i]);
	}
	chardev_set_input(s->chr, s->rx.count < cap);
}

static void serial_chr_readable(void *opaque)
{
	struct serial *s = opaque;

	pthread_mutex_lock(&s->lock);
	serial_fill_rx(s);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

static void serial_chr_writable(void *opaque)
{
	struct serial *s = opaque;

	pthread_mutex_lock(&s->lock);
	serial_flush_tx(s);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

static const struct chardev_client_ops serial_chr_ops = {
	.readable = serial_chr_readable,
	.writable = serial_chr_writable,
};

static uint8_t serial_read_locked(struct serial *s, unsigned off)
{
	uint8_t v = 0xff;

	switch (off) {
	case UART_RBR:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		if (!s->rx.count)
			serial_fill_rx(s);
		v = s->rx.count ? fifo_pop(&s->rx) : 0;
		if (s->rx.count < 2)
			serial_fill_rx(s);
		break;
	case UART_IER:
		return s->lcr & LCR_DLAB ? s->dlm : s->ier;
	case UART_IIR:
		if (!s->rx.count)
			serial_fill_rx(s);
		v = serial_iir(s);
		/* Reading IIR acknowledges a THRE interrupt it reports. */
		if ((v & 0x0f) == IIR_THRI)
			s->thri_pending = false;
		break;
	case UART_LCR:
		return s->lcr;
	case UART_MCR:
		return s->mcr;
	case UART_LSR:
		if (s->tx.count)
			serial_flush_tx(s);
		if (!s->rx.count)
			serial_fill_rx(s);
		v = (s->rx.count ? LSR_DR : 0) | (s->tx.count ? 0 : LSR_THRE | LSR_TEMT);
		break;
	case UART_MSR:
		if (s->mcr & MCR_LOOP) {
			/* DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD */
			v = ((s->mcr & 0x01) << 5) | ((s->mcr & 0x02) << 3) |
			    ((s->mcr & 0x04) << 4) | ((s->mcr & 0x08) << 4);
		} else {
			v = 0xb0; /* DCD, DSR, CTS: the line is always up */
		}
		break;
	case UART_SCR:
		return s->scr;
	}
	serial_update_irq(s);
	return v;
}

uint8_t serial_read(struct serial *s, unsigned off)
{
	uint8_t v;

	pthread_mutex_lock(&s->lock);
	v = serial_read_locked(s, off);
	pthread_mutex_unlock(&s->lock);
	return v;
}

void serial_read_many(struct serial *s, unsigned off, uint8_t *buf, unsigned n)
{
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < n; i++)
		buf[i] = serial_read_locked(s, off);
	pthread_mutex_unlock(&s->lock);
}

void serial_write(struct serial *s, unsigned off, uint8_t val)
{
	pthread_mutex_lock(&s->lock);
	switch (off) {
	case UART_RBR:
		if (s->lcr & LCR_DLAB) {
			s->dll = val;
			break;
		}
		if (s->mcr & MCR_LOOP) {
			if (s->rx.count < fifo_cap(s))
				fifo_push(&s->rx, val);
			s->thri_pending = true;
			break;
		}
		/* The guest should wait for THRE; if it does not, hold the byte
		 * rather than lose it (the FIFO never overflows: it only grows
		 * while the chardev refuses, and is bounded by its capacity). */
		if (s->tx.count < fifo_cap(s))
			fifo_push(&s->tx, val);
		s->thri_pending = false;
		serial_flush_tx(s);
		break;
	case UART_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = val;
			break;
		}
		/* Enabling THRI with an empty transmitter raises it at once. */
		if ((val & IER_THRI) && !(s->ier & IER_THRI) && !s->tx.count)
			s->thri_pending = true;
		s->ier = val & 0x0f;
		break;
	case UART_IIR: /* FCR */
		if ((val ^ s->fcr) & FCR_ENABLE) {
			s->rx.count = s->tx.count = 0;
			s->rx.head = s->tx.head = 0;
		}
		if (val & FCR_CLEAR_RX)
			s->rx.count = 0;
		if (val & FCR_CLEAR_TX) {
			s->tx.count = 0;
			s->thri_pending = true;
		}
		s->fcr = val & 0xc9;
		serial_fill_rx(s);
		break;
	case UART_LCR:
		s->lcr = val;
		break;
	case UART_MCR:
		s->mcr = val & 0x1f;
		if (!(s->mcr & MCR_LOOP))
			serial_fill_rx(s);
		break;
	case UART_LSR:
	case UART_MSR:
		break;
	case UART_SCR:
		s->scr = val;
		break;
	}
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

/* --- state -------------------------------------------------------------------- */

static const struct state_field serial_fields[] = {
	STATE_FIELD_U8(1, struct serial_state, ier, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(2, struct serial_state, fcr, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(3, struct serial_state, lcr, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(4, struct serial_state, mcr, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(5, struct serial_state, scr),
	STATE_FIELD_U8(6, struct serial_state, dll),
	STATE_FIELD_U8(7, struct serial_state, dlm),
	STATE_FIELD_U8(8, struct serial_state, thri_pending, .flags = STATE_F_REQUIRED),
	STATE_FIELD_VBYTES(9, struct serial_state, rx, rx_len, .flags = STATE_F_REQUIRED),
	STATE_FIELD_VBYTES(10, struct serial_state, tx, tx_len, .flags = STATE_F_REQUIRED),
};
const struct state_desc serial_state_desc = STATE_DESC("serial", 1, 1, serial_fields);

void serial_save(struct serial *s, struct serial_state *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->lock);
	st->ier = s->ier;
	st->fcr = s->fcr;
	st->lcr = s->lcr;
	st->mcr = s->mcr;
	st->scr = s->scr;
	st->dll = s->dll;
	st->dlm = s->dlm;
	st->thri_pending = s->thri_pending;
	st->rx_len = s->rx.count;
	for (unsigned i = 0; i < s->rx.count; i++)
		st->rx[i] = s->rx.data[(s->rx.head + i) % SERIAL_FIFO_LEN];
	st->tx_len = s->tx.count;
	for (unsigned i = 0; i < s->tx.count; i++)
		st->tx[i] = s->tx.data[(s->tx.head + i) % SERIAL_FIFO_LEN];
	pthread_mutex_unlock(&s->lock);
}

int serial_load(struct serial *s, const struct serial_state *st)
{
	if (st->rx_len > SERIAL_FIFO_LEN || st->tx_len > SERIAL_FIFO_LEN || st->thri_pending > 1)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	s->ier = st->ier & 0x0f;
	s->fcr = st->fcr & 0xc9;
	s->lcr = st->lcr;
	s->mcr = st->mcr & 0x1f;
	s->scr = st->scr;
	s->dll = st->dll;
	s->dlm = st->dlm;
	s->thri_pending = st->thri_pending;
	s->rx.head = s->tx.head = 0;
	s->rx.count = st->rx_len;
	memcpy(s->rx.data, st->rx, st->rx_len);
	s->tx.count = st->tx_len;
	memcpy(s->tx.data, st->tx, st->tx_len);
	serial_flush_tx(s);
	s->irq_level = -1; /* re-drive the line whatever it was */
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int serial_new(struct serial **out, struct chardev *chr, int irq, serial_irq_fn set_irq,
	       void *irq_opaque)
{
	struct serial *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	s->chr = chr;
	s->irq = irq;
	s->set_irq = set_irq;
	s->irq_opaque = irq_opaque;
	s->lcr = 0x03;
	s->mcr = 0x08;
	s->thri_pending = false;
	chardev_set_client(chr, &serial_chr_ops, s);
	*out = s;
	return 0;
}

void serial_free(struct serial *s)
{
	if (!s)
		return;
	chardev_set_client(s->chr, NULL, NULL);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
