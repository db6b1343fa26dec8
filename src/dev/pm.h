/* pm.h — ACPI PM1 block at 0x600 (QEMU's address on pc and q35 after
 * SeaBIOS): writing SLP_EN to PM1a_CNT (0x604) powers the guest off. The
 * FADT's reset register is port 0xcf9 (the PIIX/ICH reset control
 * register), written with 0x06 (SYS_RST | RST_CPU: a hard reset). Also
 * port 0x80 (POST codes, ignored). */
#ifndef CPRVM_PM_H
#define CPRVM_PM_H

#include <stdint.h>

#define CPRVM_PM_BASE 0x600
#define CPRVM_PM_LEN 8
#define PM1_CNT_SLP_EN (1 << 13)
#define CPRVM_RESET_PORT 0xcf9
#define CPRVM_RESET_VALUE 0x06
#define CPRVM_RESET_CPU 0x04 /* RST_CPU: the bit that starts a reset */

#endif
