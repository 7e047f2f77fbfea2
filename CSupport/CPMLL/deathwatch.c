#define _GNU_SOURCE
#include "cpmll.h"
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Waiting on a lock word *or* the exit of its owner (see Docs/LockProtocol.md, "Takeover"):
// one io_uring per waiting thread, with an IORING_OP_FUTEX_WAIT on the word (opcode 51,
// kernel 6.7+; liburing 2.3 has no helper for it) and an IORING_OP_POLL_ADD on a pidfd of the
// owner. Whichever completes first ends the wait; the other is cancelled and reaped so the
// ring is empty again.

#define OP_FUTEX_WAIT 51
#define FUTEX2_U32 0x02
enum { UD_FUTEX = 1, UD_POLL = 2, UD_CANCEL = 3 };

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static int unsupported;   // set once the kernel refused the ring or the opcode
static __thread struct io_uring *thread_ring;

static void ring_free(void *p) {
    struct io_uring *r = p;
    io_uring_queue_exit(r);
    free(r);
}
static void ring_key_init(void) { (void)pthread_key_create(&ring_key, ring_free); }

static struct io_uring *ring_get(void) {
    if (thread_ring) return thread_ring;
    pthread_once(&ring_once, ring_key_init);
    struct io_uring *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (io_uring_queue_init(4, r, 0) < 0) {
        free(r);
        __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    thread_ring = r;
    (void)pthread_setspecific(ring_key, r);
    return r;
}

int pmll_owner_watch_supported(void) { return !__atomic_load_n(&unsupported, __ATOMIC_RELAXED); }

int pmll_pidfd_open_checked(int32_t pid, uint64_t start_time) {
    if (pid <= 0) return -ESRCH;
    int fd = pmll_pidfd_open(pid);
    if (fd < 0) return fd;
    // pidfd_open races with PID reuse: the pid must still be the registered process, which
    // its start time (field 22 of /proc/PID/stat) tells.
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int sfd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = sfd >= 0 ? read(sfd, buf, sizeof buf - 1) : -1;
    if (sfd >= 0) close(sfd);
    if (n <= 0) { close(fd); return -ESRCH; }
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long value = 0;
    // After ") ": field 3 (state) ... field 22 is the 20th field after the closing paren.
    for (int field = 3; p && field <= 22; field++) {
        p = strchr(p + 1, ' ');
        if (p && field == 22) value = strtoull(p + 1, NULL, 10);
    }
    if (!p || value != start_time) { close(fd); return -ESRCH; }
    return fd;
}

void pmll_fd_close(int fd) { if (fd >= 0) close(fd); }

int pmll_wait_word_or_exit(uint32_t *word, uint32_t expected, int64_t deadline_ns, int pidfd) {
    if (!pmll_owner_watch_supported()) return -ENOSYS;
    struct io_uring *r = ring_get();
    if (!r) return -ENOSYS;
    struct io_uring_sqe *a = io_uring_get_sqe(r), *b = io_uring_get_sqe(r);
    if (!a || !b) return -ENOSYS;
    io_uring_prep_rw(OP_FUTEX_WAIT, a, FUTEX2_U32, word, 0, expected);
    a->addr3 = FUTEX_BITSET_MATCH_ANY;
    a->user_data = UD_FUTEX;
    io_uring_prep_poll_add(b, pidfd, POLLIN);
    b->user_data = UD_POLL;

    struct __kernel_timespec ts, *tsp = NULL;
    if (deadline_ns != INT64_MAX) {
        int64_t left = deadline_ns - pmll_clock_monotonic_ns();
        if (left < 0) left = 0;
        ts.tv_sec = left / 1000000000;
        ts.tv_nsec = left % 1000000000;
        tsp = &ts;
    }
    int rc = io_uring_submit(r);
    if (rc < 0) return -ENOSYS;
    struct io_uring_cqe *cqe = NULL;
    do rc = io_uring_wait_cqe_timeout(r, &cqe, tsp); while (rc == -EINTR);
    int futex_res = 1, poll_res = 0, timed_out = rc == -ETIME;
    unsigned pending = (1u << UD_FUTEX) | (1u << UD_POLL);
    if (rc == 0) {
        unsigned ud = (unsigned)cqe->user_data;
        if (ud == UD_FUTEX) futex_res = cqe->res; else poll_res = cqe->res;
        pending &= ~(1u << ud);
        io_uring_cqe_seen(r, cqe);
    }
    // Cancel what is still in flight, then reap it and the cancellations.
    for (unsigned ud = UD_FUTEX; ud <= UD_POLL; ud++) {
        if (!(pending & (1u << ud))) continue;
        struct io_uring_sqe *c = io_uring_get_sqe(r);
        if (!c) break;
        io_uring_prep_cancel64(c, ud, 0);
        c->user_data = UD_CANCEL + ud * 8;   // distinct, never 1 or 2
    }
    io_uring_submit(r);
    int fr = futex_res, pr = poll_res;
    // Each cancel produces its own completion: count them as pending too.
    unsigned cancels = __builtin_popcount(pending);
    while (pending || cancels) {
        struct io_uring_cqe *c;
        int w;
        do w = io_uring_wait_cqe(r, &c); while (w == -EINTR);
        if (w < 0) break;
        unsigned ud = (unsigned)c->user_data;
        if (ud == UD_FUTEX || ud == UD_POLL) {
            if (ud == UD_FUTEX && c->res != -ECANCELED) fr = c->res;
            if (ud == UD_POLL && c->res != -ECANCELED) pr = c->res;
            pending &= ~(1u << ud);
        } else if (cancels) {
            cancels--;
        }
        io_uring_cqe_seen(r, c);
    }
    if (fr == -EINVAL || fr == -EOPNOTSUPP || pr == -EINVAL) {
        // No IORING_OP_FUTEX_WAIT here (kernel before 6.7): never try again.
        __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return -ENOSYS;
    }
    if (pr > 0 && (pr & POLLIN)) return 1;
    if (fr == 0 || fr == -EAGAIN) return 0;
    return timed_out ? -ETIMEDOUT : 0;
}
