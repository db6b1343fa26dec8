/* snapshot.h — VM state to a file and back ("when and over what" for the
 * file transport). The bytes are state/'s stream; this file wraps it in a
 * container that also holds the RAM of a full snapshot:
 *
 *   offset 0      container header (one 4 KiB page)
 *     0  u8[8]  magic "CPRVMSNP"
 *     8  u32    container version (1)
 *     12 u32    flags (bit 0: RAM is in this file)
 *     16 u64    stream offset (4096)
 *     24 u64    stream length
 *     32 u64    RAM offset (2 MiB aligned; 0 when RAM is not in this file)
 *     40 u64    RAM length
 *     48 u32    CRC32C of bytes 0..47
 *   4096          the state stream (docs/stream-format.md)
 *   RAM offset    guest RAM as laid out in the memfd (low RAM, then RAM
 *                 above 4 GiB), zero pages left as holes: the file is sparse
 *                 and restore maps it MAP_PRIVATE instead of reading it.
 */
#ifndef CPRVM_SNAPSHOT_H
#define CPRVM_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dev/serial.h"
#include "vcpu/vcpu_state.h"
#include "vm/config.h"

#define SNAP_MAGIC "CPRVMSNP"
#define SNAP_VERSION 1
#define SNAP_F_RAM 0x1 /* container flags */
#define SNAP_HDR_SIZE 4096
#define SNAP_RAM_ALIGN (2ULL << 20)
#define SNAP_MAX_STREAM (256ULL << 20)

/* Section "machine", field ram_mode: where guest RAM is. */
enum { RAM_IN_SNAPSHOT = 1, RAM_IN_MEM_PATH = 2 };

struct vm;
struct sbuf;
struct stream_index;

/* Section "machine": what the VM was, to rebuild and to refuse mismatches. */
struct machine_state {
	uint64_t mem_size, low_size, high_size;
	uint32_t nr_cpus, tsc_khz;
	uint32_t ram_mode;
	uint32_t mem_path_len;
	char mem_path[512];
};

enum { RAM_IN_FD = 3 }; /* live update: RAM handed over as fd "ram" */

/* A validated stream, loaded into plain structs, not yet applied. */
struct vm_build;

struct snapshot {
	int fd;
	uint64_t ram_off; /* RAM_IN_SNAPSHOT: where its RAM area starts in fd */
	struct machine_state machine;
	struct vcpu_state *vcpus;
	uint32_t nr_vcpus;
	/* Live update: vCPU i came as "vcpu-early/i", the bytes of its early
	 * messages (vcpu_early_encode_all), here in the parsed stream (valid
	 * while that is); NULL: as "vcpu/i". vcpus[i] holds it decoded. */
	const uint8_t *vcpu_early[CPRVM_MAX_CPUS];
	uint32_t vcpu_early_len[CPRVM_MAX_CPUS];
	/* snapshot_apply on the vCPU threads: how many the early state had
	 * set whole (nothing was left to do for them). */
	uint32_t nr_set_early;
	struct vm_kvm_state kvm;
	struct serial_state serial;
};

/* The "machine" section for this VM. */
void snapshot_machine(struct vm *vm, struct machine_state *ms, uint32_t ram_mode);
/* Sections vcpu/N, irqchip, pit, clock, serial/0 (VM paused). The vCPUs'
 * state is read now, or was (captured: one per vCPU). early_sections (a
 * live update's new side has the early messages, cpr/early.c): a
 * captured vCPU goes as "vcpu-early/N" instead, where it can. */
int snapshot_put_devices(struct vm *vm, struct sbuf *b, const struct vcpu_state *captured,
			 bool early_sections);
/* Parses and validates a whole stream into s (machine checked against cfg,
 * every device section loaded); *idx stays valid for more sections (the
 * caller frees it). cpr: also accept the live-update sections. */
int snapshot_load_stream(const uint8_t *stream, size_t len, const struct vm_config *cfg, bool cpr,
			 struct snapshot *s, struct stream_index *idx, char *err, size_t errlen);
struct state_desc;

/* Section "machine" (RAM size and layout, vCPU count, where RAM lives). */
extern const struct state_desc machine_state_desc;

/* The table for a section of a snapshot's stream ("machine", "vcpu/N",
 * "irqchip", "pit", "clock", "serial/0"), NULL for a name this version does
 * not know. The shape stream_describe() takes, for cprvm-stream. */
const struct state_desc *snapshot_desc_for(const char *section, void *opaque);

/* VM paused. bypass: RAM stays in the --mem-path file, only device state is
 * written. Written to PATH.tmp then renamed: a failure leaves no file. */
int snapshot_save(struct vm *vm, const char *path, bool bypass, char *err, size_t errlen);

/* Reads and validates a whole snapshot (container, stream, every section,
 * the configuration against cfg) without touching any VM. */
int snapshot_open(const char *path, const struct vm_config *cfg, struct snapshot **out,
		  char *err, size_t errlen);
/* How vm_create builds the VM that an opened snapshot is applied to: its
 * own RAM area, mapped private, or the --mem-path file. */
void snapshot_vm_build(const struct snapshot *s, struct vm_build *b);
/* Applies a validated snapshot to a VM built by vm_create(cfg, b). */
/* same_host: restore the TSC offset and kvmclock against real time (live
 * update); otherwise the guest's clocks resume where they stopped.
 * on_vcpu_threads: the vCPU threads are parked and restore their own. */
int snapshot_apply(struct snapshot *s, struct vm *vm, bool same_host, bool on_vcpu_threads,
		   char *err, size_t errlen);
void snapshot_free(struct snapshot *s);

#endif
