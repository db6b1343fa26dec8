# fuzz/fuzz.mk — libFuzzer targets, built with clang into build/fuzz/.
# From the repository root:
#   make -f fuzz/fuzz.mk FUZZ_SECONDS=N run   fuzz pvh_load_elf for N seconds
#   make -f fuzz/fuzz.mk smoke                the same for 20 seconds (make check)
#   make -f fuzz/fuzz.mk build                just the fuzzer and its seed corpus
# Crashing inputs land in build/fuzz/ as crash-*; the corpus grows in
# build/fuzz/corpus-pvh/ across runs.

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

build: $(PVH_FUZZ) $(PVH_SEEDED)

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

run: build
	$(PVH_FUZZ) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=$(FUZZ_OUT)/ $(PVH_CORPUS)

smoke:
	@$(MAKE) -f fuzz/fuzz.mk FUZZ_SECONDS=20 run

clean:
	rm -rf $(FUZZ_OUT)

.PHONY: build run smoke clean
