/* acpi.h — the ACPI tables a PVH guest finds through rsdp_paddr: RSDP, XSDT,
 * FADT (the PM1 blocks at CPRVM_PM_BASE and the reset register at
 * CPRVM_RESET_PORT, see dev/pm.h), a DSDT whose AML (built with aml.h)
 * declares \_S5 so that a guest can power off, and a MADT listing one local
 * APIC per vCPU, the IOAPIC and the ISA overrides for the PIT (IRQ0 on GSI 2)
 * and the SCI (IRQ 9, level, active high). They live in reserved memory at
 * ACPI_BASE_GPA. */
#ifndef CPRVM_ACPI_H
#define CPRVM_ACPI_H

#include <stdint.h>

#include "mem/mem.h"

#define ACPI_BASE_GPA 0xe0000
#define ACPI_AREA_SIZE 0x10000

/* Returns the RSDP's guest-physical address, or 0 on failure. */
uint64_t acpi_build(struct guest_mem *m, int nr_cpus);

#endif
