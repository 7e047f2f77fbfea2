#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <libpmem.h>
#include <sys/mman.h>

void *pmll_pmem_create(const char *path, uint64_t length, uint32_t mode, uint64_t *mapped_length, int *is_pmem, int *err_out) {
    size_t len = 0;
    int pm = 0;
    // CREATE|EXCL: pmem_map_file with CREATE alone would ftruncate an existing pool.
    void *addr = pmem_map_file(path, (size_t)length, PMEM_FILE_CREATE | PMEM_FILE_EXCL, (mode_t)mode, &len, &pm);
    *err_out = addr ? 0 : errno;
    *mapped_length = len;
    *is_pmem = pm;
    return addr;
}

void *pmll_pmem_open(const char *path, uint64_t *mapped_length, int *is_pmem, int *err_out) {
    size_t len = 0;
    int pm = 0;
    void *addr = pmem_map_file(path, 0, 0, 0, &len, &pm);   // length 0, flags 0: never resizes
    *err_out = addr ? 0 : errno;
    *mapped_length = len;
    *is_pmem = pm;
    return addr;
}

void *pmll_map_readonly(int fd, uint64_t length, int *err_out) {
    void *addr = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, 0);
    *err_out = addr == MAP_FAILED ? errno : 0;
    return addr == MAP_FAILED ? NULL : addr;
}

int pmll_pmem_unmap(void *addr, uint64_t length) { return pmem_unmap(addr, (size_t)length) == 0 ? 0 : -errno; }
static uint64_t barriers;
uint64_t pmll_barrier_count(void) { return __atomic_load_n(&barriers, __ATOMIC_RELAXED); }

void pmll_pmem_persist(const void *addr, size_t length) {
    __atomic_fetch_add(&barriers, 1, __ATOMIC_RELAXED);
    pmem_persist(addr, length);
}

int pmll_pmem_msync(const void *addr, size_t length) {
    __atomic_fetch_add(&barriers, 1, __ATOMIC_RELAXED);
    return pmem_msync(addr, length) == 0 ? 0 : -errno;
}
