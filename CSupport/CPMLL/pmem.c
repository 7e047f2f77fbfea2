// Mapping the pool file into a reserved address range that the mapping grows into. On a DAX
// file system (real persistent memory: an mmap with MAP_SYNC succeeds) libpmem makes stores
// durable with cache flushes; libpmem is loaded with dlopen only then. Everywhere else libpmem
// itself would only msync, so that is done here directly, and a process never pays libpmem's
// load (its dependency chain and constructor cost about 2.4 ms per process start:
// Docs/Benchmarks.md).
#define _GNU_SOURCE
#include "cpmll.h"
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

// libpmem's cache-flush persist, used on DAX. libpmem does not map the pool: pmem_map_file
// picks its own address and cannot map into a reservation, so a pool that grows in place is
// mapped here (with MAP_SYNC on DAX) and libpmem only makes stores durable.
static struct {
    void (*persist)(const void *addr, size_t len);
    int loaded;   // 1 loaded, -1 could not be loaded
} libpmem;
static pthread_once_t libpmem_once = PTHREAD_ONCE_INIT;

static void load_libpmem(void) {
    void *handle = dlopen("libpmem.so.1", RTLD_NOW | RTLD_LOCAL);
    if (handle) libpmem.persist = (void (*)(const void *, size_t))dlsym(handle, "pmem_persist");
    libpmem.loaded = handle && libpmem.persist ? 1 : -1;
}

static int mapping_mode = PMLL_MAP_AUTO;
void pmll_pmem_set_mapping(int mode) { __atomic_store_n(&mapping_mode, mode, __ATOMIC_RELAXED); }

// Whether writable mappings of `fd` take MAP_SYNC (only on DAX, where stores reach
// persistence with cache flushes alone), asked with a mapping the kernel places itself. Never
// asked with MAP_FIXED inside a reservation: on ext4 a MAP_SYNC mapping is refused only after
// the kernel has unmapped the target range, and another thread's mmap can take that hole before
// the plain mapping covers it again (the plain MAP_FIXED then maps the pool over that thread's
// memory, and that thread's munmap later cuts a page out of the pool).
static int takes_map_sync(int fd, int writable) {
    int mode = __atomic_load_n(&mapping_mode, __ATOMIC_RELAXED);
    if (mode == PMLL_MAP_LIBPMEM) pthread_once(&libpmem_once, load_libpmem);
    if (!writable || mode == PMLL_MAP_MMAP) return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *probe = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
    if (probe == MAP_FAILED) return 0;
    munmap(probe, page);
    pthread_once(&libpmem_once, load_libpmem);
    return 1;
}

// Maps [offset, offset + length) of `fd` at `addr` (MAP_FIXED inside a reservation, or
// anywhere when addr is NULL), with MAP_SYNC when `sync` (asked by takes_map_sync first).
//
// Every mapping of a pool is MADV_RANDOM. Without it a page fault reads around the page, and
// since Linux gave ext4 large folios (6.16) that read-around fills the page cache with folios
// of up to 2 MiB, which are dirtied and written back whole: one changed byte made each msync
// write about 1.7 MiB on this machine's disk (read_ahead_kb 8192), 0.65 ms instead of 0.05 ms
// for 4 KiB (Docs/Benchmarks.md). Faults of a MADV_RANDOM range read one 4 KiB page; scans
// ask for what they will read first (pmll_prefetch), which also reads in 4 KiB folios.
static void *map_range(void *addr, int fd, uint64_t offset, uint64_t length, int writable, int sync, int *err_out) {
    int flags = (sync ? MAP_SHARED_VALIDATE | MAP_SYNC : MAP_SHARED) | (addr ? MAP_FIXED : 0);
    void *p = mmap(addr, (size_t)length, writable ? PROT_READ | PROT_WRITE : PROT_READ, flags, fd, (off_t)offset);
    *err_out = p == MAP_FAILED ? errno : 0;
    if (p == MAP_FAILED) return NULL;
    (void)madvise(p, (size_t)length, MADV_RANDOM);
    return p;
}

void pmll_prefetch(const void *addr, uint64_t length) {
    // The kernel reads at most the device's read-ahead size per request (128 KiB by default),
    // so larger ranges are asked for in pieces of that size.
    const uint64_t piece = 128 << 10;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)addr & ~(page - 1);
    uintptr_t end = (uintptr_t)addr + length;
    for (uintptr_t at = start; at < end; at += piece) {
        (void)madvise((void *)at, (size_t)(end - at < piece ? end - at : piece), MADV_WILLNEED);
    }
}

