// Mapping the pool file. On a DAX file system (real persistent memory: an mmap with MAP_SYNC
// succeeds) libpmem maps it and makes stores durable with cache flushes; libpmem is loaded
// with dlopen only then. Everywhere else libpmem itself would only mmap the file and msync it,
// so that is done here directly, and a process never pays libpmem's load (its dependency chain
// and constructor cost about 2.4 ms per process start: Docs/Benchmarks.md).
#define _GNU_SOURCE
#include "cpmll.h"
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

// The part of libpmem's API used on DAX (libpmem.h's signatures).
static struct {
    void *(*map_file)(const char *path, size_t len, int flags, mode_t mode, size_t *mapped_lenp, int *is_pmemp);
    int (*unmap)(void *addr, size_t len);
    void (*persist)(const void *addr, size_t len);
    int loaded;   // 1 loaded, -1 could not be loaded
} libpmem;
static pthread_once_t libpmem_once = PTHREAD_ONCE_INIT;

static void load_libpmem(void) {
    void *handle = dlopen("libpmem.so.1", RTLD_NOW | RTLD_LOCAL);
    if (handle) {
        libpmem.map_file = (void *(*)(const char *, size_t, int, mode_t, size_t *, int *))dlsym(handle, "pmem_map_file");
        libpmem.unmap = (int (*)(void *, size_t))dlsym(handle, "pmem_unmap");
        libpmem.persist = (void (*)(const void *, size_t))dlsym(handle, "pmem_persist");
    }
    libpmem.loaded = handle && libpmem.map_file && libpmem.unmap && libpmem.persist ? 1 : -1;
}

static int mapping_mode = PMLL_MAP_AUTO;
void pmll_pmem_set_mapping(int mode) { __atomic_store_n(&mapping_mode, mode, __ATOMIC_RELAXED); }

// Whether `fd` can be mapped with MAP_SYNC: the file is on DAX (fs-dax), where stores reach
// persistence with cache flushes alone.
static int is_dax(int fd, size_t length) {
    void *probe = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
    if (probe == MAP_FAILED) return 0;
    munmap(probe, length);
    return 1;
}

// Maps `fd` (of `path`) whole: through libpmem on DAX when it loads, else a shared mapping.
static void *map_whole(const char *path, int fd, size_t length, int *is_pmem, int *err_out) {
    *is_pmem = 0;
    int mode = __atomic_load_n(&mapping_mode, __ATOMIC_RELAXED);
    if (mode == PMLL_MAP_LIBPMEM || (mode == PMLL_MAP_AUTO && is_dax(fd, length))) {
        pthread_once(&libpmem_once, load_libpmem);
        if (libpmem.loaded == 1) {
            size_t mapped = 0;
            int pm = 0;
            void *addr = libpmem.map_file(path, 0, 0, 0, &mapped, &pm);   // length 0, flags 0: never resizes
            if (addr && mapped == length) {
                *is_pmem = pm;
                *err_out = 0;
                return addr;
            }
            if (addr) libpmem.unmap(addr, mapped);
        }
        // No libpmem: msync is durable on DAX too, only slower than cache flushes.
    }
    void *addr = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    *err_out = addr == MAP_FAILED ? errno : 0;
    return addr == MAP_FAILED ? NULL : addr;
}

void *pmll_pmem_create(const char *path, uint64_t length, uint32_t mode, uint64_t *mapped_length, int *is_pmem, int *err_out) {
    *mapped_length = 0;
    *is_pmem = 0;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) { *err_out = errno; return NULL; }
    int rc = posix_fallocate(fd, 0, (off_t)length);
    if (rc == EOPNOTSUPP || rc == EINVAL) rc = ftruncate(fd, (off_t)length) == 0 ? 0 : errno;
    if (rc != 0) {
        close(fd);
        unlink(path);
        *err_out = rc;
        return NULL;
    }
    void *addr = map_whole(path, fd, (size_t)length, is_pmem, err_out);
    close(fd);
    if (!addr) { unlink(path); return NULL; }
    *mapped_length = length;
    return addr;
}

void *pmll_pmem_open(const char *path, uint64_t *mapped_length, int *is_pmem, int *err_out) {
    *mapped_length = 0;
    *is_pmem = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) { *err_out = errno; return NULL; }
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? (st.st_size > 0 ? 0 : EINVAL) : errno;
    if (rc != 0) {
        *err_out = rc;
        close(fd);
        return NULL;
    }
    void *addr = map_whole(path, fd, (size_t)st.st_size, is_pmem, err_out);
    close(fd);
    if (addr) *mapped_length = (uint64_t)st.st_size;
    return addr;
}

void *pmll_map_readonly(int fd, uint64_t length, int *err_out) {
    void *addr = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, 0);
    *err_out = addr == MAP_FAILED ? errno : 0;
    return addr == MAP_FAILED ? NULL : addr;
}

// munmap also unmaps what libpmem mapped (pmem_unmap is munmap plus bookkeeping of its own
// that only pmem_map_file's ranges use), but libpmem's own call keeps that bookkeeping right.
int pmll_pmem_unmap(void *addr, uint64_t length) {
    int rc = libpmem.loaded == 1 ? libpmem.unmap(addr, (size_t)length) : munmap(addr, (size_t)length);
    return rc == 0 ? 0 : -errno;
}

// msync of the pages spanning [addr, addr + length), as pmem_msync does.
static int msync_span(const void *addr, size_t length) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)addr & ~(page - 1);
    size_t span = length + ((uintptr_t)addr - start);
    return msync((void *)start, span, MS_SYNC) == 0 ? 0 : -errno;
}

static uint64_t barriers;
uint64_t pmll_barrier_count(void) { return __atomic_load_n(&barriers, __ATOMIC_RELAXED); }

void pmll_pmem_persist(const void *addr, size_t length) {
    __atomic_fetch_add(&barriers, 1, __ATOMIC_RELAXED);
    if (libpmem.loaded == 1) {
        libpmem.persist(addr, length);
    } else {
        // Only a mapping libpmem made is persistent memory; kept correct regardless.
        msync_span(addr, length);
    }
}

int pmll_pmem_msync(const void *addr, size_t length) {
    __atomic_fetch_add(&barriers, 1, __ATOMIC_RELAXED);
    return msync_span(addr, length);
}
