# fuzz/fuzz.mk — libFuzzer targets, built with clang into build/fuzz/.
# From the repository root:
#   make -f fuzz/fuzz.mk FUZZ_SECONDS=N run   run each fuzzer for N seconds
#   make -f fuzz/fuzz.mk smoke                10 seconds each (make check)
#   make -f fuzz/fuzz.mk build                just the fuzzers and their seed corpora
#   make -f fuzz/fuzz.mk run-pvh / run-linux / run-stream / run-early  one of them
# Targets: fuzz_pvh (pvh_load_elf), fuzz_linux (linux_load_bzimage and the
# zero page), fuzz_stream (stream_parse + state_load),
# fuzz_early (vcpu_early_decode: a live update's early vCPU state),
# fuzz_cpr (cpr_proto_recv_msg + cpr_load_registry: a live update's first
# message, as the new side reads it from the socket).
# Crashing inputs land in build/fuzz/ as crash-*; the corpora grow in
# build/fuzz/corpus-*/ across runs.

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 300
FUZZ_OUT := build/fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -Wall -Wextra \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer

# $(call fuzzer,NAME,SOURCES,HEADERS,LIBS,MORE_SEEDS): $(FUZZ_OUT)/fuzz_NAME,
# its seed corpus $(FUZZ_OUT)/corpus-NAME (the fuzzer writes its own small
# valid inputs; MORE_SEEDS, a command, may add to them), and run-NAME.
define fuzzer
$(FUZZ_OUT)/fuzz_$(1): $(2) $(3) fuzz/fuzz_seeds.h fuzz/fuzz.mk
	@mkdir -p $(FUZZ_OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $$@ $(2) $(4)

$(FUZZ_OUT)/.corpus-$(1)-seeded: $(FUZZ_OUT)/fuzz_$(1)
	@mkdir -p $(FUZZ_OUT)/corpus-$(1)
	$(FUZZ_OUT)/fuzz_$(1) --write-seeds=$(FUZZ_OUT)/corpus-$(1)
	$(5)
	@touch $$@

run-$(1): $(FUZZ_OUT)/fuzz_$(1) $(FUZZ_OUT)/.corpus-$(1)-seeded
	$(FUZZ_OUT)/fuzz_$(1) -max_total_time=$$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_OUT)/ $(FUZZ_OUT)/corpus-$(1)

build: $(FUZZ_OUT)/fuzz_$(1) $(FUZZ_OUT)/.corpus-$(1)-seeded
run: run-$(1)
endef

build:
run:

# The test guest joins the PVH seeds when it has been built.
PVH_MORE_SEEDS := @if [ -f build/guest/guest.elf ]; then cp build/guest/guest.elf $(FUZZ_OUT)/corpus-pvh/guest.elf; fi
$(eval $(call fuzzer,pvh,fuzz/fuzz_pvh.c src/x86/pvh.c src/x86/e820.c src/mem/mem.c,src/x86/pvh.h src/x86/e820.h src/mem/mem.h,,$(PVH_MORE_SEEDS)))
$(eval $(call fuzzer,linux,fuzz/fuzz_linux.c src/x86/linux.c src/x86/e820.c src/mem/mem.c,src/x86/linux.h src/x86/e820.h src/mem/mem.h,,))
$(eval $(call fuzzer,stream,fuzz/fuzz_stream.c $(wildcard src/state/*.c) src/lib/crc32c.c src/lib/log.c,$(wildcard src/state/*.h) src/lib/crc32c.h,-ljansson,))
$(eval $(call fuzzer,early,fuzz/fuzz_early.c src/vcpu/vcpu_early.c,src/vcpu/vcpu_state.h,,))
$(eval $(call fuzzer,cpr,fuzz/fuzz_cpr.c src/cpr/proto.c src/cpr/registry.c $(wildcard src/state/*.c) src/lib/crc32c.c src/lib/log.c src/lib/trace.c,src/cpr/proto.h src/cpr/cpr_priv.h,-ljansson,))

# 10 seconds for each fuzzer.
smoke:
	@$(MAKE) -f fuzz/fuzz.mk FUZZ_SECONDS=10 run

clean:
	rm -rf $(FUZZ_OUT)

.PHONY: build run run-pvh run-linux run-stream run-early run-cpr smoke clean