// After a MAP_FIXED into a reservation failed: Linux may have unmapped the range first, so it
// is reserved again where it is a hole. 1 if the range is the reservation's again; 0 if that
// cannot be known (it was not a hole: still ours, or another thread's mapping took it), and
// then the reservation must never be unmapped as a whole.
static int reserve_again(void *addr, uint64_t length) {
    void *p = mmap(addr, (size_t)length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == addr) return 1;
    // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a hint and map elsewhere.
    if (p != MAP_FAILED) munmap(p, (size_t)length);
    return 0;
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
    int sync = takes_map_sync(fd, 1);
    void *addr = map_range(NULL, fd, 0, length, 1, sync, err_out);
    close(fd);
    if (!addr) { unlink(path); return NULL; }
    *is_pmem = sync && libpmem.loaded == 1;
    *mapped_length = length;
    return addr;
}

void *pmll_map_reserved(int fd, uint64_t length, uint64_t reserve, int writable, int *sync, int *is_pmem, int *err_out) {
    *is_pmem = 0;
    *sync = 0;
    if (length == 0 || length > reserve) { *err_out = EINVAL; return NULL; }
    int takes_sync = takes_map_sync(fd, writable);
    void *base = mmap(NULL, (size_t)reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) { *err_out = errno; return NULL; }
    if (!map_range(base, fd, 0, length, writable, takes_sync, err_out)) {
        // A hole another thread took must not be unmapped with the rest: leave the rest.
        if (reserve_again(base, length)) munmap(base, (size_t)reserve);
        else munmap((char *)base + length, (size_t)(reserve - length));
        return NULL;
    }
    *sync = takes_sync;
    // No libpmem: msync is durable on DAX too, only slower than cache flushes.
    *is_pmem = takes_sync && libpmem.loaded == 1;
    return base;
}

int pmll_map_extend(void *base, int fd, uint64_t from, uint64_t to, int writable, int sync, int *reservation_intact) {
    *reservation_intact = 1;
    if (to <= from) return 0;
    int err = 0;
    if (map_range((char *)base + from, fd, from, to - from, writable, sync, &err)) return 0;
    *reservation_intact = reserve_again((char *)base + from, to - from);
    return -err;
}

int pmll_map_private(void *base, int fd, uint64_t from, uint64_t to, int *reservation_intact) {
    *reservation_intact = 1;
    if (to <= from) return 0;
    void *addr = (char *)base + from;
    void *p = mmap(addr, (size_t)(to - from), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, (off_t)from);
    if (p != MAP_FAILED) {
        (void)madvise(p, (size_t)(to - from), MADV_RANDOM);
        return 0;
    }
    int err = errno;
    *reservation_intact = reserve_again(addr, to - from);
    return -err;
}

int pmll_fs_is_volatile(int fd) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return 0;
    return fs.f_type == TMPFS_MAGIC || fs.f_type == (typeof(fs.f_type))RAMFS_MAGIC;
}

int pmll_pmem_unmap(void *addr, uint64_t length) {
    return munmap(addr, (size_t)length) == 0 ? 0 : -errno;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void pmll_populate_for_write(void *addr, size_t length) {
    (void)madvise(addr, length, MADV_POPULATE_WRITE);
}

int pmll_file_reserve(int fd, uint64_t offset, uint64_t length) {
    int rc, wrote = 0;
    while ((rc = posix_fallocate(fd, (off_t)offset, (off_t)length)) == EINTR) {}
    if (rc == EOPNOTSUPP || rc == EINVAL) {
        // No fallocate here: the blocks are written instead (a hole would fault as SIGBUS
        // when the file system fills up).
        static const char zeros[65536];
        struct stat st;
        if (fstat(fd, &st) != 0) return -errno;
        uint64_t from = (uint64_t)st.st_size > offset ? (uint64_t)st.st_size : offset;
        for (uint64_t at = from; at < offset + length;) {
            size_t n = offset + length - at < sizeof zeros ? (size_t)(offset + length - at) : sizeof zeros;
            ssize_t w = pwrite(fd, zeros, n, (off_t)at);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) return w < 0 ? -errno : -EIO;
            at += (uint64_t)w;
        }
        wrote = 1;
        rc = 0;
    }
    if (rc != 0) return -rc;
    while (fdatasync(fd) != 0) {
        if (errno != EINTR) return -errno;
    }
    // Zeros written above sit in folios as large as the writes: clean now, dropped, so that
    // the mapping reads the area in 4 KiB pages (map_range).
    if (wrote) (void)posix_fadvise(fd, (off_t)offset, (off_t)length, POSIX_FADV_DONTNEED);
    return 0;
}

int pmll_file_release(int fd, uint64_t offset, uint64_t length) {
    while (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
}

int pmll_fill_range(int fd, uint64_t offset, uint64_t length) {
    // Mode 0 inside the file: allocates the range's holes, leaves size and data as they are.
    while (fallocate(fd, 0, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
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
    if (__atomic_load_n(&libpmem.loaded, __ATOMIC_ACQUIRE) == 1) {
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
