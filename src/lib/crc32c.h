/* crc32c.h — CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the
 * checksum of the state stream (state/stream.h) and of anything else that
 * wants one. Chainable: pass 0 to start, the previous result to continue;
 * crc32c(crc32c(0, a, n), b, m) == crc32c(0, a followed by b, n + m).
 * Check value: crc32c(0, "123456789", 9) == 0xe3069283. */
#ifndef CPRVM_CRC32C_H
#define CPRVM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Uses the SSE4.2 crc32 instruction when the CPU has it. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The table-driven version, always; for tests that compare the two. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif
