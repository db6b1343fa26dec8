# fuzz/fuzz.mk — libFuzzer targets, built with clang into build/fuzz/.
# From the repository root:
#   make -f fuzz/fuzz.mk FUZZ_SECONDS=N run   run each fuzzer for N seconds
#   make -f fuzz/fuzz.mk smoke                30 seconds in all (make check)
#   make -f fuzz/fuzz.mk build                just the fuzzers and their seed corpora
#   make -f fuzz/fuzz.mk run-pvh / run-stream / run-early  one of them
# Targets: fuzz_pvh (pvh_load_elf), fuzz_stream (stream_parse + state_load),
# fuzz_early (vcpu_early_decode: a live update's early vCPU state).
# Crashing inputs land in build/fuzz/ as crash-*; the corpora grow in
# build/fuzz/corpus-*/ across runs.

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 300
FUZZ_OUT := build/fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -Wall -Wextra \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer

PVH_FUZZ := $(FUZZ_OUT)/fuzz_pvh
PVH_SRCS := fuzz/fuzz_pvh.c src/x86/pvh.c src/mem/mem.c
PVH_HDRS := src/x86/pvh.h src/mem/mem.h
PVH_CORPUS := $(FUZZ_OUT)/corpus-pvh
PVH_SEEDED := $(FUZZ_OUT)/.corpus-pvh-seeded

STREAM_FUZZ := $(FUZZ_OUT)/fuzz_stream
STREAM_SRCS := fuzz/fuzz_stream.c $(wildcard src/state/*.c) src/lib/crc32c.c src/lib/log.c
STREAM_HDRS := $(wildcard src/state/*.h) src/lib/crc32c.h
STREAM_CORPUS := $(FUZZ_OUT)/corpus-stream
STREAM_SEEDED := $(FUZZ_OUT)/.corpus-stream-seeded

EARLY_FUZZ := $(FUZZ_OUT)/fuzz_early
EARLY_SRCS := fuzz/fuzz_early.c src/vcpu/vcpu_early.c
EARLY_HDRS := src/vcpu/vcpu_state.h
EARLY_CORPUS := $(FUZZ_OUT)/corpus-early
EARLY_SEEDED := $(FUZZ_OUT)/.corpus-early-seeded

build: $(PVH_FUZZ) $(PVH_SEEDED) $(STREAM_FUZZ) $(STREAM_SEEDED) $(EARLY_FUZZ) $(EARLY_SEEDED)

$(PVH_FUZZ): $(PVH_SRCS) $(PVH_HDRS) fuzz/fuzz.mk
	@mkdir -p $(FUZZ_OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(PVH_SRCS)

# Seeds: the fuzzer writes its own small valid images; the test guest joins
# them when it has been built.
$(PVH_SEEDED): $(PVH_FUZZ)
	@mkdir -p $(PVH_CORPUS)
	$(PVH_FUZZ) --write-seeds=$(PVH_CORPUS)
	@if [ -f build/guest/guest.elf ]; then cp build/guest/guest.elf $(PVH_CORPUS)/guest.elf; fi
	@touch $@

$(STREAM_FUZZ): $(STREAM_SRCS) $(STREAM_HDRS) fuzz/fuzz.mk
	@mkdir -p $(FUZZ_OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(STREAM_SRCS) -ljansson

$(STREAM_SEEDED): $(STREAM_FUZZ)
	@mkdir -p $(STREAM_CORPUS)
	$(STREAM_FUZZ) --write-seeds=$(STREAM_CORPUS)
	@touch $@

$(EARLY_FUZZ): $(EARLY_SRCS) $(EARLY_HDRS) fuzz/fuzz.mk
	@mkdir -p $(FUZZ_OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(EARLY_SRCS)

$(EARLY_SEEDED): $(EARLY_FUZZ)
	@mkdir -p $(EARLY_CORPUS)
	$(EARLY_FUZZ) --write-seeds=$(EARLY_CORPUS)
	@touch $@

run: run-pvh run-stream run-early

run-pvh: $(PVH_FUZZ) $(PVH_SEEDED)
	$(PVH_FUZZ) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_OUT)/ $(PVH_CORPUS)

run-stream: $(STREAM_FUZZ) $(STREAM_SEEDED)
	$(STREAM_FUZZ) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_OUT)/ $(STREAM_CORPUS)

run-early: $(EARLY_FUZZ) $(EARLY_SEEDED)
	$(EARLY_FUZZ) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_OUT)/ $(EARLY_CORPUS)

# 30 seconds in all, split between the fuzzers.
smoke:
	@$(MAKE) -f fuzz/fuzz.mk FUZZ_SECONDS=10 run

clean:
	rm -rf $(FUZZ_OUT)

.PHONY: build run run-pvh run-stream run-early smoke clean
