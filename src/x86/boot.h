/* boot.h — the boot vCPU's registers at the PVH entry (Xen's PVH ABI):
 * 32-bit protected mode, paging off, flat 4 GiB segments, EBX pointing at
 * the hvm_start_info (pvh.h). */
#ifndef CPRVM_BOOT_H
#define CPRVM_BOOT_H

#include <stdint.h>

/* vcpu_fd: a KVM vCPU fd, not running. Returns 0 or -errno. */
int x86_setup_boot_vcpu(int vcpu_fd, uint32_t entry, uint32_t start_info);

#endif
