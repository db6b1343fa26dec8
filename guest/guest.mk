# guest/guest.mk - builds the test guest, $(BUILD)/guest/guest.elf: a freestanding
# x86-64 PVH ELF (see guest/README.md). Included by the top Makefile; also works
# alone: make -f guest/guest.mk BUILD=build build/guest/guest.elf
# Uses its own GUEST_* flags: the host's CFLAGS/LDFLAGS (sanitizers...) never apply.

BUILD ?= build
Q ?= @
GUEST_CC ?= gcc

GUEST_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror \
	-ffreestanding -fno-builtin -nostdlib -fno-pic -fno-pie -mno-red-zone \
	-mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables \
	-fno-omit-frame-pointer -fcf-protection=none -fno-tree-loop-distribute-patterns \
	-MMD -MP
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,-T,guest/guest.ld -Wl,--build-id=none \
	-Wl,-z,max-page-size=4096 -Wl,--no-warn-rwx-segments

GUEST_SRCS := $(wildcard guest/*.c) $(wildcard guest/*.S)
GUEST_OBJS := $(patsubst guest/%,$(BUILD)/guest/%.o,$(GUEST_SRCS))

# Static pattern rules: they win over the top Makefile's $(BUILD)/%.o rule.
$(filter %.c.o,$(GUEST_OBJS)): $(BUILD)/guest/%.c.o: guest/%.c guest/guest.mk
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(GUEST_CC) $(GUEST_CFLAGS) -c -o $@ $<

$(filter %.S.o,$(GUEST_OBJS)): $(BUILD)/guest/%.S.o: guest/%.S guest/guest.mk
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AS      $<")
	$(Q)$(GUEST_CC) $(GUEST_CFLAGS) -c -o $@ $<

$(BUILD)/guest/guest.elf: $(GUEST_OBJS) guest/guest.ld
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(GUEST_CC) $(GUEST_LDFLAGS) -o $@ $(GUEST_OBJS) -lgcc

-include $(GUEST_OBJS:.o=.d)
