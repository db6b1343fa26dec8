/* mem.c — see mem.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "mem/mem.h"

static uint64_t host_mem_total(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);

	return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
}

static int mem_fail(char *err, size_t errlen, int ret, const char *msg, const char *path)
{
	if (path)
		snprintf(err, errlen, "%s '%s': %s", msg, path, strerror(-ret));
	else
		snprintf(err, errlen, "%s: %s", msg, strerror(-ret));
	return ret;
}

int mem_open(struct guest_mem *m, uint64_t size, const char *path, bool may_create, char *err,
	     size_t errlen)
{
	uint64_t total = host_mem_total();
	struct stat st;
	int ret;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	if (size & 0xfff) {
		snprintf(err, errlen, "--memory must be a multiple of 4 KiB");
		return -EINVAL;
	}
	/* A guest bigger than the host would die of SIGBUS (memfd) or OOM later,
	 * long after start-up: refuse now, while nothing is lost. */
	if (total && size > total) {
		snprintf(err, errlen, "--memory %" PRIu64 "M is more than this host has (%" PRIu64 "M)",
			 size >> 20, total >> 20);
		return -ENOMEM;
	}
	if (!path) {
		m->fd = memfd_create("cprvm-ram", MFD_CLOEXEC);
		if (m->fd < 0)
			return mem_fail(err, errlen, -errno, "cannot create guest RAM memfd", NULL);
		if (ftruncate(m->fd, (off_t)size) < 0) {
			ret = mem_fail(err, errlen, -errno, "cannot size guest RAM memfd", NULL);
			goto out_close;
		}
	} else {
		struct statvfs vfs;

		m->path = strdup(path);
		if (!m->path) {
			ret = -ENOMEM;
			goto out_close;
		}
		m->fd = open(path, O_RDWR | O_CLOEXEC);
		if (m->fd < 0 && errno == ENOENT && may_create) {
			m->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			m->created = m->fd >= 0;
		}
		if (m->fd < 0) {
			ret = mem_fail(err, errlen, -errno, "cannot open --mem-path", path);
			goto out_close;
		}
		if (fstat(m->fd, &st) < 0) {
			ret = mem_fail(err, errlen, -errno, "cannot stat --mem-path", path);
			goto out_close;
		}
		if (!S_ISREG(st.st_mode)) {
			snprintf(err, errlen, "--mem-path '%s' is not a regular file", path);
			ret = -EINVAL;
			goto out_close;
		}
		if ((uint64_t)st.st_size > size) {
			snprintf(err, errlen,
				 "--mem-path '%s' is larger (%" PRIu64 "M) than --memory (%" PRIu64
				 "M); refusing to truncate it", path, (uint64_t)st.st_size >> 20,
				 size >> 20);
			ret = -EINVAL;
			goto out_close;
		}
		/* Sparse growth must fit the filesystem, or guest writes would
		 * fail with SIGBUS later. */
		if (fstatvfs(m->fd, &vfs) == 0 && vfs.f_blocks) {
			uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
			uint64_t have = (uint64_t)st.st_blocks * 512;
			if (size > have && size - have > avail) {
				snprintf(err, errlen,
					 "--mem-path '%s': its filesystem has %" PRIu64
					 "M free, the guest needs %" PRIu64 "M",
					 path, avail >> 20, (size - have) >> 20);
				ret = -ENOSPC;
				goto out_close;
			}
		}
		if ((uint64_t)st.st_size < size && ftruncate(m->fd, (off_t)size) < 0) {
			ret = mem_fail(err, errlen, -errno, "cannot size --mem-path", path);
			goto out_close;
		}
	}
	m->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m->fd, 0);
	if (m->host == MAP_FAILED) {
		m->host = NULL;
		ret = mem_fail(err, errlen, -errno, "cannot map guest RAM", path);
		goto out_close;
	}
	madvise(m->host, size, MADV_DONTDUMP);
	m->size = size;
	m->low_size = size < CPRVM_LOW_MEM_MAX ? size : CPRVM_LOW_MEM_MAX;
	m->high_size = size - m->low_size;
	return 0;

out_close:
	mem_close(m, true);
	return ret;
}

int mem_open_private(struct guest_mem *m, int fd, uint64_t offset, uint64_t size, char *err,
		     size_t errlen)
{
	memset(m, 0, sizeof(*m));
	m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (m->fd < 0)
		return mem_fail(err, errlen, -errno, "cannot duplicate snapshot fd", NULL);
	m->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, m->fd,
		       (off_t)offset);
	if (m->host == MAP_FAILED) {
		int ret = mem_fail(err, errlen, -errno, "cannot map the snapshot's RAM", NULL);
		m->host = NULL;
		mem_close(m, false);
		return ret;
	}
	m->size = size;
	m->private_map = true;
	m->low_size = size < CPRVM_LOW_MEM_MAX ? size : CPRVM_LOW_MEM_MAX;
	m->high_size = size - m->low_size;
	return 0;
}

int mem_adopt(struct guest_mem *m, int fd, uint64_t size, const char *path, char *err,
	      size_t errlen)
{
	struct stat st;

	memset(m, 0, sizeof(*m));
	m->fd = -1;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size) {
		snprintf(err, errlen, "handed-over guest RAM is not %llu bytes",
			 (unsigned long long)size);
		return -EINVAL;
	}
	m->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
	if (m->host == MAP_FAILED) {
		m->host = NULL;
		return mem_fail(err, errlen, -errno, "cannot map handed-over guest RAM", NULL);
	}
	if (path && !(m->path = strdup(path))) {
		munmap(m->host, size);
		m->host = NULL;
		return -ENOMEM;
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	m->fd = fd;
	m->size = size;
	m->low_size = size < CPRVM_LOW_MEM_MAX ? size : CPRVM_LOW_MEM_MAX;
	m->high_size = size - m->low_size;
	return 0;
}

int mem_register(struct guest_mem *m, int vmfd)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = m->low_size,
		.userspace_addr = (uintptr_t)m->host,
	};

	if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	if (!m->high_size)
		return 0;
	r.slot = 1;
	r.guest_phys_addr = CPRVM_HIGH_MEM_BASE;
	r.memory_size = m->high_size;
	r.userspace_addr = (uintptr_t)(m->host + m->low_size);
	if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	return 0;
}

void mem_unregister(struct guest_mem *m, int vmfd)
{
	struct kvm_userspace_memory_region r = { .slot = 0 };

	/* A slot is deleted by giving it size 0. */
	ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r);
	if (m->high_size) {
		r.slot = 1;
		r.guest_phys_addr = CPRVM_HIGH_MEM_BASE;
		ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &r);
	}
}

void *mem_gpa_to_hva(struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	if (len > m->size)
		return NULL;
	if (gpa < m->low_size && len <= m->low_size - gpa)
		return m->host + gpa;
	if (gpa >= CPRVM_HIGH_MEM_BASE && gpa - CPRVM_HIGH_MEM_BASE < m->high_size &&
	    len <= m->high_size - (gpa - CPRVM_HIGH_MEM_BASE))
		return m->host + m->low_size + (gpa - CPRVM_HIGH_MEM_BASE);
	return NULL;
}

void mem_close(struct guest_mem *m, bool remove_created)
{
	if (m->host)
		munmap(m->host, m->size);
	m->host = NULL;
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
	if (remove_created && m->created && m->path)
		unlink(m->path);
	free(m->path);
	m->path = NULL;
}
