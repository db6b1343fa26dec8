/*
 * serial.c - COM1 (16550A at 0x3f8), polled, from CPL3 (IOPL=3; see enter_user).
 *
 * Every port access is a VM exit (~31 us at CPL3 on the target host), so:
 *  - TX checks LSR.THRE once per 16 bytes (the TX FIFO), then writes them;
 *  - RX reads 14 bytes with one `rep insb` when IIR says the FIFO reached the
 *    14-byte trigger level, one byte after LSR.DR otherwise.
 * Lines from several CPUs are serialized by serial_lock; a line is written as a
 * whole while holding it, so lines never interleave. Waiters keep the stall probe
 * ticking.
 */
#include "guest.h"

#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_IIR 2
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define UART_FIFO 16
#define UART_RX_TRIGGER 14

static u32 serial_lock;
bool serial_tx_cpl0; /* option serial=cpl0: whole lines written by the CPL0 service */

void serial_init(void)
{
	outb(COM1 + UART_LCR, 0x80); /* DLAB */
	outb(COM1 + 0, 1);           /* divisor 1: 115200 baud */
	outb(COM1 + 1, 0);
	outb(COM1 + UART_LCR, 0x03); /* 8N1 */
	outb(COM1 + UART_FCR, 0xc7); /* FIFO on, both cleared, RX trigger 14 */
	outb(COM1 + UART_IER, 0x01); /* so IIR reports "data available"; IRQ stays masked */
	outb(COM1 + UART_MCR, 0x03); /* DTR RTS, OUT2 off */
}

static void serial_wait_thre(struct pcpu *p)
{
	while (!(inb(COM1 + UART_LSR) & LSR_THRE)) {
		if (p)
			tick(p);
		cpu_relax();
	}
	/* And after the read that found room: else a host pause right after
	 * it (a live update stops a vCPU at an exit) would be seen together
	 * with the next byte's exit, as one gap. */
	if (p)
		tick(p);
}

/*
 * One THRE check per 16 bytes, then plain `outb`s: KVM does not batch
 * `rep outsb` (16 bytes are 16 exits either way), and single writes let the
 * stall probe tick between exits instead of seeing a whole line as one gap.
 */
void serial_tx(const char *s, size_t n, struct pcpu *p)
{
	while (n) {
		size_t chunk = n < UART_FIFO ? n : UART_FIFO;

		serial_wait_thre(p);
		for (size_t i = 0; i < chunk; i++) {
			outb(COM1 + UART_THR, (u8)s[i]);
			if (p)
				tick(p);
		}
		s += chunk;
		n -= chunk;
	}
}

void serial_line(const char *s, size_t n)
{
	struct pcpu *p = stall_probe ? &pcpus[this_cpu()] : NULL;

	while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE)) {
		while (__atomic_load_n(&serial_lock, __ATOMIC_RELAXED)) {
			if (p)
				tick(p);
			cpu_relax();
		}
	}
	if (serial_tx_cpl0)
		guest_call2(SYS_WRITE, (u64)s, n);
	else
		serial_tx(s, n, p);
	__atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

void say(const char *f, ...)
{
	char line[1280];
	va_list ap;
	int n;

	va_start(ap, f);
	n = vfmt(line, sizeof(line) - 1, f, ap);
	va_end(ap);
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	serial_line(line, (size_t)n);
}

/*
 * From an exception handler: the CPU may have faulted while holding the lock,
 * so wait a bounded time for it, then write anyway.
 */
void serial_panic_line(const char *s, size_t n)
{
	int spins = 2000;

	while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE) && --spins)
		cpu_relax();
	serial_tx(s, n, NULL);
	__atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

/*
 * Byte-exact echo, nothing else. One LSR read per round gives both DR and THRE;
 * THRE stays valid until we write, and DR plus IIR tell how much to read.
 * Stop reading while the buffer cannot take a full FIFO so nothing is dropped:
 * the UART then holds further input back at the host side.
 */
void serial_echo(void)
{
	static char buf[256];
	size_t len = 0;

	for (;;) {
		u8 lsr = inb(COM1 + UART_LSR);

		if ((lsr & LSR_THRE) && len) {
			size_t chunk = len < UART_FIFO ? len : UART_FIFO;

			if (serial_tx_cpl0) {
				guest_call2(SYS_WRITE, (u64)buf, chunk);
			} else {
				for (size_t i = 0; i < chunk; i++)
					outb(COM1 + UART_THR, (u8)buf[i]);
			}
			memmove(buf, buf + chunk, len - chunk);
			len -= chunk;
		}
		if ((lsr & LSR_DR) && len + UART_RX_TRIGGER <= sizeof(buf)) {
			u8 iir = inb(COM1 + UART_IIR);

			if ((iir & 0x0f) == 0x04) {
				insb(COM1 + UART_RBR, buf + len, UART_RX_TRIGGER);
				len += UART_RX_TRIGGER;
			} else {
				buf[len++] = (char)inb(COM1 + UART_RBR);
			}
		}
	}
}
