// The "ideal log" peer of `pmll-bench tx --scaling-only`: what a commit would cost if it were
// nothing but one record made durable by one flush shared with every other process committing
// (a write-ahead log with group commit and no store behind it). Its 4-vs-1 ratio is the most
// that sharing barriers can give on the disk under test, measured in the same run as PMLL.
//
// The flusher of a group first waits (yielding, up to PEERS_LOG_GATHER_NS) until every process
// attached has a record pending, as PostgreSQL's commit_delay/commit_siblings would at best:
// without that wait a flush covered 2.3 of 4 processes' records here, with it 3.9-4.0.
#define _GNU_SOURCE
#include "cpmll_peers.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { LOG_SLOT = 256 };
#define LOG_BYTES (64ull << 20)
#define PEERS_LOG_GATHER_NS 100000

// Lives in PATH.ctl, mapped by every process of a row.
typedef struct {
    _Atomic uint64_t tail;       // bytes reserved, monotonic; the file offset is tail % LOG_BYTES
    _Atomic uint64_t started;    // flushes begun
    _Atomic uint64_t completed;  // flushes done (one at a time: started - completed is 0 or 1)
    _Atomic uint32_t pending;    // records written since the last flush began
    _Atomic uint32_t flushing;   // 1 while one process flushes for all
    _Atomic uint32_t generation; // futex word: bumped after every flush
    _Atomic uint32_t attached;   // processes of this row
    // What the row's flushes did (peers_log_statistics), added to by each flusher.
    _Atomic uint64_t flush_count, flushed_commits, flush_ns, gather_ns;
} log_control;

typedef struct {
    int fd;
    log_control *control;
} log_handle;

static _Atomic uint64_t flushes;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static char *control_path(const char *path) {
    size_t n = strlen(path);
    char *p = malloc(n + 5);
    if (p) {
        memcpy(p, path, n);
        memcpy(p + n, ".ctl", 5);
    }
    return p;
}

int peers_log_reset(const char *path) {
    // The log's blocks are written once here, so that a flush never has to record an extent's
    // conversion in the filesystem's journal: every later fdatasync is data and a cache flush.
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < LOG_BYTES) {
        static const char zeros[1 << 16];
        for (uint64_t off = 0; off < LOG_BYTES; off += sizeof zeros) {
            if (pwrite(fd, zeros, sizeof zeros, (off_t)off) != (ssize_t)sizeof zeros) {
                int e = errno;
                close(fd);
                return -e;
            }
        }
        if (fsync(fd) != 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    close(fd);
    char *cpath = control_path(path);
    if (!cpath) return -ENOMEM;
    int cfd = open(cpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    free(cpath);
    if (cfd < 0) return -errno;
    int rc = ftruncate(cfd, 4096) == 0 ? 0 : -errno;
    close(cfd);
    return rc;
}

void *peers_log_open(const char *path) {
    char *cpath = control_path(path);
    if (!cpath) return NULL;
    int cfd = open(cpath, O_RDWR | O_CLOEXEC);
    free(cpath);
    if (cfd < 0) return NULL;
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
    close(cfd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    log_handle *h = malloc(sizeof *h);
    if (m == MAP_FAILED || fd < 0 || !h) {
        if (m != MAP_FAILED) munmap(m, 4096);
        if (fd >= 0) close(fd);
        free(h);
        return NULL;
    }
    h->fd = fd;
    h->control = m;
    atomic_fetch_add(&h->control->attached, 1);
    return h;
}

void peers_log_close(void *handle) {
    log_handle *h = handle;
    atomic_fetch_sub(&h->control->attached, 1);
    munmap(h->control, 4096);
    close(h->fd);
    free(h);
}

int peers_log_commit(void *handle, const void *record, size_t length) {
    log_handle *h = handle;
    log_control *c = h->control;
    if (length > LOG_SLOT) return -EINVAL;
    uint64_t start = atomic_fetch_add(&c->tail, LOG_SLOT);
    if (pwrite(h->fd, record, length, (off_t)(start % LOG_BYTES)) != (ssize_t)length) return -errno;
    // The first flush to begin after this point covers the record: one that began earlier may
    // have issued its fdatasync before the pwrite above.
    uint64_t needed = atomic_load(&c->started) + 1;
    atomic_fetch_add(&c->pending, 1);
    for (;;) {
        uint32_t generation = atomic_load(&c->generation);
        if (atomic_load(&c->completed) >= needed) return 0;
        uint32_t idle = 0;
        if (!atomic_compare_exchange_strong(&c->flushing, &idle, 1)) {
            syscall(SYS_futex, &c->generation, FUTEX_WAIT, generation, NULL, NULL, 0);
            continue;
        }
        uint64_t gather_start = now_ns(), deadline = gather_start + PEERS_LOG_GATHER_NS;
        while (atomic_load(&c->pending) < atomic_load(&c->attached) && now_ns() < deadline) sched_yield();
        uint32_t covered = atomic_exchange(&c->pending, 0);
        uint64_t number = atomic_fetch_add(&c->started, 1) + 1;
        uint64_t flush_start = now_ns();
        int rc = fdatasync(h->fd) == 0 ? 0 : -errno;
        atomic_fetch_add(&flushes, 1);
        atomic_fetch_add(&c->flush_count, 1);
        atomic_fetch_add(&c->flushed_commits, covered);
        atomic_fetch_add(&c->flush_ns, now_ns() - flush_start);
        atomic_fetch_add(&c->gather_ns, flush_start - gather_start);
        if (rc == 0) atomic_store(&c->completed, number);
        atomic_store(&c->flushing, 0);
        atomic_fetch_add(&c->generation, 1);
        syscall(SYS_futex, &c->generation, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
        if (rc != 0) return rc;
    }
}

uint64_t peers_log_flush_count(void) { return atomic_load(&flushes); }

int peers_log_statistics(const char *path, peers_log_stats *out) {
    char *cpath = control_path(path);
    if (!cpath) return -ENOMEM;
    int cfd = open(cpath, O_RDONLY | O_CLOEXEC);
    free(cpath);
    if (cfd < 0) return -errno;
    log_control c;
    ssize_t got = pread(cfd, &c, sizeof c, 0);
    close(cfd);
    if (got != (ssize_t)sizeof c) return -EIO;
    out->flushes = atomic_load(&c.flush_count);
    out->commits = atomic_load(&c.flushed_commits);
    out->flush_ns = atomic_load(&c.flush_ns);
    out->gather_ns = atomic_load(&c.gather_ns);
    return 0;
}
