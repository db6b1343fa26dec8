# cprvm — one non-recursive Makefile.
#   make            build cprvm, cprctl, cprvm-stream, the test guest and the Linux workload
#   make linux-guest  also fetch Debian's kernel for the Linux guest (build/linux)
#   make check      include layering, unit tests (cmocka) + system tests (pytest, real VMs; in an
#                   emulated L1 with KVM where this host has none: scripts/with-kvm)
#   make demo       boot the test guest, show heartbeats, stop/cont over QMP, quit
#   make bench      benchmarks (JSON lines)
#   make fuzz       longer fuzzing runs
#   SANITIZE=1      build with -fsanitize=address,undefined (into build-san/)
#   V=1             show full commands

ifeq ($(SANITIZE),1)
BUILD ?= build-san
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
SAN_FLAGS :=
endif

CC ?= gcc
ifeq ($(origin CC),default)
CC := gcc
endif
CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -Isrc -MMD -MP $(SAN_FLAGS)
LDFLAGS += $(SAN_FLAGS)
LDLIBS_JSON := -ljansson
LDLIBS += -lpthread
# cprvm itself is linked statically in the plain build: it starts ~0.3 ms
# sooner on the nested test host (no shared objects to map and relocate),
# which every restore pays, and a live update never depends on the shared
# libraries installed at the time. ASan needs its dynamic runtime.
ifeq ($(SANITIZE),1)
VMM_LDFLAGS :=
else
VMM_LDFLAGS := -static
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

SETUP_STAMP := $(BUILD)/.setup-done

all: $(BUILD)/cprvm $(BUILD)/cprctl $(BUILD)/cprvm-stream $(BUILD)/guest/guest.elf \
	$(BUILD)/linux/cprvm-workload

# --- dependencies from Debian, installed when missing -------------------------
$(SETUP_STAMP): scripts/setup.sh
	$(Q)mkdir -p $(BUILD)
	$(Q)scripts/setup.sh
	$(Q)touch $@

# --- the VMM ----------------------------------------------------------------
LIB_SRCS := $(wildcard src/lib/*.c)
CORE_SRCS := $(LIB_SRCS) $(wildcard src/vm/*.c src/vcpu/*.c src/x86/*.c src/mem/*.c \
	src/dev/*.c src/qmp/*.c src/state/*.c src/cpr/*.c)
CPRVM_SRCS := src/main.c $(CORE_SRCS)
CPRVM_OBJS := $(CPRVM_SRCS:%.c=$(BUILD)/%.o)

CPRCTL_SRCS := tools/cprctl.c $(LIB_SRCS)
CPRCTL_OBJS := $(CPRCTL_SRCS:%.c=$(BUILD)/%.o)

# The stream inspector needs every state table, so it links the core as the
# unit tests do (it never creates a VM).
CORE_OBJS := $(filter-out $(BUILD)/src/main.o,$(CPRVM_OBJS))

$(BUILD)/%.o: %.c | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/cprvm: $(CPRVM_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(VMM_LDFLAGS) -o $@ $^ $(LDLIBS_JSON) $(LDLIBS)

$(BUILD)/cprctl: $(CPRCTL_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS_JSON) $(LDLIBS)

$(BUILD)/cprvm-stream: $(BUILD)/tools/cprvm-stream.o $(CORE_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS_JSON) $(LDLIBS)

# A second build of cprvm that reports another version: live-update tests
# replace one build with a different one, not only with itself.
NEXT_OBJS := $(CPRVM_SRCS:%.c=$(BUILD)/next/%.o)
$(BUILD)/next/%.o: %.c | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (next)")
	$(Q)$(CC) $(CFLAGS) -DCPRVM_VERSION_MICRO=99 -c -o $@ $<

$(BUILD)/cprvm-next: $(NEXT_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS_JSON) $(LDLIBS)

# --- the test guest (its own flags; never sanitized) --------------------------
include guest/guest.mk

# --- the Linux guest (tests/linux/README.md) ----------------------------------
# The workload runs inside Debian's kernel from a busybox initramfs: static,
# its own flags, never sanitized (it is a test-time program, not cprvm).
$(BUILD)/linux/cprvm-workload: tests/linux/workload.c guest/verify_page.h | $(SETUP_STAMP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (static)")
	$(Q)gcc -static -O2 -Wall -Wextra -Werror -std=gnu11 -Iguest -o $@ $<

# Debian's kernel, fetched once into build/linux (or $$CPRVM_LINUX_CACHE).
linux-guest: $(BUILD)/linux/cprvm-workload
	$(Q)scripts/linux-guest prepare

# --- unit tests (cmocka, no KVM) ---------------------------------------------
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/unit/%)

$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(filter-out $(BUILD)/src/main.o,$(CPRVM_OBJS))
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(LDLIBS_JSON) $(LDLIBS)

unit: $(UNIT_BINS)
	$(Q)set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

# Our AML for each case tests/host/test_aml.py compiles with iasl.
AML_CASES := $(BUILD)/tests/aml-cases
$(AML_CASES): $(BUILD)/tests/host/aml_cases.o $(CORE_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS_JSON) $(LDLIBS)

# Whatever needs a VM runs through scripts/with-kvm: directly where /dev/kvm
# works, else in an emulated L1 with KVM (CPRVM_PLATFORM=nested forces that).
WITH_KVM := scripts/with-kvm
PYTEST := /usr/bin/python3 -m pytest -q -p no:cacheprovider

# Under sanitizers the serial echo shrinks to 128 KiB and the 200-update soak
# to 40, and waits are twice as patient; the tests size other workloads for
# the platform they run on
# (tests/system/conftest.py); everything else runs the same.
system: all $(BUILD)/cprvm-next
	$(Q)$(WITH_KVM) env CPRVM_BUILD=$(BUILD) \
		$(if $(filter 1,$(SANITIZE)),CPRVM_ECHO_BYTES=131072 CPRVM_SOAK_UPDATES=40 CPRVM_PATIENCE=2) \
		$(PYTEST) tests/system $(PYTEST_ARGS)

# The platform script itself, on this host: exit status, clean-up, messages;
# and our AML against iasl's.
host: all $(AML_CASES)
	$(Q)CPRVM_BUILD=$(BUILD) $(PYTEST) tests/host

# Includes go one way: lib/state/mem, x86/dev, vcpu, vm, cpr, qmp, main. An
# include that goes up fails (scripts/layers-known lists those still to fix).
layers:
	$(Q)scripts/check-layers

# The fuzzers carry their own sanitizers, and the platform script does not
# depend on the build: both once, in the plain check.
ifeq ($(SANITIZE),1)
check: all layers unit system
else
check: all layers unit host system fuzz-smoke
endif

fuzz-smoke: $(SETUP_STAMP)
	$(Q)$(MAKE) --no-print-directory -f fuzz/fuzz.mk FUZZ_SECONDS=$${FUZZ_SECONDS:-10} run

demo: all
	$(Q)$(WITH_KVM) scripts/demo.sh $(BUILD)

bench: all
	$(Q)$(WITH_KVM) env CPRVM_BUILD=$(BUILD) /usr/bin/python3 bench/run.py

fuzz: $(SETUP_STAMP)
	$(Q)$(MAKE) -f fuzz/fuzz.mk FUZZ_SECONDS=$${FUZZ_SECONDS:-300} run

clean:
	rm -rf build build-san

.PHONY: all unit layers system host check demo bench fuzz fuzz-smoke clean linux-guest

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
