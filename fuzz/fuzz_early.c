/* fuzz_early.c — libFuzzer target for vcpu_early_decode (vcpu/vcpu_state.h),
 * the messages of a live update's early state (one per part of a vCPU's
 * state, and the MSRs read ahead of the stop) that the new side reads from
 * another process and sets before the stream is checked; and for
 * vcpu_early_decode_all, the four of them back to back as a live stream's
 * "vcpu-early/N" section carries them.
 *
 * Beyond "no crash" (ASan/UBSan): a refusal changes nothing the caller can
 * see beyond the output state, and an accepted message is exactly what the
 * encoder writes for what was decoded (encode(decode(m)) == m), so nothing
 * in it was skipped or read beyond its bounds.
 *
 * Run with --write-seeds=DIR to write a few valid messages into DIR and
 * exit; fuzz/fuzz.mk does this. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_seeds.h"
#include "vcpu/vcpu_state.h"

static struct vcpu_state st;
static uint8_t out[VCPU_EARLY_MAX];
static uint8_t out_all[VCPU_EARLY_ALL_MAX];

static void fuzz_die(const char *why)
{
	fprintf(stderr, "fuzz_early: %s\n", why);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum vcpu_early_part part = 0;
	uint32_t id = 0xffffffff;
	size_t n;

	/* The whole vCPU, for the id its first header names. */
	id = size >= 8 ? (uint32_t)data[6] | (uint32_t)data[7] << 8 : 0;
	if (vcpu_early_decode_all(data, size, id, &st) == 0) {
		n = vcpu_early_encode_all(&st, id, out_all, sizeof(out_all));
		if (n != size || memcmp(out_all, data, size))
			fuzz_die("an accepted vCPU is not what its decoded state encodes to");
	}
	id = 0xffffffff;
	if (vcpu_early_decode(data, size, &id, &part, &st) < 0)
		return 0;
	/* The four parts, and the MSRs read ahead of the stop. */
	if (id > UINT16_MAX || part < VCPU_EARLY_XSAVE ||
	    (part > VCPU_EARLY_PARTS && part != VCPU_EARLY_MSRS_AHEAD) ||
	    st.xsave_len > VCPU_XSAVE_MAX || st.nr_msrs > VCPU_MAX_MSRS ||
	    st.have_tsc_offset > 1 || st.have_sregs2)
		fuzz_die("accepted a message with a field out of bounds");
	n = vcpu_early_encode(&st, id, part, out, sizeof(out));
	if (n != size || memcmp(out, data, size))
		fuzz_die("an accepted message is not what its decoded state encodes to");
	return 0;
}

static void seed_write(const char *dir)
{
	static const uint32_t xsave_lens[] = { 0, 576, 2696, 4096 };
	static const uint32_t msrs[] = { 0, 1, 40 };
	char name[64];

	for (size_t a = 0; a < sizeof(xsave_lens) / sizeof(xsave_lens[0]); a++)
		for (size_t b = 0; b < sizeof(msrs) / sizeof(msrs[0]); b++) {
			memset(&st, 0, sizeof(st));
			st.xsave_len = xsave_lens[a];
			for (uint32_t i = 0; i < st.xsave_len; i++)
				st.xsave[i] = (uint8_t)(i * 7);
			st.lapic.regs[0x20] = 1;
			st.nr_msrs = msrs[b];
			for (uint32_t i = 0; i < st.nr_msrs; i++) {
				st.msrs[i].index = 0xc0000080 + i;
				st.msrs[i].data = 0x1000ull * i;
			}
			st.have_tsc_offset = b & 1;
			st.tsc_offset = st.have_tsc_offset ? -123456789ll : 0;
			st.regs.rip = 0x100000 + a;
			st.sregs.cr3 = 0x10c000;
			st.mp_state.mp_state = (uint32_t)b;
			for (int part = VCPU_EARLY_XSAVE; part <= VCPU_EARLY_MSRS_AHEAD; part++) {
				size_t n = vcpu_early_encode(&st, (uint32_t)a, part, out, sizeof(out));

				snprintf(name, sizeof(name), "seed-%zu-%zu-%d", a, b, part);
				fuzz_seed_file(dir, name, out, n);
			}
			{
				size_t n = vcpu_early_encode_all(&st, (uint32_t)a, out_all,
								 sizeof(out_all));

				snprintf(name, sizeof(name), "seed-%zu-%zu-all", a, b);
				fuzz_seed_file(dir, name, out_all, n);
			}
		}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_seed_option(*argc, *argv, seed_write);
	return 0;
}
