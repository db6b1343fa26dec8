/* boot.h — the boot vCPU's registers at the kernel's entry, as both boot
 * protocols want them (Xen's PVH ABI, and the Linux boot protocol's 32-bit
 * entry): protected mode, paging and interrupts off, flat 4 GiB segments
 * with selectors 0x10 (code) and 0x18 (data), and the boot information in
 * EBX (PVH) or ESI (Linux), see loader.h. */
#ifndef CPRVM_BOOT_H
#define CPRVM_BOOT_H

#include <stdint.h>

#include "x86/loader.h"

/* vcpu_fd: a KVM vCPU fd, not running. Returns 0 or -errno. */
int x86_setup_boot_vcpu(int vcpu_fd, const struct x86_boot_entry *e);

#endif
