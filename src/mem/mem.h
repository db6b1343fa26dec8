/* mem.h — guest RAM: one fd (anonymous memfd, or a --mem-path file), mapped
 * MAP_SHARED once, exposed to KVM as one or two memslots.
 *
 * Layout (guest-physical): [0, low_size) from file offset 0; if RAM exceeds
 * CPRVM_LOW_MEM_MAX, the rest at [4 GiB, 4 GiB + high_size) from file offset
 * low_size. The 3..4 GiB hole leaves room for the IOAPIC and LAPIC MMIO.
 * Invariant: the fd outlives any mapping; a memslot is never changed while a
 * vCPU runs. */
#ifndef CPRVM_MEM_H
#define CPRVM_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CPRVM_LOW_MEM_MAX (3ULL << 30)
#define CPRVM_HIGH_MEM_BASE (4ULL << 30)

struct guest_mem {
	int fd;
	uint64_t size;
	uint8_t *host;	    /* mapping of the whole fd */
	uint64_t low_size;  /* bytes at GPA 0 */
	uint64_t high_size; /* bytes at GPA 4 GiB */
	char *path;	    /* --mem-path, or NULL for memfd */
	bool created;	    /* we created the file: remove it if setup fails */
	bool private_map;   /* MAP_PRIVATE over a snapshot: not shareable */
};

/* Opens (creates, if may_create) and maps. On error returns -errno and a
 * message in err. A restore never creates: its RAM file must exist. */
int mem_open(struct guest_mem *m, uint64_t size, const char *path, bool may_create, char *err,
	     size_t errlen);
/* Maps size bytes of fd at offset MAP_PRIVATE: pages load on demand from
 * the file, guest writes stay private (restoring a full snapshot). */
int mem_open_private(struct guest_mem *m, int fd, uint64_t offset, uint64_t size, char *err,
		     size_t errlen);
/* Maps an fd that already holds guest RAM (live update), MAP_SHARED. path
 * is what --mem-path said, or NULL for a memfd. */
int mem_adopt(struct guest_mem *m, int fd, uint64_t size, const char *path, char *err,
	      size_t errlen);
/* Registers the memslots with KVM (do it before KVM_CREATE_IRQCHIP: a
 * memslot added afterwards costs KVM milliseconds more). */
int mem_register(struct guest_mem *m, int vmfd);
/* Removes the memslots (before replacing guest RAM; no vCPU may run). */
void mem_unregister(struct guest_mem *m, int vmfd);
/* Host pointer for [gpa, gpa+len) or NULL if any part is not RAM. */
void *mem_gpa_to_hva(struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Unmaps and closes. If remove_created and we created the file, unlink it. */
void mem_close(struct guest_mem *m, bool remove_created);

#endif
