/* pm.h — ACPI PM1 block at 0x600 (QEMU's address on pc and q35 after
 * SeaBIOS): writing SLP_EN to PM1a_CNT (0x604) powers the guest off. Also
 * port 0x80 (POST codes, ignored). */
#ifndef CPRVM_PM_H
#define CPRVM_PM_H

#include <stdint.h>

#define CPRVM_PM_BASE 0x600
#define CPRVM_PM_LEN 8
#define PM1_CNT_SLP_EN (1 << 13)

#endif
